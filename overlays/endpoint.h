// Where a program's socket is connected for an overlay: the overlay's TCP endpoint (a SOCKS5
// proxy, an I2P router's SAM bridge, a Tailscale helper's loopback port).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace via::overlays {

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

}  // namespace via::overlays
