// SOCKS5 CONNECT run by the shim itself, on the program's socket, in the program's thread: what
// the broker does in ConnectOp, with the same state machine (common/socks5_client.h), when the
// broker's HELLO reply allowed it (kFlagShimSocks5: a SOCKS5 overlay, `handshake: program`). It
// saves the two process hand-offs of a CONNECT through the broker (docs/performance.md).
#include "shim/socks5_connect.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/proxy_connect.h"
#include "common/socks5_client.h"
#include "shim/real.h"

namespace via::shim {

namespace {

// The proxy endpoint this socket can reach (as ConnectOp::PickEndpoint): one of its own family,
// or an IPv4 one through its mapped address from an IPv6 socket that is not IPV6_V6ONLY.
int PickEndpoint(int fd, const Socks5Plan& plan, sockaddr_storage* ss, socklen_t* len, char* text,
                 size_t textcap, char* msg, size_t msgcap) {
  int domain = 0;
  bool v6only = false;
  proxy::SocketFamily(fd, 0, &domain, &v6only);
  for (int i = 0; i < plan.nproxies; ++i) {
    sockaddr_storage ep;
    socklen_t ep_len = wire::AddrToSockaddr(plan.proxies[i], &ep);
    if (!proxy::ReachAs(domain, v6only, ep, ep_len, ss, len)) continue;
    // "proxy ADDR": how the engine's messages name it (common/proxy_connect.h).
    char addr[64];
    wire::FormatAddr(plan.proxies[i], addr, sizeof addr);
    std::snprintf(text, textcap, "proxy %s", addr);
    return 0;
  }
  proxy::NoEndpointText(domain, plan.nproxies > 0, "proxy", msg, msgcap);
  return EAFNOSUPPORT;
}

// Connects `fd` to the proxy and runs the handshake in this thread (common/proxy_connect.h).
int Run(int fd, const Socks5Plan& plan, socks5::Client* hs, char* msg, size_t msgcap) {
  sockaddr_storage ss;
  socklen_t len = 0;
  char ep[80];
  if (int err = PickEndpoint(fd, plan, &ss, &len, ep, sizeof ep, msg, msgcap); err != 0) {
    return err;
  }
  return proxy::RunBlocking(fd, *hs, Real().connect, reinterpret_cast<sockaddr*>(&ss), len, ep,
                            plan.timeout_ms, msg, msgcap);
}

// Runs the handshake with the socket non-blocking meanwhile (flags restored): 0 or an errno.
int RunNonBlocking(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                   socks5::Client* hs, char* why, size_t whycap) {
  char cred[17] = {};
  const int cred_err = plan.isolate ? socks5::IsolationCredential(cred, getrandom) : 0;
  if (plan.isolate) {
    hs->Start(name, dest, dest.port, cred, 16, cred, 16);
  } else {
    hs->Start(name, dest, dest.port, plan.username, plan.username_len, plan.password,
              plan.password_len);
  }
  if (cred_err != 0) {  // nothing was sent; hs names the target for the message
    std::snprintf(why, whycap, "socks5: failed to generate isolation credential: %s",
                  std::strerror(cred_err));
    return EIO;
  }
  int flags = -1;
  if (int err = proxy::MakeNonBlocking(fd, &flags, why, whycap); err != 0) return err;
  int err = Run(fd, plan, hs, why, whycap);
  if ((flags & O_NONBLOCK) == 0) fcntl(fd, F_SETFL, flags);
  return err;
}

}  // namespace

int ShimSocks5Connect(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                      char* why, size_t whycap, char* msg, size_t msgcap) {
  socks5::Client hs;
  int err = RunNonBlocking(fd, plan, name, dest, &hs, why, whycap);
  // As the broker words a failed CONNECT.
  if (err != 0) std::snprintf(msg, msgcap, "%s via %s: %s", hs.target(), plan.overlay, why);
  return err;
}

bool InFakeRange(const Socks5Plan& plan, const wire::Addr& addr) {
  for (int i = 0; i < plan.nfake; ++i) {
    if (wire::InPrefix(plan.fake[i], addr)) return true;
  }
  return false;
}

}  // namespace via::shim
