// connect, sendto/sendmsg/sendmmsg (and libc's exported aliases of them), socket, setsockopt,
// getpeername.
//
// Every call that can carry a destination or open a connection goes through one decision
// (Decide): what kind of socket it is, as the kernel says (SO_DOMAIN, SO_TYPE, SO_PROTOCOL), and
// the address the kernel will take from the call, read by the kernel's own rules
// (common/kernel_sockaddr.h) from a copy that is then what the kernel gets. Under an overlay:
// TCP (connect, or a send with MSG_FASTOPEN) goes through the overlay; datagrams (UDP, ICMP,
// raw) to anything but loopback are refused with EPERM because no driver carries them, and so is
// anything to port 53 on loopback that would reach the local resolver (a raw DNS query would leak
// the name); UDP to port 53 is answered by the broker (dns_socket.cc). Sockets the shim cannot
// judge (packet sockets and other non-inet families, SCTP and other inet protocols, raw sockets
// other than ICMP, which write headers the address does not show) are refused when created and on
// every connect or addressed send. So are options that send packets to another host than their
// destination address (IPv4 source routes, IPv6 routing headers), set with setsockopt or in a
// sendmsg's control messages. See docs/architecture.md, "One decision for every destination".
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#include <climits>
#include <cstddef>
#include <cstring>

#include "common/kernel_sockaddr.h"
#include "shim/broker_link.h"
#include "shim/dns_socket.h"
#include "shim/export.h"
#include "shim/hook_listen.h"
#include "shim/name_cache.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/routed.h"
#include "shim/socks5_connect.h"
#include "shim/state.h"

namespace via::shim {

namespace {

using wire::AddrCall;
using wire::SockKind;

constinit LazyFn<int(int, int, int)> g_real_socket = {"socket", nullptr};

bool IsUnspecified(const wire::Addr& addr) {
  wire::Addr a = wire::Unmapped(addr);
  static const uint8_t kZero[16] = {};
  return std::memcmp(a.bytes, kZero, a.addr_len()) == 0;
}

enum class Route {
  kDirect,          // the real call with the program's own arguments: not judged (not routed,
                    // a local socket, or an address the kernel ignores)
  kPass,            // the real call with the judged copy of the address (Decision::name)
  kReject,          // the kernel would refuse the address: errno `err`, nothing is sent
  kFailed,          // the decision failed (the broker is unreachable): errno `err`, `msg`
  kOverlay,         // TCP through the overlay
  kRefuse,          // loopback destination under network_service.loopback: refuse
  kRefuseDatagram,  // non-TCP traffic that would leave the host
  kRefuseDns,       // TCP to the local resolver's port 53
  kRefuseSocket,    // a socket the shim cannot judge (Decision::kind)
  kRefuseRedirect,  // a source route or routing header: the kernel would send elsewhere
  kDnsSocket,       // connect of a UDP socket to port 53: a DNS socket the broker answers
  kDnsQuery,        // a UDP datagram to port 53: a DNS query the broker answers
};

struct Decision {
  Route route = Route::kDirect;
  int err = 0;
  int domain = 0;
  SockKind kind = SockKind::kLocal;
  wire::Addr dest;
  bool has_name = false;
  sockaddr_storage copy;  // the program's address as judged: what the kernel gets
  socklen_t len = 0;
  char msg[512] = {};
  const sockaddr* name() const {
    return has_name ? reinterpret_cast<const sockaddr*>(&copy) : nullptr;
  }
};

constexpr uint16_t kDnsPort = 53;
constexpr int kIpv6Hdrincl = 36;  // IPV6_HDRINCL (linux/in6.h)

// Whether a datagram to `dest` may be sent under an overlay: only to loopback, never port 53.
bool DatagramAllowed(const wire::Addr& dest) {
  return (wire::IsLoopback(dest) || IsUnspecified(dest)) && dest.port != kDnsPort;
}

// What `fd` is, from the kernel. False when it is no socket or not open (the real call reports
// that). A socket the kernel will not describe is one the shim cannot judge.
bool SocketKindOf(int fd, int* domain, SockKind* kind) {
  int dom = 0, type = 0, proto = 0;
  socklen_t l = sizeof dom;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l) != 0) {
    if (errno == EBADF || errno == ENOTSOCK) return false;
    *domain = -1;
    *kind = SockKind::kOtherFamily;
    return true;
  }
  *domain = dom;
  if (dom != AF_INET && dom != AF_INET6) {
    *kind = wire::ClassifySocket(dom, 0, 0);
    return true;
  }
  l = sizeof type;
  socklen_t pl = sizeof proto;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &pl) != 0) {
    *kind = SockKind::kOtherInet;
    return true;
  }
  *kind = wire::ClassifySocket(dom, type, proto);
  if (*kind == SockKind::kRaw) {
    // IP_HDRINCL/IPV6_HDRINCL: the program writes the IP header, destination included.
    int on = 0;
    l = sizeof on;
    bool v4 = dom == AF_INET;
    if (getsockopt(fd, v4 ? IPPROTO_IP : IPPROTO_IPV6, v4 ? IP_HDRINCL : kIpv6Hdrincl, &on, &l) ==
        0) {
      if (on != 0) *kind = SockKind::kRawOpaque;
    } else if (v4 || errno != ENOPROTOOPT) {  // kernels before 4.5 have no IPV6_HDRINCL
      *kind = SockKind::kRawOpaque;
    }
  }
  return true;
}

// Options that make the kernel send somewhere other than the destination address: an IPv4 source
// route (IP_OPTIONS: the first hop becomes the packet's destination, so a datagram "to 127.0.0.1"
// leaves the host), an IPv6 routing header or next hop, and the raw sockets' header-included
// switch. Any IPv4 option counts: the shim does not parse them.
bool RedirectingOption(int level, int name, const void* val, socklen_t len) {
  if (level == IPPROTO_IP && name == IP_OPTIONS) return val != nullptr && len > 0;
  if (level == IPPROTO_IPV6 &&
      (name == IPV6_RTHDR || name == IPV6_2292RTHDR || name == IPV6_NEXTHOP)) {
    return val != nullptr && len > 0;
  }
  if ((level == IPPROTO_IP && name == IP_HDRINCL) ||
      (level == IPPROTO_IPV6 && name == kIpv6Hdrincl)) {
    int on = 1;  // unreadable: as the kernel would fail, but never let it through unjudged
    if (val != nullptr && len >= socklen_t(sizeof on)) {
      std::memcpy(&on, val, sizeof on);
    } else if (val != nullptr && len > 0) {
      on = *static_cast<const unsigned char*>(val);
    }
    return on != 0;
  }
  return false;
}

// The same, set on the socket already (by a system call the shim did not see, or before).
bool HasRedirectingOption(int fd, int domain) {
  unsigned char buf[256];
  socklen_t l = sizeof buf;
  if (getsockopt(fd, IPPROTO_IP, IP_OPTIONS, buf, &l) == 0 && l > 0) return true;
  if (domain != AF_INET6) return false;
  l = sizeof buf;
  if (getsockopt(fd, IPPROTO_IPV6, IPV6_RTHDR, buf, &l) == 0 && l > 0) return true;
  return false;
}

// The same as control messages of one sendmsg (ip_cmsg_send, ip6_datagram_send_ctl).
bool RedirectingControl(const msghdr& m) {
  if (m.msg_control == nullptr || m.msg_controllen < sizeof(cmsghdr)) return false;
  msghdr h = m;
  for (cmsghdr* c = CMSG_FIRSTHDR(&h); c != nullptr; c = CMSG_NXTHDR(&h, c)) {
    if ((c->cmsg_level == IPPROTO_IP &&
         (c->cmsg_type == IP_RETOPTS || c->cmsg_type == IP_OPTIONS)) ||
        (c->cmsg_level == IPPROTO_IPV6 &&
         (c->cmsg_type == IPV6_RTHDR || c->cmsg_type == IPV6_2292RTHDR ||
          c->cmsg_type == IPV6_NEXTHOP))) {
      return true;
    }
  }
  return false;
}

// The part of the decision that depends on the socket alone (and a sendmsg's control messages,
// `control`, when given). Returns true when the address must be judged (JudgeAddress);
// otherwise d->route is kDirect, kRefuseSocket or kRefuseRedirect.
bool JudgeSocket(int fd, AddrCall call, bool fastopen, const msghdr* control, Decision* d) {
  d->route = Route::kDirect;
  if (!SocketKindOf(fd, &d->domain, &d->kind)) return false;
  if (d->kind == SockKind::kLocal) return false;
  // A send on a stream socket without MSG_FASTOPEN: the kernel ignores the address (and IP
  // control messages).
  if (d->kind == SockKind::kStream && call != AddrCall::kConnect && !fastopen) return false;
  if (NetworkDirect()) return false;
  switch (d->kind) {
    case SockKind::kOtherFamily:
    case SockKind::kOtherInet:
    case SockKind::kRawOpaque:
      d->route = Route::kRefuseSocket;
      return false;
    default:
      break;
  }
  if (HasRedirectingOption(fd, d->domain) ||
      (control != nullptr && d->kind != SockKind::kStream && RedirectingControl(*control))) {
    d->route = Route::kRefuseRedirect;
    return false;
  }
  return true;
}

// The part of the decision that depends on the address, for a socket JudgeSocket let through.
void JudgeAddress(AddrCall call, bool fastopen, const sockaddr* sa, socklen_t len, Decision* d) {
  // The program's address is copied once, judged, and the copy is what the kernel gets: another
  // thread changing the program's bytes in between changes nothing.
  long n = static_cast<int>(len);
  if (n < 0) n = 0;
  if (n > long(sizeof d->copy)) n = sizeof d->copy;
  d->has_name = sa != nullptr;
  if (d->has_name) {
    std::memset(&d->copy, 0, sizeof d->copy);
    std::memcpy(&d->copy, sa, size_t(n));
  }
  // What the kernel is given: the length as the program passed it (sendmsg: as the kernel
  // truncates it).
  d->len = call == AddrCall::kSendmsg ? socklen_t(n) : len;
  wire::KernelDest kd = wire::KernelDestination(d->domain, d->kind, call, fastopen, d->name(), len);
  if (kd.kind == wire::KernelDest::kReject) {
    d->route = Route::kReject;
    d->err = kd.err;
    return;
  }
  d->route = Route::kPass;
  if (kd.kind == wire::KernelDest::kNone) return;  // no destination: the socket's own peer
  d->dest = kd.addr;
  if (d->kind == SockKind::kStream) {  // connect, or a send with MSG_FASTOPEN
    if (wire::IsLoopback(d->dest) || IsUnspecified(d->dest)) {
      HelloInfo info;
      int err = BrokerHello(&info, d->msg, sizeof d->msg);
      if (err != 0) {
        d->route = Route::kFailed;
        d->err = err;
      } else if (info.flags & wire::kFlagLoopbackRefuse) {
        d->route = Route::kRefuse;
      } else if (info.flags & wire::kFlagLoopbackRoute) {
        d->route = Route::kOverlay;
      } else if (d->dest.port == kDnsPort) {
        d->route = Route::kRefuseDns;
      }
      return;
    }
    d->route = Route::kOverlay;
    return;
  }
  if (d->kind == SockKind::kUdp && d->dest.port == kDnsPort) {
    d->route = call == AddrCall::kConnect ? Route::kDnsSocket : Route::kDnsQuery;
  } else if (!DatagramAllowed(d->dest)) {
    d->route = Route::kRefuseDatagram;
  }
}

// The one decision: every connect, and every send with a destination or MSG_FASTOPEN.
void Decide(int fd, AddrCall call, bool fastopen, const sockaddr* sa, socklen_t len, Decision* d,
            const msghdr* control = nullptr) {
  if (JudgeSocket(fd, call, fastopen, control, d)) JudgeAddress(call, fastopen, sa, len, d);
}

// One line per process: a program that retries UDP in a loop must not flood stderr.
void ComplainDatagram(const wire::Addr& dest) {
  static bool said = false;
  if (__atomic_exchange_n(&said, true, __ATOMIC_RELAXED)) return;
  char where[80];
  Complain(
      "UDP/non-TCP traffic to %s refused with EPERM: %s carries TCP only, and it would "
      "leave directly (further refusals are not reported)",
      wire::FormatAddr(dest, where, sizeof where), NetworkLabel());
}

// Routes `fd` to `dest` through the overlay: SOCKS5 in this thread when the broker allowed it and
// the destination is an address or a fake address whose name this process resolved, else through
// the broker (CONNECT). Returns 0 or -1 with errno set.
int RoutedConnect(int fd, const wire::Addr& dest) {
  char msg[512] = {};
  const Socks5Plan* plan = nullptr;
  int err = BrokerSocks5Plan(&plan, msg, sizeof msg);
  bool done = err != 0;
  if (!done && plan != nullptr) {
    char name[256];
    const bool fake = InFakeRange(*plan, dest);
    if (!fake || NameCacheReverse(dest, plan->broker, name, sizeof name)) {
      char why[400] = {};
      // msg is complete before REPORT (which may greet the broker again and replace *plan).
      err = ShimSocks5Connect(fd, *plan, fake ? name : nullptr, dest, why, sizeof why, msg,
                              sizeof msg);
      BrokerReport(dest, fake ? name : nullptr, err, why);
      done = true;
    }
  }
  if (!done) err = BrokerConnect(fd, dest, msg, sizeof msg);
  if (err == 0) {
    RememberRouted(fd, dest);
    return 0;
  }
  char where[80];
  Complain("connect to %s through %s failed: %s", wire::FormatAddr(dest, where, sizeof where),
           NetworkLabel(), msg);
  errno = err;
  return -1;
}

const char* KindText(SockKind kind, int domain) {
  switch (kind) {
    case SockKind::kRawOpaque:
      return "a raw socket that writes its own transport or IP header";
    case SockKind::kOtherInet:
      return domain == AF_INET6 ? "an IPv6 socket of a protocol other than TCP, UDP or ICMP"
                                : "an IPv4 socket of a protocol other than TCP, UDP or ICMP";
    default:
      return domain == AF_PACKET ? "a packet socket (AF_PACKET)"
                                 : "a socket of a family other than IPv4, IPv6 or local";
  }
}

// One line per process for a socket the shim cannot judge (a program may retry in a loop).
void ComplainSocket(SockKind kind, int domain) {
  static bool said = false;
  if (__atomic_exchange_n(&said, true, __ATOMIC_RELAXED)) return;
  Complain(
      "%s refused with EPERM: %s carries TCP only, and the shim cannot tell where its "
      "traffic goes (further refusals are not reported)",
      KindText(kind, domain), NetworkLabel());
}

void ComplainRedirect() {
  static bool said = false;
  if (__atomic_exchange_n(&said, true, __ATOMIC_RELAXED)) return;
  Complain(
      "a source route or routing header (IP_OPTIONS, IPV6_RTHDR, IPV6_NEXTHOP) refused with "
      "EPERM under %s: it sends packets to another host than their destination address "
      "(further refusals are not reported)",
      NetworkLabel());
}

// Ends a call the decision refused: the message and errno. Returns -1.
int Refuse(const Decision& d) {
  char where[80];
  wire::FormatAddr(d.dest, where, sizeof where);
  switch (d.route) {
    case Route::kReject:
      errno = d.err;
      return -1;
    case Route::kFailed:
      Complain("connect refused: %s", d.msg);
      errno = d.err;
      return -1;
    case Route::kRefuse:
      Complain(
          "connect to %s refused: loopback destinations are refused under %s "
          "(network_service.loopback: refuse)",
          where, NetworkLabel());
      errno = ECONNREFUSED;
      return -1;
    case Route::kRefuseDatagram:
      ComplainDatagram(d.dest);
      errno = EPERM;
      return -1;
    case Route::kRefuseDns:
      Complain("connect to %s refused: DNS to the local resolver would leak names under %s", where,
               NetworkLabel());
      errno = EPERM;
      return -1;
    case Route::kDnsQuery:  // the broker's DNS path did not take it
      Complain("DNS query to %s refused: it would reach a resolver directly under %s", where,
               NetworkLabel());
      errno = EPERM;
      return -1;
    case Route::kRefuseRedirect:
      ComplainRedirect();
      errno = EPERM;
      return -1;
    case Route::kRefuseSocket:
    default:
      ComplainSocket(d.kind, d.domain);
      errno = EPERM;
      return -1;
  }
}

// A UDP datagram to port 53: a DNS query the broker answers (dns_socket.cc), never sent on.
ssize_t SendDns(int fd, const Decision& d, const iovec* iov, size_t iovcnt) {
  sockaddr_storage ss;
  socklen_t len = wire::AddrToSockaddr(d.dest, &ss);
  ssize_t r;
  if (DnsInterceptSend(fd, reinterpret_cast<const sockaddr*>(&ss), len, iov, iovcnt, &r)) return r;
  return Refuse(d);
}

int DoConnect(int fd, const sockaddr* addr, socklen_t len) {
  Decision d;
  Decide(fd, AddrCall::kConnect, false, addr, len, &d);
  switch (d.route) {
    case Route::kDirect:
      return Real().connect(fd, addr, len);
    case Route::kPass:
      return Real().connect(fd, d.name(), d.len);
    case Route::kOverlay:
      return RoutedConnect(fd, d.dest);
    case Route::kDnsSocket:
      return DnsConnect(fd, d.dest);
    default:
      return Refuse(d);
  }
}

ssize_t DoSendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                 socklen_t len) {
  const bool fastopen = (flags & MSG_FASTOPEN) != 0;
  if (addr == nullptr && !fastopen) return Real().sendto(fd, buf, n, flags, addr, len);
  Decision d;
  Decide(fd, AddrCall::kSendto, fastopen, addr, len, &d);
  switch (d.route) {
    case Route::kDirect:
      return Real().sendto(fd, buf, n, flags, addr, len);
    case Route::kPass:
      return Real().sendto(fd, buf, n, flags, d.name(), d.len);
    case Route::kOverlay:
      // TCP Fast Open would send the SYN (with data) straight to the destination: connect
      // through the overlay instead, then send normally.
      if (RoutedConnect(fd, d.dest) != 0) return -1;
      return Real().sendto(fd, buf, n, flags & ~MSG_FASTOPEN, nullptr, 0);
    case Route::kDnsQuery: {
      iovec iov{const_cast<void*>(buf), n};
      return SendDns(fd, d, &iov, 1);
    }
    default:
      return Refuse(d);
  }
}

ssize_t DoSendmsg(int fd, const msghdr* msg, int flags) {
  const bool fastopen = (flags & MSG_FASTOPEN) != 0;
  if (msg == nullptr) return Real().sendmsg(fd, msg, flags);
  // The header is read once: the kernel gets the copy the decision saw.
  msghdr m = *msg;
  if ((m.msg_name == nullptr || m.msg_namelen == 0) && !fastopen && m.msg_controllen == 0) {
    return Real().sendmsg(fd, &m, flags);
  }
  Decision d;
  Decide(fd, AddrCall::kSendmsg, fastopen, static_cast<const sockaddr*>(m.msg_name), m.msg_namelen,
         &d, &m);
  switch (d.route) {
    case Route::kDirect:
      return Real().sendmsg(fd, &m, flags);
    case Route::kPass:
      m.msg_name = const_cast<sockaddr*>(d.name());
      m.msg_namelen = d.len;
      return Real().sendmsg(fd, &m, flags);
    case Route::kOverlay:  // MSG_FASTOPEN, as in sendto
      if (RoutedConnect(fd, d.dest) != 0) return -1;
      m.msg_name = nullptr;
      m.msg_namelen = 0;
      return Real().sendmsg(fd, &m, flags & ~MSG_FASTOPEN);
    case Route::kDnsQuery:
      return SendDns(fd, d, m.msg_iov, m.msg_iovlen);
    default:
      return Refuse(d);
  }
}

int DoSendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags) {
  const bool fastopen = (flags & MSG_FASTOPEN) != 0;
  if (vec == nullptr || vlen == 0) return Real().sendmmsg(fd, vec, vlen, flags);
  if (vlen > UIO_MAXIOV) vlen = UIO_MAXIOV;  // as the kernel does
  bool named = false;
  for (unsigned int i = 0; i < vlen && !named; ++i) {
    const msghdr& m = vec[i].msg_hdr;
    named = (m.msg_name != nullptr && m.msg_namelen != 0) || m.msg_controllen != 0;
  }
  if (!named && !fastopen) return Real().sendmmsg(fd, vec, vlen, flags);
  Decision d;
  if (!JudgeSocket(fd, AddrCall::kSendmsg, fastopen, nullptr, &d)) {
    if (d.route == Route::kDirect) return Real().sendmmsg(fd, vec, vlen, flags);
    return Refuse(d);
  }
  // Under an overlay, one message at a time through the same decision as sendmsg (which is
  // what the kernel's sendmmsg does too): a refused message ends the call, as an error of the
  // first message or a short count. After the first message a TCP Fast Open has connected (or
  // failed): MSG_FASTOPEN, meaningless for datagrams, is dropped.
  for (unsigned int i = 0; i < vlen; ++i) {
    ssize_t r = DoSendmsg(fd, &vec[i].msg_hdr, i == 0 ? flags : flags & ~MSG_FASTOPEN);
    if (r < 0) return i == 0 ? -1 : int(i);
    vec[i].msg_len = unsigned(r);
  }
  return int(vlen);
}

constinit LazyFn<int(int, int, int, const void*, socklen_t)> g_real_setsockopt = {"setsockopt",
                                                                                  nullptr};

int DoSetsockopt(int fd, int level, int name, const void* val, socklen_t len) {
  if (RedirectingOption(level, name, val, len) && !NetworkDirect()) {
    if (name == IP_HDRINCL || name == kIpv6Hdrincl) {
      ComplainSocket(SockKind::kRawOpaque, AF_INET);
    } else {
      ComplainRedirect();
    }
    errno = EPERM;
    return -1;
  }
  return g_real_setsockopt(fd, level, name, val, len);
}

int DoSocket(int domain, int type, int protocol) {
  SockKind kind = wire::ClassifySocket(domain, type, protocol);
  if ((kind == SockKind::kOtherFamily || kind == SockKind::kOtherInet ||
       kind == SockKind::kRawOpaque) &&
      !NetworkDirect()) {
    ComplainSocket(kind, (type & wire::kSockTypeMask) == wire::kSockPacket ? AF_PACKET : domain);
    errno = EPERM;
    return -1;
  }
  return g_real_socket(domain, type, protocol);
}

}  // namespace

}  // namespace via::shim

using namespace via::shim;
namespace wire = via::wire;

VIA_EXPORT int connect(int fd, const sockaddr* addr, socklen_t len) {
  return DoConnect(fd, addr, len);
}

VIA_EXPORT ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                          socklen_t len) {
  return DoSendto(fd, buf, n, flags, addr, len);
}

VIA_EXPORT ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  return DoSendmsg(fd, msg, flags);
}

VIA_EXPORT int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags) {
  return DoSendmmsg(fd, vec, vlen, flags);
}

VIA_EXPORT int setsockopt(int fd, int level, int name, const void* val, socklen_t len) noexcept {
  return DoSetsockopt(fd, level, name, val, len);
}

VIA_EXPORT int socket(int domain, int type, int protocol) noexcept {
  return DoSocket(domain, type, protocol);
}

// libc's exported aliases of the same system calls (nm -D libc.so.6): a program that calls
// them by name gets the same decision. Calls libc makes internally bind to hidden names that
// no preload library can replace (README.md, "Limits").
VIA_EXPORT int __connect(int fd, const sockaddr* addr, socklen_t len) {
  return DoConnect(fd, addr, len);
}

VIA_EXPORT int __sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags) {
  return DoSendmmsg(fd, vec, vlen, flags);
}

VIA_EXPORT int __socket(int domain, int type, int protocol) {
  return DoSocket(domain, type, protocol);
}

VIA_EXPORT int getpeername(int fd, sockaddr* addr, socklen_t* len) noexcept {
  wire::Addr dest;
  if (addr != nullptr && len != nullptr && (LookupRouted(fd, &dest) || DnsPeer(fd, &dest))) {
    sockaddr_storage ss;
    socklen_t actual = wire::AddrToSockaddr(dest, &ss);
    std::memcpy(addr, &ss, *len < actual ? *len : actual);
    *len = actual;
    return 0;
  }
  socklen_t cap = len != nullptr ? *len : 0;  // the caller's buffer size
  int r = Real().getpeername(fd, addr, len);
  // A listener put in place by hook_listen.cc is a connected AF_UNIX socket underneath; a
  // listening socket has no peer. Decided from the socket, not the environment (an inherited
  // listener stays one after VIA_NETWORK is emptied); only an unnamed or abstract peer costs
  // the extra call.
  const size_t head = offsetof(sockaddr_un, sun_path);
  if (r == 0 && addr != nullptr && len != nullptr && cap >= sizeof(sa_family_t) &&
      addr->sa_family == AF_UNIX &&
      (*len <= head || cap <= head || reinterpret_cast<const sockaddr_un*>(addr)->sun_path[0] == 0) &&
      ViaListener(fd, &dest)) {
    errno = ENOTCONN;
    return -1;
  }
  return r;
}
