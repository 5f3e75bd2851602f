// OverlayRuntime: the broker-side, event-loop part of an overlay that needs more than a stateless
// Driver: state that must exist before a connect (I2P's SAM session) and inbound listeners.
// Driver-neutral: the Server knows only this interface; CreateOverlayRuntime() picks the
// implementation by kind (I2P today; a Tailscale runtime plugs in the same way). Overlays with no
// runtime (SOCKS5) connect at once and cannot listen.
//
// The inbound mechanism (docs/architecture.md "Inbound listeners"): a listen() under an overlay
// reaches the broker as LISTEN with one end of a socketpair; the runtime's Listener produces
// accepted streams as connected sockets; the Server passes each one over that socketpair
// (ACCEPTED, SCM_RIGHTS) and the shim's accept() returns it.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "common/status.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "loop/event_loop.h"
#include "overlays/driver.h"

namespace via::broker {

// One accepted inbound stream: a connected socket whose bytes are the peer's, and the peer's
// overlay name (".b32.i2p"), given to the program as a fake address.
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

class OverlayRuntime {
 public:
  virtual ~OverlayRuntime() = default;

  // Starts work that should happen ahead of the first connect (I2P: SESSION CREATE). Called
  // whenever a program selects the overlay; cheap and idempotent.
  virtual void Start() {}

  // Calls `done` once the overlay can take a connect, or with why not; possibly before this
  // returns. Returns a wait id for CancelWait (0 when `done` already ran). Waits are bounded by
  // the overlay's connect_timeout.
  virtual uint64_t WhenReady(std::function<void(const Status&)> done) = 0;
  virtual void CancelWait(uint64_t id) = 0;

  // Inbound: nullptr + ENOTSUP when the overlay cannot carry inbound connections. `port` is the
  // port the program listens on; `owner` describes it for logs.
  virtual Result<std::unique_ptr<InboundListener>> Listen(uint16_t port, const std::string& owner,
                                                          InboundListener::Events events) = 0;

  // Lines for `via status` (each ending in '\n').
  virtual void AppendStatus(std::ostream& out) const = 0;

  // The broker is stopping: begin tearing down (e.g. ask helper processes to exit) without
  // waiting; the destructor, called next, finishes. Lets the Server stop every runtime at once,
  // so that their waits overlap.
  virtual void Stop() {}
};

// The runtime for an overlay whose driver needs one, else nullptr. *loop, *driver, `overlay` and
// `service` must outlive it.
std::unique_ptr<OverlayRuntime> CreateOverlayRuntime(const config::Overlay& overlay,
                                                     const config::NetworkService& service,
                                                     overlays::Driver* driver, EventLoop* loop,
                                                     std::shared_ptr<spdlog::logger> log);

}  // namespace via::broker
