// The broker as its clients see it: RunBroker on a temporary socket, raw datagrams per
// docs/protocol.md, one test per rule (framing, HELLO first, unknown type, missing fd, ...).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "broker/broker.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "config/config.h"

namespace via::broker {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// One reply, copied out of its datagram.
struct Reply {
  bool closed = false;  // end-of-file instead of a reply
  uint16_t type = 0;
  uint32_t id = 0;
  uint32_t err = 0xffffffff;
  std::string message;
  std::vector<std::pair<uint16_t, std::vector<uint8_t>>> fields;

  std::string Str(uint16_t tag) const {
    for (const auto& [t, v] : fields)
      if (t == tag) return std::string(v.begin(), v.end());
    return "";
  }
  bool Has(uint16_t tag) const {
    for (const auto& [t, v] : fields)
      if (t == tag) return true;
    return false;
  }
  // Every Addr field with `tag`.
  std::vector<wire::Addr> AddrsOf(uint16_t tag) const {
    std::vector<wire::Addr> out;
    for (const auto& [t, v] : fields) {
      wire::Field f{t, v.data(), uint16_t(v.size())};
      wire::Addr a;
      if (t == tag && f.addr(&a)) out.push_back(a);
    }
    return out;
  }
  uint32_t U32(uint16_t tag) const {
    for (const auto& [t, v] : fields)
      if (t == tag && v.size() == 4) return wire::GetLE32(v.data());
    return 0xffffffff;
  }
  std::vector<wire::Addr> Addrs() const {
    std::vector<wire::Addr> out;
    for (const auto& [t, v] : fields) {
      wire::Field f{t, v.data(), uint16_t(v.size())};
      wire::Addr a;
      if (t == wire::kTagAddr && f.addr(&a)) out.push_back(a);
    }
    return out;
  }
};

using Fill = std::function<void(wire::Writer&)>;

std::string Text(const wire::Addr& a) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, buf, sizeof buf);
  return buf;
}

class BrokerProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/via-broker-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_path_ = dir_ + "/broker.sock";
    log_path_ = dir_ + "/broker.log";

    // A proxy port nobody listens on, and one that accepts (in the backlog) but never answers.
    refused_port_ = FreePort();
    silent_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in sin = Loopback(0);
    ASSERT_EQ(bind(silent_.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    ASSERT_EQ(listen(silent_.get(), 16), 0);
    silent_port_ = BoundPort(silent_.get());

    config_.source = dir_ + "/via.yaml";
    AddSocks5("app:refused", refused_port_);
    AddSocks5("app:silent", silent_port_);
    config::Overlay ts;  // a driver that cannot be created: its auth key variable is unset
    ts.id = "app:ts";
    ts.ns = "app";
    ts.name = "ts";
    ts.kind = config::OverlayKind::kTailscale;
    ts.kind_name = "network.tailscale";
    ts.tailscale.auth_key_env = "VIA_UNIT_TEST_UNSET_TS_KEY";
    unsetenv("VIA_UNIT_TEST_UNSET_TS_KEY");
    config_.overlays.push_back(ts);
    config_.service.loopback = config::LoopbackPolicy::kRefuse;
    // The one Tailscale overlay would bring the tailnet's built-in routes (HELLO flag bit 10 and
    // its ranges); these tests are about the rest of HELLO. Routes: routes_test.cc, test_routes.
    config_.service.default_routes = false;
  }

  void TearDown() override {
    StopBroker();
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(system(cmd.c_str()), 0);
  }

  void AddSocks5(const std::string& id, int port) {
    config::Overlay o;
    o.id = id;
    o.ns = id.substr(0, id.find(':'));
    o.name = id.substr(id.find(':') + 1);
    o.kind = config::OverlayKind::kSocks5;
    o.kind_name = "network.socks5";
    o.socks5.host = "127.0.0.1";
    o.socks5.port = port;
    o.socks5.connect_timeout_ms = 300;
    config_.overlays.push_back(o);
  }

  static sockaddr_in Loopback(int port) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(uint16_t(port));
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sin;
  }
  static int BoundPort(int fd) {
    sockaddr_in sin{};
    socklen_t len = sizeof sin;
    getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    return ntohs(sin.sin_port);
  }
  static int FreePort() {
    UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in sin = Loopback(0);
    bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin);
    return BoundPort(fd.get());  // closed again: connects to it are refused
  }

  void StartBroker(bool stay = true, int idle_timeout_s = -1) {
    options_.config_path = config_.source;
    options_.socket_path = socket_path_;
    options_.log_path = log_path_;
    options_.foreground = false;
    options_.stay = stay;
    options_.idle_timeout_s = idle_timeout_s;
    int p[2];
    ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
    UniqueFd ready(p[0]);
    broker_exited_ = false;
    broker_ = std::thread([this, w = p[1]] {
      broker_status_ = RunBroker(config_, options_, w);
      broker_exited_ = true;
    });
    char byte = 0;
    ASSERT_EQ(read(ready.get(), &byte, 1), 1) << "broker did not start; log:\n" << Log();
  }

  void StopBroker() {
    if (!broker_.joinable()) return;
    if (!broker_exited_) {
      UniqueFd c = Greeted("direct");
      Request(c.get(), wire::kShutdown);
    }
    broker_.join();
  }

  std::string Log() const {
    std::string out;
    FILE* f = fopen(log_path_.c_str(), "r");
    if (f == nullptr) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    fclose(f);
    return out;
  }

  UniqueFd Connect() {
    UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strcpy(sun.sun_path, socket_path_.c_str());
    EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun), 0)
        << std::strerror(errno);
    return fd;
  }

  static void SendRaw(int fd, const void* data, size_t n, int attach = -1) {
    ASSERT_EQ(wire::SendDatagram(fd, data, n, attach), ssize_t(n)) << std::strerror(errno);
  }

  static Reply Receive(int fd, int timeout_ms = 5000) {
    Reply r;
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, timeout_ms) != 1) {
      ADD_FAILURE() << "no reply within " << timeout_ms << " ms";
      r.closed = true;
      return r;
    }
    std::vector<uint8_t> buf(wire::kMaxMessage);
    ssize_t n = recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) {
      r.closed = true;
      return r;
    }
    wire::Message m;
    EXPECT_EQ(m.Parse(buf.data(), size_t(n)), wire::ParseError::kOk);
    r.type = m.type();
    r.id = m.id();
    m.ForEach([&](const wire::Field& f) {
      r.fields.emplace_back(f.tag, std::vector<uint8_t>(f.data, f.data + f.len));
    });
    r.err = r.U32(wire::kTagErrno);
    r.message = r.Str(wire::kTagMessage);
    return r;
  }

  Reply Request(int fd, uint16_t type, const Fill& fill = nullptr, int attach = -1) {
    uint8_t buf[4096];
    wire::Writer w(buf, sizeof buf, type, ++next_id_);
    if (fill) fill(w);
    SendRaw(fd, w.data(), w.size(), attach);
    Reply r = Receive(fd);
    EXPECT_FALSE(r.closed);
    EXPECT_EQ(r.type, type | wire::kReplyBit);
    EXPECT_EQ(r.id, next_id_);
    return r;
  }

  Reply Hello(int fd, const std::string& network = "", const std::string& session = "") {
    return Request(fd, wire::kHello, [&](wire::Writer& w) {
      w.PutU16(wire::kTagVersion, wire::kVersion);
      if (!network.empty()) w.PutString(wire::kTagNetwork, network);
      if (!session.empty()) w.PutString(wire::kTagSession, session);
    });
  }
  // OPEN_SESSION for `network` on `fd`: the session's token, or "" (and a failure) when refused.
  std::string OpenSession(int fd, const std::string& network) {
    Reply r = Request(fd, wire::kOpenSession,
                      [&](wire::Writer& w) { w.PutString(wire::kTagNetwork, network); });
    EXPECT_EQ(r.err, 0u) << r.message;
    return r.err == 0 ? r.Str(wire::kTagSession) : std::string();
  }
  // A connection that said HELLO for `network`.
  UniqueFd Greeted(const std::string& network) {
    UniqueFd fd = Connect();
    EXPECT_EQ(Hello(fd.get(), network).err, 0u);
    return fd;
  }

  Reply ConnectByName(int fd, int sock, const std::string& name = "example.test") {
    return Request(
        fd, wire::kConnect,
        [&](wire::Writer& w) {
          w.PutString(wire::kTagName, name);
          w.PutU16(wire::kTagPort, 80);
        },
        sock);
  }
  Reply ConnectToAddr(int fd, int sock, const wire::Addr& addr) {
    return Request(
        fd, wire::kConnect, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, addr); }, sock);
  }

  Reply Resolve(int fd, const std::string& name, int family = -1) {
    return Request(fd, wire::kResolve, [&](wire::Writer& w) {
      w.PutString(wire::kTagName, name);
      if (family >= 0) w.PutU8(wire::kTagFamily, uint8_t(family));
    });
  }

  std::string StatusText() {
    UniqueFd fd = Greeted("direct");
    return Request(fd.get(), wire::kStatus).Str(wire::kTagText);
  }

  // True if the broker closed `fd` (end-of-file within a second).
  static bool ClosedByBroker(int fd) {
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, 1000) != 1) return false;
    char b;
    return recv(fd, &b, 1, MSG_DONTWAIT) == 0;
  }

  std::string dir_, socket_path_, log_path_;
  int refused_port_ = 0, silent_port_ = 0;
  UniqueFd silent_;
  config::Config config_;
  BrokerOptions options_;
  std::thread broker_;
  std::atomic<bool> broker_exited_{false};
  int broker_status_ = -1;
  uint32_t next_id_ = 0;
};

// ---- framing ----------------------------------------------------------------------------------

TEST_F(BrokerProtocolTest, MalformedFramingIsAnsweredWithEprotoThenClosed) {
  StartBroker();
  uint8_t good[64];
  wire::Writer w(good, sizeof good, wire::kStatus, 1);
  std::vector<uint8_t> bad_magic(good, good + w.size());
  bad_magic[0] = 'X';
  std::vector<uint8_t> mismatch(good, good + w.size());
  mismatch[12] = 9;
  std::vector<uint8_t> truncated_field(good, good + w.size());
  truncated_field.insert(truncated_field.end(), {1, 0, 50, 0, 'a'});
  truncated_field[12] = 5;
  std::vector<uint8_t> too_large(wire::kMaxMessage + 10, 0);
  std::memcpy(too_large.data(), good, 16);

  struct Case {
    std::vector<uint8_t> bytes;
    wire::ParseError error;
  } cases[] = {
      {{1, 2, 3}, wire::ParseError::kTruncatedHeader},
      {bad_magic, wire::ParseError::kBadMagic},
      {mismatch, wire::ParseError::kLengthMismatch},
      {truncated_field, wire::ParseError::kTruncatedField},
      {too_large, wire::ParseError::kTooLarge},
  };
  UniqueFd bystander = Greeted("direct");
  for (const Case& c : cases) {
    UniqueFd fd = Greeted("direct");
    SendRaw(fd.get(), c.bytes.data(), c.bytes.size());
    Reply r = Receive(fd.get());
    EXPECT_EQ(r.type, wire::kReplyBit);
    EXPECT_EQ(r.id, 0u);
    EXPECT_EQ(r.err, uint32_t(EPROTO));
    EXPECT_EQ(r.message, wire::ParseErrorText(c.error));
    EXPECT_TRUE(ClosedByBroker(fd.get())) << wire::ParseErrorText(c.error);
  }
  EXPECT_EQ(Request(bystander.get(), wire::kStatus).err, 0u);
}

TEST_F(BrokerProtocolTest, RequestBeforeHelloIsEproto) {
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Resolve(fd.get(), "example.test");
  EXPECT_EQ(r.err, uint32_t(EPROTO));
  EXPECT_EQ(r.message, "HELLO must be the first message on a connection");
  EXPECT_EQ(Hello(fd.get(), "direct").err, 0u);  // the connection stays usable
}

TEST_F(BrokerProtocolTest, UnknownTypeIsEprotoAndTheConnectionStays) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  Reply r = Request(fd.get(), 0x77);
  EXPECT_EQ(r.err, uint32_t(EPROTO));
  EXPECT_EQ(r.message, "unknown message type 119");
  EXPECT_EQ(Request(fd.get(), wire::kStatus).err, 0u);
}

TEST_F(BrokerProtocolTest, DescriptorsOnOtherRequestsAreClosed) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, wire::kStatus, 5);
  SendRaw(fd.get(), w.data(), w.size(), wr.get());
  wr.reset();
  EXPECT_EQ(Receive(fd.get()).err, 0u);
  char b;
  EXPECT_EQ(read(rd.get(), &b, 1), 0);  // the broker's copy of the write end is gone too
}

// ---- HELLO ------------------------------------------------------------------------------------

TEST_F(BrokerProtocolTest, HelloWithoutNetworkIsDirect) {
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Hello(fd.get());
  EXPECT_EQ(r.err, 0u);
  EXPECT_EQ(r.Str(wire::kTagNetwork), "direct");
  EXPECT_EQ(r.U32(wire::kTagFlags), wire::kFlagDirect | wire::kFlagLoopbackRefuse);
}

TEST_F(BrokerProtocolTest, HelloFallsBackToDefaultNetwork) {
  config_.service.default_network = "app:refused";
  config_.service.loopback = config::LoopbackPolicy::kOverlay;
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Hello(fd.get());
  EXPECT_EQ(r.err, 0u);
  EXPECT_EQ(r.Str(wire::kTagNetwork), "app:refused");
  // A SOCKS5 overlay: the shim may run CONNECT itself (handshake: program, the default).
  EXPECT_EQ(r.U32(wire::kTagFlags), wire::kFlagLoopbackRoute | wire::kFlagShimSocks5);
}

TEST_F(BrokerProtocolTest, HelloTellsTheShimHowToRunSocks5) {
  config_.overlays[1].socks5.username = "alice";
  config_.overlays[1].socks5.password = "secret";
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Hello(fd.get(), "app:silent");
  ASSERT_EQ(r.err, 0u) << r.message;
  EXPECT_EQ(r.U32(wire::kTagFlags), wire::kFlagLoopbackRefuse | wire::kFlagShimSocks5);
  std::vector<wire::Addr> proxies = r.AddrsOf(wire::kTagProxy);
  std::vector<wire::Addr> nets = r.AddrsOf(wire::kTagFakeNet);
  ASSERT_EQ(proxies.size(), 1u);
  EXPECT_EQ(Text(proxies[0]), "127.0.0.1");
  EXPECT_EQ(proxies[0].port, silent_port_);
  ASSERT_EQ(nets.size(), 2u);
  EXPECT_EQ(Text(nets[0]) + "/" + std::to_string(nets[0].port), "198.18.0.0/15");
  EXPECT_EQ(Text(nets[1]) + "/" + std::to_string(nets[1].port), "fd76:6961:ff00::/64");
  EXPECT_EQ(r.Str(wire::kTagUsername), "alice");
  EXPECT_EQ(r.Str(wire::kTagPassword), "secret");
  EXPECT_EQ(r.U32(wire::kTagTimeoutMs), 300u);
}

TEST_F(BrokerProtocolTest, HelloTellsTheShimToPipelineWhenConfigured) {
  config_.overlays[1].socks5.pipeline = true;
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Hello(fd.get(), "app:silent");
  ASSERT_EQ(r.err, 0u) << r.message;
  EXPECT_EQ(r.U32(wire::kTagFlags),
            wire::kFlagLoopbackRefuse | wire::kFlagShimSocks5 | wire::kFlagPipeline);
}

TEST_F(BrokerProtocolTest, IsolatedOverlayGivesNoCredentialsAndHandshakeBrokerGivesNothing) {
  config_.overlays[0].socks5.isolate_streams = true;
  config_.overlays[0].socks5.username = "configured";
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Hello(fd.get(), "app:refused");
  EXPECT_EQ(r.U32(wire::kTagFlags),
            wire::kFlagLoopbackRefuse | wire::kFlagShimSocks5 | wire::kFlagIsolate);
  EXPECT_FALSE(r.Has(wire::kTagUsername));
  EXPECT_FALSE(r.Has(wire::kTagPassword));
  StopBroker();
  config_.service.handshake_in_program = false;
  StartBroker();
  UniqueFd fd2 = Connect();
  Reply r2 = Hello(fd2.get(), "app:refused");
  EXPECT_EQ(r2.U32(wire::kTagFlags), wire::kFlagLoopbackRefuse);
  EXPECT_FALSE(r2.Has(wire::kTagProxy));
}

TEST_F(BrokerProtocolTest, ReportsAreCountedAndFailuresLogged) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  auto send = [&](const Fill& fill) {
    uint8_t buf[512];
    wire::Writer w(buf, sizeof buf, wire::kReport, 77);
    fill(w);
    ASSERT_EQ(wire::SendDatagram(fd.get(), w.data(), w.size(), -1), ssize_t(w.size()));
  };
  send([](wire::Writer& w) {
    w.PutString(wire::kTagName, "ok.test");
    w.PutU16(wire::kTagPort, 80);
    w.PutU32(wire::kTagErrno, 0);
  });
  send([](wire::Writer& w) { w.PutU32(wire::kTagCount, 41); });
  send([](wire::Writer& w) {
    w.PutString(wire::kTagName, "down.test");
    w.PutU16(wire::kTagPort, 8080);
    w.PutU32(wire::kTagErrno, ECONNREFUSED);
    w.PutString(wire::kTagMessage, "down.test:8080 via app:refused: cannot connect to proxy");
  });
  // Only the failure is answered: successes and counts are not.
  Reply r = Receive(fd.get());
  EXPECT_EQ(r.type, wire::kReport | wire::kReplyBit);
  EXPECT_EQ(r.id, 77u);
  EXPECT_EQ(r.err, 0u);
  EXPECT_NE(Log().find("connect down.test:8080 via app:refused failed: down.test:8080 via "
                       "app:refused: cannot connect to proxy (pid "),
            std::string::npos)
      << Log();
  std::string text = StatusText();
  EXPECT_NE(text.find("connects ok=42 failed=1"), std::string::npos) << text;
  // A count with an errno, or beyond reason, is an error with a message.
  send([](wire::Writer& w) { w.PutU32(wire::kTagCount, 5u << 20); });
  Reply bad = Receive(fd.get());
  EXPECT_EQ(bad.err, uint32_t(EINVAL));
  EXPECT_NE(bad.message.find("COUNT"), std::string::npos);
  // Refusals by kind are a strict session's (via run --strict --audit): refused on a
  // connection without one, and not counted as successes.
  send([](wire::Writer& w) {
    w.PutU32(wire::kTagCount, 2);
    w.PutString(wire::kTagRefused, "UDP send");
  });
  Reply refused = Receive(fd.get());
  EXPECT_EQ(refused.err, uint32_t(EPERM));
  EXPECT_NE(refused.message.find("not a strict one"), std::string::npos) << refused.message;
  text = StatusText();
  EXPECT_NE(text.find("connects ok=42 failed=1"), std::string::npos) << text;
  EXPECT_EQ(text.find("UDP send"), std::string::npos) << text;
}

TEST_F(BrokerProtocolTest, HelloWithUnknownOverlayFailsEveryLaterRequest) {
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Hello(fd.get(), "app:nope");
  EXPECT_EQ(r.err, uint32_t(ENOENT));
  EXPECT_EQ(r.message, "unknown overlay \"app:nope\" (known: app:refused, app:silent, app:ts)");
  Reply later = Resolve(fd.get(), "example.test");
  EXPECT_EQ(later.err, uint32_t(ENOENT));
  EXPECT_EQ(later.message, r.message);
}

TEST_F(BrokerProtocolTest, HelloWithOverlayWithoutDriverGivesItsError) {
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Hello(fd.get(), "app:ts");
  EXPECT_EQ(r.err, uint32_t(EINVAL));
  EXPECT_NE(r.message.find("auth_key_env VIA_UNIT_TEST_UNSET_TS_KEY is not set"), std::string::npos)
      << r.message;
}

TEST_F(BrokerProtocolTest, HelloWithSessionTakesTheSessionsNetwork) {
  StartBroker();
  UniqueFd owner = Greeted("direct");
  const std::string token = OpenSession(owner.get(), "app:silent");
  ASSERT_FALSE(token.empty());

  UniqueFd shim = Connect();
  EXPECT_EQ(Hello(shim.get(), "", token).Str(wire::kTagNetwork), "app:silent");
  // A token of no session is refused, not ignored (it could be an ended or forged session).
  UniqueFd stranger = Connect();
  Reply forged = Hello(stranger.get(), "", std::string(32, 'f'));
  EXPECT_EQ(forged.err, uint32_t(EACCES));
  EXPECT_NE(forged.message.find("names no open session"), std::string::npos) << forged.message;
  EXPECT_NE(StatusText().find("network app:silent clients=1\n"), std::string::npos);
}

// ---- sessions ---------------------------------------------------------------------------------

TEST_F(BrokerProtocolTest, OpenSessionGivesA32HexToken) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  Reply r = Request(fd.get(), wire::kOpenSession,
                    [](wire::Writer& w) { w.PutString(wire::kTagNetwork, "app:refused"); });
  EXPECT_EQ(r.err, 0u);
  EXPECT_TRUE(std::regex_match(r.Str(wire::kTagSession), std::regex("[0-9a-f]{32}")))
      << r.Str(wire::kTagSession);
}

TEST_F(BrokerProtocolTest, OneConnectionCannotOpenSessionsWithoutBound) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  auto open = [&] {
    return Request(fd.get(), wire::kOpenSession,
                   [](wire::Writer& w) { w.PutString(wire::kTagNetwork, "app:refused"); });
  };
  for (int i = 0; i < 16; ++i) ASSERT_EQ(open().err, 0u) << i;
  Reply r = open();
  EXPECT_EQ(r.err, uint32_t(EAGAIN));
  EXPECT_EQ(r.message,
            "this connection already opened 16 sessions (at most 16 per connection; `via run` "
            "opens one)");
  // Another connection is not affected.
  UniqueFd other = Greeted("direct");
  EXPECT_EQ(Request(other.get(), wire::kOpenSession, [](wire::Writer& w) {
              w.PutString(wire::kTagNetwork, "app:refused");
            }).err,
            0u);
}

TEST_F(BrokerProtocolTest, OpenSessionForUnknownOverlayIsEnoent) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  Reply r = Request(fd.get(), wire::kOpenSession,
                    [](wire::Writer& w) { w.PutString(wire::kTagNetwork, "app:nope"); });
  EXPECT_EQ(r.err, uint32_t(ENOENT));
  EXPECT_EQ(r.message, "unknown overlay \"app:nope\" (known: app:refused, app:silent, app:ts)");
}

TEST_F(BrokerProtocolTest, SessionEndsWithItsConnection) {
  StartBroker();
  {
    UniqueFd owner = Greeted("direct");
    Request(owner.get(), wire::kOpenSession,
            [](wire::Writer& w) { w.PutString(wire::kTagNetwork, "direct"); });
    EXPECT_NE(StatusText().find("sessions: 1\n"), std::string::npos);
  }
  auto deadline = steady_clock::now() + milliseconds(2000);
  while (StatusText().find("sessions: 0\n") == std::string::npos &&
         steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_NE(StatusText().find("sessions: 0\n"), std::string::npos);
}

// ---- names ------------------------------------------------------------------------------------

TEST_F(BrokerProtocolTest, ResolveAndReverseRoundTrip) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  Reply r = Resolve(fd.get(), "Example.TEST.");
  ASSERT_EQ(r.err, 0u);
  auto addrs = r.Addrs();
  ASSERT_EQ(addrs.size(), 2u);
  // A new table starts at a random number (FakeAddressPool::OpenJournal), the same in both.
  EXPECT_EQ(Text(addrs[0]).rfind("198.1", 0), 0u) << Text(addrs[0]);
  EXPECT_EQ(Text(addrs[1]).rfind("fd76:6961:ff00::", 0), 0u) << Text(addrs[1]);
  EXPECT_EQ(std::memcmp(addrs[0].bytes + 2, addrs[1].bytes + 14, 2), 0);
  EXPECT_EQ(addrs[0].port, 0);
  for (const wire::Addr& a : addrs) {
    Reply rev =
        Request(fd.get(), wire::kReverse, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, a); });
    EXPECT_EQ(rev.err, 0u);
    EXPECT_EQ(rev.Str(wire::kTagName), "example.test");
  }
  EXPECT_EQ(Resolve(fd.get(), "example.test").Addrs()[0], addrs[0]);
}

TEST_F(BrokerProtocolTest, ResolveOneFamily) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  auto v4 = Resolve(fd.get(), "a.test", 4).Addrs();
  ASSERT_EQ(v4.size(), 1u);
  EXPECT_EQ(v4[0].family, 4);
  auto v6 = Resolve(fd.get(), "a.test", 6).Addrs();
  ASSERT_EQ(v6.size(), 1u);
  EXPECT_EQ(v6[0].family, 6);
}

TEST_F(BrokerProtocolTest, ResolveRejectsInvalidNames) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  EXPECT_EQ(Resolve(fd.get(), "").err, uint32_t(EINVAL));
  EXPECT_EQ(Resolve(fd.get(), "bad name.test").err, uint32_t(EINVAL));
  EXPECT_EQ(Resolve(fd.get(), std::string(254, 'a')).err, uint32_t(EINVAL));
}

// ---- DNS_QUERY (raw DNS a program sent itself) -------------------------------------------

TEST_F(BrokerProtocolTest, DnsQueryIsAnsweredFromTheFakeAddressTable) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  // id 0x0102, RD, one question: example.test A IN.
  const std::string q(
      "\x01\x02\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
      "\x07"
      "example"
      "\x04"
      "test"
      "\x00\x00\x01\x00\x01",
      30);
  Reply r = Request(fd.get(), wire::kDnsQuery,
                    [&](wire::Writer& w) { w.PutString(wire::kTagDnsPacket, q); });
  ASSERT_EQ(r.err, 0u) << r.message;
  const std::string a = r.Str(wire::kTagDnsPacket);
  ASSERT_EQ(a.size(), 30u + 16u);
  EXPECT_EQ(a.substr(0, 2), "\x01\x02");
  // The same table as RESOLVE.
  const wire::Addr v4 = Resolve(fd.get(), "example.test").Addrs()[0];
  EXPECT_EQ(a.substr(a.size() - 4), std::string(reinterpret_cast<const char*>(v4.bytes), 4));
  EXPECT_EQ(r.message, "A example.test -> " + Text(v4));
}

TEST_F(BrokerProtocolTest, DnsQueryErrors) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  EXPECT_EQ(Request(fd.get(), wire::kDnsQuery).err, uint32_t(EINVAL));
  Reply shortq = Request(fd.get(), wire::kDnsQuery,
                         [&](wire::Writer& w) { w.PutString(wire::kTagDnsPacket, "abc"); });
  EXPECT_EQ(shortq.err, 0u);
  EXPECT_EQ(shortq.Str(wire::kTagDnsPacket), "");  // nothing to send back
  UniqueFd direct = Greeted("direct");
  EXPECT_EQ(Request(direct.get(), wire::kDnsQuery,
                    [&](wire::Writer& w) { w.PutString(wire::kTagDnsPacket, "abc"); })
                .err,
            uint32_t(EPERM));
}

TEST_F(BrokerProtocolTest, DnsSocketAnswersOnlyTheSocketItWasMadeFor) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  auto udp = [] {
    UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(s.get(), reinterpret_cast<sockaddr*>(&in), sizeof in), 0);
    timeval tv{1, 0};
    setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return s;
  };
  UniqueFd program = udp(), stranger = udp();
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ASSERT_EQ(getsockname(program.get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  wire::Addr local;
  ASSERT_TRUE(wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, &local));
  Reply r = Request(fd.get(), wire::kDnsSocket,
                    [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, local); });
  ASSERT_EQ(r.err, 0u) << r.message;
  auto addrs = r.Addrs();
  ASSERT_EQ(addrs.size(), 1u);
  len = wire::AddrToSockaddr(addrs[0], &ss);
  const std::string q(
      "\x01\x02\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
      "\x07"
      "example"
      "\x04"
      "test"
      "\x00\x00\x01\x00\x01",
      30);
  // Another socket is not answered: the responder is connected to the program's socket.
  ASSERT_EQ(sendto(stranger.get(), q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&ss), len),
            ssize_t(q.size()));
  char buf[512];
  EXPECT_LT(recv(stranger.get(), buf, sizeof buf, 0), 0);
  ASSERT_EQ(connect(program.get(), reinterpret_cast<sockaddr*>(&ss), len), 0);
  ASSERT_EQ(send(program.get(), q.data(), q.size(), 0), ssize_t(q.size()));
  ssize_t n = recv(program.get(), buf, sizeof buf, 0);
  ASSERT_EQ(n, 46);
  const wire::Addr v4 = Resolve(fd.get(), "example.test").Addrs()[0];
  EXPECT_EQ(std::string(buf + 42, 4), std::string(reinterpret_cast<const char*>(v4.bytes), 4));
}

TEST_F(BrokerProtocolTest, DnsSocketErrors) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  EXPECT_EQ(Request(fd.get(), wire::kDnsSocket).err, uint32_t(EINVAL));
  wire::Addr far;
  far.family = 4;
  far.port = 5353;
  far.bytes[0] = 10;
  far.bytes[3] = 1;
  EXPECT_EQ(
      Request(fd.get(), wire::kDnsSocket, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, far); })
          .err,
      uint32_t(EINVAL));
  UniqueFd direct = Greeted("direct");
  far.bytes[0] = 127;
  EXPECT_EQ(Request(direct.get(), wire::kDnsSocket,
                    [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, far); })
                .err,
            uint32_t(EPERM));
}

TEST_F(BrokerProtocolTest, ReverseOfOtherAddressIsEnoent) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  wire::Addr a;
  a.family = 4;
  a.bytes[0] = 10;
  a.bytes[3] = 1;
  Reply r =
      Request(fd.get(), wire::kReverse, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, a); });
  EXPECT_EQ(r.err, uint32_t(ENOENT));
}

// ---- status -----------------------------------------------------------------------------------

TEST_F(BrokerProtocolTest, StatusDescribesTheBroker) {
  StartBroker();
  std::string text = StatusText();
  EXPECT_TRUE(std::regex_search(
      text, std::regex("^broker pid [0-9]+, config " + config_.source + " \\(fingerprint " +
                       config_.fingerprint + ", 0 program rules, 0 network.select policies\\), " +
                       "socket " + socket_path_ + ", up [0-9]+s\n")))
      << text;
  EXPECT_NE(
      text.find("overlay app:refused network.socks5 127.0.0.1:" + std::to_string(refused_port_) +
                " isolate_streams=false handshake=program connects ok=0 failed=0\n"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("overlay app:ts network.tailscale unavailable: "), std::string::npos) << text;
  EXPECT_NE(text.find("sessions: 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("fake addresses: 0 names (pool 198.18.0.0/15, fd76:6961:ff00::/64)\n"),
            std::string::npos)
      << text;
}

// ---- program rules, policy, SESSION_CHILD, RELOAD (0x40-0x4F) ---------------------------------

TEST_F(BrokerProtocolTest, ControlHelloNeedsNoNetworkAndCarriesTheFingerprint) {
  config_.service.default_network = "app:ts";  // unavailable: a shim's HELLO would fail
  StartBroker();
  UniqueFd fd = Connect();
  Reply r = Request(fd.get(), wire::kHello, [](wire::Writer& w) {
    w.PutU16(wire::kTagVersion, wire::kVersion);
    w.PutU32(wire::kTagFlags, wire::kFlagControl);
  });
  EXPECT_EQ(r.err, 0u) << r.message;
  EXPECT_EQ(r.Str(wire::kTagFingerprint), config_.fingerprint);
  EXPECT_EQ(Hello(Connect().get()).err, uint32_t(EINVAL));  // app:ts has no auth key
}

TEST_F(BrokerProtocolTest, OpenSessionDeniedByPolicyNamesTheEntry) {
  // This test binary is "untrusted"; it opens a session for a command with --direct.
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  config::ProgramRule rule;
  rule.id = "app:me";
  rule.file = "via.yaml";
  rule.line = 3;
  rule.exe = std::string(self, size_t(n));
  rule.groups = {"untrusted"};
  config_.programs.push_back(rule);
  config::SecurityPolicy p;
  p.id = "app:deny_network";
  p.file = "via.yaml";
  p.line = 9;
  p.actions = {"network.select"};
  p.resources = {"direct"};
  p.groups = {"untrusted"};
  config_.policies.push_back(p);
  StartBroker();
  UniqueFd fd = Greeted("direct");
  Reply r = Request(fd.get(), wire::kOpenSession, [](wire::Writer& w) {
    w.PutString(wire::kTagNetwork, "direct");
    w.PutU32(wire::kTagFlags, wire::kFlagSessionExplicit);
    w.PutString(wire::kTagExe, "/usr/bin/true");
    w.PutString(wire::kTagArgv, "true");
  });
  EXPECT_EQ(r.err, uint32_t(EACCES));
  EXPECT_NE(r.message.find("network.select of direct is denied by security.policy "
                           "app:deny_network (via.yaml:9) for group untrusted"),
            std::string::npos)
      << r.message;
  // An overlay is not covered by that entry.
  Reply ok = Request(fd.get(), wire::kOpenSession, [](wire::Writer& w) {
    w.PutString(wire::kTagNetwork, "silent");
    w.PutU32(wire::kTagFlags, wire::kFlagSessionExplicit);
  });
  EXPECT_EQ(ok.err, 0u) << ok.message;
  EXPECT_EQ(ok.Str(wire::kTagNetwork), "app:silent");
  EXPECT_NE(Log().find("session refused for"), std::string::npos);
}

TEST_F(BrokerProtocolTest, SessionChildMustBeTheOpenersChild) {
  StartBroker();
  UniqueFd owner = Greeted("direct");
  const std::string token = OpenSession(owner.get(), "app:silent");
  ASSERT_FALSE(token.empty());
  auto child = [&](int fd, const std::string& t, uint32_t pid) {
    return Request(fd, wire::kSessionChild, [&](wire::Writer& w) {
      if (!t.empty()) w.PutString(wire::kTagSession, t);
      if (pid != 0) w.PutU32(wire::kTagPid, pid);
    });
  };
  EXPECT_EQ(child(owner.get(), "", 1).err, uint32_t(EINVAL));
  EXPECT_EQ(child(owner.get(), token, 0).err, uint32_t(EINVAL));
  UniqueFd other = Greeted("direct");
  EXPECT_EQ(child(other.get(), token, uint32_t(getpid())).err, uint32_t(EPERM));  // not owner
  Reply not_child = child(owner.get(), token, 1);
  EXPECT_EQ(not_child.err, uint32_t(EPERM));
  EXPECT_EQ(not_child.message, "pid 1 is not a child of the session's opener");
  pid_t pid = fork();
  if (pid == 0) {
    pause();
    _exit(0);
  }
  EXPECT_EQ(child(owner.get(), token, uint32_t(pid)).err, 0u);
  EXPECT_EQ(child(owner.get(), token, uint32_t(pid)).err, uint32_t(EEXIST));
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

TEST_F(BrokerProtocolTest, StrictProcessIsOnlyForTheSessionOpenersDescendants) {
  StartBroker();
  UniqueFd owner = Greeted("direct");
  const std::string token = OpenSession(owner.get(), "app:silent");
  ASSERT_FALSE(token.empty());
  auto strict = [&](int fd, uint32_t pid) {
    return Request(fd, wire::kStrictProcess, [&](wire::Writer& w) {
      if (pid != 0) w.PutU32(wire::kTagPid, pid);
    });
  };
  UniqueFd member = Connect();
  ASSERT_EQ(Hello(member.get(), "", token).err, 0u);
  EXPECT_EQ(strict(member.get(), 0).err, uint32_t(EINVAL));  // no PID
  UniqueFd stranger = Greeted("app:silent");                 // not greeted with the session
  EXPECT_EQ(strict(stranger.get(), uint32_t(getpid())).err, uint32_t(EPERM));
  Reply not_mine = strict(member.get(), 1);
  EXPECT_EQ(not_mine.err, uint32_t(EPERM));
  EXPECT_EQ(not_mine.message, "STRICT_PROCESS: pid 1 is not a descendant of the session's opener");
  pid_t pid = fork();
  if (pid == 0) {
    pause();
    _exit(0);
  }
  EXPECT_EQ(strict(member.get(), uint32_t(pid)).err, 0u);
  // The next HELLO selects for that process: the session's network here (no rule matches it).
  Reply again = Hello(member.get(), "", token);
  EXPECT_EQ(again.err, 0u);
  EXPECT_EQ(again.Str(wire::kTagNetwork), "app:silent");
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

TEST_F(BrokerProtocolTest, ReloadRejectsABrokenConfigAndAppliesAGoodOne) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  {
    FILE* f = fopen(config_.source.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs("namespace: app\nentries:\n  - name: x\n    kind: network.socks5\n", f);
    fclose(f);
  }
  Reply bad = Request(fd.get(), wire::kReload);
  EXPECT_EQ(bad.err, uint32_t(EINVAL));
  EXPECT_EQ(bad.message,
            config_.source + ":3:5: entry app:x (network.socks5): host: network: host is required");
  EXPECT_EQ(bad.Str(wire::kTagFingerprint), config_.fingerprint);  // still the old one
  EXPECT_NE(StatusText().find("overlay app:silent"), std::string::npos);
  EXPECT_NE(Log().find("rejected, still running the previous configuration"), std::string::npos);
  UniqueFd silent = Greeted("app:silent");
  {
    FILE* f = fopen(config_.source.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs(
        "namespace: app\nentries:\n  - name: fresh\n    kind: network.socks5\n"
        "    host: 127.0.0.1\n    port: 9\n",
        f);
    fclose(f);
  }
  Reply good = Request(fd.get(), wire::kReload);
  EXPECT_EQ(good.err, 0u) << good.message;
  EXPECT_NE(good.Str(wire::kTagFingerprint), config_.fingerprint);
  std::string text = StatusText();
  EXPECT_NE(text.find("overlay app:fresh"), std::string::npos) << text;
  EXPECT_EQ(text.find("overlay app:silent"), std::string::npos) << text;
  // A connection greeted for an overlay that is gone is closed (its shim held the proxy's
  // address): it greets again, and fails closed.
  EXPECT_TRUE(ClosedByBroker(silent.get()));
  UniqueFd again = Connect();
  Reply gone = Hello(again.get(), "app:silent");
  EXPECT_EQ(gone.err, uint32_t(ENOENT));
  EXPECT_EQ(gone.message, "unknown overlay \"app:silent\" (known: app:fresh)");
}

// ---- CONNECT ----------------------------------------------------------------------------------

TEST_F(BrokerProtocolTest, ConnectWithoutSocketIsEbadf) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  EXPECT_EQ(ConnectByName(fd.get(), -1).err, uint32_t(EBADF));
}

TEST_F(BrokerProtocolTest, ConnectWithUdpSocketIsEprototype) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  UniqueFd udp(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(ConnectByName(fd.get(), udp.get()).err, uint32_t(EPROTOTYPE));
}

TEST_F(BrokerProtocolTest, ConnectWithPipeIsEnotsock) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  UniqueFd rd(p[0]), wr(p[1]);
  EXPECT_EQ(ConnectByName(fd.get(), rd.get()).err, uint32_t(ENOTSOCK));
}

TEST_F(BrokerProtocolTest, ConnectOnDirectConnectionIsEinval) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  UniqueFd tcp(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Reply r = ConnectByName(fd.get(), tcp.get());
  EXPECT_EQ(r.err, uint32_t(EINVAL));
  EXPECT_NE(r.message.find("connection's network is direct"), std::string::npos) << r.message;
}

TEST_F(BrokerProtocolTest, AnAddressKeepsItsNameWhenTheBrokerRestarts) {
  StartBroker();
  wire::Addr held;
  {
    UniqueFd fd = Greeted("app:refused");
    held = Resolve(fd.get(), "first.test").Addrs().at(0);
  }
  StopBroker();
  StartBroker();  // the next broker of the same socket
  UniqueFd fd = Greeted("app:refused");
  for (const char* other : {"second.test", "third.test"}) {
    EXPECT_NE(Resolve(fd.get(), other).Addrs().at(0), held) << other;
  }
  Reply rev =
      Request(fd.get(), wire::kReverse, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, held); });
  EXPECT_EQ(rev.err, 0u) << rev.message;
  EXPECT_EQ(rev.Str(wire::kTagName), "first.test");
  EXPECT_NE(Log().find("1 name(s) kept from earlier brokers"), std::string::npos) << Log();
}

TEST_F(BrokerProtocolTest, ExecGreetingIsAskedForOnlyWithGroupRulesAndSaysIfThereAreGroups) {
  auto exec_hello = [&] {
    UniqueFd fd = Connect();
    return Request(fd.get(), wire::kHello, [](wire::Writer& w) {
      w.PutU16(wire::kTagVersion, wire::kVersion);
      w.PutU32(wire::kTagFlags, wire::kFlagExecHello);
    });
  };
  const std::string marker = socket_path_ + ".exec-hello";
  StartBroker();
  EXPECT_NE(access(marker.c_str(), F_OK), 0);  // no rule gives groups
  Reply none = exec_hello();
  EXPECT_EQ(none.err, 0u);
  EXPECT_EQ(none.U32(wire::kTagFlags) & wire::kFlagHasGroups, 0u);
  StopBroker();
  // A rule that gives this very program a group.
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  ASSERT_GT(n, 0);
  config::ProgramRule r;
  r.id = "app:me";
  r.exe = std::string(self, size_t(n));
  r.groups = {"untrusted"};
  config_.programs.push_back(r);
  StartBroker();
  EXPECT_EQ(access(marker.c_str(), F_OK), 0);
  EXPECT_EQ(access((dir_ + "/exec-hello").c_str(), F_OK), 0);
  Reply some = exec_hello();
  EXPECT_EQ(some.err, 0u);
  EXPECT_NE(some.U32(wire::kTagFlags) & wire::kFlagHasGroups, 0u);
  StopBroker();
  EXPECT_NE(access(marker.c_str(), F_OK), 0);  // a stopped broker takes its marker away
  EXPECT_NE(access((dir_ + "/exec-hello").c_str(), F_OK), 0);
}

TEST_F(BrokerProtocolTest, ConnectToUnknownFakeAddressIsEhostunreach) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  UniqueFd tcp(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  wire::Addr a;
  a.family = 4;
  a.port = 80;
  a.bytes[0] = 198;
  a.bytes[1] = 18;
  a.bytes[3] = 9;
  Reply r = ConnectToAddr(fd.get(), tcp.get(), a);
  EXPECT_EQ(r.err, uint32_t(EHOSTUNREACH));
  EXPECT_NE(r.message.find("unknown fake address 198.18.0.9 (the name was resolved by a broker "
                           "that has since restarted?)"),
            std::string::npos)
      << r.message;
}

TEST_F(BrokerProtocolTest, ConnectToRefusingProxyIsEconnrefusedAndKeepsFlags) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  UniqueFd tcp(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int before = fcntl(tcp.get(), F_GETFL);
  Reply r = ConnectByName(fd.get(), tcp.get());
  EXPECT_EQ(r.err, uint32_t(ECONNREFUSED)) << r.message;
  EXPECT_NE(r.message.find("example.test:80 via app:refused: "), std::string::npos) << r.message;
  EXPECT_EQ(fcntl(tcp.get(), F_GETFL), before);
  EXPECT_EQ(before & O_NONBLOCK, 0);
  EXPECT_NE(Log().find("connect example.test:80 via app:refused failed: "), std::string::npos)
      << Log();
}

TEST_F(BrokerProtocolTest, ConnectFromIpv6SocketReachesIpv4ProxyThroughMappedAddress) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  UniqueFd tcp(socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!tcp) GTEST_SKIP() << "no IPv6 here: " << std::strerror(errno);
  int before = fcntl(tcp.get(), F_GETFL);
  EXPECT_EQ(ConnectByName(fd.get(), tcp.get()).err, uint32_t(ECONNREFUSED));
  EXPECT_EQ(fcntl(tcp.get(), F_GETFL), before);  // O_NONBLOCK stays set
}

TEST_F(BrokerProtocolTest, ConnectFromIpv6OnlySocketToIpv4ProxyIsEafnosupport) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  UniqueFd tcp(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!tcp) GTEST_SKIP() << "no IPv6 here: " << std::strerror(errno);
  int one = 1;
  ASSERT_EQ(setsockopt(tcp.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one), 0);
  Reply r = ConnectByName(fd.get(), tcp.get());
  EXPECT_EQ(r.err, uint32_t(EAFNOSUPPORT));
  EXPECT_NE(r.message.find("IPV6_V6ONLY"), std::string::npos) << r.message;
}

TEST_F(BrokerProtocolTest, ConnectToSilentProxyTimesOutAndKeepsFlags) {
  StartBroker();
  UniqueFd fd = Greeted("app:silent");
  UniqueFd tcp(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int before = fcntl(tcp.get(), F_GETFL);
  auto start = steady_clock::now();
  Reply r = ConnectByName(fd.get(), tcp.get());
  auto took = steady_clock::now() - start;
  EXPECT_EQ(r.err, uint32_t(ETIMEDOUT)) << r.message;
  EXPECT_GE(took, milliseconds(250));
  EXPECT_LT(took, milliseconds(3000));
  EXPECT_EQ(fcntl(tcp.get(), F_GETFL), before);
  EXPECT_NE(StatusText().find(
                "overlay app:silent network.socks5 127.0.0.1:" + std::to_string(silent_port_) +
                " isolate_streams=false handshake=program connects ok=0 failed=1\n"),
            std::string::npos);
}

TEST_F(BrokerProtocolTest, ClientLeavingMidConnectCancelsIt) {
  StartBroker();
  UniqueFd tcp(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int before = fcntl(tcp.get(), F_GETFL);
  {
    UniqueFd fd = Greeted("app:silent");
    uint8_t buf[128];
    wire::Writer w(buf, sizeof buf, wire::kConnect, 1);
    w.PutString(wire::kTagName, "example.test");
    w.PutU16(wire::kTagPort, 80);
    SendRaw(fd.get(), w.data(), w.size(), tcp.get());
    std::this_thread::sleep_for(milliseconds(50));
  }
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_NE(StatusText().find("connects in flight: 0\n"), std::string::npos);
  EXPECT_EQ(fcntl(tcp.get(), F_GETFL), before);
}

// ---- lifetime ---------------------------------------------------------------------------------

TEST_F(BrokerProtocolTest, SecondBrokerOnTheSameSocketRefusesToStart) {
  StartBroker();
  BrokerOptions second = options_;
  second.log_path = dir_ + "/second.log";
  EXPECT_EQ(RunBroker(config_, second), 1);
  std::string cmd =
      "grep -q 'another broker is already listening on " + socket_path_ + "' " + second.log_path;
  EXPECT_EQ(system(cmd.c_str()), 0);
  EXPECT_EQ(StatusText().substr(0, 6), "broker");  // the first one is untouched
}

TEST_F(BrokerProtocolTest, StaleSocketFileIsReplaced) {
  {
    UniqueFd stale(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strcpy(sun.sun_path, socket_path_.c_str());
    ASSERT_EQ(bind(stale.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun), 0);
  }  // bound, never listening, closed: connects are refused
  StartBroker();
  EXPECT_EQ(StatusText().substr(0, 6), "broker");
}

TEST_F(BrokerProtocolTest, SocketIsPrivate) {
  StartBroker();
  struct stat st;
  ASSERT_EQ(stat(socket_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(BrokerProtocolTest, RefusesADirectoryOthersCanEnter) {
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  options_.socket_path = socket_path_;
  options_.log_path = log_path_;
  options_.foreground = false;
  EXPECT_EQ(RunBroker(config_, options_), 1);
  EXPECT_NE(Log().find("must be a directory owned by you with mode 0700"), std::string::npos);
}

TEST_F(BrokerProtocolTest, ExitsWhenIdleAndRemovesItsSocket) {
  StartBroker(/*stay=*/false, /*idle_timeout_s=*/0);
  broker_.join();
  EXPECT_EQ(broker_status_, 0);
  EXPECT_NE(access(socket_path_.c_str(), F_OK), 0);
}

TEST_F(BrokerProtocolTest, ShutdownStopsTheBroker) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  EXPECT_EQ(Request(fd.get(), wire::kShutdown).err, 0u);
  broker_.join();
  EXPECT_EQ(broker_status_, 0);
  EXPECT_NE(access(socket_path_.c_str(), F_OK), 0);
}

// ---- mutated requests -------------------------------------------------------------------------

// Thousands of requests made from well-formed ones by random edits (bytes changed, fields cut,
// repeated, added with any tag, lengths and types altered, descriptors attached or not), sent on
// greeted and on fresh connections. Every one must get a well-formed reply (an error carries a
// MESSAGE) or, for broken framing, an EPROTO reply and a closed connection; the broker must stay
// up and keep serving a bystander that asked for nothing unusual. Deterministic (fixed seed).
// A client that sends requests and never reads the replies: past the reply queue's bound the
// broker stops reading its requests (they wait in the socket: its sends fail with EAGAIN), others
// are served meanwhile, and once it reads, every request it sent gets its reply, in order.
TEST_F(BrokerProtocolTest, UnreadRepliesStopReadingThatClientOnly) {
  StartBroker();
  UniqueFd greedy = Greeted("app:refused");
  fcntl(greedy.get(), F_SETFL, fcntl(greedy.get(), F_GETFL) | O_NONBLOCK);
  wire::Addr addr{};
  addr.family = 4;
  addr.bytes[0] = 198;
  addr.bytes[1] = 18;
  addr.bytes[3] = 1;
  const uint32_t first = next_id_ + 1;
  uint32_t sent = 0;
  auto deadline = steady_clock::now() + milliseconds(3000);
  while (sent < 200000 && steady_clock::now() < deadline) {
    uint8_t buf[64];
    wire::Writer w(buf, sizeof buf, wire::kReverse, first + sent);
    w.PutAddr(wire::kTagAddr, addr);
    if (send(greedy.get(), w.data(), w.size(), MSG_NOSIGNAL) == ssize_t(w.size())) {
      ++sent;
    } else {
      ASSERT_EQ(errno, EAGAIN) << std::strerror(errno);
      std::this_thread::sleep_for(milliseconds(1));
    }
  }
  // Held back: the old broker read (and queued the replies of) every request at once.
  EXPECT_LT(sent, 200000u);
  // Another client is served while the greedy one is paused.
  std::string status = StatusText();
  EXPECT_NE(status.find("1 client(s) paused now"), std::string::npos) << status;
  EXPECT_NE(status.find("backpressure: 1 time(s)"), std::string::npos) << status;
  // Reading drains the queue and resumes it: every request is answered, in order.
  fcntl(greedy.get(), F_SETFL, fcntl(greedy.get(), F_GETFL) & ~O_NONBLOCK);
  for (uint32_t i = 0; i < sent; ++i) {
    Reply r = Receive(greedy.get());
    ASSERT_FALSE(r.closed) << i;
    ASSERT_EQ(r.id, first + i);
    ASSERT_EQ(r.type, wire::kReverse | wire::kReplyBit);
  }
  next_id_ = first + sent;
  EXPECT_EQ(Resolve(greedy.get(), "after.test").err, 0u);
  EXPECT_NE(StatusText().find("0 client(s) paused now"), std::string::npos);
}

TEST_F(BrokerProtocolTest, MutatedRequestsGetAnAnswerAndBreakNothing) {
  StartBroker();
  UniqueFd bystander = Greeted("app:refused");
  ASSERT_EQ(Resolve(bystander.get(), "bystander.test").err, 0u);

  std::vector<std::vector<uint8_t>> templates;
  auto add = [&](uint16_t type, const Fill& fill) {
    uint8_t buf[1024];
    wire::Writer w(buf, sizeof buf, type, 1);
    fill(w);
    templates.emplace_back(w.data(), w.data() + w.size());
  };
  wire::Addr fake = Resolve(bystander.get(), "mutant.test").Addrs().at(0);
  wire::Addr v4;
  v4.family = 4;
  v4.port = 80;
  v4.bytes[0] = 192;
  v4.bytes[3] = 1;
  std::string dns_query(
      "\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07mutated\x04test\x00\x00\x01\x00\x01",
      31);
  add(wire::kHello, [](wire::Writer& w) {
    w.PutU16(wire::kTagVersion, wire::kVersion);
    w.PutString(wire::kTagNetwork, "app:refused");
  });
  add(wire::kResolve, [](wire::Writer& w) {
    w.PutString(wire::kTagName, "example.test");
    w.PutU8(wire::kTagFamily, 4);
  });
  add(wire::kReverse, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, fake); });
  add(wire::kConnect, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, v4); });
  add(wire::kConnect, [](wire::Writer& w) {
    w.PutString(wire::kTagName, "example.test");
    w.PutU16(wire::kTagPort, 443);
  });
  add(wire::kDnsQuery, [&](wire::Writer& w) {
    w.PutBytes(wire::kTagDnsPacket, dns_query.data(), dns_query.size());
  });
  add(wire::kStatus, [](wire::Writer&) {});
  add(wire::kOpenSession, [](wire::Writer& w) {
    w.PutString(wire::kTagNetwork, "app:refused");
    w.PutU32(wire::kTagFlags, wire::kFlagSessionExplicit);
  });
  add(wire::kListen, [&](wire::Writer& w) { w.PutAddr(wire::kTagAddr, v4); });
  add(wire::kReport, [&](wire::Writer& w) {
    w.PutAddr(wire::kTagAddr, v4);
    w.PutU32(wire::kTagErrno, 0);
  });
  add(wire::kReport, [](wire::Writer& w) {
    w.PutString(wire::kTagName, "example.test");
    w.PutU16(wire::kTagPort, 443);
    w.PutU32(wire::kTagErrno, ECONNREFUSED);
    w.PutString(wire::kTagMessage, "SOCKS5 proxy replied 0x05 (connection refused)");
  });

  // VIA_TEST_MUTATION_SEED / VIA_TEST_MUTATIONS explore further (ASan builds included).
  const char* seed_env = getenv("VIA_TEST_MUTATION_SEED");
  const char* count_env = getenv("VIA_TEST_MUTATIONS");
  const int count = count_env != nullptr ? atoi(count_env) : 3000;
  std::mt19937 rng(seed_env != nullptr ? unsigned(atoi(seed_env)) : 20261206u);
  auto mutate = [&](std::vector<uint8_t> m) {
    const size_t header = wire::kHeaderSize;
    int edits = 1 + int(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      size_t body = m.size() - std::min(m.size(), header);
      switch (rng() % 7) {
        case 0:  // change a byte of the body (tags, lengths, values)
          if (body > 0) m[header + rng() % body] = uint8_t(rng());
          break;
        case 1:  // cut the body short
          if (body > 0) m.resize(header + rng() % body);
          break;
        case 2: {  // a field with any tag and a random value
          uint8_t f[4 + 24];
          uint16_t len = uint16_t(rng() % 25);
          wire::PutLE16(f, uint16_t(rng() % 3 == 0 ? rng() : rng() % 0x60));
          wire::PutLE16(f + 2, len);
          for (int i = 0; i < len; ++i) f[4 + i] = uint8_t(rng());
          m.insert(m.begin() + long(header + (body > 0 ? rng() % (body + 1) : 0)), f, f + 4 + len);
          break;
        }
        case 3:  // repeat the body (every field twice)
          m.insert(m.end(), m.begin() + long(header), m.end());
          break;
        case 4:  // another request type, known or not
          wire::PutLE16(m.data() + 4, uint16_t(rng() % 3 == 0 ? rng() : rng() % 0x50));
          break;
        case 5:  // a byte of the header
          m[rng() % header] ^= uint8_t(1u << (rng() % 8));
          break;
        default:  // a field's length off by a little
          if (body >= 4) m[header + 2] = uint8_t(m[header + 2] + 1 + rng() % 3);
      }
    }
    // SHUTDOWN is every client's right (`via stop`); it would end the campaign.
    if (m.size() >= 6 && wire::GetLE16(m.data() + 4) == wire::kShutdown) {
      wire::PutLE16(m.data() + 4, wire::kStatus);
    }
    if (rng() % 5 != 0 && m.size() >= header) {
      // Mostly: the framing repaired (magic, body length, each field inside the body), so that
      // the fields themselves get parsed; the rest tests framing errors.
      wire::PutLE32(m.data(), wire::kMagic);
      size_t off = header;
      while (off + 4 <= m.size()) {
        size_t len = wire::GetLE16(m.data() + off + 2);
        if (off + 4 + len > m.size()) {
          len = m.size() - off - 4;
          wire::PutLE16(m.data() + off + 2, uint16_t(len));
        }
        off += 4 + len;
      }
      m.resize(off);
      wire::PutLE32(m.data() + 12, uint32_t(m.size() - header));
    }
    return m;
  };

  UniqueFd c;
  int answered = 0, closed = 0, unanswered_reports = 0;
  for (int i = 0; i < count; ++i) {
    if (!c || rng() % 50 == 0) c = rng() % 2 ? Greeted("app:refused") : Connect();
    std::vector<uint8_t> m = mutate(templates[rng() % templates.size()]);
    UniqueFd attach;
    switch (rng() % 4) {
      case 0:
        attach.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        break;
      case 1: {
        int sv[2];
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
        attach.reset(sv[1]);
        close(sv[0]);
        break;
      }
      default:
        break;
    }
    ASSERT_EQ(wire::SendDatagram(c.get(), m.data(), m.size(), attach ? attach.get() : -1),
              ssize_t(m.size()))
        << "request " << i << ": " << std::strerror(errno);
    // Every request is answered, even one that gets its connection closed; except a REPORT of a
    // success (ERRNO absent or 0) on a greeted connection: counted, not answered.
    wire::Message sent;
    const bool parsed = sent.Parse(m.data(), m.size()) == wire::ParseError::kOk;
    std::optional<Reply> early;
    bool status_behind = false;
    if (parsed && sent.type() == wire::kReport) {
      // A STATUS right behind it: its reply comes first if the REPORT was not answered.
      uint8_t sb[64];
      wire::Writer sw(sb, sizeof sb, wire::kStatus, 0x5eed);
      ASSERT_EQ(wire::SendDatagram(c.get(), sw.data(), sw.size(), -1), ssize_t(sw.size()));
      {
        Reply first = Receive(c.get());
        ASSERT_FALSE(first.closed) << "request " << i << ": no reply; log:\n" << Log();
        if (first.id == 0x5eed && first.type == (wire::kStatus | wire::kReplyBit)) {
          wire::Field f;
          uint32_t err = 0;
          ASSERT_TRUE(!sent.Find(wire::kTagErrno, &f) || (f.u32(&err) && err == 0))
              << "request " << i << ": a failure REPORT was not answered";
          ++answered;
          ++unanswered_reports;
          continue;
        }
        // Answered: that reply is checked below, and the STATUS reply behind it read.
        early = std::move(first);
        status_behind = true;
      }
    }
    Reply r = early ? std::move(*early) : Receive(c.get());
    ASSERT_FALSE(r.closed) << "request " << i << ": no reply; log:\n" << Log();
    ASSERT_NE(r.type & wire::kReplyBit, 0) << "request " << i;
    ASSERT_NE(r.err, 0xffffffffu) << "reply to request " << i << " without ERRNO";
    if (r.err != 0) {
      ASSERT_FALSE(r.message.empty()) << "error " << r.err << " without a MESSAGE, request " << i;
    }
    ++answered;
    if (!parsed) {
      // Broken framing: answered as a reply to nothing (type 0, id 0), then closed.
      ASSERT_EQ(r.type, wire::kReplyBit) << "request " << i;
      ASSERT_EQ(r.id, 0u) << "request " << i;
      ASSERT_EQ(r.err, uint32_t(EPROTO)) << "request " << i;
      ASSERT_TRUE(ClosedByBroker(c.get())) << "request " << i;
      ++closed;
      c.reset();
    } else {
      ASSERT_EQ(r.type, sent.type() | wire::kReplyBit) << "request " << i;
      ASSERT_EQ(r.id, sent.id()) << "request " << i;
      if (status_behind) {
        ASSERT_EQ(Receive(c.get()).id, 0x5eedu) << "request " << i;
      }
    }
  }
  EXPECT_EQ(answered, count);
  EXPECT_GT(closed, 0);  // the campaign did break framing sometimes
  EXPECT_GT(unanswered_reports, 0);
  EXPECT_FALSE(broker_exited_);
  // The bystander's link and the broker's tables are intact.
  Reply again = Resolve(bystander.get(), "bystander.test");
  EXPECT_EQ(again.err, 0u);
  EXPECT_EQ(Request(bystander.get(), wire::kStatus).err, 0u);
  UniqueFd fresh = Greeted("app:refused");
  EXPECT_EQ(Resolve(fresh.get(), "after.test").err, 0u);
}

// ---- LISTEN (inbound listeners) ----------------------------------------------------------------

class ListenProtocolTest : public BrokerProtocolTest {
 protected:
  // LISTEN for 0.0.0.0:8080 with `attach` (or a fresh socketpair end when -2).
  Reply Listen(int fd, int attach = -2, bool with_addr = true) {
    UniqueFd mine, theirs;
    if (attach == -2) {
      int sv[2];
      EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
      mine.reset(sv[0]);
      theirs.reset(sv[1]);
      attach = theirs.get();
    }
    return Request(
        fd, wire::kListen,
        [&](wire::Writer& w) {
          if (!with_addr) return;
          wire::Addr a;
          a.family = 4;
          a.port = 8080;
          w.PutAddr(wire::kTagAddr, a);
        },
        attach);
  }
};

TEST_F(ListenProtocolTest, WithoutSocketIsEbadf) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  EXPECT_EQ(Listen(fd.get(), -1).err, uint32_t(EBADF));
}

TEST_F(ListenProtocolTest, WithTcpSocketIsEprototype) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  UniqueFd tcp(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(Listen(fd.get(), tcp.get()).err, uint32_t(EPROTOTYPE));
}

TEST_F(ListenProtocolTest, WithoutAddrIsEinval) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  Reply r = Listen(fd.get(), -2, false);
  EXPECT_EQ(r.err, uint32_t(EINVAL));
  EXPECT_EQ(r.message, "LISTEN needs a well-formed ADDR");
}

TEST_F(ListenProtocolTest, OnDirectIsEinval) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  EXPECT_EQ(Listen(fd.get()).err, uint32_t(EINVAL));
}

TEST_F(ListenProtocolTest, Socks5CannotCarryInbound) {
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  Reply r = Listen(fd.get());
  EXPECT_EQ(r.err, uint32_t(EOPNOTSUPP));
  EXPECT_EQ(r.message,
            "app:refused (network.socks5) cannot carry inbound connections; set "
            "network_service.listen: local to listen on the host's own interfaces instead");
  EXPECT_NE(Log().find("listen on 0.0.0.0:8080 failed: app:refused (network.socks5) cannot "
                       "carry inbound connections"),
            std::string::npos)
      << Log();
}

TEST_F(ListenProtocolTest, LocalPolicyAnswersWithTheFlag) {
  config_.service.listen = config::ListenPolicy::kLocal;
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  Reply r = Listen(fd.get());
  EXPECT_EQ(r.err, 0u);
  EXPECT_EQ(r.U32(wire::kTagFlags), wire::kFlagListenLocal);
}

TEST_F(ListenProtocolTest, RefusePolicy) {
  config_.service.listen = config::ListenPolicy::kRefuse;
  StartBroker();
  UniqueFd fd = Greeted("app:refused");
  Reply r = Listen(fd.get());
  EXPECT_EQ(r.err, uint32_t(EOPNOTSUPP));
  EXPECT_EQ(r.message,
            "network_service.listen is refuse under app:refused (use overlay or local to allow "
            "listening)");
}

TEST_F(ListenProtocolTest, StatusListsNoListenersByDefault) {
  StartBroker();
  UniqueFd fd = Greeted("direct");
  Reply r = Request(fd.get(), wire::kStatus);
  EXPECT_NE(r.Str(wire::kTagText).find("listeners: 0\n"), std::string::npos);
}

}  // namespace
}  // namespace via::broker
