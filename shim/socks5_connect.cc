// SOCKS5 CONNECT run by the shim itself, on the program's socket, in the program's thread: what
// the broker does in ConnectOp, with the same state machine (common/socks5_client.h), when the
// broker's HELLO reply allowed it (kFlagShimSocks5: a SOCKS5 overlay, `handshake: program`). It
// saves the two process hand-offs of a CONNECT through the broker (docs/performance.md).
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/socks5_client.h"
#include "shim/shim.h"

namespace via::shim {

namespace {

int64_t NowMs() { return MonotonicNs() / 1000000; }

// The proxy endpoint this socket can reach (as ConnectOp::PickEndpoint): one of its own family,
// or an IPv4 one through its mapped address from an IPv6 socket that is not IPV6_V6ONLY.
int PickEndpoint(int fd, const Socks5Plan& plan, sockaddr_storage* ss, socklen_t* len, char* text,
                 size_t textcap, char* msg, size_t msgcap) {
  int domain = 0, v6only = 0;
  socklen_t optlen = sizeof domain;
  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &optlen);
  if (domain == AF_INET6) {
    optlen = sizeof v6only;
    getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen);
  }
  for (int i = 0; i < plan.nproxies; ++i) {
    wire::Addr a = plan.proxies[i];
    if (a.family == 4 && domain == AF_INET6 && !v6only) {
      wire::Addr mapped;
      mapped.family = 6;
      mapped.port = a.port;
      mapped.bytes[10] = mapped.bytes[11] = 0xff;
      std::memcpy(mapped.bytes + 12, a.bytes, 4);
      *len = wire::AddrToSockaddr(mapped, ss);
    } else if ((a.family == 4 && domain == AF_INET) || (a.family == 6 && domain == AF_INET6)) {
      *len = wire::AddrToSockaddr(a, ss);
    } else {
      continue;
    }
    wire::FormatAddr(a, text, textcap);
    return 0;
  }
  if (plan.nproxies == 0) {
    std::snprintf(msg, msgcap, "the overlay has no proxy address");
  } else {
    std::snprintf(msg, msgcap,
                  domain == AF_INET ? "the program's socket is IPv4 (AF_INET) and the proxy has "
                                      "only IPv6 addresses"
                                    : "the program's socket is IPv6-only (IPV6_V6ONLY) and the "
                                      "proxy has only IPv4 addresses");
  }
  return EAFNOSUPPORT;
}

// Waits until `fd` has `events` or the deadline passes: 0, or ETIMEDOUT.
int Wait(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - NowMs();
    if (left <= 0) return ETIMEDOUT;
    pollfd p{fd, events, 0};
    int r = poll(&p, 1, int(left > 60000 ? 60000 : left));
    if (r > 0) return 0;
    if (r < 0 && errno != EINTR) return errno;
  }
}

// Connects `fd` to the proxy and runs the handshake; the socket is non-blocking meanwhile.
int Run(int fd, const Socks5Plan& plan, socks5::Client* hs, char* msg, size_t msgcap) {
  sockaddr_storage ss;
  socklen_t len = 0;
  char ep[80];
  if (int err = PickEndpoint(fd, plan, &ss, &len, ep, sizeof ep, msg, msgcap); err != 0) {
    return err;
  }
  const int64_t deadline = NowMs() + plan.timeout_ms;
  if (Real().connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int err = errno;
    if (err != EINPROGRESS && err != EINTR) {
      std::snprintf(msg, msgcap, "cannot connect to proxy %s: %s", ep, std::strerror(err));
      return err;
    }
    if (Wait(fd, POLLOUT, deadline) != 0) {
      std::snprintf(msg, msgcap, "no connection to proxy %s within %u ms", ep, plan.timeout_ms);
      return ETIMEDOUT;
    }
    socklen_t elen = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) err = errno;
    if (err != 0) {
      std::snprintf(msg, msgcap, "cannot connect to proxy %s: %s", ep, std::strerror(err));
      return err;
    }
  }
  for (;;) {
    if (hs->output_len() > 0) {
      ssize_t r = send(fd, hs->output(), hs->output_len(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (Wait(fd, POLLOUT, deadline) == 0) continue;
        std::snprintf(msg, msgcap, "proxy %s did not finish the handshake within %u ms", ep,
                      plan.timeout_ms);
        return ETIMEDOUT;
      }
      if (r < 0) {
        int err = errno;
        std::snprintf(msg, msgcap, "sending to proxy %s: %s", ep, std::strerror(err));
        return err;
      }
      hs->Consumed(size_t(r));
      continue;
    }
    if (hs->Done()) return 0;
    size_t want = hs->WantRead();
    if (want == 0) {
      std::snprintf(msg, msgcap, "the overlay handshake stalled (nothing to send or read)");
      return EPROTO;
    }
    // Exactly what the handshake asks for: the bytes after it belong to the program. The proxy
    // cannot have answered before it ran, so wait first rather than try a read.
    if (Wait(fd, POLLIN, deadline) != 0) {
      std::snprintf(msg, msgcap, "proxy %s did not finish the handshake within %u ms", ep,
                    plan.timeout_ms);
      return ETIMEDOUT;
    }
    uint8_t buf[512];
    ssize_t r = recv(fd, buf, want < sizeof buf ? want : sizeof buf, MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (r < 0) {
      int err = errno;
      std::snprintf(msg, msgcap, "reading from proxy %s: %s", ep, std::strerror(err));
      return err;
    }
    if (r == 0) {
      std::snprintf(msg, msgcap, "proxy %s closed the connection during the handshake", ep);
      return ECONNRESET;
    }
    if (int err = hs->Feed(buf, size_t(r)); err != 0) {
      std::snprintf(msg, msgcap, "%s", hs->error());
      return err;
    }
  }
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
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    int err = errno;
    std::snprintf(why, whycap, "fcntl(F_GETFL): %s", std::strerror(err));
    return err;
  }
  if ((flags & O_NONBLOCK) == 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    int err = errno;
    std::snprintf(why, whycap, "fcntl(F_SETFL): %s", std::strerror(err));
    return err;
  }
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
  wire::Addr a = wire::Unmapped(addr);
  for (int i = 0; i < plan.nfake; ++i) {
    const wire::Addr& r = plan.fake[i];
    if (r.family != a.family) continue;
    int bits = r.port;
    int full = bits / 8, rest = bits % 8;
    if (size_t(full) > a.addr_len() || std::memcmp(a.bytes, r.bytes, size_t(full)) != 0) continue;
    if (rest == 0) return true;
    uint8_t mask = uint8_t(0xff << (8 - rest));
    if ((a.bytes[full] & mask) == (r.bytes[full] & mask)) return true;
  }
  return false;
}

}  // namespace via::shim
