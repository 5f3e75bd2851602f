// listen, accept, accept4 and getsockname: inbound listeners under an overlay
// (docs/architecture.md "Inbound listeners", docs/protocol.md "LISTEN").
//
// A listen() on a non-loopback address under an overlay asks the broker (LISTEN). When the
// overlay serves it (I2P), the program's socket is replaced in place (dup3) by one end of an
// AF_UNIX SOCK_SEQPACKET socketpair whose other end the broker holds. The broker sends every
// accepted stream over it as an ACCEPTED message with the connected socket attached; accept()
// and accept4() receive it. poll/epoll/select on the listening fd work unchanged: it is readable
// when a connection is waiting. Nothing listens on the host's interfaces.
//
// The shim keeps no table: its end of the socketpair is bound to an abstract name
// "\0via-listen/<family>/<address hex>/<port>/<pid>.<n>", so that any process holding the fd
// (after fork or exec too) recognises it and getsockname() can answer with the bound address.
#include "shim/hook_listen.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "shim/broker_link.h"
#include "shim/export.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/routed.h"
#include "shim/state.h"

namespace via::shim {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Parses "<family>/<hex>/<port>/..." after the prefix.
bool ParseMarker(const char* p, const char* end, wire::Addr* out) {
  wire::Addr a;
  if (end - p < 2 || (p[0] != '4' && p[0] != '6') || p[1] != '/') return false;
  a.family = uint8_t(p[0] - '0');
  p += 2;
  for (size_t i = 0; i < a.addr_len(); ++i) {
    if (end - p < 2) return false;
    int hi = HexValue(p[0]), lo = HexValue(p[1]);
    if (hi < 0 || lo < 0) return false;
    a.bytes[i] = uint8_t(hi << 4 | lo);
    p += 2;
  }
  if (p == end || *p != '/') return false;
  ++p;
  uint32_t port = 0;
  const char* digits = p;
  while (p < end && *p >= '0' && *p <= '9' && port <= 65535)
    port = port * 10 + uint32_t(*p++ - '0');
  if (p == digits || port > 65535 || p == end || *p != '/') return false;
  a.port = uint16_t(port);
  *out = a;
  return true;
}

// Binds `sock` to a fresh abstract name carrying `bound`.
int BindMarker(int sock, const wire::Addr& bound) {
  static unsigned counter = 0;
  for (int attempt = 0; attempt < 16; ++attempt) {
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    char* p = sun.sun_path + 1;  // sun_path[0] = 0: the abstract namespace
    size_t cap = sizeof sun.sun_path - 1;
    int n = std::snprintf(p, cap, "%s%d/", wire::kListenerPrefix, bound.family);
    for (size_t i = 0; i < bound.addr_len(); ++i) {
      n += std::snprintf(p + n, cap - size_t(n), "%02x", bound.bytes[i]);
    }
    n += std::snprintf(p + n, cap - size_t(n), "/%u/%d.%u", unsigned(bound.port), int(getpid()),
                       __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    socklen_t len = socklen_t(offsetof(sockaddr_un, sun_path) + 1 + size_t(n));
    if (bind(sock, reinterpret_cast<sockaddr*>(&sun), len) == 0) return 0;
    if (errno != EADDRINUSE) return errno;
  }
  return EADDRINUSE;
}

// Fills a sockaddr for `a` in the family of the program's socket (`family` 4 or 6).
void FillAddr(wire::Addr a, uint8_t family, sockaddr* addr, socklen_t* len) {
  if (addr == nullptr || len == nullptr) return;
  if (family == 6) a = wire::Mapped(a);
  sockaddr_storage ss;
  socklen_t actual = wire::AddrToSockaddr(a, &ss);
  std::memcpy(addr, &ss, *len < actual ? *len : actual);
  *len = actual;
}

// Receives one ACCEPTED message from a listener socketpair. Returns the new fd or -1/errno.
int AcceptFrom(int fd, const wire::Addr& bound, sockaddr* addr, socklen_t* len, int flags) {
  uint8_t buf[2048];
  int fds[4];
  size_t nfds = 0;
  int msg_flags = 0;
  ssize_t n;
  do {
    n = wire::ReceiveDatagram(fd, buf, sizeof buf, (flags & SOCK_CLOEXEC) ? MSG_CMSG_CLOEXEC : 0,
                              fds, &nfds, &msg_flags);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -1;  // EAGAIN for a non-blocking listener with nothing pending
  int got = nfds > 0 ? fds[0] : -1;
  for (size_t i = 1; i < nfds; ++i) close(fds[i]);
  if (n == 0) {
    static bool said = false;
    if (!__atomic_exchange_n(&said, true, __ATOMIC_RELAXED)) {
      Complain("the listener through %s was closed by the via broker (see its log)",
               NetworkLabel());
    }
    errno = EINVAL;  // as accept() on a socket that no longer listens
    return -1;
  }
  if (got < 0 && (msg_flags & MSG_CTRUNC)) {
    errno = EMFILE;  // the descriptor did not fit (RLIMIT_NOFILE); this connection is lost
    return -1;
  }
  wire::Message m;
  wire::Addr peer;
  wire::Field f;
  if (got < 0 || m.Parse(buf, size_t(n)) != wire::ParseError::kOk || m.type() != wire::kAccepted ||
      !m.Find(wire::kTagAddr, &f) || !f.addr(&peer)) {
    if (got >= 0) close(got);
    errno = ECONNABORTED;  // this connection is lost; the listener goes on
    return -1;
  }
  if (flags & SOCK_NONBLOCK) fcntl(got, F_SETFL, fcntl(got, F_GETFL) | O_NONBLOCK);
  // getpeername() on the new socket answers the peer's fake address too.
  RememberRouted(got, peer);
  FillAddr(peer, bound.family, addr, len);
  return got;
}

// The kernel's accept first: on one of our listeners (a connected AF_UNIX socket, not listening)
// it fails at once with EINVAL, and only then is the socket's name read. Whatever the
// environment says: a listener inherited by a child whose VIA_NETWORK was emptied still works.
int Accept(int fd, sockaddr* addr, socklen_t* len, int flags, bool four) {
  int r = four ? Real().accept4(fd, addr, len, flags) : Real().accept(fd, addr, len);
  if (r >= 0 || errno != EINVAL) return r;
  wire::Addr bound;
  if (ViaListener(fd, &bound)) return AcceptFrom(fd, bound, addr, len, flags);
  errno = EINVAL;
  return -1;
}

// What listen() does with a socket.
enum class ListenPlan {
  kKernel,            // the kernel's listen: not an inet stream socket, loopback, or direct
  kAlreadyListening,  // one of our listeners (the broker holds its backlog)
  kRefuse,            // SCTP under an overlay: EOPNOTSUPP (said already)
  kBroker,            // a TCP address outside the host under an overlay: ask the broker
};

// Decided from the socket (the kernel's view) and the broker's answer for this process, never
// from the environment: a routed program whose VIA_NETWORK was emptied, or a preloaded one a
// via.program rule routes, must not open a listener on the host's interfaces either. `bound`
// gets the socket's address (kBroker, kRefuse).
ListenPlan PlanListen(int fd, wire::Addr* bound) {
  int type = 0, domain = 0;
  socklen_t olen = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &olen) != 0) return ListenPlan::kKernel;
  olen = sizeof domain;
  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &olen);
  if (domain != AF_INET && domain != AF_INET6) {
    // Our listener is an AF_UNIX socketpair: listening already (backlog is the broker's).
    if (domain == AF_UNIX && type == SOCK_SEQPACKET && ViaListener(fd, bound)) {
      return ListenPlan::kAlreadyListening;
    }
    return ListenPlan::kKernel;
  }
  // Only stream and SCTP sockets listen; the kernel refuses the others.
  if (type != SOCK_STREAM && type != SOCK_SEQPACKET) return ListenPlan::kKernel;
  sockaddr_storage ss{};
  socklen_t sslen = sizeof ss;
  if (Real().getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sslen) != 0 ||
      !wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), sslen, bound)) {
    return ListenPlan::kKernel;
  }
  // Loopback listens stay local: nothing outside the host can reach them.
  if (wire::IsLoopback(*bound) || NetworkDirect()) return ListenPlan::kKernel;
  if (type != SOCK_STREAM) {
    // SCTP one-to-one sockets (SOCK_SEQPACKET): no overlay carries them.
    char where[80];
    Complain("listen on %s refused: only TCP listeners can be served through %s",
             wire::FormatAddr(*bound, where, sizeof where), NetworkLabel());
    return ListenPlan::kRefuse;
  }
  return ListenPlan::kBroker;
}

// listen() without bind() picks a port on every interface; pick it now to report it. False
// (errno set by bind) when the port cannot be had.
bool BindAnyPort(int fd, wire::Addr* bound) {
  sockaddr_storage any{};
  wire::Addr unspecified;
  unspecified.family = bound->family;
  socklen_t alen = wire::AddrToSockaddr(unspecified, &any);
  if (bind(fd, reinterpret_cast<sockaddr*>(&any), alen) != 0) return false;
  sockaddr_storage ss{};
  socklen_t sslen = sizeof ss;
  Real().getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sslen);
  wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), sslen, bound);
  return true;
}

// Asks the broker for a listener on `bound`: our end of a fresh socketpair (bound to its marker
// name) goes to `*ours`, the broker's answer to `flags` and `address`. 0, or an errno with
// `msg` saying why.
int OpenBrokerListener(const wire::Addr& bound, int* ours, uint32_t* flags, char* address,
                       size_t address_cap, char* msg, size_t msg_cap) {
  int sv[2] = {-1, -1};
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    int err = errno;
    std::snprintf(msg, msg_cap, "socketpair: %s", std::strerror(err));
    return err;
  }
  int err = BindMarker(sv[0], bound);
  if (err != 0) {
    std::snprintf(msg, msg_cap, "bind of the listener socket: %s", std::strerror(err));
  } else {
    err = BrokerListen(sv[1], bound, flags, address, address_cap, msg, msg_cap);
  }
  close(sv[1]);
  if (err != 0) {
    close(sv[0]);
    return err;
  }
  *ours = sv[0];
  return 0;
}

// Puts the listener `ours` in place of the program's socket `fd`, with the socket's flags.
// Consumes `ours`. False (errno set, said) when it cannot.
bool InstallListener(int fd, int ours, const char* where) {
  int fl = fcntl(fd, F_GETFL);
  int fdfl = fcntl(fd, F_GETFD);
  if (fl >= 0) fcntl(ours, F_SETFL, fl & O_NONBLOCK);
  if (dup3(ours, fd, (fdfl >= 0 && (fdfl & FD_CLOEXEC)) ? O_CLOEXEC : 0) < 0) {
    int err = errno;
    close(ours);
    Complain("listen on %s: cannot install the listener: %s", where, std::strerror(err));
    errno = err;
    return false;
  }
  close(ours);
  return true;
}

}  // namespace

bool ViaListener(int fd, wire::Addr* bound) {
  sockaddr_un sun{};
  socklen_t len = sizeof sun;
  if (Real().getsockname(fd, reinterpret_cast<sockaddr*>(&sun), &len) != 0) return false;
  const size_t prefix = sizeof wire::kListenerPrefix - 1;
  const size_t head = offsetof(sockaddr_un, sun_path);
  if (sun.sun_family != AF_UNIX || len < head + 1 + prefix || sun.sun_path[0] != 0) return false;
  const char* p = sun.sun_path + 1;
  const char* end = reinterpret_cast<const char*>(&sun) + len;
  if (std::memcmp(p, wire::kListenerPrefix, prefix) != 0) return false;
  return ParseMarker(p + prefix, end, bound);
}

VIA_EXPORT int listen(int fd, int backlog) noexcept {
  wire::Addr bound;
  switch (PlanListen(fd, &bound)) {
    case ListenPlan::kKernel:
      return Real().listen(fd, backlog);
    case ListenPlan::kAlreadyListening:
      return 0;
    case ListenPlan::kRefuse:
      errno = EOPNOTSUPP;
      return -1;
    case ListenPlan::kBroker:
      break;
  }
  if (bound.port == 0 && !BindAnyPort(fd, &bound)) return -1;
  HelloInfo info;
  char msg[1024] = {};
  int err = BrokerHello(&info, msg, sizeof msg);
  if (err == 0 && (info.flags & wire::kFlagDirect)) return Real().listen(fd, backlog);
  char where[80];
  wire::FormatAddr(bound, where, sizeof where);
  int ours = -1;
  uint32_t flags = 0;
  char address[300] = {};
  if (err == 0) {
    err = OpenBrokerListener(bound, &ours, &flags, address, sizeof address, msg, sizeof msg);
  }
  if (err != 0) {
    Complain("listen on %s %s: %s", where, err == EOPNOTSUPP ? "refused" : "failed", msg);
    errno = err;
    return -1;
  }
  if (flags & wire::kFlagListenLocal) {  // network_service.listen: local, on the host itself
    close(ours);
    return Real().listen(fd, backlog);
  }
  if (!InstallListener(fd, ours, where)) return -1;
  if (address[0] != 0) {
    Complain("listening on %s through %s: reachable at %s", where, NetworkLabel(), address);
  }
  return 0;
}

VIA_EXPORT int accept(int fd, sockaddr* addr, socklen_t* len) {
  return Accept(fd, addr, len, 0, false);
}

VIA_EXPORT int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) noexcept {
  return Accept(fd, addr, len, flags, true);
}

VIA_EXPORT int getsockname(int fd, sockaddr* addr, socklen_t* len) noexcept {
  socklen_t cap = len != nullptr ? *len : 0;  // the caller's buffer size
  int r = Real().getsockname(fd, addr, len);
  // Only an abstract AF_UNIX name can be a listener of ours (one more call for those only).
  wire::Addr bound;
  const size_t head = offsetof(sockaddr_un, sun_path);
  if (r == 0 && addr != nullptr && len != nullptr && cap >= sizeof(sa_family_t) &&
      addr->sa_family == AF_UNIX && *len > head &&
      (cap <= head || reinterpret_cast<const sockaddr_un*>(addr)->sun_path[0] == 0) &&
      ViaListener(fd, &bound)) {
    FillAddr(bound, bound.family, addr, &cap);
    *len = cap;
  }
  return r;
}

}  // namespace via::shim
