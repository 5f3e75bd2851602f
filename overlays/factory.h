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

// The network "none" (config::kNoNetwork), which no entry configures: every connect, remote
// resolve and listen through it fails with ENETUNREACH and says why. The broker selects it as it
// selects an overlay, so every path that asks the broker for a routed process (connects, names,
// DNS queries, listeners, strict mode's supervisor) fails closed with no code of its own.
std::unique_ptr<Overlay> NewNoNetwork();

// The entry's own settings for its `via status` line, from the config alone (so they show even
// when the overlay could not be created): " 127.0.0.1:9050 isolate_streams=true ..." or "".
std::string EntrySummary(const config::Overlay& overlay, const config::NetworkService& service);

}  // namespace via::overlays
