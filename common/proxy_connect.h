// Connecting a program's socket to an overlay's proxy and running its handshake on it: the one
// engine behind the broker's ConnectOp (event driven, on its EventLoop) and the shim's own SOCKS5
// CONNECT (blocking, in the program's thread). Header-only, libc only, no heap, no exceptions, so
// that the shim can use it.
//
//   connect (non-blocking) -> [wait writable -> SO_ERROR] -> Pump: write output / read exactly
//   WantRead() bytes / Feed ... until Done()
//
// The steps (StartConnect, ConnectResult, Pump) never wait: each says what it needs next
// (Next::kWaitWritable, kWaitReadable), and the caller waits its own way: the broker watches the
// socket on its loop, RunBlocking polls. Every failure text exists here once, so both say the
// same thing about the same failure. No byte after the handshake is ever read: it belongs to the
// program.
//
// A handshake machine H offers: output() and output_len() (what to write next), Consumed(n),
// WantRead() (exactly how many bytes to read next), Feed(p, n) -> 0 or an errno, Done(), and
// optionally LineMode() (a line protocol: bytes are passed up to the first '\n' only; see
// overlays/handshake.h). socks5::Client (common/socks5_client.h) is one.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "common/wire.h"

namespace via::proxy {

// ---- the texts --------------------------------------------------------------------------------

// Why no endpoint of the overlay fits a socket of `domain`: `any_endpoint` false when the overlay
// has none at all. `role` names what the endpoints are: "proxy", "SAM bridge"...
inline void NoEndpointText(int domain, bool any_endpoint, const char* role, char* msg, size_t cap) {
  if (!any_endpoint) {
    std::snprintf(msg, cap, "the overlay has no %s address", role);
  } else if (domain == AF_INET) {
    std::snprintf(msg, cap,
                  "the program's socket is IPv4 (AF_INET) and the %s has only IPv6 addresses",
                  role);
  } else {
    std::snprintf(msg, cap,
                  "the program's socket is IPv6-only (IPV6_V6ONLY) and the %s has only IPv4 "
                  "addresses",
                  role);
  }
}

// The deadline passed: while connecting to the proxy (`connecting`) or during the handshake.
inline void TimeoutText(bool connecting, const char* ep, unsigned timeout_ms, char* msg,
                        size_t cap) {
  if (connecting) {
    std::snprintf(msg, cap, "no connection to %s within %u ms", ep, timeout_ms);
  } else {
    std::snprintf(msg, cap, "%s did not finish the handshake within %u ms", ep, timeout_ms);
  }
}

// ---- before connecting ------------------------------------------------------------------------

// The socket's family (SO_DOMAIN, unless the caller knows it: `known_domain` non-zero) and, for
// IPv6, whether it is IPV6_V6ONLY.
inline void SocketFamily(int fd, int known_domain, int* domain, bool* v6only) {
  int dom = known_domain, only = 0;
  socklen_t optlen = sizeof dom;
  if (dom == 0) getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &optlen);
  if (dom == AF_INET6) {
    optlen = sizeof only;
    getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &only, &optlen);
  }
  *domain = dom;
  *v6only = only != 0;
}

// The address by which a socket of `domain` (`v6only`) reaches the endpoint `ep`: the endpoint
// itself when the families match, its IPv4-mapped address for an IPv4 endpoint from an IPv6
// socket that is not IPV6_V6ONLY. False when the socket cannot reach it.
inline bool ReachAs(int domain, bool v6only, const sockaddr_storage& ep, socklen_t ep_len,
                    sockaddr_storage* out, socklen_t* out_len) {
  if (ep.ss_family == domain) {
    std::memcpy(out, &ep, ep_len);
    *out_len = ep_len;
    return true;
  }
  if (ep.ss_family != AF_INET || domain != AF_INET6 || v6only) return false;
  const auto* in = reinterpret_cast<const sockaddr_in*>(&ep);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(out);
  std::memset(out, 0, sizeof *out);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = in->sin_port;
  wire::MapIpv4(&in->sin_addr, in6->sin6_addr.s6_addr);
  *out_len = sizeof(sockaddr_in6);
  return true;
}

// Makes `fd` non-blocking for the handshake: *saved_flags gets its file status flags (-1 until
// read; set before any change, so that the caller can restore them). 0, or an errno with the
// cause in `msg`.
inline int MakeNonBlocking(int fd, int* saved_flags, char* msg, size_t cap) {
  *saved_flags = -1;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    int err = errno;
    std::snprintf(msg, cap, "fcntl(F_GETFL): %s", std::strerror(err));
    return err;
  }
  *saved_flags = flags;
  if ((flags & O_NONBLOCK) == 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    int err = errno;
    std::snprintf(msg, cap, "fcntl(F_SETFL): %s", std::strerror(err));
    return err;
  }
  return 0;
}

// ---- the steps --------------------------------------------------------------------------------

enum class Next {
  kDone,             // connected (StartConnect, ConnectResult) or the handshake finished (Pump)
  kWaitWritable,     // wait until the socket is writable, then take the next step
  kWaitReadable,     // wait until the socket is readable, then Pump again
  kFailed,           // Step::err, with the cause in the caller's `msg`
  kHandshakeFailed,  // the machine refused the proxy's bytes: Step::err, the machine's own text
};

struct Step {
  Next next;
  int err = 0;
};

// Starts connecting the non-blocking `fd` to `addr` with `connect` (the shim passes libc's real
// connect: its own is a hook). kDone, kWaitWritable (in progress: then ConnectResult), or
// kFailed.
template <typename ConnectFn>
Step StartConnect(int fd, ConnectFn&& connect, const sockaddr* addr, socklen_t len, const char* ep,
                  char* msg, size_t cap) {
  if (connect(fd, addr, len) == 0) return {Next::kDone};
  int err = errno;
  // EINTR: the connect goes on in the background, as EINPROGRESS (connect(2)).
  if (err == EINPROGRESS || err == EINTR) return {Next::kWaitWritable};
  std::snprintf(msg, cap, "cannot connect to %s: %s", ep, std::strerror(err));
  return {Next::kFailed, err};
}

// Once the connecting socket is writable: kDone, or kFailed with the kernel's SO_ERROR.
inline Step ConnectResult(int fd, const char* ep, char* msg, size_t cap) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == 0) return {Next::kDone};
  std::snprintf(msg, cap, "cannot connect to %s: %s", ep, std::strerror(err));
  return {Next::kFailed, err};
}

// How Pump reads. kTryFirst: read at once, wait only on EAGAIN (an event loop, where a wait is a
// round trip through the loop). kAfterWait: every read follows a wait for readability
// (`readable`: the caller has just seen the socket readable), so that a blocking caller never
// pays a read that fails with EAGAIN.
enum class Reads { kTryFirst, kAfterWait };

// Moves handshake bytes on the connected, non-blocking `fd` until the socket would block, the
// handshake is done, or it fails. The proxy cannot have answered what was just sent before it
// ran: after the output is written the next read always waits for readability first.
template <typename H>
Step Pump(int fd, H& hs, Reads reads, bool readable, const char* ep, char* msg, size_t cap) {
  bool may_read = readable || reads == Reads::kTryFirst;
  for (;;) {
    if (hs.output_len() > 0) {
      ssize_t r = send(fd, hs.output(), hs.output_len(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return {Next::kWaitWritable};
      if (r < 0) {
        int err = errno;
        std::snprintf(msg, cap, "sending to %s: %s", ep, std::strerror(err));
        return {Next::kFailed, err};
      }
      hs.Consumed(size_t(r));
      if (hs.output_len() == 0 && !hs.Done() && hs.WantRead() > 0) return {Next::kWaitReadable};
      continue;
    }
    if (hs.Done()) return {Next::kDone};
    size_t want = hs.WantRead();
    if (want == 0) {
      std::snprintf(msg, cap, "the overlay handshake stalled (nothing to send or read)");
      return {Next::kFailed, EPROTO};
    }
    if (!may_read) return {Next::kWaitReadable};
    if (reads == Reads::kAfterWait) may_read = false;
    // Exactly what the handshake asks for: the bytes after it belong to the program.
    uint8_t buf[512];
    size_t take = want < sizeof buf ? want : sizeof buf;
    if constexpr (requires { hs.LineMode(); }) {
      if (hs.LineMode()) {
        // Peek, then take through the first '\n' only: what follows is the program's.
        ssize_t p = recv(fd, buf, take, MSG_DONTWAIT | MSG_PEEK);
        if (p > 0) {
          const void* nl = std::memchr(buf, '\n', size_t(p));
          take = nl == nullptr ? size_t(p) : size_t(static_cast<const uint8_t*>(nl) - buf) + 1;
        }
      }
    }
    ssize_t r = recv(fd, buf, take, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return {Next::kWaitReadable};
    if (r < 0) {
      int err = errno;
      std::snprintf(msg, cap, "reading from %s: %s", ep, std::strerror(err));
      return {Next::kFailed, err};
    }
    if (r == 0) {
      std::snprintf(msg, cap, "%s closed the connection during the handshake", ep);
      return {Next::kFailed, ECONNRESET};
    }
    if (int err = hs.Feed(buf, size_t(r)); err != 0) return {Next::kHandshakeFailed, err};
  }
}

// ---- the blocking strategy --------------------------------------------------------------------

// CLOCK_MONOTONIC in milliseconds (vDSO: no system call).
inline int64_t MonotonicMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// ---- sockets put in place of the program's (strict mode) -------------------------------------

// A connection to the proxy made ahead of a connect (a strict session's spare, the shim's or
// via run's) is trusted for this long: proxies time out idle handshakes (danted after 30 s, Tor
// after 2 minutes).
constexpr int64_t kSpareMaxMs = 10000;

// Whether the spare `fd`, made (or asked for) at `since_ms` (MonotonicMs), may still carry a
// connect: young enough, and the proxy has sent nothing and not closed it (one poll).
inline bool SpareUsable(int fd, int64_t since_ms) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return MonotonicMs() - since_ms <= kSpareMaxMs && poll(&p, 1, 0) == 0;
}

// Gives `to`, a socket put on the program's descriptor in place of `from`, what the program set
// on `from` before its connect and relies on after it: `O_NONBLOCK` as `from` has it,
// TCP_NODELAY and SO_KEEPALIVE when set. (Buffer sizes are left to the kernel's autotuning.)
inline void CopySocketOptions(int from, int to) {
  const int options[2][2] = {{IPPROTO_TCP, TCP_NODELAY}, {SOL_SOCKET, SO_KEEPALIVE}};
  for (const auto& o : options) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(from, o[0], o[1], &v, &len) == 0 && v != 0) setsockopt(to, o[0], o[1], &v, len);
  }
  const int fl = fcntl(from, F_GETFL), tl = fcntl(to, F_GETFL);
  if (fl >= 0 && tl >= 0) fcntl(to, F_SETFL, (tl & ~O_NONBLOCK) | (fl & O_NONBLOCK));
}

// Waits until `fd` has `events` or `deadline_ms` (MonotonicMs) passes: 0, or an errno (ETIMEDOUT).
inline int WaitFor(int fd, short events, int64_t deadline_ms) {
  for (;;) {
    int64_t left = deadline_ms - MonotonicMs();
    if (left <= 0) return ETIMEDOUT;
    pollfd p{fd, events, 0};
    int r = poll(&p, 1, int(left > 60000 ? 60000 : left));
    if (r > 0) return 0;
    if (r < 0 && errno != EINTR) return errno;
  }
}

// Connects the non-blocking `fd` to `addr` (`ep` names it in messages) and runs `hs` to its end
// in the calling thread, within `timeout_ms` in all. 0, or an errno with the cause in `msg` (the
// machine's own error() when it refused the proxy's reply). H also offers error().
// `until_sent`: stop (0) as soon as hs.RequestSent(), leaving the replies unread on the socket
// (optimistic data: the caller reads them later).
template <typename H, typename ConnectFn>
int RunBlocking(int fd, H& hs, ConnectFn&& connect, const sockaddr* addr, socklen_t len,
                const char* ep, unsigned timeout_ms, char* msg, size_t cap,
                bool until_sent = false) {
  const int64_t deadline = MonotonicMs() + timeout_ms;
  Step s = StartConnect(fd, connect, addr, len, ep, msg, cap);
  if (s.next == Next::kWaitWritable) {
    if (WaitFor(fd, POLLOUT, deadline) != 0) {
      TimeoutText(true, ep, timeout_ms, msg, cap);
      return ETIMEDOUT;
    }
    s = ConnectResult(fd, ep, msg, cap);
  }
  if (s.next == Next::kFailed) return s.err;
  bool readable = false;
  for (;;) {
    s = Pump(fd, hs, Reads::kAfterWait, readable, ep, msg, cap);
    switch (s.next) {
      case Next::kDone:
        return 0;
      case Next::kFailed:
        return s.err;
      case Next::kHandshakeFailed:
        std::snprintf(msg, cap, "%s", hs.error());
        return s.err;
      case Next::kWaitWritable:
      case Next::kWaitReadable:
        readable = s.next == Next::kWaitReadable;
        if constexpr (requires { hs.RequestSent(); }) {
          if (until_sent && readable && hs.RequestSent()) return 0;
        }
        if (WaitFor(fd, readable ? POLLIN : POLLOUT, deadline) != 0) {
          TimeoutText(false, ep, timeout_ms, msg, cap);
          return ETIMEDOUT;
        }
        break;
    }
  }
}

}  // namespace via::proxy
