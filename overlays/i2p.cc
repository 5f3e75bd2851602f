#include "overlays/i2p.h"

#include <netdb.h>

#include <cerrno>
#include <cstring>

#include "common/wire.h"
#include "overlays/sam.h"

namespace via::overlays {

namespace {

int Lookup(const std::string& host, const std::string& port, addrinfo** res) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, res);
  if (rc != EAI_NONAME) return rc;
  hints.ai_flags = AI_NUMERICSERV;
  return getaddrinfo(host.c_str(), port.c_str(), &hints, res);
}

}  // namespace

Result<std::unique_ptr<I2pDriver>> I2pDriver::Create(const config::Overlay& overlay) {
  std::unique_ptr<I2pDriver> d(new I2pDriver());
  d->id_ = overlay.id;
  d->overlay_ = &overlay;
  d->settings_ = overlay.i2p;
  std::string host = overlay.i2p.host;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo* res = nullptr;
  int rc = Lookup(host, std::to_string(overlay.i2p.port), &res);
  if (rc != 0) {
    std::string why = rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc);
    return Status::Error(EHOSTUNREACH, "overlay " + overlay.id + ": cannot resolve SAM host \"" +
                                           overlay.i2p.host + "\": " + why);
  }
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    wire::Addr a;
    if (!wire::AddrFromSockaddr(ai->ai_addr, ai->ai_addrlen, &a)) continue;
    Endpoint e;
    e.len = wire::AddrToSockaddr(a, &e.addr);
    char buf[80];
    e.text = wire::FormatAddr(a, buf, sizeof buf);
    bool seen = false;
    for (const Endpoint& o : d->endpoints_) seen = seen || o.text == e.text;
    if (!seen) d->endpoints_.push_back(std::move(e));
  }
  freeaddrinfo(res);
  if (d->endpoints_.empty()) {
    return Status::Error(EHOSTUNREACH, "overlay " + overlay.id + ": SAM host \"" +
                                           overlay.i2p.host + "\" has no IPv4 or IPv6 address");
  }
  return d;
}

Result<std::unique_ptr<Handshake>> I2pDriver::NewHandshake(const Target& target) {
  if (target.name.empty() || !sam::IsI2pName(target.name)) {
    return Status::Error(ENETUNREACH, "I2P reaches only .i2p names (" + target.ToString() +
                                          " is not one; SAM has no outproxy)");
  }
  if (session_.empty()) return Status::Error(ENETUNREACH, "no SAM session is up");
  // The port is dropped, as Wippy does: i2pd's SAM has no TO_PORT.
  return sam::NewConnectHandshake(session_, target.name);
}

}  // namespace via::overlays
