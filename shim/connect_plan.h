// The one decision for every call that can carry a destination or open a connection (connect,
// sendto/sendmsg/sendmmsg with an address or MSG_FASTOPEN): what the shim does with it, as a
// plan the hooks (hook_connect.cc) carry out. See docs/architecture.md, "One decision for every
// destination".
//
// The socket is judged by what the kernel says it is (SO_DOMAIN, SO_TYPE, SO_PROTOCOL;
// IP_HDRINCL for raw sockets), the address by the kernel's own rules for that socket and call
// (common/kernel_sockaddr.h), from a copy that is then what the kernel gets. What only the
// broker knows (whether this process is routed, the loopback policy, whether SOCKS5 may run in
// this thread) is asked through ConnectQuestions, each question only once the decision gets to
// it: a process that is not routed asks nothing but the kernel.
#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

#include "common/kernel_sockaddr.h"
#include "common/wire.h"
#include "shim/broker_link.h"
#include "shim/socks5_plan.h"

namespace via::shim {

enum class Route {
  kDirect,      // the real call with the program's own arguments: not judged (not routed,
                // a local socket, or an address the kernel ignores)
  kPass,        // the real call with the judged copy of the address (ConnectPlan::name)
  kSocks5Here,  // TCP through the overlay: SOCKS5 CONNECT in this thread (ConnectPlan::socks5)
  kBroker,      // TCP through the overlay: CONNECT through the broker
  kDnsSocket,   // connect of a UDP socket to port 53: a DNS socket the broker answers
  kDnsQuery,    // a UDP datagram to port 53: a DNS query the broker answers (else refused)
  // Refusals: -1 with ConnectPlan::err.
  kReject,                  // the kernel would refuse the address: nothing is sent, nothing said
  kFailed,                  // the broker could not be asked about a loopback destination (`msg`)
  kRoutedFailed,            // the broker link failed before a connect through the overlay (`msg`)
  kRefuse,                  // loopback destination under network_service.loopback: refuse
  kRefuseDatagram,          // non-TCP traffic that would leave the host
  kRefuseLoopbackDatagram,  // non-TCP traffic to loopback under loopback: refuse (or none)
  kRefuseDns,               // TCP to the local resolver's port 53
  kRefuseSocket,            // a socket the shim cannot judge (ConnectPlan::kind)
  kRefuseRedirect,          // a source route or routing header: the kernel would send elsewhere
};

constexpr uint16_t kDnsPort = 53;
constexpr int kIpv6Hdrincl = 36;  // IPV6_HDRINCL (linux/in6.h)

struct ConnectPlan {
  Route route = Route::kDirect;
  int err = 0;  // the errno of a refusal
  int domain = 0;
  wire::SockKind kind = wire::SockKind::kLocal;
  wire::Addr dest;
  bool has_name = false;
  sockaddr_storage copy;  // the program's address as judged: what the kernel gets
  socklen_t len = 0;
  // kSocks5Here: the thread's plan, and the name a fake destination stands for (by_name).
  const Socks5Plan* socks5 = nullptr;
  bool by_name = false;
  // The process's network is direct but routes exist: only TCP connects are judged, and only
  // those to addresses the routes cover go to the broker (kBroker); the rest are kPass.
  bool direct_routes = false;
  // A strict session: every route but kSocks5Here becomes kDirect (ConnectQuestions::strict).
  bool strict = false;
  char host[256];
  char msg[512] = {};  // kFailed, kRoutedFailed: the broker link's message

  const sockaddr* name() const {
    return has_name ? reinterpret_cast<const sockaddr*>(&copy) : nullptr;
  }
};

// What the decision asks beyond the kernel: the broker link in libvia.so (hook_connect.cc), a
// script in the unit tests.
struct ConnectQuestions {
  bool (*network_direct)();                                               // NetworkDirect
  int (*hello)(HelloInfo* info, char* msg, size_t msgcap);                // BrokerHello
  int (*socks5_plan)(const Socks5Plan** plan, char* msg, size_t msgcap);  // BrokerSocks5Plan
  bool (*cached_name)(const wire::Addr& fake, uint32_t broker, char* name,
                      size_t cap);  // NameCacheReverse
  // Routes by destination (null: none): whether HELLO said routes exist (RoutesApply), whether
  // an address lies in a fake or a route's range (RoutesCover: the broker decides its way), and
  // whether the system resolver gave it for a name routed direct (IsRouteDirect).
  bool (*routes_apply)();
  bool (*routes_cover)(const wire::Addr& addr, bool with_fake);
  bool (*route_direct)(const wire::Addr& addr);
  // A strict session (StrictHere, null: never): the kernel, the session's filter and its
  // namespace judge everything but TCP the shim runs SOCKS5 for (kSocks5Here).
  bool (*strict)();
};

// The part of the decision that depends on the socket alone (and a sendmsg's control messages,
// `control`, when given). True when the address must be judged (PlanConnect does); otherwise
// p->route is kDirect, kRefuseSocket or kRefuseRedirect.
bool PlanSocket(int fd, wire::AddrCall call, bool fastopen, const msghdr* control,
                const ConnectQuestions& ask, ConnectPlan* p);

// The one decision: every connect, and every send with a destination or MSG_FASTOPEN. `sa` and
// `len` as the program passed them; `control`: a sendmsg's header (its control messages).
void PlanConnect(int fd, wire::AddrCall call, bool fastopen, const sockaddr* sa, socklen_t len,
                 const msghdr* control, const ConnectQuestions& ask, ConnectPlan* p);

}  // namespace via::shim
