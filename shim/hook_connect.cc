// connect, sendto/sendmsg/sendmmsg (and libc's exported aliases of them), socket, setsockopt,
// getpeername.
//
// Every call that can carry a destination or open a connection goes through one decision
// (PlanConnect, connect_plan.h), and the hooks here carry out its plan: what kind of socket it is,
// as the kernel says (SO_DOMAIN, SO_TYPE, SO_PROTOCOL), and the address the kernel will take from
// the call, read by the kernel's own rules (common/kernel_sockaddr.h) from a copy that is then what
// the kernel gets. Under an overlay: TCP (connect, or a send with MSG_FASTOPEN) goes through the
// overlay; datagrams (UDP, ICMP, raw) to anything but loopback are refused with EPERM because no
// driver carries them, and so is anything to port 53 on loopback that would reach the local
// resolver (a raw DNS query would leak the name); UDP to port 53 is answered by the broker
// (dns_socket.cc). Sockets the shim cannot judge (packet sockets and other non-inet families, SCTP
// and other inet protocols, raw sockets other than ICMP, which write headers the address does not
// show) are refused when created and on every connect or addressed send. So are options that send
// packets to another host than their destination address (IPv4 source routes, IPv6 routing
// headers), set with setsockopt or in a sendmsg's control messages. See docs/architecture.md, "One
// decision for every destination".
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#include <climits>
#include <cstddef>
#include <cstring>

#include "common/kernel_sockaddr.h"
#include "shim/broker_link.h"
#include "shim/connect_plan.h"
#include "shim/dns_socket.h"
#include "shim/export.h"
#include "shim/hook_listen.h"
#include "shim/name_cache.h"
#include "shim/names.h"
#include "shim/optimistic.h"
#include "shim/pending_connect.h"
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

// The connect decision asks the broker link.
constexpr ConnectQuestions kAskBroker = {NetworkDirect,    BrokerHello, BrokerSocks5Plan,
                                         NameCacheReverse, RoutesApply, RoutesCover,
                                         IsRouteDirect,    StrictHere};

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

// Carries out a connect through the overlay (kSocks5Here, kBroker): 0, or -1 with errno after
// one line on stderr.
int ConnectRouted(int fd, const ConnectPlan& p) {
  char msg[512] = {};
  int err;
  if (p.route == Route::kSocks5Here) {
    const char* name = p.by_name ? p.host : nullptr;
    char why[400] = {};
    // msg is complete before REPORT (which may greet the broker again and replace *p.socks5).
    if (p.socks5->optimistic) {
      // Returns once the request is written: the first read takes the reply off the socket and
      // REPORTs it (optimistic.h), so only a failure before that is reported here.
      err = OptimisticConnect(fd, *p.socks5, name, p.dest, why, sizeof why, msg, sizeof msg);
      if (err != 0) BrokerReport(p.dest, name, err, why);
    } else {
      err = ShimSocks5Connect(fd, *p.socks5, name, p.dest, why, sizeof why, msg, sizeof msg);
      BrokerReport(p.dest, name, err, why);
    }
  } else {
    err = BrokerConnect(fd, p.dest, msg, sizeof msg);
    // A route to direct (or no route for a direct process): the kernel connects it, as without
    // via; the broker only decided.
    if (err == kRouteDirect) return Real().connect(fd, p.name(), p.len);
  }
  if (err == 0) {
    RememberRouted(fd, p.dest);
    return 0;
  }
  char where[80];
  Complain("connect to %s through %s failed: %s", wire::FormatAddr(p.dest, where, sizeof where),
           NetworkLabel(), msg);
  errno = err;
  return -1;
}

// A routed connect of a non-blocking socket: -1 with EINPROGRESS (the handshake goes on in a shim
// thread, pending_connect.h) or the errno of a connect that failed at once; 0 when not taken (a
// blocking socket): then ConnectRouted.
int ConnectPending(int fd, ConnectPlan* p) {
  const Socks5Plan* plan = p->socks5;
  if (p->route == Route::kBroker) {
    const int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (fl & O_NONBLOCK) == 0) return 0;
    // A fake address whose name this process has not cached (the cache misses under contention,
    // or a parent resolved it): the broker's name for it, then the shim's own handshake, which
    // costs the broker less than running it. Otherwise the broker runs it (CONNECT), and always
    // where routes by destination exist: a fake address may then belong to another overlay.
    char msg[8];
    if (RoutesApply() || BrokerSocks5Plan(&plan, msg, sizeof msg) != 0 || plan == nullptr ||
        !InFakeRange(*plan, p->dest) || BrokerReverse(p->dest, p->host, sizeof p->host) != 0) {
      return StartPendingBroker(fd, p->dest, p->name(), p->len);
    }
    p->by_name = true;
  }
  return StartPendingSocks5(fd, *plan, p->by_name ? p->host : nullptr, p->dest);
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

// Ends a call the plan refused: one line on stderr (none for what the kernel itself would
// refuse) and the plan's errno. Returns -1.
int Refuse(const ConnectPlan& p) {
  char where[80];
  wire::FormatAddr(p.dest, where, sizeof where);
  switch (p.route) {
    case Route::kReject:
      break;
    case Route::kFailed:
      Complain("connect refused: %s", p.msg);
      break;
    case Route::kRoutedFailed:
      Complain("connect to %s through %s failed: %s", where, NetworkLabel(), p.msg);
      break;
    case Route::kRefuse:
      Complain(
          "connect to %s refused: loopback destinations are refused under %s "
          "(network_service.loopback: refuse, or network none)",
          where, NetworkLabel());
      break;
    case Route::kRefuseDatagram:
      ComplainDatagram(p.dest);
      break;
    case Route::kRefuseLoopbackDatagram:
      Complain(
          "datagram to %s refused with EPERM: loopback destinations are refused under %s "
          "(network_service.loopback: refuse, or network none)",
          where, NetworkLabel());
      break;
    case Route::kRefuseDns:
      Complain("connect to %s refused: DNS to the local resolver would leak names under %s", where,
               NetworkLabel());
      break;
    case Route::kDnsQuery:  // the broker's DNS path did not take it
      Complain("DNS query to %s refused: it would reach a resolver directly under %s", where,
               NetworkLabel());
      break;
    case Route::kRefuseRedirect:
      ComplainRedirect();
      break;
    case Route::kRefuseSocket:
    default:
      ComplainSocket(p.kind, p.domain);
      break;
  }
  errno = p.err;
  return -1;
}

// A UDP datagram to port 53: a DNS query the broker answers (dns_socket.cc), never sent on.
ssize_t SendDns(int fd, const ConnectPlan& p, const iovec* iov, size_t iovcnt) {
  sockaddr_storage ss;
  socklen_t len = wire::AddrToSockaddr(p.dest, &ss);
  ssize_t r;
  if (DnsInterceptSend(fd, reinterpret_cast<const sockaddr*>(&ss), len, iov, iovcnt, &r)) return r;
  return Refuse(p);
}

int DoConnect(int fd, const sockaddr* addr, socklen_t len) {
  int again;  // a socket with a pending (or finished) background connect: EALREADY, EISCONN...
  if (PendingEver() && PendingConnectAgain(fd, &again)) return again;
  ConnectPlan p;
  PlanConnect(fd, AddrCall::kConnect, false, addr, len, nullptr, kAskBroker, &p);
  switch (p.route) {
    case Route::kDirect:
      return Real().connect(fd, addr, len);
    case Route::kPass:
      return Real().connect(fd, p.name(), p.len);
    case Route::kSocks5Here:
    case Route::kBroker:
      if (ConnectPending(fd, &p) != 0) return -1;  // EINPROGRESS, or failed at once
      return ConnectRouted(fd, p);
    case Route::kDnsSocket:
      return DnsConnect(fd, p.dest);
    default:
      return Refuse(p);
  }
}

ssize_t DoSendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                 socklen_t len) {
  const bool fastopen = (flags & MSG_FASTOPEN) != 0;
  if (addr == nullptr && !fastopen) return Real().sendto(fd, buf, n, flags, addr, len);
  int again;  // a Fast Open on a pending or connected socket: EALREADY, EISCONN, as the kernel
  if (fastopen && PendingEver() && PendingConnectAgain(fd, &again)) return again;
  ConnectPlan p;
  PlanConnect(fd, AddrCall::kSendto, fastopen, addr, len, nullptr, kAskBroker, &p);
  switch (p.route) {
    case Route::kDirect:
      return Real().sendto(fd, buf, n, flags, addr, len);
    case Route::kPass:
      return Real().sendto(fd, buf, n, flags, p.name(), p.len);
    case Route::kSocks5Here:
    case Route::kBroker:
      // TCP Fast Open would send the SYN (with data) straight to the destination: connect
      // through the overlay instead, then send normally. A non-blocking socket gets what a Fast
      // Open without a cookie gives: EINPROGRESS, nothing sent (the program sends once writable).
      if (ConnectPending(fd, &p) != 0) return -1;
      if (ConnectRouted(fd, p) != 0) return -1;
      return Real().sendto(fd, buf, n, flags & ~MSG_FASTOPEN, nullptr, 0);
    case Route::kDnsQuery: {
      iovec iov{const_cast<void*>(buf), n};
      return SendDns(fd, p, &iov, 1);
    }
    default:
      return Refuse(p);
  }
}

ssize_t DoSendmsg(int fd, const msghdr* msg, int flags) {
  const bool fastopen = (flags & MSG_FASTOPEN) != 0;
  if (msg == nullptr) return Real().sendmsg(fd, msg, flags);
  int again;  // as in sendto
  if (fastopen && PendingEver() && PendingConnectAgain(fd, &again)) return again;
  // The header is read once: the kernel gets the copy the decision saw.
  msghdr m = *msg;
  if ((m.msg_name == nullptr || m.msg_namelen == 0) && !fastopen && m.msg_controllen == 0) {
    return Real().sendmsg(fd, &m, flags);
  }
  ConnectPlan p;
  PlanConnect(fd, AddrCall::kSendmsg, fastopen, static_cast<const sockaddr*>(m.msg_name),
              m.msg_namelen, &m, kAskBroker, &p);
  switch (p.route) {
    case Route::kDirect:
      return Real().sendmsg(fd, &m, flags);
    case Route::kPass:
      m.msg_name = const_cast<sockaddr*>(p.name());
      m.msg_namelen = p.len;
      return Real().sendmsg(fd, &m, flags);
    case Route::kSocks5Here:
    case Route::kBroker:  // MSG_FASTOPEN, as in sendto
      if (ConnectPending(fd, &p) != 0) return -1;
      if (ConnectRouted(fd, p) != 0) return -1;
      m.msg_name = nullptr;
      m.msg_namelen = 0;
      return Real().sendmsg(fd, &m, flags & ~MSG_FASTOPEN);
    case Route::kDnsQuery:
      return SendDns(fd, p, m.msg_iov, m.msg_iovlen);
    default:
      return Refuse(p);
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
  ConnectPlan p;
  if (!PlanSocket(fd, AddrCall::kSendmsg, fastopen, nullptr, kAskBroker, &p)) {
    if (p.route == Route::kDirect) return Real().sendmmsg(fd, vec, vlen, flags);
    return Refuse(p);
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
  if (RedirectingOption(level, name, val, len) && !NetworkDirect() && !StrictHere()) {
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
      !NetworkDirect() && !StrictHere()) {
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

// A send on a socket whose connect is pending (EAGAIN: no byte may go into the handshake,
// pending_connect.h), or whose proxy refused a connect made with optimistic data (the refusal has
// come: optimistic.h). MSG_FASTOPEN goes on to DoSendto: it is a connect (EALREADY while pending).
inline bool HeldBeforeSend(int fd, int flags) {
  if ((flags & MSG_FASTOPEN) == 0 && PendingIoBlocked(fd, flags)) return true;
  return OptimisticAny() && OptimisticBeforeWrite(fd) != 0;
}

VIA_EXPORT int connect(int fd, const sockaddr* addr, socklen_t len) {
  return DoConnect(fd, addr, len);
}

VIA_EXPORT ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                          socklen_t len) {
  if (HeldBeforeSend(fd, flags)) return -1;
  return DoSendto(fd, buf, n, flags, addr, len);
}

VIA_EXPORT ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  if (HeldBeforeSend(fd, flags)) return -1;
  return DoSendmsg(fd, msg, flags);
}

VIA_EXPORT int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags) {
  if (HeldBeforeSend(fd, flags)) return -1;
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
  if (HeldBeforeSend(fd, flags)) return -1;
  return DoSendmmsg(fd, vec, vlen, flags);
}

VIA_EXPORT int __socket(int domain, int type, int protocol) {
  return DoSocket(domain, type, protocol);
}

VIA_EXPORT int getpeername(int fd, sockaddr* addr, socklen_t* len) noexcept {
  wire::Addr dest;
  if (PendingEver() && PendingNotConnected(fd)) {  // as a kernel connect in progress
    errno = ENOTCONN;
    return -1;
  }
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
