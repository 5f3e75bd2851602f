// The proxy connect-and-handshake engine (common/proxy_connect.h) that the shim and the broker
// share, against a scripted proxy: a real loopback listener whose side of the conversation a
// thread of the test plays byte by byte (expected bytes, replies, pauses, a close), including
// hostile and short replies and a proxy that never answers.
#include "common/proxy_connect.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include "common/socks5_client.h"
#include "common/socks5_plan.h"
#include "common/unique_fd.h"

namespace via::proxy {
namespace {

std::string B(std::initializer_list<int> v) {
  std::string b;
  for (int c : v) b += char(c);
  return b;
}

// The proxy's side of one connection, played from a script in a thread of the test.
class ScriptedProxy {
 public:
  ScriptedProxy() {
    listener_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    EXPECT_EQ(bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), len), 0);
    EXPECT_EQ(listen(listener_.get(), 1), 0);
    EXPECT_EQ(getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr_), &len), 0);
    text_ = "proxy 127.0.0.1:" + std::to_string(ntohs(addr_.sin_port));  // as callers name it
    int p[2];
    EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
    stop_read_.reset(p[0]);
    stop_write_.reset(p[1]);
  }
  ~ScriptedProxy() { Finish(); }

  // The script, in order.
  ScriptedProxy& Expect(const std::string& bytes) { return Add(kExpect, bytes, 0); }
  ScriptedProxy& Send(const std::string& bytes) { return Add(kSend, bytes, 0); }
  ScriptedProxy& SendByteByByte(const std::string& bytes) { return Add(kTrickle, bytes, 0); }
  ScriptedProxy& Hold(int ms) { return Add(kHold, "", ms); }
  ScriptedProxy& Close() { return Add(kClose, "", 0); }

  // Accepts one connection and plays the script on it.
  void Start() {
    thread_ = std::thread([this] { Play(); });
  }
  // What went wrong on the proxy's side ("" when the client sent what the script expected).
  std::string Finish() {
    stop_write_.reset();  // ends the wait at the end of the script
    if (thread_.joinable()) thread_.join();
    return failure_;
  }

  const sockaddr_in& addr() const { return addr_; }
  const char* text() const { return text_.c_str(); }

 private:
  enum Kind { kExpect, kSend, kTrickle, kHold, kClose };
  struct Step {
    Kind kind;
    std::string bytes;
    int ms;
  };
  ScriptedProxy& Add(Kind kind, const std::string& bytes, int ms) {
    script_.push_back({kind, bytes, ms});
    return *this;
  }

  static bool Readable(int fd, int ms) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
  }

  void Play() {
    if (!Readable(listener_.get(), 5000)) {
      failure_ = "no connection";
      return;
    }
    UniqueFd conn(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    for (const Step& s : script_) {
      switch (s.kind) {
        case kExpect: {
          std::string got;
          char c;
          while (got.size() < s.bytes.size() && Readable(conn.get(), 5000) &&
                 recv(conn.get(), &c, 1, 0) == 1) {
            got += c;
          }
          if (got != s.bytes) {
            failure_ = "expected " + std::to_string(s.bytes.size()) + " bytes, got " +
                       std::to_string(got.size()) + (got.size() == s.bytes.size() ? " others" : "");
            return;
          }
          break;
        }
        case kSend:
          send(conn.get(), s.bytes.data(), s.bytes.size(), MSG_NOSIGNAL);
          break;
        case kTrickle:
          for (char c : s.bytes) {
            send(conn.get(), &c, 1, MSG_NOSIGNAL);
            std::this_thread::sleep_for(std::chrono::milliseconds(3));
          }
          break;
        case kHold:
          std::this_thread::sleep_for(std::chrono::milliseconds(s.ms));
          break;
        case kClose:
          conn.reset();
          return;
      }
    }
    // Until the test is done with the connection (Finish): closing first could reset it.
    pollfd p{stop_read_.get(), POLLIN, 0};
    poll(&p, 1, 10000);
  }

  UniqueFd listener_, stop_read_, stop_write_;
  sockaddr_in addr_{};
  std::string text_;
  std::vector<Step> script_;
  std::thread thread_;
  std::string failure_;
};

class ProxyConnectTest : public ::testing::Test {
 protected:
  // SOCKS5 CONNECT to 192.0.2.7:80 through `proxy`, blocking, as the shim runs it.
  int Connect(ScriptedProxy& proxy, const std::string& user = "", const std::string& pass = "",
              unsigned timeout_ms = 3000) {
    StartMachine(user, pass);
    fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    proxy.Start();
    return RunBlocking(fd_.get(), hs_, ::connect, reinterpret_cast<const sockaddr*>(&proxy.addr()),
                       sizeof(sockaddr_in), proxy.text(), timeout_ms, msg_, sizeof msg_);
  }
  void StartMachine(const std::string& user, const std::string& pass) {
    wire::Addr dest;
    dest.family = 4;
    dest.port = 80;
    inet_pton(AF_INET, "192.0.2.7", dest.bytes);
    hs_.Start(nullptr, dest, 80, user.data(), user.size(), pass.data(), pass.size());
  }
  // What is left on the socket for the program, within `ms`.
  std::string Rest(int ms = 2000) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (poll(&p, 1, ms) != 1) return "";
    char buf[256];
    ssize_t n = recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
    return n > 0 ? std::string(buf, size_t(n)) : "";
  }

  static const std::string kGreeting, kRequest, kReply;
  socks5::Client hs_;
  UniqueFd fd_;
  char msg_[512] = {};
};

const std::string ProxyConnectTest::kGreeting = B({5, 1, 0});
const std::string ProxyConnectTest::kRequest = B({5, 1, 0, 1, 192, 0, 2, 7, 0, 80});
const std::string ProxyConnectTest::kReply = B({5, 0, 0, 1, 10, 0, 0, 1, 0x1f, 0x90});

TEST_F(ProxyConnectTest, ConnectsAndLeavesTheBytesAfterTheReplyToTheProgram) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting).Send(B({5, 0})).Expect(kRequest).Send(kReply + "program's");
  ASSERT_EQ(Connect(proxy), 0) << msg_;
  EXPECT_TRUE(hs_.Done());
  EXPECT_EQ(Rest(), "program's");
  EXPECT_EQ(proxy.Finish(), "");
}

TEST_F(ProxyConnectTest, ReadsRepliesThatArriveByteByByte) {
  ScriptedProxy proxy;
  proxy.Expect(B({5, 1, 2}))
      .SendByteByByte(B({5, 2}))
      .Expect(B({1, 1, 'u', 1, 'p'}))
      .SendByteByByte(B({1, 0}))
      .Expect(kRequest)
      .SendByteByByte(kReply);
  ASSERT_EQ(Connect(proxy, "u", "p"), 0) << msg_;
  EXPECT_TRUE(hs_.Done());
  EXPECT_EQ(proxy.Finish(), "");
}

TEST_F(ProxyConnectTest, AShortReplyAndACloseIsAReset) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting).Send(B({5, 0})).Expect(kRequest).Send(B({5, 0, 0})).Close();
  EXPECT_EQ(Connect(proxy), ECONNRESET);
  EXPECT_EQ(std::string(msg_),
            std::string(proxy.text()) + " closed the connection during the handshake");
}

TEST_F(ProxyConnectTest, AHostileGreetingReplyIsAProtocolError) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting).Send(B({4, 0}));
  EXPECT_EQ(Connect(proxy), EPROTO);
  EXPECT_STREQ(msg_,
               "SOCKS5 proxy answered the greeting with version 0x04, not 0x05 (is it a SOCKS5 "
               "proxy?)");
}

TEST_F(ProxyConnectTest, AHostileAddressTypeIsAProtocolError) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting).Send(B({5, 0})).Expect(kRequest).Send(B({5, 0, 0, 9, 0, 0, 0}));
  EXPECT_EQ(Connect(proxy), EPROTO);
  EXPECT_STREQ(msg_, "SOCKS5 proxy reply has unknown address type 0x09");
  EXPECT_EQ(Rest(), B({0, 0})) << "bytes past the reply head the machine asked for stay unread";
}

TEST_F(ProxyConnectTest, AReplyCodeBecomesItsErrno) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting).Send(B({5, 0})).Expect(kRequest).Send(B({5, 5, 0, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(Connect(proxy), ECONNREFUSED);
  EXPECT_EQ(std::string(msg_).rfind("SOCKS5 proxy replied 0x05 (connection refused) for "
                                    "192.0.2.7:80; failed at the destination",
                                    0),
            0u)
      << msg_;
}

TEST_F(ProxyConnectTest, AProxyThatNeverAnswersTimesOut) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting).Hold(1000).Close();
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Connect(proxy, "", "", 200), ETIMEDOUT);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  start)
                .count();
  EXPECT_GE(ms, 190);
  EXPECT_LT(ms, 900);
  EXPECT_EQ(std::string(msg_),
            std::string(proxy.text()) + " did not finish the handshake within 200 ms");
}

// The proxy gets greeting, credentials and request before it has said anything: one round trip.
TEST_F(ProxyConnectTest, PipelinedHandshakeSendsEverythingBeforeTheFirstReply) {
  ScriptedProxy proxy;
  proxy.Expect(B({5, 1, 2}) + B({1, 1, 'u', 1, 'p'}) + kRequest)
      .Send(B({5, 2}) + B({1, 0}) + kReply + "program's");
  wire::Addr dest;
  dest.family = 4;
  inet_pton(AF_INET, "192.0.2.7", dest.bytes);
  hs_.Start(nullptr, dest, 80, "u", 1, "p", 1, socks5::kCmdConnect, true);
  fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  proxy.Start();
  ASSERT_EQ(RunBlocking(fd_.get(), hs_, ::connect, reinterpret_cast<const sockaddr*>(&proxy.addr()),
                        sizeof(sockaddr_in), proxy.text(), 3000, msg_, sizeof msg_),
            0)
      << msg_;
  EXPECT_TRUE(hs_.Done());
  EXPECT_EQ(Rest(), "program's");
  EXPECT_EQ(proxy.Finish(), "");
}

// microsocks 1.0.3's answer to a pipelined write: the greeting's reply, then nothing. The shim's
// message says what that may mean.
TEST_F(ProxyConnectTest, APipelinedProxyThatStallsAfterTheGreetingGetsAHint) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting + kRequest).Send(B({5, 0})).Hold(1000).Close();
  Socks5Plan plan{};
  std::snprintf(plan.overlay, sizeof plan.overlay, "app:proxy");
  plan.proxies[0].family = 4;
  std::memcpy(plan.proxies[0].bytes, &proxy.addr().sin_addr, 4);
  plan.proxies[0].port = ntohs(proxy.addr().sin_port);
  plan.nproxies = 1;
  plan.timeout_ms = 200;
  plan.pipeline = true;
  wire::Addr dest;
  dest.family = 4;
  dest.port = 80;
  inet_pton(AF_INET, "192.0.2.7", dest.bytes);
  fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  proxy.Start();
  char why[512], msg[768];
  EXPECT_EQ(socks5::ConnectBlocking(fd_.get(), plan, nullptr, dest, ::connect, why, sizeof why, msg,
                                    sizeof msg),
            ETIMEDOUT);
  EXPECT_EQ(std::string(msg), "192.0.2.7:80 via app:proxy: " + std::string(proxy.text()) +
                                  " did not finish the handshake within 200 ms (it answered the "
                                  "greeting but not the request sent with it: a proxy that does "
                                  "not take pipelined requests, such as microsocks 1.0.3, needs "
                                  "`pipeline: false`)");
  EXPECT_EQ(proxy.Finish(), "");
}

// Optimistic data: the run stops once the request is written, before any reply (pipelined: at
// once; the reply comes 300 ms later and is left on the socket for the machine to read).
TEST_F(ProxyConnectTest, UntilSentStopsAtThePipelinedRequest) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting + kRequest).Hold(300).Send(B({5, 0}) + kReply + "program's");
  wire::Addr dest;
  dest.family = 4;
  inet_pton(AF_INET, "192.0.2.7", dest.bytes);
  hs_.Start(nullptr, dest, 80, "", 0, "", 0, socks5::kCmdConnect, true);
  fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  proxy.Start();
  const int64_t t0 = MonotonicMs();
  ASSERT_EQ(RunBlocking(fd_.get(), hs_, ::connect, reinterpret_cast<const sockaddr*>(&proxy.addr()),
                        sizeof(sockaddr_in), proxy.text(), 3000, msg_, sizeof msg_, true),
            0)
      << msg_;
  EXPECT_LT(MonotonicMs() - t0, 250);
  EXPECT_TRUE(hs_.RequestSent());
  EXPECT_FALSE(hs_.Done());
  EXPECT_EQ(hs_.WantRead(), 2u);  // the method reply comes first
  EXPECT_EQ(proxy.Finish(), "");
}

// Stepwise, the greeting's answer is awaited; the run stops once the request that follows it is
// written.
TEST_F(ProxyConnectTest, UntilSentWaitsForTheGreetingWhenStepwise) {
  ScriptedProxy proxy;
  proxy.Expect(kGreeting).Send(B({5, 0})).Expect(kRequest).Hold(300).Send(kReply);
  wire::Addr dest;
  dest.family = 4;
  inet_pton(AF_INET, "192.0.2.7", dest.bytes);
  hs_.Start(nullptr, dest, 80, "", 0, "", 0);
  fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  proxy.Start();
  EXPECT_FALSE(hs_.RequestSent());
  ASSERT_EQ(RunBlocking(fd_.get(), hs_, ::connect, reinterpret_cast<const sockaddr*>(&proxy.addr()),
                        sizeof(sockaddr_in), proxy.text(), 3000, msg_, sizeof msg_, true),
            0)
      << msg_;
  EXPECT_TRUE(hs_.RequestSent());
  EXPECT_EQ(hs_.WantRead(), 5u);  // the CONNECT reply's head
  EXPECT_EQ(proxy.Finish(), "");
}

TEST_F(ProxyConnectTest, NoListenerIsConnectionRefused) {
  sockaddr_in closed{};
  std::string text;
  {
    ScriptedProxy gone;  // a port that was just free: nobody listens there once it is closed
    closed = gone.addr();
    text = gone.text();
  }
  StartMachine("", "");
  fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  EXPECT_EQ(RunBlocking(fd_.get(), hs_, ::connect, reinterpret_cast<const sockaddr*>(&closed),
                        sizeof closed, text.c_str(), 1000, msg_, sizeof msg_),
            ECONNREFUSED);
  EXPECT_EQ(std::string(msg_), "cannot connect to " + text + ": Connection refused");
}

// A line protocol (as SAM): one request line, one reply line; LineMode() makes Pump peek and
// take bytes through the first '\n' only.
struct LineMachine {
  std::string out = "HELLO\n", line;
  size_t sent = 0;
  const uint8_t* output() const { return reinterpret_cast<const uint8_t*>(out.data()) + sent; }
  size_t output_len() const { return out.size() - sent; }
  void Consumed(size_t n) { sent += n; }
  size_t WantRead() const { return output_len() > 0 || Done() ? 0 : 100 - line.size(); }
  bool Done() const { return !line.empty() && line.back() == '\n'; }
  bool LineMode() const { return true; }
  int Feed(const uint8_t* p, size_t n) {
    line.append(reinterpret_cast<const char*>(p), n);
    return 0;
  }
};

// The broker's way: the steps, and the waiting done by the caller (here a poll loop).
TEST_F(ProxyConnectTest, EventDrivenStepsStopAtTheEndOfTheReplyLine) {
  ScriptedProxy proxy;
  proxy.Expect("HELLO\n").SendByteByByte("HELLO REPLY\nprogram's");
  proxy.Start();
  fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  LineMachine m;
  Step s = StartConnect(fd_.get(), ::connect, reinterpret_cast<const sockaddr*>(&proxy.addr()),
                        sizeof(sockaddr_in), proxy.text(), msg_, sizeof msg_);
  if (s.next == Next::kWaitWritable) {
    pollfd p{fd_.get(), POLLOUT, 0};
    ASSERT_EQ(poll(&p, 1, 2000), 1);
    s = ConnectResult(fd_.get(), proxy.text(), msg_, sizeof msg_);
  }
  ASSERT_EQ(s.next, Next::kDone) << msg_;
  for (int rounds = 0; rounds < 100; ++rounds) {
    s = Pump(fd_.get(), m, Reads::kTryFirst, false, proxy.text(), msg_, sizeof msg_);
    if (s.next != Next::kWaitReadable && s.next != Next::kWaitWritable) break;
    pollfd p{fd_.get(), short(s.next == Next::kWaitReadable ? POLLIN : POLLOUT), 0};
    ASSERT_EQ(poll(&p, 1, 2000), 1);
  }
  ASSERT_EQ(s.next, Next::kDone) << msg_;
  EXPECT_EQ(m.line, "HELLO REPLY\n");
  std::string rest;
  while (rest.size() < 9) {
    std::string more = Rest();
    if (more.empty()) break;
    rest += more;
  }
  EXPECT_EQ(rest, "program's");
  EXPECT_EQ(proxy.Finish(), "");
}

TEST(ProxyEndpointTest, AnIpv6SocketReachesAnIpv4EndpointByItsMappedAddress) {
  sockaddr_storage ep{}, out{};
  auto* in = reinterpret_cast<sockaddr_in*>(&ep);
  in->sin_family = AF_INET;
  in->sin_port = htons(9050);
  inet_pton(AF_INET, "127.0.0.1", &in->sin_addr);
  socklen_t len = 0;
  ASSERT_TRUE(ReachAs(AF_INET6, false, ep, sizeof(sockaddr_in), &out, &len));
  ASSERT_EQ(len, sizeof(sockaddr_in6));
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&out);
  char text[INET6_ADDRSTRLEN];
  inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
  EXPECT_STREQ(text, "::ffff:127.0.0.1");
  EXPECT_EQ(ntohs(in6->sin6_port), 9050);
  EXPECT_FALSE(ReachAs(AF_INET6, true, ep, sizeof(sockaddr_in), &out, &len));
  ASSERT_TRUE(ReachAs(AF_INET, false, ep, sizeof(sockaddr_in), &out, &len));
  EXPECT_EQ(std::memcmp(&out, &ep, sizeof(sockaddr_in)), 0);
}

TEST(ProxyEndpointTest, SaysWhyNoEndpointFits) {
  char msg[200];
  NoEndpointText(AF_INET, false, "proxy", msg, sizeof msg);
  EXPECT_STREQ(msg, "the overlay has no proxy address");
  NoEndpointText(AF_INET, true, "proxy", msg, sizeof msg);
  EXPECT_STREQ(msg, "the program's socket is IPv4 (AF_INET) and the proxy has only IPv6 addresses");
  NoEndpointText(AF_INET6, true, "proxy", msg, sizeof msg);
  EXPECT_STREQ(msg,
               "the program's socket is IPv6-only (IPV6_V6ONLY) and the proxy has only IPv4 "
               "addresses");
}

TEST(ProxyEndpointTest, MakeNonBlockingKeepsTheFlagsToRestore) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int saved = -1;
  char msg[100];
  ASSERT_EQ(MakeNonBlocking(fd.get(), &saved, msg, sizeof msg), 0);
  EXPECT_EQ(saved & O_NONBLOCK, 0);
  EXPECT_NE(fcntl(fd.get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_EQ(MakeNonBlocking(-1, &saved, msg, sizeof msg), EBADF);
  EXPECT_EQ(saved, -1);
  EXPECT_STREQ(msg, "fcntl(F_GETFL): Bad file descriptor");
}

}  // namespace
}  // namespace via::proxy
