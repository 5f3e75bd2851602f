// SessionService (broker/session_service.h) without a broker: its decisions on HELLO,
// OPEN_SESSION and SESSION_CHILD, with the replies caught by a ClientSink of the test's own
// (tests/unit/broker_service_fixture.h).
#include "broker/session_service.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/broker_service_fixture.h"

namespace via::broker {
namespace {

class SessionServiceTest : public BrokerServiceTest {
 protected:
  void SetUp() override {
    BrokerServiceTest::SetUp();
    service_ = std::make_unique<SessionService>(&ctx_);
  }
  template <typename Fill>
  wire::Message Ask(void (SessionService::*handle)(Client&, const wire::Message&), Client& c,
                    uint16_t type, Fill fill) {
    return BrokerServiceTest::Ask(service_.get(), handle, c, type, fill);
  }
  wire::Message OpenSession(Client& c, const std::string& network) {
    return Ask(&SessionService::HandleOpenSession, c, wire::kOpenSession, [&](wire::Writer& w) {
      w.PutString(wire::kTagNetwork, network);
      w.PutString(wire::kTagExe, "/bin/true");
      w.PutString(wire::kTagArgv, "true");
    });
  }
  wire::Message SessionChild(Client& c, const std::string& token, pid_t pid) {
    return Ask(&SessionService::HandleSessionChild, c, wire::kSessionChild, [&](wire::Writer& w) {
      w.PutString(wire::kTagSession, token);
      w.PutU32(wire::kTagPid, uint32_t(pid));
    });
  }

  std::unique_ptr<SessionService> service_;
};

TEST_F(SessionServiceTest, AHelloOfAnotherProtocolVersionIsRefused) {
  Client& c = NewClient();
  wire::Message r = Ask(&SessionService::HandleHello, c, wire::kHello,
                        [](wire::Writer& w) { w.PutU16(wire::kTagVersion, wire::kVersion + 1); });
  EXPECT_EQ(Errno(r), uint32_t(EPROTO));
  EXPECT_FALSE(c.greeted);
}

TEST_F(SessionServiceTest, AControlConnectionIsDirectWhateverItClaims) {
  Client& c = NewClient();
  wire::Message r = Ask(&SessionService::HandleHello, c, wire::kHello, [](wire::Writer& w) {
    w.PutString(wire::kTagNetwork, "app:tor");
    w.PutU32(wire::kTagFlags, wire::kFlagControl);
  });
  EXPECT_EQ(Errno(r), 0u);
  EXPECT_EQ(Str(r, wire::kTagNetwork), "direct");
  EXPECT_EQ(Str(r, wire::kTagOrigin), "control connection");
  EXPECT_NE(U32(r, wire::kTagFlags) & wire::kFlagDirect, 0u);
  EXPECT_TRUE(c.greeted);
}

TEST_F(SessionServiceTest, AHelloClaimingAnOverlayGetsItAndTheShimsSocks5Plan) {
  Client& c = NewClient();
  wire::Message r = Ask(&SessionService::HandleHello, c, wire::kHello,
                        [](wire::Writer& w) { w.PutString(wire::kTagNetwork, "app:tor"); });
  EXPECT_EQ(Errno(r), 0u) << Str(r, wire::kTagMessage);
  EXPECT_EQ(Str(r, wire::kTagNetwork), "app:tor");
  ASSERT_NE(c.overlay, nullptr);
  EXPECT_EQ(U32(r, wire::kTagFlags) & wire::kFlagDirect, 0u);
  EXPECT_NE(U32(r, wire::kTagFlags) & wire::kFlagShimSocks5, 0u);
  EXPECT_EQ(c.shim_plan, service_->ShimPlan(c, nullptr));
}

TEST_F(SessionServiceTest, AnUnknownNetworkIsAHelloError) {
  Client& c = NewClient();
  wire::Message r = Ask(&SessionService::HandleHello, c, wire::kHello,
                        [](wire::Writer& w) { w.PutString(wire::kTagNetwork, "app:nowhere"); });
  EXPECT_NE(Errno(r), 0u);
  EXPECT_FALSE(c.hello_error.ok());
  EXPECT_EQ(c.overlay, nullptr);
}

TEST_F(SessionServiceTest, OpenSessionGivesATokenForTheClaimedNetwork) {
  Client& c = NewClient();
  wire::Message r = OpenSession(c, "app:tor");
  ASSERT_EQ(Errno(r), 0u) << Str(r, wire::kTagMessage);
  EXPECT_EQ(Str(r, wire::kTagNetwork), "app:tor");
  EXPECT_EQ(Str(r, wire::kTagSession).size(), 32u);
  const SessionTable::Session* s = sessions_.Find(Str(r, wire::kTagSession));
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->owner, c.id);
  EXPECT_EQ(s->root, getpid());
  EXPECT_GT(sink_.idle_updates, 0);  // a session keeps the broker alive
}

TEST_F(SessionServiceTest, OneConnectionOpensAtMostSixteenSessions) {
  Client& c = NewClient();
  for (int i = 0; i < 16; ++i) ASSERT_EQ(Errno(OpenSession(c, "app:tor")), 0u) << i;
  EXPECT_EQ(Errno(OpenSession(c, "app:tor")), uint32_t(EAGAIN));
  EXPECT_EQ(sessions_.size(), 16u);
}

TEST_F(SessionServiceTest, OnlyTheOpenerRegistersItsOwnChildOnce) {
  Client& opener = NewClient();
  std::string token = Str(OpenSession(opener, "app:tor"), wire::kTagSession);
  Client& other = NewClient();
  EXPECT_EQ(Errno(SessionChild(other, token, getpid())), uint32_t(EPERM));
  EXPECT_EQ(Errno(SessionChild(opener, token, getppid())), uint32_t(EPERM));  // not a child

  pid_t child = fork();
  if (child == 0) {
    pause();
    _exit(0);
  }
  ASSERT_GT(child, 0);
  EXPECT_EQ(Errno(SessionChild(opener, token, child)), 0u);
  EXPECT_EQ(sessions_.Find(token)->child, child);
  EXPECT_EQ(Errno(SessionChild(opener, token, child)), uint32_t(EEXIST));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

}  // namespace
}  // namespace via::broker
