// One driver per configured overlay entry. The broker asks it where the program's socket must be
// connected (the overlay's TCP endpoint) and for a fresh handshake per connection.
#pragma once

#include <sys/socket.h>

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "overlays/handshake.h"

namespace via::overlays {

// The overlay's endpoint, resolved once when the driver is created.
struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;  // "127.0.0.1:9050" for log lines
};

// Resolves an overlay's `host` ("[::1]" accepted as well as "::1"; numeric first, so an address
// never touches /etc/hosts or the resolver) and `port` into distinct endpoints. Fails with
// EHOSTUNREACH: "overlay <id>: cannot resolve <what> "<host>": <why>" or "... has no IPv4 or IPv6
// address". `what` names the host's role, e.g. "proxy host", "SAM host".
Result<std::vector<Endpoint>> ResolveEndpoints(const std::string& overlay_id,
                                               const std::string& what, const std::string& host,
                                               uint16_t port);

class Driver {
 public:
  virtual ~Driver() = default;
  // The overlay's id, "ns:name".
  virtual const std::string& id() const = 0;
  // Endpoints to connect to, in order of preference (an IPv6 socket may use either family via
  // a mapped address; an IPv4 socket only IPv4).
  virtual const std::vector<Endpoint>& endpoints() const = 0;
  // A new handshake for one connection to `target`. Fails e.g. when no random credential can be
  // minted.
  virtual Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) = 0;
  // Connect timeout for this overlay, in milliseconds.
  virtual int connect_timeout_ms() const = 0;
  // Whether names are resolved by the overlay itself (Tor's RESOLVE extension) when a program
  // asks for addresses, instead of getting fake addresses. Off unless the driver supports it
  // and the config asks for it.
  virtual bool remote_resolve() const { return false; }
  // A handshake that resolves target.name to one address (or target.addr to a name) through
  // the overlay; read the answer with ResolvedAddr/ResolvedName after it is done.
  virtual Result<std::unique_ptr<Handshake>> NewResolveHandshake(const Target& /*target*/) {
    return Status::Error(ENOTSUP, "overlay " + id() + " cannot resolve names itself");
  }
  virtual wire::Addr ResolvedAddr(const Handshake& /*hs*/) const { return wire::Addr{}; }
  virtual std::string ResolvedName(const Handshake& /*hs*/) const { return ""; }
};

// Creates the driver for an overlay entry (every kind has one). The proxy host is resolved here (numeric or /etc/hosts or the
// system resolver: it is the proxy's own address, not a destination).
Result<std::unique_ptr<Driver>> CreateDriver(const config::Overlay& overlay);

}  // namespace via::overlays
