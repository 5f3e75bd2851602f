// The one place that knows every overlay kind: it makes the Overlay for a configured entry.
// Adding a kind: a folder overlays/<kind>/ with its Overlay, its config parse (config/), and its
// line in CreateOverlay (factory.cc).
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "config/config.h"
#include "overlays/overlay.h"
#include "overlays/overlay_context.h"

namespace via::overlays {

// Creates the overlay for an entry (which it copies; see OverlayContext for the rest). Host
// names of the overlay's endpoint are resolved here (numeric, /etc/hosts or the system resolver:
// it is the proxy's own address, not a destination), so call it off the loop or where blocking
// briefly is acceptable. Fails with the overlay's reason (e.g. EHOSTUNREACH for an endpoint that
// does not resolve, EINVAL for a missing key).
Result<std::unique_ptr<Overlay>> CreateOverlay(const config::Overlay& overlay,
                                               const OverlayContext& context = {});

// The entry's own settings for its `via status` line, from the config alone (so they show even
// when the overlay could not be created): " 127.0.0.1:9050 isolate_streams=true ..." or "".
std::string EntrySummary(const config::Overlay& overlay, const config::NetworkService& service);

}  // namespace via::overlays
