// Routes by destination: matching and the built-in defaults (routes.h).
#include "config/routes.h"

#include <arpa/inet.h>
#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "config/config.h"

namespace via::config {

bool Cidr::Contains(uint8_t fam, const uint8_t* addr) const {
  if (fam != family) return false;
  int full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(addr, bytes, size_t(full)) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = uint8_t(0xff << (8 - rest));
  return (addr[full] & mask) == (bytes[full] & mask);
}

std::string Cidr::ToString() const {
  char text[INET6_ADDRSTRLEN];
  inet_ntop(family == 4 ? AF_INET : AF_INET6, bytes, text, sizeof text);
  return std::string(text) + "/" + std::to_string(prefix);
}

std::string ParseCidr(std::string_view text, Cidr* out) {
  std::string s(text);
  std::string addr = s, len;
  if (size_t slash = s.find('/'); slash != std::string::npos) {
    addr = s.substr(0, slash);
    len = s.substr(slash + 1);
  }
  Cidr c;
  if (inet_pton(AF_INET, addr.c_str(), c.bytes) == 1) {
    c.family = 4;
  } else if (inet_pton(AF_INET6, addr.c_str(), c.bytes) == 1) {
    c.family = 6;
  } else {
    return "\"" + s + "\" is not a CIDR (an IPv4 or IPv6 address, /prefix length)";
  }
  const int max = c.family == 4 ? 32 : 128;
  c.prefix = max;
  if (!len.empty() || s.find('/') != std::string::npos) {
    if (len.empty() || len.size() > 3 ||
        !std::all_of(len.begin(), len.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      return "\"" + s + "\": the prefix length must be a number from 0 to " + std::to_string(max);
    }
    c.prefix = std::stoi(len);
    if (c.prefix > max) {
      return "\"" + s + "\": the prefix length must be a number from 0 to " + std::to_string(max);
    }
  }
  // Host bits set: most likely a typo for another network; say so rather than guess.
  Cidr net = c;
  const int n = c.family == 4 ? 4 : 16;
  for (int i = 0; i < n; ++i) {
    int bits = std::min(8, std::max(0, c.prefix - i * 8));
    uint8_t mask = bits == 0 ? 0 : uint8_t(0xff << (8 - bits));
    net.bytes[i] &= mask;
  }
  if (std::memcmp(net.bytes, c.bytes, size_t(n)) != 0) {
    return "\"" + s + "\" has host bits set (the network is " + net.ToString() + ")";
  }
  *out = c;
  return "";
}

std::string Route::where() const {
  if (line > 0) return file + ":" + std::to_string(line);
  if (!why.empty()) return why;
  return "via run --route";
}

std::string Route::MatchText() const {
  std::string m = has_cidr ? cidr.ToString() : name;
  if (port == 0) return m;
  if (has_cidr && cidr.family == 6) return "[" + m + "]:" + std::to_string(port);
  return m + ":" + std::to_string(port);
}

std::string NameGlobProblem(std::string_view glob) {
  if (glob.empty()) return "must not be empty";
  if (glob.size() > 253) return "is longer than a host name can be (253)";
  int depth = 0;
  for (char ch : glob) {
    unsigned char u = static_cast<unsigned char>(ch);
    if (ch == '[') {
      if (depth > 0) return "has a '[' inside brackets";
      ++depth;
    } else if (ch == ']') {
      if (depth == 0) return "has a ']' without '['";
      --depth;
    } else if (!(std::isalnum(u) || ch == '-' || ch == '_' || ch == '.' || ch == '*' || ch == '?' ||
                 ch == '!')) {
      return "may hold letters, digits, '-', '_', '.' and the glob characters * ? [ ] ! only, "
             "not " +
             std::string(1, ch);
    }
  }
  if (depth != 0) return "has a '[' without ']'";
  return "";
}

bool RouteMatchesName(const Route& r, std::string_view name, int port) {
  if (r.has_cidr || r.name.empty()) return false;
  if (r.port != 0 && r.port != port) return false;
  std::string n(name);
  return fnmatch(r.name.c_str(), n.c_str(), FNM_CASEFOLD) == 0;
}

bool RouteMatchesAddr(const Route& r, uint8_t family, const uint8_t* addr, int port) {
  if (!r.has_cidr) return false;
  if (r.port != 0 && r.port != port) return false;
  return r.cidr.Contains(family, addr);
}

namespace {

Route Builtin(const std::string& network, const std::string& why, const std::string& name,
              const char* cidr) {
  Route r;
  r.id = "built-in";
  r.network = network;
  r.why = why;
  r.name = name;
  if (cidr != nullptr) {
    r.has_cidr = true;
    ParseCidr(cidr, &r.cidr);
  }
  return r;
}

}  // namespace

std::vector<Route> BuiltinRoutes(const Config& cfg) {
  std::vector<Route> out;
  if (!cfg.service.default_routes) return out;
  const Overlay* tor = nullptr;
  const Overlay* i2p = nullptr;
  const Overlay* ts = nullptr;
  int n_tor = 0, n_i2p = 0, n_ts = 0;
  for (const Overlay& o : cfg.overlays) {
    if (o.kind == OverlayKind::kSocks5 && IsTor(o.socks5)) {
      tor = &o;
      ++n_tor;
    } else if (o.kind == OverlayKind::kI2p) {
      i2p = &o;
      ++n_i2p;
    } else if (o.kind == OverlayKind::kTailscale) {
      ts = &o;
      ++n_ts;
    }
  }
  if (n_tor == 1) {
    out.push_back(Builtin(tor->id, ".onion to " + tor->id + ", the overlay marked as Tor",
                          "*.onion", nullptr));
  }
  if (n_i2p == 1) {
    out.push_back(Builtin(i2p->id, ".i2p to " + i2p->id + ", the I2P overlay", "*.i2p", nullptr));
  }
  if (n_ts == 1) {
    const std::string why = "the tailnet to " + ts->id + ", the Tailscale overlay";
    out.push_back(Builtin(ts->id, why, "*.ts.net", nullptr));
    out.push_back(Builtin(ts->id, why, "", "100.64.0.0/10"));
    out.push_back(Builtin(ts->id, why, "", "fd7a:115c:a1e0::/48"));
  }
  return out;
}

Result<Route> ParseRouteSpec(std::string_view spec, const Config& cfg) {
  const std::string s(spec);
  const size_t eq = s.rfind('=');
  auto bad = [&](const std::string& problem) {
    return Status::Invalid("--route " + s + ": " + problem +
                           " (GLOB[:PORT]=NETWORK, CIDR[:PORT]=NETWORK, or "
                           "[IPV6-CIDR]:PORT=NETWORK)");
  };
  if (eq == std::string::npos || eq == 0 || eq + 1 == s.size()) {
    return bad("needs a destination and a network");
  }
  std::string dest = s.substr(0, eq), network = s.substr(eq + 1);
  Route r;
  r.id = "--route";
  std::string port;
  if (dest[0] == '[') {
    size_t close = dest.find(']');
    if (close == std::string::npos) return bad("'[' without ']'");
    std::string rest = dest.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return bad("after ']' only :PORT may follow");
      port = rest.substr(1);
    }
    dest = dest.substr(1, close - 1);
    r.has_cidr = true;
  } else {
    size_t colons = size_t(std::count(dest.begin(), dest.end(), ':'));
    if (colons == 1) {
      port = dest.substr(dest.find(':') + 1);
      dest = dest.substr(0, dest.find(':'));
    }
    // An IPv6 CIDR (several colons, no port) or anything with a '/' or that parses as an address.
    Cidr probe;
    r.has_cidr =
        colons > 1 || dest.find('/') != std::string::npos || ParseCidr(dest, &probe).empty();
  }
  if (r.has_cidr) {
    if (std::string p = ParseCidr(dest, &r.cidr); !p.empty()) return bad(p);
  } else {
    std::transform(dest.begin(), dest.end(), dest.begin(),
                   [](unsigned char ch) { return char(std::tolower(ch)); });
    if (std::string p = NameGlobProblem(dest); !p.empty()) return bad("the name glob " + p);
    r.name = dest;
  }
  if (!port.empty() || (dest.size() && spec.find("]:") != std::string_view::npos)) {
    if (port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) ||
        std::stoi(port) < 1 || std::stoi(port) > 65535) {
      return bad("the port must be a number from 1 to 65535");
    }
    r.port = std::stoi(port);
  }
  if (network == kDirectNetwork || network == kBlockNetwork) {
    r.network = network;
  } else {
    const Overlay* o = cfg.Find(network);
    if (o == nullptr)
      return bad("unknown network \"" + network + "\" (an overlay, direct or block)");
    r.network = o->id;
  }
  if (!r.has_cidr && r.port != 0 && r.network == kDirectNetwork) {
    return bad("a name route with a port cannot be direct");
  }
  return r;
}

std::vector<Route> EffectiveRoutes(const Config& cfg, const std::vector<Route>& session) {
  std::vector<Route> out = session;
  out.insert(out.end(), cfg.routes.begin(), cfg.routes.end());
  std::vector<Route> builtin = BuiltinRoutes(cfg);
  out.insert(out.end(), builtin.begin(), builtin.end());
  return out;
}

const Route* FindNameRoute(const std::vector<Route>& routes, std::string_view name, int port) {
  for (const Route& r : routes) {
    if (RouteMatchesName(r, name, port)) return &r;
  }
  return nullptr;
}

const Route* FindAddrRoute(const std::vector<Route>& routes, uint8_t family, const uint8_t* addr,
                           int port) {
  for (const Route& r : routes) {
    if (RouteMatchesAddr(r, family, addr, port)) return &r;
  }
  return nullptr;
}

const Route* FindLookupRoute(const std::vector<Route>& routes, std::string_view name) {
  for (const Route& r : routes) {
    if (r.has_cidr || r.name.empty()) continue;
    std::string n(name);
    if (fnmatch(r.name.c_str(), n.c_str(), FNM_CASEFOLD) == 0) return &r;
  }
  return nullptr;
}

}  // namespace via::config
