// Overlay: one configured overlay entry, as the broker uses it. Every overlay connects: it names
// the endpoint a program's socket is connected to and the handshake to run there. The other
// capabilities are optional, with defaults that mean "not needed" or "not supported": an overlay
// kind implements only what it has.
//
//   connect           endpoints(), NewHandshake(), connect_timeout_ms(), endpoint_role()
//   readiness         Start(), WhenReady(), CancelWait(): state that must exist before a connect
//                     (I2P's SAM session, a Tailscale node)
//   remote resolve    ResolvesRemotely(), NewResolveHandshake() (Tor's RESOLVE)
//   program handshake program_socks5(): the program may run SOCKS5 itself (the shim)
//   listen            Listen(): inbound connections (inbound_listener.h)
//   status            AppendStatus(): lines for `via status`
//
// Overlays are made by CreateOverlay (overlays/factory.h), the one place that names each kind.
// Error messages are the overlay's own: the broker logs and replies with them as they are.
#pragma once

#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "common/status.h"
#include "overlays/endpoint.h"
#include "overlays/handshake.h"
#include "overlays/inbound_listener.h"

namespace via::overlays {

class Overlay {
 public:
  Overlay() = default;
  Overlay(const Overlay&) = delete;
  Overlay& operator=(const Overlay&) = delete;
  // Tears down what the overlay holds (sessions, helper processes), waiting for it when it must.
  virtual ~Overlay() = default;

  // ---- connect ---------------------------------------------------------------------------------
  // The overlay's id, "ns:name".
  virtual const std::string& id() const = 0;
  // Endpoints to connect to, in order of preference (an IPv6 socket may use either family via
  // a mapped address; an IPv4 socket only IPv4). May be empty while the overlay is not ready.
  virtual const std::vector<Endpoint>& endpoints() const = 0;
  // What the endpoint is, in messages: "proxy", "SAM bridge", "Tailscale helper".
  virtual const char* endpoint_role() const = 0;
  // A new handshake for one connection to `target`. Fails e.g. for a destination the overlay
  // cannot reach, or when no random credential can be minted.
  virtual Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) = 0;
  // Connect timeout for this overlay, in milliseconds.
  virtual int connect_timeout_ms() const = 0;
  // The longest a program waits for one connect: getting ready, then the connect itself.
  virtual int64_t wait_bound_ms() const { return 2 * int64_t(connect_timeout_ms()); }

  // ---- readiness -------------------------------------------------------------------------------
  // Starts work that should happen ahead of the first connect (I2P: SESSION CREATE). Called
  // whenever a program selects the overlay; cheap and idempotent.
  virtual void Start() {}
  // Calls `done` once the overlay can take a connect, or with why not; possibly before this
  // returns. Returns a wait id for CancelWait (0 when `done` already ran). Waits are bounded by
  // the overlay's connect_timeout.
  virtual uint64_t WhenReady(std::function<void(const Status&)> done) {
    done(Status::Ok());
    return 0;
  }
  virtual void CancelWait(uint64_t /*id*/) {}
  // Whether the overlay holds state on its far side (a session, a node) that a reload must not
  // drop: then the broker keeps this object while the entry keeps its kind.
  virtual bool keeps_state() const { return false; }
  // The broker is stopping: begin tearing down (e.g. ask helper processes to exit) without
  // waiting; the destructor, called next, finishes. Lets the broker stop every overlay at once,
  // so that their waits overlap.
  virtual void Stop() {}

  // ---- remote resolve --------------------------------------------------------------------------
  // Whether the overlay itself resolves `target` (a name, or an address to name) when a program
  // asks, instead of the program getting a fake address (Tor's RESOLVE extension). Off unless the
  // overlay supports it and the config asks for it.
  virtual bool ResolvesRemotely(const Target& /*target*/) const { return false; }
  // A handshake that resolves target.name to one address (or target.addr to a name) through
  // the overlay.
  virtual Result<std::unique_ptr<ResolveHandshake>> NewResolveHandshake(const Target& /*target*/) {
    return Status::Error(ENOTSUP, "overlay " + id() + " cannot resolve names itself");
  }

  // ---- program handshake -----------------------------------------------------------------------
  // What a program needs to run the overlay's SOCKS5 handshake itself, in its own thread
  // (docs/architecture.md, "The connect path"), for an overlay that allows it: the proxy is
  // endpoints(), within connect_timeout_ms().
  struct ProgramSocks5 {
    std::string username, password;  // sent only when not isolating streams
    bool isolate_streams = false;    // a fresh random credential per connection
    // Non-empty: isolation by destination; each connect's credential is DestinationCredential
    // (common/socks5_client.h) of this prefix and its target.
    std::string destination_prefix;
    bool pipeline = false;           // the proxy takes greeting, credentials and request at once
    bool optimistic_data = false;    // the proxy takes the program's data before its reply
  };
  // For the program `who` (the credentials of isolation by process, program or session are
  // its own).
  virtual std::optional<ProgramSocks5> program_socks5(const Requester& /*who*/) const {
    return std::nullopt;
  }

  // ---- new identity ----------------------------------------------------------------------------
  // `via newnym`: later connections get credentials none had before (a new Tor circuit). ENOTSUP
  // for an overlay without such a notion.
  virtual Status NewIdentity() {
    return Status::Error(ENOTSUP, "overlay " + id() + " has no identity to renew");
  }

  // ---- listen ----------------------------------------------------------------------------------
  // Inbound: ENOTSUP when the overlay cannot carry inbound connections. `port` is the port the
  // program listens on; `owner` describes it for logs.
  virtual Result<std::unique_ptr<InboundListener>> Listen(uint16_t /*port*/,
                                                          const std::string& /*owner*/,
                                                          InboundListener::Events /*events*/) {
    return Status::Error(ENOTSUP, "no inbound support in this overlay");
  }

  // ---- status ----------------------------------------------------------------------------------
  // Lines for `via status` beyond the broker's own line per overlay (each ending in '\n').
  virtual void AppendStatus(std::ostream& /*out*/) const {}
  // The suffix of the names this overlay's network gives its hosts, once known (a tailnet whose
  // MagicDNS names are host.tailnet.test: "tailnet.test"); a built-in route sends *.<suffix>
  // here (docs/configuration.md, "Routes by destination"). "" when none, or not known yet.
  virtual std::string NameSuffix() const { return ""; }
};

}  // namespace via::overlays
