// A broker's context without a broker, for the services' unit tests: a config with one SOCKS5
// overlay (app:tor on 127.0.0.1:9, never contacted), the fake-address pool, the session table,
// and a ClientSink that keeps the replies instead of sending them. Clients are this test
// process (the selector reads its ancestry from /proc).
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "broker/context.h"
#include "config/config.h"

namespace via::broker {

// Keeps the replies instead of sending them.
class RecordingSink : public ClientSink {
 public:
  Client* FindClient(uint64_t id) override {
    auto it = clients_.find(id);
    return it == clients_.end() ? nullptr : it->second.get();
  }
  const ClientMap& clients() const override { return clients_; }
  void Reply(Client&, const wire::Writer& w, UniqueFd fd = UniqueFd()) override {
    replies.emplace_back(w.data(), w.data() + w.size());
    reply_fds.push_back(std::move(fd));
  }
  void CloseClient(uint64_t id) override { clients_.erase(id); }
  void UpdateIdle() override { ++idle_updates; }

  ClientMap clients_;
  std::vector<std::vector<uint8_t>> replies;
  std::vector<UniqueFd> reply_fds;  // what each reply carried (invalid: nothing)
  int idle_updates = 0;
};

class BrokerServiceTest : public ::testing::Test {
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
  }
  // A client connection from this process (the broker's end of a socketpair); `network` other
  // than "direct" is selected as its HELLO would have.
  Client& NewClient(const std::string& network = "direct") {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    close(sv[1]);
    uint64_t id = next_id_++;
    sink_.clients_[id] = std::make_unique<Client>(id, UniqueFd(sv[0]), getpid());
    Client& c = *sink_.clients_[id];
    c.greeted = true;
    EXPECT_TRUE(overlays_->Select(network, &c.overlay, &c.network).ok()) << network;
    return c;
  }
  // Runs `handle` on a request of `type` built by `fill`; returns the one reply it must give.
  template <typename Service, typename Fill>
  wire::Message Ask(Service* service, void (Service::*handle)(Client&, const wire::Message&),
                    Client& c, uint16_t type, Fill fill) {
    uint8_t buf[4096];
    wire::Writer w(buf, sizeof buf, type, 1);
    fill(w);
    request_.assign(w.data(), w.data() + w.size());
    wire::Message m;
    EXPECT_EQ(m.Parse(request_.data(), request_.size()), wire::ParseError::kOk);
    size_t before = sink_.replies.size();
    (service->*handle)(c, m);
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

  EventLoop loop_;
  BrokerOptions options_;
  std::unique_ptr<OverlaySet> overlays_;
  std::unique_ptr<FakeAddressPool> pool_;
  SessionTable sessions_;
  RecordingSink sink_;
  BrokerContext ctx_;
  std::vector<uint8_t> request_;
  uint64_t next_id_ = 1;
};

}  // namespace via::broker
