// NameService (broker/name_service.h) without a broker: RESOLVE hands out fake addresses from
// the pool (and promises them for HOLD_MS only from a large pool), REVERSE maps them back, and
// the malformed requests and the direct connections get their errors.
#include "broker/name_service.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "broker/connect_service.h"
#include "tests/unit/broker_service_fixture.h"

namespace via::broker {
namespace {

class NameServiceTest : public BrokerServiceTest {
 protected:
  void SetUp() override {
    BrokerServiceTest::SetUp();
    connects_ = std::make_unique<ConnectService>(&ctx_);
    names_ = std::make_unique<NameService>(&ctx_, connects_.get());
  }
  wire::Message Resolve(Client& c, const std::string& name, int family = -1) {
    return Ask(names_.get(), &NameService::HandleResolve, c, wire::kResolve, [&](wire::Writer& w) {
      w.PutString(wire::kTagName, name);
      if (family >= 0) w.PutU8(wire::kTagFamily, uint8_t(family));
    });
  }
  wire::Message Reverse(Client& c, const wire::Addr& a) {
    return Ask(names_.get(), &NameService::HandleReverse, c, wire::kReverse,
               [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, a); });
  }
  // The ADDR fields of a reply, in order.
  static std::vector<wire::Addr> Addrs(const wire::Message& m) {
    std::vector<wire::Addr> out;
    m.ForEach([&](const wire::Field& f) {
      wire::Addr a;
      if (f.tag == wire::kTagAddr && f.addr(&a)) out.push_back(a);
    });
    return out;
  }

  std::unique_ptr<ConnectService> connects_;
  std::unique_ptr<NameService> names_;
};

TEST_F(NameServiceTest, ResolveGivesBothFakeAddressesAndPromisesThem) {
  Client& c = NewClient("app:tor");
  wire::Message r = Resolve(c, "Example.COM");
  ASSERT_EQ(Errno(r), 0u) << Str(r, wire::kTagMessage);
  std::vector<wire::Addr> a = Addrs(r);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].family, 4);
  EXPECT_EQ(a[1].family, 6);
  EXPECT_TRUE(pool_->Contains(a[0]) && pool_->Contains(a[1]));
  EXPECT_EQ(U32(r, wire::kTagHoldMs), 2000u);  // the /15 pool is large enough to promise
  // REVERSE maps each back to the name, as normalized.
  EXPECT_EQ(Str(Reverse(c, a[0]), wire::kTagName), "example.com");
  EXPECT_EQ(Str(Reverse(c, a[1]), wire::kTagName), "example.com");
}

TEST_F(NameServiceTest, ResolveOfOneFamilyGivesOnlyThatAddress) {
  Client& c = NewClient("app:tor");
  std::vector<wire::Addr> a = Addrs(Resolve(c, "example.com", 6));
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].family, 6);
}

TEST_F(NameServiceTest, MalformedResolvesAreInvalid) {
  Client& c = NewClient("app:tor");
  EXPECT_EQ(Errno(Resolve(c, "example.com", 5)), uint32_t(EINVAL));
  EXPECT_EQ(Errno(Ask(names_.get(), &NameService::HandleResolve, c, wire::kResolve,
                      [](wire::Writer&) {})),
            uint32_t(EINVAL));
  EXPECT_EQ(Errno(Resolve(c, std::string(300, 'a') + ".com")), uint32_t(EINVAL));
}

TEST_F(NameServiceTest, ReverseOfAnAddressNotHandedOutIsNoSuchName) {
  Client& c = NewClient("app:tor");
  wire::Addr a{};
  a.family = 4;
  a.bytes[0] = 198;
  a.bytes[1] = 51;
  a.bytes[2] = 100;
  a.bytes[3] = 7;
  EXPECT_EQ(Errno(Reverse(c, a)), uint32_t(ENOENT));
}

// Routes (config/routes.h) as HELLO would have set them: *.onion to app:tor, demo.test blocked,
// plain.test direct.
void GiveRoutes(Client& c) {
  auto routes = std::make_shared<std::vector<config::Route>>();
  auto add = [&](const char* name, const char* network) {
    config::Route r;
    r.id = std::string("app:") + network;
    r.name = name;
    r.network = network;
    routes->push_back(r);
  };
  add("*.onion", "app:tor");
  add("demo.test", "block");
  add("plain.test", "direct");
  c.routes = routes;
}

TEST_F(NameServiceTest, ARouteElsewhereGivesFakeAddressesMarkedRouted) {
  Client& c = NewClient("direct");
  GiveRoutes(c);
  wire::Message r = Resolve(c, "abc.onion");
  ASSERT_EQ(Errno(r), 0u) << Str(r, wire::kTagMessage);
  EXPECT_EQ(Addrs(r).size(), 2u);
  EXPECT_EQ(U32(r, wire::kTagFlags), wire::kFlagRouted);
  EXPECT_EQ(U32(r, wire::kTagHoldMs), 0xffffffffu);  // not cached by the shim
}

TEST_F(NameServiceTest, ARouteToTheProcesssOwnNetworkIsAnOrdinaryAnswer) {
  Client& c = NewClient("app:tor");
  GiveRoutes(c);
  wire::Message r = Resolve(c, "abc.onion");
  ASSERT_EQ(Errno(r), 0u);
  EXPECT_EQ(U32(r, wire::kTagFlags), 0xffffffffu);
  EXPECT_EQ(U32(r, wire::kTagHoldMs), 2000u);
}

TEST_F(NameServiceTest, ABlockedNameFailsAndADirectOneIsLeftToTheSystemResolver) {
  Client& c = NewClient("app:tor");
  GiveRoutes(c);
  wire::Message blocked = Resolve(c, "Demo.Test.");
  EXPECT_EQ(Errno(blocked), uint32_t(ENETUNREACH));
  EXPECT_EQ(Str(blocked, wire::kTagMessage),
            "demo.test is blocked by route app:block (via run --route)");
  wire::Message direct = Resolve(c, "plain.test");
  EXPECT_EQ(Errno(direct), 0u);
  EXPECT_EQ(U32(direct, wire::kTagFlags), wire::kFlagRouteDirect);
  EXPECT_TRUE(Addrs(direct).empty());
  // A direct process's names no route takes: the system resolver too.
  Client& d = NewClient("direct");
  GiveRoutes(d);
  EXPECT_EQ(U32(Resolve(d, "example.com"), wire::kTagFlags), wire::kFlagRouteDirect);
}

TEST_F(NameServiceTest, DnsQueriesAreAnsweredOnlyUnderAnOverlay) {
  Client& c = NewClient("direct");
  wire::Message r = Ask(names_.get(), &NameService::HandleDnsQuery, c, wire::kDnsQuery,
                        [](wire::Writer& w) { w.PutBytes(wire::kTagDnsPacket, "x", 1); });
  EXPECT_EQ(Errno(r), uint32_t(EPERM));
}

}  // namespace
}  // namespace via::broker
