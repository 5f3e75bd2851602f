// SessionService (broker/session_service.h) without a broker: its decisions on HELLO,
// OPEN_SESSION and SESSION_CHILD, with the replies caught by a ClientSink of the test's own. The
// client is this test process (the selector reads its ancestry from /proc).
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

#include "config/config.h"

namespace via::broker {
namespace {

// Keeps the replies instead of sending them.
class RecordingSink : public ClientSink {
 public:
  Client* FindClient(uint64_t id) override {
    auto it = clients_.find(id);
    return it == clients_.end() ? nullptr : it->second.get();
  }
  const ClientMap& clients() const override { return clients_; }
  void Reply(Client&, const wire::Writer& w) override {
    replies.emplace_back(w.data(), w.data() + w.size());
  }
  void CloseClient(uint64_t id) override { clients_.erase(id); }
  void UpdateIdle() override { ++idle_updates; }

  ClientMap clients_;
  std::vector<std::vector<uint8_t>> replies;
  int idle_updates = 0;
};

class SessionServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(loop_.Init().ok());
    auto cfg = config::ParseConfigText(
        "version: \"1.0\"\nnamespace: app\nentries:\n"
        "  - name: tor\n    kind: network.socks5\n    host: 127.0.0.1\n    port: 9\n",
        "via.yaml", "/srv/app");
    ASSERT_TRUE(cfg.ok()) << cfg.status().message();
    overlays_ =
        std::make_unique<OverlaySet>(std::make_shared<const config::Config>(std::move(*cfg)), 1);
    overlays_->Build(&loop_, nullptr, nullptr);
    auto pool = FakeAddressPool::Create("198.18.0.0/15", "fd76:6961:ff00::/64");
    ASSERT_TRUE(pool.ok());
    pool_ = std::make_unique<FakeAddressPool>(std::move(*pool));
    ctx_.loop = &loop_;
    ctx_.log = std::make_shared<spdlog::logger>("test");
    ctx_.options = &options_;
    ctx_.overlays = overlays_.get();
    ctx_.pool = pool_.get();
    ctx_.sessions = &sessions_;
    ctx_.clients = &sink_;
    service_ = std::make_unique<SessionService>(&ctx_);
  }
  // A client connection from this process (the broker's end of a socketpair).
  Client& NewClient() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    close(sv[1]);
    uint64_t id = next_id_++;
    sink_.clients_[id] = std::make_unique<Client>(id, UniqueFd(sv[0]), getpid());
    return *sink_.clients_[id];
  }
  // Runs `handle` on a request of `type` built by `fill`; returns the reply.
  template <typename Fill>
  wire::Message Ask(void (SessionService::*handle)(Client&, const wire::Message&), Client& c,
                    uint16_t type, Fill fill) {
    uint8_t buf[4096];
    wire::Writer w(buf, sizeof buf, type, 1);
    fill(w);
    request_.assign(w.data(), w.data() + w.size());
    wire::Message m;
    EXPECT_EQ(m.Parse(request_.data(), request_.size()), wire::ParseError::kOk);
    size_t before = sink_.replies.size();
    (service_.get()->*handle)(c, m);
    EXPECT_EQ(sink_.replies.size(), before + 1) << "one reply per request";
    wire::Message reply;
    EXPECT_EQ(reply.Parse(sink_.replies.back().data(), sink_.replies.back().size()),
              wire::ParseError::kOk);
    return reply;
  }
  static uint32_t Errno(const wire::Message& m) { return U32(m, wire::kTagErrno); }
  static uint32_t U32(const wire::Message& m, uint16_t tag) {
    wire::Field f;
    uint32_t v = 0;
    return m.Find(tag, &f) && f.u32(&v) ? v : 0xffffffffu;
  }
  static std::string Str(const wire::Message& m, uint16_t tag) {
    wire::Field f;
    return m.Find(tag, &f) ? std::string(f.str()) : "(none)";
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

  EventLoop loop_;
  BrokerOptions options_;
  std::unique_ptr<OverlaySet> overlays_;
  std::unique_ptr<FakeAddressPool> pool_;
  SessionTable sessions_;
  RecordingSink sink_;
  BrokerContext ctx_;
  std::unique_ptr<SessionService> service_;
  std::vector<uint8_t> request_;
  uint64_t next_id_ = 1;
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
