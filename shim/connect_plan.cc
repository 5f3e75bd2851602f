// The connect decision (connect_plan.h): from the kernel's view of the socket and the address
// to a plan. Moved here from hook_connect.cc so that the hooks only carry plans out, and so that
// the decision can be tested without a broker.
#include "shim/connect_plan.h"

#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

#include "common/socks5_plan.h"

namespace via::shim {

namespace {

using wire::AddrCall;
using wire::SockKind;

bool IsUnspecified(const wire::Addr& addr) {
  wire::Addr a = wire::Unmapped(addr);
  static const uint8_t kZero[16] = {};
  return std::memcmp(a.bytes, kZero, a.addr_len()) == 0;
}

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

// Options that make the kernel send somewhere other than the destination address (an IPv4
// source route, an IPv6 routing header; setsockopt refuses them: hook_connect.cc), set on the
// socket already (by a system call the shim did not see, or before).
bool HasRedirectingOption(int fd, int domain) {
  unsigned char buf[256];
  socklen_t l = sizeof buf;
  if (getsockopt(fd, IPPROTO_IP, IP_OPTIONS, buf, &l) == 0 && l > 0) return true;
  if (domain != AF_INET6) return false;
  l = sizeof buf;
  if (getsockopt(fd, IPPROTO_IPV6, IPV6_RTHDR, buf, &l) == 0 && l > 0) return true;
  return false;
}

// The same options as control messages of one sendmsg (ip_cmsg_send, ip6_datagram_send_ctl).
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

}  // namespace

bool PlanSocket(int fd, AddrCall call, bool fastopen, const msghdr* control,
                const ConnectQuestions& ask, ConnectPlan* p) {
  p->route = Route::kDirect;
  if (!SocketKindOf(fd, &p->domain, &p->kind)) return false;
  if (p->kind == SockKind::kLocal) return false;
  // A send on a stream socket without MSG_FASTOPEN: the kernel ignores the address (and IP
  // control messages).
  if (p->kind == SockKind::kStream && call != AddrCall::kConnect && !fastopen) return false;
  if (ask.network_direct()) {
    // A direct process pays for routes only on TCP connects, and only with a check of the
    // address against a few ranges (no broker round trip unless one covers it).
    if (p->kind != SockKind::kStream || ask.routes_apply == nullptr || !ask.routes_apply()) {
      return false;
    }
    p->direct_routes = true;
    return true;
  }
  if (ask.strict != nullptr && ask.strict()) {
    p->strict = true;  // nothing here can leave the namespace: only TCP may go to the proxy
    return p->kind == SockKind::kStream;
  }
  switch (p->kind) {
    case SockKind::kOtherFamily:
    case SockKind::kOtherInet:
    case SockKind::kRawOpaque:
      p->route = Route::kRefuseSocket;
      p->err = EPERM;
      return false;
    default:
      break;
  }
  if (HasRedirectingOption(fd, p->domain) ||
      (control != nullptr && p->kind != SockKind::kStream && RedirectingControl(*control))) {
    p->route = Route::kRefuseRedirect;
    p->err = EPERM;
    return false;
  }
  return true;
}

namespace {

// TCP through the overlay: SOCKS5 in this thread when the broker allowed it and the destination
// is an address or a fake address whose name this process resolved, else through the broker
// (CONNECT). A fake address whose name only the broker knows (resolved by a parent) goes to
// the broker, which maps it back.
void PlanOverlay(const ConnectQuestions& ask, ConnectPlan* p) {
  const Socks5Plan* plan = nullptr;
  if (int err = ask.socks5_plan(&plan, p->msg, sizeof p->msg); err != 0) {
    p->route = Route::kRoutedFailed;
    p->err = err;
    return;
  }
  if (ask.route_direct != nullptr && ask.route_direct(p->dest)) {
    p->route = Route::kPass;  // the system resolver's answer for a name routed direct
    return;
  }
  p->route = Route::kBroker;
  if (plan == nullptr) return;
  const bool fake = socks5::InFakeRange(*plan, p->dest);

  if (fake && !ask.cached_name(p->dest, plan->broker, p->host, sizeof p->host)) return;
  p->route = Route::kSocks5Here;
  p->socks5 = plan;
  p->by_name = fake;
}

// A connect (or a send with MSG_FASTOPEN) of a TCP socket to `p->dest`: loopback and the
// unspecified address as network_service.loopback says (the broker's HELLO flags), anything
// else through the overlay.
void PlanStream(const ConnectQuestions& ask, ConnectPlan* p) {
  if (p->direct_routes) {
    if (ask.routes_cover(p->dest, true)) p->route = Route::kBroker;
    return;  // else kPass: the real connect
  }
  // An address a route's range covers (loopback too: routes come before the network's own
  // rules): the broker decides (another overlay, direct, or blocked).
  if (ask.routes_cover != nullptr && ask.routes_cover(p->dest, false)) {
    const Socks5Plan* plan = nullptr;
    if (int err = ask.socks5_plan(&plan, p->msg, sizeof p->msg); err != 0) {
      p->route = Route::kRoutedFailed;
      p->err = err;
      return;
    }
    p->route = Route::kBroker;
    return;
  }
  if (wire::IsLoopback(p->dest) || IsUnspecified(p->dest)) {
    HelloInfo info;
    int err = ask.hello(&info, p->msg, sizeof p->msg);
    if (err != 0) {
      p->route = Route::kFailed;
      p->err = err;
    } else if (info.flags & wire::kFlagLoopbackRefuse) {
      p->route = Route::kRefuse;
      p->err = ECONNREFUSED;
    } else if (info.flags & wire::kFlagLoopbackRoute) {
      PlanOverlay(ask, p);
    } else if (p->dest.port == kDnsPort) {
      p->route = Route::kRefuseDns;
      p->err = EPERM;
    }
    return;
  }
  PlanOverlay(ask, p);
}

// The program's address, copied once: the copy is judged and is what the kernel gets, so another
// thread changing the program's bytes in between changes nothing.
void CopyAddress(AddrCall call, const sockaddr* sa, socklen_t len, ConnectPlan* p) {
  long n = static_cast<int>(len);
  if (n < 0) n = 0;
  if (n > long(sizeof p->copy)) n = sizeof p->copy;
  p->has_name = sa != nullptr;
  if (p->has_name) {
    std::memset(&p->copy, 0, sizeof p->copy);
    std::memcpy(&p->copy, sa, size_t(n));
  }
  // What the kernel is given: the length as the program passed it (sendmsg: as the kernel
  // truncates it).
  p->len = call == AddrCall::kSendmsg ? socklen_t(n) : len;
}

// A datagram to loopback or the unspecified address reaches the host's own services: allowed
// unless those are refused (network_service.loopback: refuse, and the network "none").
void PlanLoopbackDatagram(const ConnectQuestions& ask, ConnectPlan* p) {
  HelloInfo info;
  if (int err = ask.hello(&info, p->msg, sizeof p->msg); err != 0) {
    p->route = Route::kFailed;
    p->err = err;
  } else if (info.flags & wire::kFlagLoopbackRefuse) {
    p->route = Route::kRefuseLoopbackDatagram;
    p->err = EPERM;
  }
}

// The part of the decision that depends on the address, for a socket PlanSocket let through.
void PlanAddress(AddrCall call, bool fastopen, const sockaddr* sa, socklen_t len,
                 const ConnectQuestions& ask, ConnectPlan* p) {
  CopyAddress(call, sa, len, p);
  wire::KernelDest kd = wire::KernelDestination(p->domain, p->kind, call, fastopen, p->name(), len);
  if (kd.kind == wire::KernelDest::kReject) {
    p->route = Route::kReject;
    p->err = kd.err;
    return;
  }
  p->route = Route::kPass;
  if (kd.kind == wire::KernelDest::kNone) return;  // no destination: the socket's own peer
  p->dest = kd.addr;
  if (p->kind == SockKind::kStream) return PlanStream(ask, p);
  if (p->kind == SockKind::kUdp && p->dest.port == kDnsPort) {
    p->route = call == AddrCall::kConnect ? Route::kDnsSocket : Route::kDnsQuery;
    p->err = EPERM;  // a query the broker's DNS path did not take
  } else if (!DatagramAllowed(p->dest)) {
    p->route = Route::kRefuseDatagram;
    p->err = EPERM;
  } else {
    PlanLoopbackDatagram(ask, p);
  }
}

}  // namespace

void PlanConnect(int fd, AddrCall call, bool fastopen, const sockaddr* sa, socklen_t len,
                 const msghdr* control, const ConnectQuestions& ask, ConnectPlan* p) {
  if (PlanSocket(fd, call, fastopen, control, ask, p)) PlanAddress(call, fastopen, sa, len, ask, p);
  if (p->strict && p->route != Route::kSocks5Here) {
    p->route = Route::kDirect;  // the session's filter places it, or the namespace refuses it
    p->err = 0;
  }
}

}  // namespace via::shim
