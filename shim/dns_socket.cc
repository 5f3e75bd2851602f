// Raw DNS under an overlay: DNS queries a program sends itself over UDP (dig, c-ares in node,
// a Python socket to the resolver of /etc/resolv.conf) never leave. The shim hands each query
// to the broker (DNS_QUERY), which answers A/AAAA with fake addresses; the shim then delivers
// the answer to the program's own socket from a loopback socket, and shows the resolver's
// address as its source (recvfrom/recvmsg/recvmmsg in hook_recv.cc, getpeername). Nothing is sent
// to the resolver. connect(udp, resolver:53) connects the socket to a loopback UDP responder of the
// broker instead (DNS_SOCKET), which answers whatever the socket sends it: so do programs
// that send with raw system calls the shim cannot see (dig's libuv uses sendmmsg(2)).
//
// The socket is bound to loopback (port chosen by the kernel) before the first answer, unless
// the program bound it already. Sockets are remembered by fd, validated by inode (a closed and
// reused fd number is never mistaken for a DNS socket).
#include "shim/dns_socket.h"

#include <errno.h>
#include <netinet/in.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>

#include "shim/broker_link.h"
#include "shim/fd_table.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/state.h"

namespace via::shim {
namespace {

constexpr uint16_t kDnsPort = 53;

// ---- the table of DNS sockets -------------------------------------------------------------------
struct Entry {
  wire::Addr resolver;
  bool connected = false;
};

// Entries ever made: none keeps every hook on its fast path (FdTable::Get takes no lock then).
constinit FdTable<Entry> g_dns(64);

void Remember(int fd, const wire::Addr& resolver, bool connected) {
  // A connected socket stays connected to its resolver; sendto another one changes nothing.
  g_dns.Put(fd, Entry{resolver, connected},
            [](const Entry& old, const Entry& now) { return old.connected && !now.connected; });
}

bool Lookup(int fd, Entry* out) { return g_dns.Get(fd, out); }

// ---- delivering answers ------------------------------------------------------------------------
bool Loopback(int family, sockaddr_storage* ss, socklen_t* len, uint16_t port_be) {
  std::memset(ss, 0, sizeof *ss);
  if (family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(ss);
    in->sin_family = AF_INET;
    in->sin_port = port_be;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *len = sizeof *in;
    return true;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(ss);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = port_be;
  in6->sin6_addr = in6addr_loopback;
  *len = sizeof *in6;
  return true;
}

// Binds an unbound socket to loopback (the kernel picks the port), so answers have somewhere
// to go and nothing else can reach it. Through the system call: bind may be hooked.
int EnsureBound(int fd) {
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return errno;
  uint16_t port = ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                          : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port;
  if (port != 0) return 0;
  sockaddr_storage lo;
  socklen_t lolen;
  Loopback(ss.ss_family, &lo, &lolen, 0);
  if (syscall(SYS_bind, fd, reinterpret_cast<sockaddr*>(&lo), lolen) == 0) return 0;
  if (ss.ss_family != AF_INET6) return errno;
  // No ::1 here (IPv6 disabled on lo): a dual-stack socket can still use ::ffff:127.0.0.1.
  static const uint8_t kLoopback4[4] = {127, 0, 0, 1};
  wire::MapIpv4(kLoopback4, reinterpret_cast<sockaddr_in6*>(&lo)->sin6_addr.s6_addr);
  if (syscall(SYS_bind, fd, reinterpret_cast<sockaddr*>(&lo), lolen) == 0) return 0;
  return errno;
}

// Sends `answer` to the socket's own (loopback) address from a throw-away socket.
int Deliver(int fd, const uint8_t* answer, size_t n) {
  sockaddr_storage self;
  socklen_t len = sizeof self;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&self), &len) != 0) return errno;
  wire::Addr a;
  if (!wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&self), len, &a)) return EAFNOSUPPORT;
  static const uint8_t kZero[16] = {};
  wire::Addr plain = wire::Unmapped(a);
  if (std::memcmp(plain.bytes, kZero, plain.addr_len()) == 0) {
    // Bound to the wildcard address by the program: deliver on loopback.
    uint16_t port_be = htons(a.port);
    Loopback(self.ss_family, &self, &len, port_be);
  }
  int out = socket(self.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (out < 0) return errno;
  ssize_t r = Real().sendto(out, answer, n, MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&self), len);
  int err = r < 0 ? errno : 0;
  close(out);
  return err;
}

// One query: to the broker, and its answer (if any) to the program's socket.
ssize_t Answer(int fd, const iovec* iov, size_t iovcnt, const wire::Addr& resolver) {
  uint8_t query[kMaxDnsQuery];
  size_t n = 0;
  for (size_t i = 0; i < iovcnt; ++i) {
    if (iov[i].iov_len > sizeof query - n) {
      errno = EMSGSIZE;
      return -1;
    }
    std::memcpy(query + n, iov[i].iov_base, iov[i].iov_len);
    n += iov[i].iov_len;
  }
  char where[80];
  wire::FormatAddr(resolver, where, sizeof where);
  if (int err = EnsureBound(fd); err != 0) {
    Complain("DNS query to %s refused: cannot bind the socket to loopback: %s", where,
             strerror(err));
    errno = EPERM;
    return -1;
  }
  uint8_t answer[kMaxDnsQuery + 512];
  size_t answer_len = 0;
  char msg[512] = {};
  int err = BrokerDnsQuery(query, n, answer, sizeof answer, &answer_len, msg, sizeof msg);
  if (err != 0) {  // fail closed: the query is not sent anywhere
    Complain("DNS query to %s refused: the broker did not answer it: %s", where, msg);
    errno = err == EMSGSIZE ? EMSGSIZE : EPERM;
    return -1;
  }
  if (answer_len > 0) {
    if (int derr = Deliver(fd, answer, answer_len); derr != 0) {
      Complain("DNS answer for %s could not be delivered: %s", where, strerror(derr));
    }
  }
  return ssize_t(n);
}

}  // namespace

bool IsUdpSocket(int fd) {
  int type = 0, proto = 0;
  socklen_t tlen = sizeof type, plen = sizeof proto;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_DGRAM &&
         getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &plen) == 0 && proto == IPPROTO_UDP;
}

int DnsConnect(int fd, const wire::Addr& resolver) {
  char where[80];
  wire::FormatAddr(resolver, where, sizeof where);
  if (int err = EnsureBound(fd); err != 0) {
    Complain("DNS socket for %s refused: cannot bind it to loopback: %s", where, strerror(err));
    errno = EPERM;
    return -1;
  }
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  wire::Addr local, responder;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
      !wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, &local)) {
    errno = EPERM;
    return -1;
  }
  char msg[512] = {};
  int err = BrokerDnsSocket(local, &responder, msg, sizeof msg);
  if (err != 0) {  // fail closed: the socket stays unconnected and can send nowhere
    Complain("DNS socket for %s refused: the broker has no responder for it: %s", where, msg);
    errno = EPERM;
    return -1;
  }
  // An IPv4 responder on a dual-stack IPv6 socket is reached by its mapped address.
  if (ss.ss_family == AF_INET6) responder = wire::Mapped(responder);
  len = wire::AddrToSockaddr(responder, &ss);
  if (Real().connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int cerr = errno;
    Complain("DNS socket for %s refused: connecting it to the broker's responder failed: %s", where,
             strerror(cerr));
    errno = EPERM;
    return -1;
  }
  Remember(fd, resolver, true);
  return 0;
}

int DnsInterceptSend(int fd, const sockaddr* name, socklen_t namelen, const iovec* iov,
                     size_t iovcnt, ssize_t* result) {
  // A connected DNS socket sends to the broker's responder as it is (no address needed).
  if (name == nullptr) return 0;
  wire::Addr resolver;
  // Whether the process is routed is the broker's answer, asked only for a datagram to port 53
  // (not the environment's: VIA_NETWORK may have been emptied in a routed program).
  if ((name->sa_family != AF_INET && name->sa_family != AF_INET6) ||
      !wire::AddrFromSockaddr(name, namelen, &resolver) || resolver.port != kDnsPort ||
      !IsUdpSocket(fd) || NetworkDirect()) {
    return 0;
  }
  Entry e;
  if (Lookup(fd, &e) && e.connected) {
    // sendto(resolver) on a socket connected to the responder: to the responder, whose answer
    // is the only kind of datagram the connected socket accepts.
    msghdr mh{};
    mh.msg_iov = const_cast<iovec*>(iov);
    mh.msg_iovlen = iovcnt;
    *result = Real().sendmsg(fd, &mh, MSG_NOSIGNAL);
    return 1;
  }
  *result = Answer(fd, iov, iovcnt, resolver);
  if (*result >= 0 && name != nullptr) Remember(fd, resolver, false);
  return 1;
}

void DnsRewriteSource(int fd, sockaddr* addr, socklen_t* len) {
  if (addr == nullptr || len == nullptr || *len == 0) return;
  Entry e;
  if (!Lookup(fd, &e)) return;
  wire::Addr from;
  if (!wire::AddrFromSockaddr(addr, *len, &from) || !wire::IsLoopback(from)) return;
  sockaddr_storage ss;
  wire::Addr r = e.resolver;
  // Shown in the socket's family: an IPv4 resolver on an IPv6 socket as ::ffff:a.b.c.d.
  if (addr->sa_family == AF_INET6) r = wire::Mapped(r);
  socklen_t actual = wire::AddrToSockaddr(r, &ss);
  if (addr->sa_family == AF_INET && r.family == 6) return;  // cannot be shown; keep as is
  std::memcpy(addr, &ss, *len < actual ? *len : actual);
  *len = actual;
}

bool DnsPeer(int fd, wire::Addr* resolver) {
  Entry e;
  if (!Lookup(fd, &e) || !e.connected) return false;
  *resolver = e.resolver;
  return true;
}

}  // namespace via::shim
