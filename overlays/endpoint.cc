#include "overlays/endpoint.h"

#include <netdb.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/wire.h"

namespace via::overlays {

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

}  // namespace via::overlays
