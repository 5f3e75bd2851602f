#include "overlays/driver.h"

#include <netdb.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/wire.h"
#include "overlays/i2p/i2p_driver.h"
#include "overlays/socks5/socks5.h"
#include "overlays/tailscale/tailscale_driver.h"

namespace via::overlays {

std::string Target::ToString() const {
  if (!name.empty()) return name + ":" + std::to_string(port);
  wire::Addr a = addr;
  a.port = port;
  char buf[80];
  return wire::FormatAddr(a, buf, sizeof buf);
}

Result<std::vector<Endpoint>> ResolveEndpoints(const std::string& overlay_id,
                                               const std::string& what, const std::string& host,
                                               uint16_t port) {
  // Wippy dials "host:port", so an IPv6 host there is written in brackets.
  std::string bare = host;
  if (bare.size() > 2 && bare.front() == '[' && bare.back() == ']') {
    bare = bare.substr(1, bare.size() - 2);
  }
  const std::string service = std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(bare.c_str(), service.c_str(), &hints, &res);
  if (rc == EAI_NONAME) {
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(bare.c_str(), service.c_str(), &hints, &res);
  }
  if (rc != 0) {
    std::string why = rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc);
    return Status::Error(EHOSTUNREACH, "overlay " + overlay_id + ": cannot resolve " + what +
                                           " \"" + host + "\": " + why);
  }
  std::vector<Endpoint> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    wire::Addr a;
    if (!wire::AddrFromSockaddr(ai->ai_addr, ai->ai_addrlen, &a)) continue;
    Endpoint e;
    e.len = wire::AddrToSockaddr(a, &e.addr);
    char buf[80];
    e.text = wire::FormatAddr(a, buf, sizeof buf);
    bool seen = false;  // /etc/hosts may list an address twice
    for (const Endpoint& o : out) seen = seen || o.text == e.text;
    if (!seen) out.push_back(std::move(e));
  }
  freeaddrinfo(res);
  if (out.empty()) {
    return Status::Error(EHOSTUNREACH, "overlay " + overlay_id + ": " + what + " \"" + host +
                                           "\" has no IPv4 or IPv6 address");
  }
  return out;
}

Result<std::unique_ptr<Driver>> CreateDriver(const config::Overlay& overlay) {
  switch (overlay.kind) {
    case config::OverlayKind::kSocks5:
      return Socks5Driver::Create(overlay);
    case config::OverlayKind::kI2p: {
      auto d = I2pDriver::Create(overlay);
      if (!d.ok()) return d.status();
      return std::unique_ptr<Driver>(std::move(*d));
    }
    case config::OverlayKind::kTailscale: {
      auto d = TailscaleDriver::Create(overlay);
      if (!d.ok()) return d.status();
      return std::unique_ptr<Driver>(std::move(*d));
    }
  }
  return Status::Error(ENOTSUP, "overlay " + overlay.id + ": unknown overlay kind");  // unreachable
}

}  // namespace via::overlays
