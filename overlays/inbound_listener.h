// Inbound connections through an overlay (docs/architecture.md "Inbound listeners"): a listen()
// under an overlay reaches the broker as LISTEN with one end of a socketpair; the overlay's
// InboundListener produces accepted streams as connected sockets; the broker passes each one over
// that socketpair (ACCEPTED, SCM_RIGHTS) and the shim's accept() returns it.
#pragma once

#include <functional>
#include <string>

#include "common/status.h"
#include "common/unique_fd.h"

namespace via::overlays {

// One accepted inbound stream: a connected socket whose bytes are the peer's, and the peer's
// overlay name (".b32.i2p", a MagicDNS name), given to the program as a fake address.
struct AcceptedStream {
  UniqueFd fd;
  std::string peer_name;
};

// An inbound listener of an overlay. Destroying it tears down the overlay side (the I2P session
// is closed, so the router forgets the destination).
class InboundListener {
 public:
  struct Events {
    // Once: OK when the listener is reachable (address() is then set), or why it is not.
    std::function<void(const Status&)> ready;
    // Per accepted stream, after ready(OK).
    std::function<void(AcceptedStream)> accepted;
    // The overlay side failed after ready (router gone); the listener is dead.
    std::function<void(const Status&)> failed;
  };
  virtual ~InboundListener() = default;
  // Where peers reach it, e.g. "<52 chars>.b32.i2p:8080"; "" until ready.
  virtual std::string address() const = 0;
  // The program closed its listening socket: stop accepting, and call `done` once the overlay
  // side may go (I2P: accepted streams belong to the listener's session, so it stays until the
  // program has closed them and the router has flushed them). No event fires after this.
  virtual void Drain(std::function<void()> done) { done(); }
};

}  // namespace via::overlays
