// The shim's connect decision (shim/connect_plan.h) on real sockets, with the broker's answers
// scripted: which plan each socket, call and destination gets, which errno a refusal carries, and
// that the broker is asked only what the decision needs.
#include "shim/connect_plan.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/unique_fd.h"

namespace via::shim {
namespace {

using wire::AddrCall;

// What the broker answers, and how often it was asked (the questions are plain function
// pointers, so the script is static).
struct Script {
  bool direct = false;
  int hello_err = 0;
  uint32_t hello_flags = 0;
  int plan_err = 0;
  bool shim_socks5 = true;
  const char* cached_name = nullptr;
  int asked_direct = 0, asked_hello = 0, asked_plan = 0, asked_name = 0;
};
Script g_script;
Socks5Plan g_plan;

bool Direct() {
  ++g_script.asked_direct;
  return g_script.direct;
}
int Hello(HelloInfo* info, char* msg, size_t cap) {
  ++g_script.asked_hello;
  if (g_script.hello_err != 0) {
    std::snprintf(msg, cap, "the via broker did not answer");
    return g_script.hello_err;
  }
  info->flags = g_script.hello_flags;
  return 0;
}
int Socks5PlanOf(const Socks5Plan** plan, char* msg, size_t cap) {
  ++g_script.asked_plan;
  if (g_script.plan_err != 0) {
    std::snprintf(msg, cap, "lost the connection to the via broker");
    return g_script.plan_err;
  }
  *plan = g_script.shim_socks5 ? &g_plan : nullptr;
  return 0;
}
bool CachedName(const wire::Addr&, uint32_t broker, char* name, size_t cap) {
  ++g_script.asked_name;
  if (g_script.cached_name == nullptr || broker != g_plan.broker) return false;
  std::snprintf(name, cap, "%s", g_script.cached_name);
  return true;
}
constexpr ConnectQuestions kScripted = {Direct,  Hello,   Socks5PlanOf, CachedName,
                                        nullptr, nullptr, nullptr,      nullptr};
// A strict session (`via run --strict` with the shim): HELLO said so and the namespace agrees.
bool Strict() { return true; }
constexpr ConnectQuestions kScriptedStrict = {Direct,  Hello,   Socks5PlanOf, CachedName,
                                              nullptr, nullptr, nullptr,      Strict};

// Routes by destination: HELLO said routes exist; a route's range is 10.0.0.0/8 and 127.0.0.0/8
// (and the fake pools for a direct process); 192.0.2.7 came from the system resolver for a name
// routed direct.
bool RoutesApply() { return true; }
bool InRange(const wire::Addr& a, const char* net, int prefix) {
  wire::Addr n;
  n.family = 4;
  n.port = uint16_t(prefix);
  inet_pton(AF_INET, net, n.bytes);
  return wire::InPrefix(n, a);
}
bool RoutesCover(const wire::Addr& a, bool with_fake) {
  return InRange(a, "10.0.0.0", 8) || InRange(a, "127.0.0.0", 8) ||
         (with_fake && InRange(a, "198.18.0.0", 15));
}
bool RouteDirect(const wire::Addr& a) { return InRange(a, "192.0.2.7", 32); }
constexpr ConnectQuestions kScriptedRoutes = {Direct,      Hello,       Socks5PlanOf, CachedName,
                                              RoutesApply, RoutesCover, RouteDirect,  nullptr};

class ConnectPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_script = Script{};
    g_plan = Socks5Plan{};
    g_plan.broker = 4242;
    g_plan.nfake = 2;
    g_plan.fake[0] = Ip("198.18.0.0", 15);  // the port field is the prefix length
    g_plan.fake[1] = Ip("fd00:18::", 64);
  }

  static wire::Addr Ip(const char* text, uint16_t port) {
    wire::Addr a;
    a.family = std::strchr(text, ':') == nullptr ? 4 : 6;
    a.port = port;
    EXPECT_EQ(inet_pton(a.family == 4 ? AF_INET : AF_INET6, text, a.bytes), 1);
    return a;
  }
  static UniqueFd Socket(int domain, int type, int protocol = 0) {
    return UniqueFd(socket(domain, type | SOCK_CLOEXEC, protocol));
  }
  // The plan for `call` on `fd` to `text`:`port`.
  static ConnectPlan Plan(int fd, const char* text, uint16_t port,
                          AddrCall call = AddrCall::kConnect, bool fastopen = false,
                          const ConnectQuestions& ask = kScripted) {
    sockaddr_storage ss;
    socklen_t len = wire::AddrToSockaddr(Ip(text, port), &ss);
    ConnectPlan p;
    PlanConnect(fd, call, fastopen, reinterpret_cast<sockaddr*>(&ss), len, nullptr, ask, &p);
    return p;
  }
  static ConnectPlan RoutedPlan(int fd, const char* text, uint16_t port) {
    return Plan(fd, text, port, AddrCall::kConnect, false, kScriptedRoutes);
  }
};

TEST_F(ConnectPlanTest, LocalSocketsGoDirectWithoutAskingTheBroker) {
  UniqueFd fd = Socket(AF_UNIX, SOCK_STREAM);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  ConnectPlan p;
  PlanConnect(fd.get(), AddrCall::kConnect, false, reinterpret_cast<sockaddr*>(&sun), sizeof sun,
              nullptr, kScripted, &p);
  EXPECT_EQ(p.route, Route::kDirect);
  EXPECT_EQ(g_script.asked_direct, 0);
}

TEST_F(ConnectPlanTest, AProcessTheBrokerLeavesDirectConnectsDirectly) {
  g_script.direct = true;
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  EXPECT_EQ(Plan(fd.get(), "192.0.2.1", 80).route, Route::kDirect);
  EXPECT_EQ(g_script.asked_direct, 1);
  EXPECT_EQ(g_script.asked_hello + g_script.asked_plan, 0);
}

TEST_F(ConnectPlanTest, ADirectProcessWithRoutesAsksTheBrokerOnlyForCoveredAddresses) {
  g_script.direct = true;
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  EXPECT_EQ(RoutedPlan(fd.get(), "10.1.2.3", 22).route, Route::kBroker);
  EXPECT_EQ(RoutedPlan(fd.get(), "198.18.0.9", 80).route, Route::kBroker);  // a fake address
  EXPECT_EQ(RoutedPlan(fd.get(), "192.0.2.1", 80).route, Route::kPass);
  EXPECT_EQ(g_script.asked_hello + g_script.asked_plan, 0);
  UniqueFd udp = Socket(AF_INET, SOCK_DGRAM);  // datagrams are not routed: as without routes
  EXPECT_EQ(RoutedPlan(udp.get(), "10.1.2.3", 53).route, Route::kDirect);
}

TEST_F(ConnectPlanTest, ARoutedProcessSendsARoutesRangeToTheBroker) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  EXPECT_EQ(RoutedPlan(fd.get(), "10.1.2.3", 22).route, Route::kBroker);   // not SOCKS5 here
  EXPECT_EQ(RoutedPlan(fd.get(), "127.0.0.1", 80).route, Route::kBroker);  // before loopback
  EXPECT_EQ(RoutedPlan(fd.get(), "192.0.2.1", 80).route, Route::kSocks5Here);
  EXPECT_EQ(RoutedPlan(fd.get(), "192.0.2.7", 80).route, Route::kPass);  // resolved direct
}

TEST_F(ConnectPlanTest, ATcpSendWithoutFastOpenIsNotJudged) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  EXPECT_EQ(Plan(fd.get(), "192.0.2.1", 80, AddrCall::kSendto).route, Route::kDirect);
  EXPECT_EQ(g_script.asked_direct, 0);
  EXPECT_EQ(Plan(fd.get(), "192.0.2.1", 80, AddrCall::kSendto, true).route, Route::kSocks5Here);
}

TEST_F(ConnectPlanTest, AnAddressGoesThroughSocks5InThisThread) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  ConnectPlan p = Plan(fd.get(), "192.0.2.1", 80);
  EXPECT_EQ(p.route, Route::kSocks5Here);
  EXPECT_EQ(p.socks5, &g_plan);
  EXPECT_FALSE(p.by_name);
  EXPECT_EQ(p.dest.port, 80);
  EXPECT_EQ(g_script.asked_name, 0);
  EXPECT_EQ(g_script.asked_hello, 0);
}

TEST_F(ConnectPlanTest, AFakeAddressThisProcessResolvedGoesByItsName) {
  g_script.cached_name = "example.test";
  UniqueFd fd = Socket(AF_INET6, SOCK_STREAM);
  ConnectPlan p = Plan(fd.get(), "::ffff:198.18.0.5", 443);
  EXPECT_EQ(p.route, Route::kSocks5Here);
  EXPECT_TRUE(p.by_name);
  EXPECT_STREQ(p.host, "example.test");
}

// In a strict session the shim keeps only what it runs SOCKS5 for; everything else is the
// kernel's, which the session's seccomp filter and namespace judge (nothing is refused here).
TEST_F(ConnectPlanTest, AStrictSessionLeavesAllButItsOwnSocks5ToTheKernel) {
  g_script.cached_name = "example.test";
  UniqueFd tcp = Socket(AF_INET, SOCK_STREAM);
  auto strict = [](int fd, const char* ip, uint16_t port, AddrCall call = AddrCall::kConnect,
                   bool fastopen = false) {
    ConnectPlan p = Plan(fd, ip, port, call, fastopen, kScriptedStrict);
    EXPECT_TRUE(p.strict);
    return p.route;
  };
  EXPECT_EQ(strict(tcp.get(), "198.18.0.5", 443), Route::kSocks5Here);
  EXPECT_EQ(strict(tcp.get(), "192.0.2.1", 80, AddrCall::kSendto, true), Route::kSocks5Here);
  EXPECT_EQ(strict(tcp.get(), "127.0.0.1", 53), Route::kDirect);  // refused outside strict
  g_script.cached_name = nullptr;
  EXPECT_EQ(strict(tcp.get(), "198.18.0.6", 443), Route::kDirect);  // the broker's, elsewhere
  UniqueFd udp = Socket(AF_INET, SOCK_DGRAM);
  EXPECT_EQ(strict(udp.get(), "192.0.2.1", 53), Route::kDirect);  // a DNS query
  EXPECT_EQ(strict(udp.get(), "192.0.2.1", 9999, AddrCall::kSendto), Route::kDirect);
  g_script.shim_socks5 = false;
  EXPECT_EQ(strict(tcp.get(), "192.0.2.1", 80), Route::kDirect);
}

TEST_F(ConnectPlanTest, AFakeAddressOnlyTheBrokerKnowsGoesThroughTheBroker) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  EXPECT_EQ(Plan(fd.get(), "198.18.0.5", 443).route, Route::kBroker);
  EXPECT_EQ(g_script.asked_name, 1);
}

TEST_F(ConnectPlanTest, WithoutSocks5InTheProgramTheBrokerConnects) {
  g_script.shim_socks5 = false;
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  EXPECT_EQ(Plan(fd.get(), "192.0.2.1", 80).route, Route::kBroker);
}

TEST_F(ConnectPlanTest, ABrokenLinkRefusesWithItsErrnoAndMessage) {
  g_script.plan_err = ECONNRESET;
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  ConnectPlan p = Plan(fd.get(), "192.0.2.1", 80);
  EXPECT_EQ(p.route, Route::kRoutedFailed);
  EXPECT_EQ(p.err, ECONNRESET);
  EXPECT_STREQ(p.msg, "lost the connection to the via broker");
}

TEST_F(ConnectPlanTest, LoopbackPassesWithTheJudgedCopy) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  ConnectPlan p = Plan(fd.get(), "127.0.0.1", 8080);
  EXPECT_EQ(p.route, Route::kPass);
  EXPECT_EQ(g_script.asked_hello, 1);
  ASSERT_NE(p.name(), nullptr);
  EXPECT_EQ(p.len, sizeof(sockaddr_in));
  EXPECT_EQ(ntohs(reinterpret_cast<const sockaddr_in*>(p.name())->sin_port), 8080);
}

TEST_F(ConnectPlanTest, LoopbackFollowsTheBrokersPolicy) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  g_script.hello_flags = wire::kFlagLoopbackRefuse;
  ConnectPlan refused = Plan(fd.get(), "127.0.0.1", 8080);
  EXPECT_EQ(refused.route, Route::kRefuse);
  EXPECT_EQ(refused.err, ECONNREFUSED);
  g_script.hello_flags = wire::kFlagLoopbackRoute;
  EXPECT_EQ(Plan(fd.get(), "127.0.0.1", 8080).route, Route::kSocks5Here);
  g_script.hello_err = ETIMEDOUT;
  ConnectPlan failed = Plan(fd.get(), "127.0.0.1", 8080);
  EXPECT_EQ(failed.route, Route::kFailed);
  EXPECT_EQ(failed.err, ETIMEDOUT);
  EXPECT_STREQ(failed.msg, "the via broker did not answer");
}

TEST_F(ConnectPlanTest, TcpToTheLocalResolverIsRefused) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  ConnectPlan p = Plan(fd.get(), "127.0.0.53", 53);
  EXPECT_EQ(p.route, Route::kRefuseDns);
  EXPECT_EQ(p.err, EPERM);
}

TEST_F(ConnectPlanTest, UdpToPort53IsForTheBroker) {
  UniqueFd fd = Socket(AF_INET, SOCK_DGRAM);
  EXPECT_EQ(Plan(fd.get(), "192.0.2.53", 53).route, Route::kDnsSocket);
  ConnectPlan query = Plan(fd.get(), "192.0.2.53", 53, AddrCall::kSendto);
  EXPECT_EQ(query.route, Route::kDnsQuery);
  EXPECT_EQ(query.err, EPERM) << "the errno when the broker's DNS path does not take it";
}

TEST_F(ConnectPlanTest, DatagramsStayOnTheHost) {
  UniqueFd fd = Socket(AF_INET, SOCK_DGRAM);
  ConnectPlan away = Plan(fd.get(), "192.0.2.1", 9, AddrCall::kSendto);
  EXPECT_EQ(away.route, Route::kRefuseDatagram);
  EXPECT_EQ(away.err, EPERM);
  EXPECT_EQ(Plan(fd.get(), "127.0.0.1", 9, AddrCall::kSendto).route, Route::kPass);
}

TEST_F(ConnectPlanTest, LoopbackDatagramsAreRefusedWhenLoopbackIs) {
  // network_service.loopback: refuse, and the network "none", refuse the host's own services
  // for datagrams as for TCP.
  g_script.hello_flags = wire::kFlagLoopbackRefuse;
  UniqueFd fd = Socket(AF_INET, SOCK_DGRAM);
  for (AddrCall call : {AddrCall::kSendto, AddrCall::kConnect}) {
    ConnectPlan p = Plan(fd.get(), "127.0.0.1", 9, call);
    EXPECT_EQ(p.route, Route::kRefuseLoopbackDatagram);
    EXPECT_EQ(p.err, EPERM);
  }
  EXPECT_EQ(Plan(fd.get(), "0.0.0.0", 9, AddrCall::kSendto).route, Route::kRefuseLoopbackDatagram);
  g_script.hello_err = ECONNREFUSED;  // the broker cannot be asked: fail closed
  EXPECT_EQ(Plan(fd.get(), "127.0.0.1", 9, AddrCall::kSendto).route, Route::kFailed);
}

TEST_F(ConnectPlanTest, WhatTheKernelWouldRejectIsRejectedWithItsErrno) {
  UniqueFd fd = Socket(AF_INET, SOCK_STREAM);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  ConnectPlan p;
  PlanConnect(fd.get(), AddrCall::kConnect, false, reinterpret_cast<sockaddr*>(&in), 3, nullptr,
              kScripted, &p);
  EXPECT_EQ(p.route, Route::kReject);
  EXPECT_EQ(p.err, EINVAL);
  EXPECT_EQ(g_script.asked_hello + g_script.asked_plan, 0);
}

TEST_F(ConnectPlanTest, ALongSendmsgNameIsCutAsTheKernelCutsIt) {
  UniqueFd fd = Socket(AF_INET, SOCK_DGRAM);
  sockaddr_storage ss{};
  wire::AddrToSockaddr(Ip("127.0.0.1", 9), &ss);
  ConnectPlan p;
  PlanConnect(fd.get(), AddrCall::kSendmsg, false, reinterpret_cast<sockaddr*>(&ss), 200, nullptr,
              kScripted, &p);
  EXPECT_EQ(p.route, Route::kPass);
  EXPECT_EQ(p.len, 128u);
}

TEST_F(ConnectPlanTest, ASourceRouteOnTheSocketIsRefused) {
  UniqueFd fd = Socket(AF_INET, SOCK_DGRAM);
  const unsigned char nops[4] = {1, 1, 1, 1};  // IPOPT_NOP: any IPv4 option counts
  if (setsockopt(fd.get(), IPPROTO_IP, IP_OPTIONS, nops, sizeof nops) != 0) {
    GTEST_SKIP() << "IP_OPTIONS: " << std::strerror(errno);
  }
  ConnectPlan p = Plan(fd.get(), "127.0.0.1", 9, AddrCall::kSendto);
  EXPECT_EQ(p.route, Route::kRefuseRedirect);
  EXPECT_EQ(p.err, EPERM);
}

TEST_F(ConnectPlanTest, ARoutingHeaderInASendmsgIsRefused) {
  UniqueFd fd = Socket(AF_INET, SOCK_DGRAM);
  alignas(cmsghdr) char control[CMSG_SPACE(4)] = {};
  msghdr m{};
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = IPPROTO_IP;
  c->cmsg_type = IP_RETOPTS;
  c->cmsg_len = CMSG_LEN(4);
  sockaddr_storage ss;
  socklen_t len = wire::AddrToSockaddr(Ip("127.0.0.1", 9), &ss);
  ConnectPlan p;
  PlanConnect(fd.get(), AddrCall::kSendmsg, false, reinterpret_cast<sockaddr*>(&ss), len, &m,
              kScripted, &p);
  EXPECT_EQ(p.route, Route::kRefuseRedirect);
}

TEST_F(ConnectPlanTest, ASocketTheShimCannotJudgeIsRefused) {
  UniqueFd fd = Socket(AF_INET, SOCK_RAW, IPPROTO_UDP);
  if (!fd) GTEST_SKIP() << "a raw socket needs CAP_NET_RAW: " << std::strerror(errno);
  ConnectPlan p = Plan(fd.get(), "127.0.0.1", 53, AddrCall::kSendto);
  EXPECT_EQ(p.route, Route::kRefuseSocket);
  EXPECT_EQ(p.err, EPERM);
  EXPECT_EQ(p.kind, wire::SockKind::kRawOpaque);
}

}  // namespace
}  // namespace via::shim
