// Routes by destination (`kind: via.route`): the data, the built-in defaults, and the pure
// functions that pick the route a name or an address takes. See docs/configuration.md
// ("Routes by destination").
//
//   - name: onion
//     kind: via.route
//     match: {name: "*.onion"}   # or cidr: "10.0.0.0/8"; optional port: 443
//     network: app:tor           # an overlay id, direct, or block
//
// Routes apply to every process the shim serves, in order (a session's `via run --route` first,
// then the config's in file order, then the built-in defaults), before the process's own network.
// The first route that matches decides.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace via::config {

struct Config;

// A route's network besides overlays and direct: the destination is refused (the lookup fails
// with EAI_FAIL, the connect with ENETUNREACH).
inline constexpr std::string_view kBlockNetwork = "block";

// An address range: family 4 or 6, network bytes (host part zero), prefix length.
struct Cidr {
  uint8_t family = 0;
  uint8_t bytes[16] = {};
  int prefix = 0;
  bool Contains(uint8_t fam, const uint8_t* addr) const;  // addr: 4 or 16 bytes
  std::string ToString() const;                           // "10.0.0.0/8"
};
// Parses "10.0.0.0/8" or "fd7a:115c:a1e0::/48" (a bare address is /32 or /128). Host bits set
// are an error (write the network address). Returns the problem, or "" with *out filled.
std::string ParseCidr(std::string_view text, Cidr* out);

struct Route {
  std::string id;  // "namespace:name"; for a session route "--route", a built-in "built-in"
  std::string file;
  int line = 0, column = 0;  // position of the entry (0: not from a file)
  std::string name;          // a glob on the host name (lower case), or ""
  bool has_cidr = false;
  Cidr cidr;
  int port = 0;             // 0: any port
  std::string network;      // an overlay id (completed), "direct" or "block"
  std::string network_pos;  // "file:line:col" of `network:`, for late errors
  std::string why;          // built-in routes: why it exists ("the overlay marked as Tor")
  // "file:line" of the entry, "via run --route", or a built-in's `why`.
  std::string where() const;
  // "*.onion", "10.0.0.0/8", with ":443" when it has a port ("[fd00::/8]:443" for IPv6).
  std::string MatchText() const;
};

// Whether a host name's glob is acceptable: letters, digits, '-', '_', '.', and the glob
// characters '*', '?', '[', ']', '!'; brackets balanced. Returns the problem, or "".
std::string NameGlobProblem(std::string_view glob);

// Whether `r` matches the name (lower case, no trailing dot), and the port (0: any port: only
// routes without a port match, the lookup knows no port).
bool RouteMatchesName(const Route& r, std::string_view name, int port);
bool RouteMatchesAddr(const Route& r, uint8_t family, const uint8_t* addr, int port);

// The built-in routes a config gets unless `network_service.default_routes: false`:
// `*.onion` to the overlay marked as Tor (a network.socks5 entry with `tor: true`, or with a
// control_port and no `tor: false`), `*.i2p` to the I2P overlay, `*.ts.net`, 100.64.0.0/10 and
// fd7a:115c:a1e0::/48 to the Tailscale overlay, each only when exactly one such overlay exists.
std::vector<Route> BuiltinRoutes(const Config& cfg);

// Parses a `via run --route` argument: `GLOB[:PORT]=NETWORK`, `CIDR[:PORT]=NETWORK`, or
// `[IPV6CIDR]:PORT=NETWORK` (an IPv6 CIDR with a port is bracketed). The network is checked
// against `cfg` (an overlay, direct, block) and completed to its id.
Result<Route> ParseRouteSpec(std::string_view spec, const Config& cfg);

// The routes in force, in order: `session` first, then the config's, then the built-ins.
std::vector<Route> EffectiveRoutes(const Config& cfg, const std::vector<Route>& session);

// The first route of `routes` that matches; nullptr: none (the process's own network).
const Route* FindNameRoute(const std::vector<Route>& routes, std::string_view name, int port);
const Route* FindAddrRoute(const std::vector<Route>& routes, uint8_t family, const uint8_t* addr,
                           int port);
// For a lookup (no port yet): the first route whose name glob matches, with or without a port.
// A route with a port cannot be decided yet: the caller gives out a fake address and decides at
// connect.
const Route* FindLookupRoute(const std::vector<Route>& routes, std::string_view name);

}  // namespace via::config
