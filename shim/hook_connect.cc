// connect, sendto/sendmsg/sendmmsg and getpeername.
//
// Under an overlay: TCP goes through the overlay; datagrams (UDP, ICMP, raw) to anything but
// loopback are refused with EPERM because no driver carries them, and so is anything to port 53
// on loopback that would reach the local resolver (a raw DNS query would leak the name).
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

#include "shim/shim.h"

namespace via::shim {

namespace {

bool IsUnspecified(const wire::Addr& addr) {
  wire::Addr a = wire::Unmapped(addr);
  static const uint8_t kZero[16] = {};
  return std::memcmp(a.bytes, kZero, a.addr_len()) == 0;
}

enum class Route {
  kDirect,
  kOverlay,
  kRefuse,          // loopback destination under network_service.loopback: refuse
  kRefuseDatagram,  // non-TCP traffic that would leave the host
  kRefuseDns,       // TCP to the local resolver's port 53
  kDnsSocket,       // UDP to port 53: a DNS socket the broker answers (dns_socket.cc)
};

constexpr uint16_t kDnsPort = 53;

// Whether a datagram to `dest` may be sent under an overlay: only to loopback, never port 53.
bool DatagramAllowed(const wire::Addr& dest) {
  return (wire::IsLoopback(dest) || IsUnspecified(dest)) && dest.port != kDnsPort;
}

// Decides what a connect of `fd` to `sa` must do. Returns 0, or an errno when the decision itself
// failed (the broker, needed for the loopback policy, is unreachable): fail closed.
int Decide(int fd, const sockaddr* sa, socklen_t len, wire::Addr* dest, Route* route, char* msg,
           size_t msgcap) {
  *route = Route::kDirect;
  if (sa == nullptr || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || NetworkDirect()) {
    return 0;
  }
  if (!wire::AddrFromSockaddr(sa, len, dest)) return 0;  // the kernel reports EINVAL
  int type = 0;
  socklen_t tlen = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0) return 0;  // the kernel reports it
  if (type != SOCK_STREAM) {
    if (wire::Unmapped(*dest).port == kDnsPort && IsUdpSocket(fd)) {
      *route = Route::kDnsSocket;
    } else if (!DatagramAllowed(*dest)) {
      *route = Route::kRefuseDatagram;
    }
    return 0;
  }
  if (wire::IsLoopback(*dest) || IsUnspecified(*dest)) {
    HelloInfo info;
    int err = BrokerHello(&info, msg, msgcap);
    if (err != 0) return err;
    if (info.flags & wire::kFlagLoopbackRefuse) {
      *route = Route::kRefuse;
    } else if (info.flags & wire::kFlagLoopbackRoute) {
      *route = Route::kOverlay;
    } else if (wire::Unmapped(*dest).port == kDnsPort) {
      *route = Route::kRefuseDns;
    }
    return 0;
  }
  *route = Route::kOverlay;
  return 0;
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

// Common front of connect and sendto(MSG_FASTOPEN): returns 1 when the caller must do the real
// call, else 0/-1 as the final result.
int MaybeRoute(int fd, const sockaddr* sa, socklen_t len, int* result) {
  wire::Addr dest;
  Route route;
  char msg[512] = {};
  int err = Decide(fd, sa, len, &dest, &route, msg, sizeof msg);
  if (err != 0) {
    Complain("connect refused: %s", msg);
    errno = err;
    *result = -1;
    return 0;
  }
  switch (route) {
    case Route::kDirect:
      return 1;
    case Route::kRefuse: {
      char where[80];
      Complain(
          "connect to %s refused: loopback destinations are refused under %s "
          "(network_service.loopback: refuse)",
          wire::FormatAddr(dest, where, sizeof where), NetworkLabel());
      errno = ECONNREFUSED;
      *result = -1;
      return 0;
    }
    case Route::kOverlay:
      *result = RoutedConnect(fd, dest);
      return 0;
    case Route::kDnsSocket:
      *result = DnsConnect(fd, dest);
      return 0;
    case Route::kRefuseDatagram:
      ComplainDatagram(dest);
      errno = EPERM;
      *result = -1;
      return 0;
    case Route::kRefuseDns: {
      char where[80];
      Complain("connect to %s refused: DNS to the local resolver would leak names under %s",
               wire::FormatAddr(dest, where, sizeof where), NetworkLabel());
      errno = EPERM;
      *result = -1;
      return 0;
    }
  }
  return 1;
}

// For sendto/sendmsg with a destination: 0 to go ahead, -1 with EPERM when refused.
int CheckSend(int fd, const void* name, socklen_t len) {
  const auto* sa = static_cast<const sockaddr*>(name);
  wire::Addr dest;
  if (sa == nullptr || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
      !wire::AddrFromSockaddr(sa, len, &dest) || NetworkDirect()) {
    return 0;
  }
  int type = 0;
  socklen_t tlen = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type == SOCK_STREAM) return 0;
  if (DatagramAllowed(dest)) return 0;
  ComplainDatagram(dest);
  errno = EPERM;
  return -1;
}

}  // namespace

}  // namespace via::shim

using namespace via::shim;
namespace wire = via::wire;

VIA_EXPORT int connect(int fd, const sockaddr* addr, socklen_t len) {
  int result = 0;
  if (MaybeRoute(fd, addr, len, &result) == 0) return result;
  return Real().connect(fd, addr, len);
}

VIA_EXPORT ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                          socklen_t len) {
  ssize_t dns_result;
  iovec dns_iov{const_cast<void*>(buf), n};
  if (DnsInterceptSend(fd, addr, len, &dns_iov, 1, &dns_result)) return dns_result;
  if (addr != nullptr && CheckSend(fd, addr, len) != 0) return -1;
  if ((flags & MSG_FASTOPEN) != 0 && addr != nullptr) {
    // TCP Fast Open would send the SYN (with data) straight to the destination: connect through
    // the overlay instead, then send normally.
    int result = 0;
    if (MaybeRoute(fd, addr, len, &result) == 0) {
      if (result != 0) return -1;
      return Real().sendto(fd, buf, n, flags & ~MSG_FASTOPEN, nullptr, 0);
    }
  }
  return Real().sendto(fd, buf, n, flags, addr, len);
}

VIA_EXPORT ssize_t sendmsg(int fd, const msghdr* msg, int flags) {
  ssize_t dns_result;
  if (msg != nullptr &&
      DnsInterceptSend(fd, static_cast<const sockaddr*>(msg->msg_name), msg->msg_namelen,
                       msg->msg_iov, msg->msg_iovlen, &dns_result)) {
    return dns_result;
  }
  if (msg != nullptr && msg->msg_name != nullptr &&
      CheckSend(fd, msg->msg_name, msg->msg_namelen) != 0) {
    return -1;
  }
  return Real().sendmsg(fd, msg, flags);
}

VIA_EXPORT int sendmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags) {
  // DNS queries among the messages: each message on its own (queries answered by the broker).
  bool dns = false;
  for (unsigned int i = 0; vec != nullptr && i < vlen && !dns; ++i) {
    const msghdr& m = vec[i].msg_hdr;
    wire::Addr a;
    dns = m.msg_name != nullptr ? wire::AddrFromSockaddr(static_cast<const sockaddr*>(m.msg_name),
                                                         m.msg_namelen, &a) &&
                                      a.port == 53
                                : DnsPeer(fd, &a);
  }
  for (unsigned int i = 0; dns && i < vlen; ++i) {
    ssize_t r;
    const msghdr& m = vec[i].msg_hdr;
    if (!DnsInterceptSend(fd, static_cast<const sockaddr*>(m.msg_name), m.msg_namelen, m.msg_iov,
                          m.msg_iovlen, &r)) {
      if (m.msg_name != nullptr && CheckSend(fd, m.msg_name, m.msg_namelen) != 0)
        r = -1;
      else
        r = Real().sendmsg(fd, &m, flags);
    }
    if (r < 0) return i == 0 ? -1 : int(i);
    vec[i].msg_len = unsigned(r);
    if (i + 1 == vlen) return int(vlen);
  }
  for (unsigned int i = 0; vec != nullptr && i < vlen; ++i) {
    const msghdr& m = vec[i].msg_hdr;
    if (m.msg_name != nullptr && CheckSend(fd, m.msg_name, m.msg_namelen) != 0) {
      if (i == 0) return -1;
      return Real().sendmmsg(fd, vec, i, flags);  // send what was allowed, as a short count
    }
  }
  return Real().sendmmsg(fd, vec, vlen, flags);
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
  int r = Real().getpeername(fd, addr, len);
  // A listener put in place by hook_listen.cc is a connected AF_UNIX socket underneath; a
  // listening socket has no peer.
  if (r == 0 && addr != nullptr && len != nullptr && *len >= sizeof(sa_family_t) &&
      addr->sa_family == AF_UNIX && !Passthrough() && ViaListener(fd, &dest)) {
    errno = ENOTCONN;
    return -1;
  }
  return r;
}
