// A program's listener through I2P: a SAM session of its own (a persistent destination whose keys
// are kept under <state_dir>/i2p/, or an ephemeral one), one STREAM ACCEPT pending at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "overlays/inbound_listener.h"

namespace via::overlays {

class I2pOverlay;

// Starts listening on `port` for `owner` (for logs): `events` fire as InboundListener says. *i2p
// must outlive the listener; it counts its ports in i2p->listening_ports().
std::unique_ptr<InboundListener> StartI2pListener(I2pOverlay* i2p, uint16_t port,
                                                  const std::string& owner,
                                                  InboundListener::Events events);

}  // namespace via::overlays
