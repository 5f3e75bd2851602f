// Socks5Handshake byte vectors (RFC 1928/1929), reply codes, hostile replies, and the driver:
// endpoint resolution, isolation credentials, unsupported kinds.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <initializer_list>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "overlays/factory.h"
#include "overlays/socks5/socks5_handshake.h"
#include "overlays/socks5/socks5_overlay.h"
#include "tests/unit/mutate.h"

namespace via::overlays {
namespace {

using Bytes = std::string;

Bytes B(std::initializer_list<int> v) {
  Bytes b;
  for (int c : v) b += char(c);
  return b;
}

class Socks5Test : public ::testing::Test {
 protected:
  static Target Name(const std::string& n, uint16_t port = 80) {
    Target t;
    t.name = n;
    t.port = port;
    return t;
  }
  // An IPv4 or IPv6 address in text form.
  static Target Ip(const std::string& text, uint16_t port = 80) {
    Target t;
    t.port = port;
    t.addr.family = text.find(':') == std::string::npos ? 4 : 6;
    EXPECT_EQ(inet_pton(t.addr.family == 4 ? AF_INET : AF_INET6, text.c_str(), t.addr.bytes), 1);
    return t;
  }
  static config::Overlay Overlay(const std::string& host, int port = 1080) {
    config::Overlay o;
    o.id = "app:proxy";
    o.name = "proxy";
    o.ns = "app";
    o.kind_name = "network.socks5";
    o.socks5.host = host;
    o.socks5.port = port;
    return o;
  }

  // Starts a handshake; returns the greeting it sends.
  Bytes Start(const Target& t, const std::string& user = "", const std::string& pass = "") {
    h_ = std::make_unique<Socks5Handshake>(t, user, pass);
    return Sent();
  }
  // Everything the machine wants to write now.
  Bytes Sent() {
    Bytes out(h_->Output());
    h_->Consumed(out.size());
    return out;
  }
  // Feeds `in` in pieces of at most `chunk` bytes and never more than WantRead(), recording each
  // WantRead() in wants_. Stops at the first error, or when the machine wants nothing more;
  // left_ is what it did not take.
  Status Recv(const Bytes& in, size_t chunk = 1 << 20) {
    size_t pos = 0;
    Status st;
    while (pos < in.size() && h_->WantRead() > 0 && st.ok()) {
      wants_.push_back(h_->WantRead());
      size_t n = std::min({chunk, h_->WantRead(), in.size() - pos});
      st = h_->Feed(reinterpret_cast<const uint8_t*>(in.data()) + pos, n);
      pos += n;
    }
    left_ = in.size() - pos;
    return st;
  }
  // A no-auth handshake to `t`, up to the CONNECT request; returns that request.
  Bytes ConnectRequest(const Target& t) {
    Start(t);
    EXPECT_TRUE(Recv(B({5, 0})).ok());
    return Sent();
  }
  // A no-auth handshake to example.test:80 answered with `reply`.
  Status Reply(const Bytes& reply) {
    ConnectRequest(Name("example.test"));
    wants_.clear();
    return Recv(reply);
  }
  // A CONNECT reply with code `rep` and an IPv4 BND address.
  static Bytes ReplyCode(int rep) { return B({5, rep, 0, 1, 10, 0, 0, 1, 0x1f, 0x90}); }

  std::unique_ptr<Socks5Handshake> h_;
  std::vector<size_t> wants_;
  size_t left_ = 0;
};

// ---- requests ------------------------------------------------------------------------------

TEST_F(Socks5Test, GreetingWithoutCredentialsOffersNoAuthOnly) {
  EXPECT_EQ(Start(Name("example.test")), B({5, 1, 0x00}));
  EXPECT_EQ(h_->WantRead(), 2u);
  EXPECT_FALSE(h_->Done());
}

TEST_F(Socks5Test, GreetingWithCredentialsOffersUserPassOnly) {
  EXPECT_EQ(Start(Name("example.test"), "u", "p"), B({5, 1, 0x02}));
  EXPECT_EQ(Start(Name("example.test"), "", "p"), B({5, 1, 0x02}));
}

TEST_F(Socks5Test, NothingToReadWhileOutputIsPending) {
  h_ = std::make_unique<Socks5Handshake>(Name("example.test"), "", "");
  EXPECT_EQ(h_->WantRead(), 0u);
  h_->Consumed(2);
  EXPECT_EQ(h_->Output(), B({0}));
  EXPECT_EQ(h_->WantRead(), 0u);
}

TEST_F(Socks5Test, UsernamePasswordSubnegotiation) {
  Start(Name("a.b", 443), "alice", "pw");
  ASSERT_TRUE(Recv(B({5, 2})).ok());
  EXPECT_EQ(Sent(), B({1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w'}));
  ASSERT_TRUE(Recv(B({1, 0})).ok());
  EXPECT_EQ(Sent(), B({5, 1, 0, 3, 3, 'a', '.', 'b', 0x01, 0xbb}));
}

TEST_F(Socks5Test, ProxyMayWaiveOfferedAuthentication) {
  Start(Name("a.b", 443), "alice", "pw");
  ASSERT_TRUE(Recv(B({5, 0})).ok());
  EXPECT_EQ(Sent(), B({5, 1, 0, 3, 3, 'a', '.', 'b', 0x01, 0xbb}));  // straight to CONNECT
}

// A strict session's spare proxy socket: the broker greets it (SetGreetOnly), the shim then sends
// the request alone on it (SkipGreeting). Together they are one ordinary handshake.
TEST_F(Socks5Test, AGreetingOnlyEndsWhenTheProxyTookTheCredentials) {
  h_ = std::make_unique<Socks5Handshake>(Ip("0.0.0.0", 0), "alice", "pw");
  h_->SetGreetOnly();
  EXPECT_EQ(Sent(), B({5, 1, 0x02}));
  ASSERT_TRUE(Recv(B({5, 2})).ok());
  EXPECT_EQ(Sent(), B({1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w'}));
  ASSERT_TRUE(Recv(B({1, 0, 5, 0})).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(left_, 2u);  // nothing read past the status: no request was sent
  EXPECT_EQ(Sent(), "");
  Start(Ip("0.0.0.0", 0));
  h_->SetGreetOnly();
  ASSERT_TRUE(Recv(B({5, 0})).ok());
  EXPECT_TRUE(h_->Done());
  Start(Ip("0.0.0.0", 0), "alice", "pw");
  h_->SetGreetOnly();
  ASSERT_TRUE(Recv(B({5, 2})).ok());
  Sent();
  EXPECT_FALSE(Recv(B({1, 1})).ok());  // refused credentials fail the greeting
}

TEST_F(Socks5Test, AfterAGreetingTheRequestIsAllThatIsSent) {
  for (bool pipeline : {false, true}) {
    socks5::Client c;
    c.Start("a.b", wire::Addr{}, 443, "alice", 5, "pw", 2, socks5::kCmdConnect, pipeline);
    c.SkipGreeting();
    EXPECT_EQ(Bytes(reinterpret_cast<const char*>(c.output()), c.output_len()),
              B({5, 1, 0, 3, 3, 'a', '.', 'b', 0x01, 0xbb}));
    c.Consumed(c.output_len());
    EXPECT_TRUE(c.RequestSent());
    const Bytes reply = ReplyCode(0);
    ASSERT_EQ(c.WantRead(), 5u);
    ASSERT_EQ(c.Feed(reinterpret_cast<const uint8_t*>(reply.data()), 5), 0);
    ASSERT_EQ(c.Feed(reinterpret_cast<const uint8_t*>(reply.data()) + 5, c.WantRead()), 0);
    EXPECT_TRUE(c.Done());
  }
}

TEST_F(Socks5Test, ConnectByNameUsesAtyp3) {
  EXPECT_EQ(ConnectRequest(Name("example.test", 8080)),
            B({5, 1, 0, 3, 12}) + "example.test" + B({0x1f, 0x90}));
}

TEST_F(Socks5Test, ConnectByIpv4UsesAtyp1) {
  EXPECT_EQ(ConnectRequest(Ip("10.1.2.3", 80)), B({5, 1, 0, 1, 10, 1, 2, 3, 0, 80}));
}

TEST_F(Socks5Test, ConnectByIpv6UsesAtyp4) {
  EXPECT_EQ(ConnectRequest(Ip("2001:db8::1", 443)),
            B({5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xbb}));
}

TEST_F(Socks5Test, ConnectByMappedIpv6GoesAsIpv4) {
  EXPECT_EQ(ConnectRequest(Ip("::ffff:192.0.2.7", 22)), B({5, 1, 0, 1, 192, 0, 2, 7, 0, 22}));
}

TEST_F(Socks5Test, ConnectWithLongestNameUsesFullLengthByte) {
  Bytes req = ConnectRequest(Name(std::string(255, 'a'), 1));
  ASSERT_EQ(req.size(), 4u + 1 + 255 + 2);
  EXPECT_EQ(uint8_t(req[4]), 255);
}

// ---- replies: exact lengths ----------------------------------------------------------------

TEST_F(Socks5Test, BoundIpv4ReadExactly) {
  ASSERT_TRUE(Reply(B({5, 0, 0, 1, 127, 0, 0, 1, 4, 56, 'X'})).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(wants_, (std::vector<size_t>{5, 5}));
  EXPECT_EQ(left_, 1u);  // the program's byte is never asked for
}

TEST_F(Socks5Test, BoundIpv6ReadExactly) {
  ASSERT_TRUE(Reply(B({5, 0, 0, 4}) + Bytes(16, '\1') + B({4, 56, 'X'})).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(wants_, (std::vector<size_t>{5, 17}));
  EXPECT_EQ(left_, 1u);
}

TEST_F(Socks5Test, BoundDomainReadExactly) {
  ASSERT_TRUE(Reply(B({5, 0, 0, 3, 3, 'a', 'b', 'c', 4, 56, 'X'})).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(wants_, (std::vector<size_t>{5, 5}));
  EXPECT_EQ(left_, 1u);
}

TEST_F(Socks5Test, BoundLongestDomainReadExactly) {
  ASSERT_TRUE(Reply(B({5, 0, 0, 3, 255}) + Bytes(255, 'n') + B({4, 56, 'X'})).ok());
  EXPECT_EQ(wants_, (std::vector<size_t>{5, 257}));
  EXPECT_EQ(left_, 1u);
}

TEST_F(Socks5Test, MethodAndAuthRepliesReadExactly) {
  Start(Name("a.b"), "u", "p");
  ASSERT_TRUE(Recv(B({5, 2, 'X'})).ok());
  EXPECT_EQ(left_, 1u);
  Sent();
  ASSERT_TRUE(Recv(B({1, 0, 'X'})).ok());
  EXPECT_EQ(left_, 1u);
}

TEST_F(Socks5Test, OneByteAtATime) {
  Start(Name("example.test"), "u", "p");
  ASSERT_TRUE(Recv(B({5, 2}), 1).ok());
  Sent();
  ASSERT_TRUE(Recv(B({1, 0}), 1).ok());
  Sent();
  ASSERT_TRUE(Recv(B({5, 0, 0, 3, 2, 'h', 'i', 0, 80, 'X'}), 1).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(wants_, (std::vector<size_t>{2, 1, 2, 1, 5, 4, 3, 2, 1, 4, 3, 2, 1}));
  EXPECT_EQ(left_, 1u);
}

TEST_F(Socks5Test, FeedingMoreThanAskedIsAnError) {
  Start(Name("example.test"));
  EXPECT_EQ(h_->Feed(reinterpret_cast<const uint8_t*>("\x05\x00\x05"), 3).code(), EPROTO);
  EXPECT_EQ(h_->WantRead(), 0u);
}

// ---- replies: refusals -----------------------------------------------------------------------

TEST_F(Socks5Test, ReplyCodesBecomeErrnos) {
  const std::pair<int, int> cases[] = {
      {0x01, ECONNREFUSED}, {0x02, EACCES},       {0x03, ENETUNREACH},  {0x04, EHOSTUNREACH},
      {0x05, ECONNREFUSED}, {0x06, ETIMEDOUT},    {0x07, EOPNOTSUPP},   {0x08, EAFNOSUPPORT},
      {0x09, EPROTO},       {0xf0, EHOSTUNREACH}, {0xf1, EHOSTUNREACH}, {0xf2, EHOSTUNREACH},
      {0xf3, ENETUNREACH},  {0xf4, EACCES},       {0xf5, EACCES},       {0xf6, EINVAL},
      {0xf7, ETIMEDOUT},    {0xf8, EPROTO},       {0xff, EPROTO}};
  for (auto [code, err] : cases) {
    EXPECT_EQ(Reply(ReplyCode(code)).code(), err) << code;
    EXPECT_EQ(Socks5Handshake::ReplyCodeToErrno(uint8_t(code)), err) << code;
  }
}

TEST_F(Socks5Test, ReplyMessageNamesCodeAndTarget) {
  EXPECT_EQ(Reply(ReplyCode(0x05)).message(),
            "SOCKS5 proxy replied 0x05 (connection refused) for example.test:80; failed at the "
            "destination: it refused the connection (reported by the exit)");
  EXPECT_EQ(Reply(ReplyCode(0x01)).message(),
            "SOCKS5 proxy replied 0x01 (general SOCKS server failure) for example.test:80; "
            "failed at the proxy or beyond it (for Tor: no circuit could carry the stream, or the "
            "exit could not connect and did not say why)");
  EXPECT_EQ(Reply(ReplyCode(0x42)).message(),
            "SOCKS5 proxy replied 0x42 (unassigned reply code) for example.test:80; failed at "
            "the proxy (an unknown reply code)");
  EXPECT_EQ(Reply(ReplyCode(0xf6)).message(),
            "SOCKS5 proxy replied 0xf6 (Tor: invalid onion service address) for "
            "example.test:80; failed before any hop: the .onion address is malformed");
}

TEST_F(Socks5Test, RefusalReadsNoFurther) {
  EXPECT_EQ(Reply(ReplyCode(0x04)).code(), EHOSTUNREACH);
  EXPECT_EQ(left_, 5u);  // the BND address after a refusal is not read
  EXPECT_EQ(h_->WantRead(), 0u);
  EXPECT_FALSE(h_->Done());
}

TEST_F(Socks5Test, NoAcceptableMethod) {
  Start(Name("x.y"));
  Status s = Recv(B({5, 0xff}));
  EXPECT_EQ(s.code(), EACCES);
  EXPECT_EQ(s.message(),
            "SOCKS5 proxy accepts none of the offered authentication methods (offered 0x00 no "
            "authentication)");
}

TEST_F(Socks5Test, UnofferedMethodIsRefused) {
  Start(Name("x.y"));
  Status s = Recv(B({5, 2}));
  EXPECT_EQ(s.code(), EACCES);
  EXPECT_EQ(s.message(),
            "SOCKS5 proxy accepts none of the offered authentication methods (offered 0x00 no "
            "authentication; it chose 0x02, which was not offered)");
}

TEST_F(Socks5Test, UnofferedMethodWithCredentialsIsRefused) {
  Start(Name("x.y"), "u", "p");
  EXPECT_EQ(Recv(B({5, 1})).code(), EACCES);  // GSSAPI
  EXPECT_EQ(Sent(), "");
}

TEST_F(Socks5Test, AuthFailure) {
  Start(Name("x.y"), "u", "bad");
  ASSERT_TRUE(Recv(B({5, 2})).ok());
  Sent();
  Status s = Recv(B({1, 1}));
  EXPECT_EQ(s.code(), EACCES);
  EXPECT_EQ(s.message(), "SOCKS5 proxy rejected username/password (status 0x01)");
}

// ---- replies: hostile or malformed -----------------------------------------------------------

TEST_F(Socks5Test, GreetingAnsweredByNonSocksServer) {
  Start(Name("x.y"));
  EXPECT_EQ(Recv("HTTP/1.1 400").message(),
            "SOCKS5 proxy answered the greeting with version 0x48, not 0x05 (is it a SOCKS5 "
            "proxy?)");
}

TEST_F(Socks5Test, AuthReplyWithWrongVersion) {
  Start(Name("x.y"), "u", "p");
  ASSERT_TRUE(Recv(B({5, 2})).ok());
  Sent();
  EXPECT_EQ(Recv(B({5, 0})).code(), EPROTO);
}

TEST_F(Socks5Test, ConnectReplyWithWrongVersion) {
  Status s = Reply(B({4, 0, 0, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(s.code(), EPROTO);
  EXPECT_EQ(s.message(), "SOCKS5 proxy replied to CONNECT with version 0x04, not 0x05");
}

TEST_F(Socks5Test, ConnectReplyWithNonZeroReserved) {
  Status s = Reply(B({5, 0, 1, 1, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(s.code(), EPROTO);
  EXPECT_EQ(s.message(), "SOCKS5 proxy reply has reserved byte 0x01, not 0x00");
}

TEST_F(Socks5Test, ConnectReplyWithUnknownAddressType) {
  Status s = Reply(B({5, 0, 0, 9, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(s.code(), EPROTO);
  EXPECT_EQ(s.message(), "SOCKS5 proxy reply has unknown address type 0x09");
}

TEST_F(Socks5Test, ConnectReplyWithEmptyDomain) {
  Status s = Reply(B({5, 0, 0, 3, 0, 0, 80}));
  EXPECT_EQ(s.code(), EPROTO);
  EXPECT_EQ(s.message(), "SOCKS5 proxy reply has an empty bound domain name");
}

// A hostile or broken proxy, many times over: well-formed reply sequences with random edits
// (bytes changed, cut, inserted, repeated), fed in random pieces of at most WantRead() bytes.
// Each run ends in an error with an errno and a message, or in success having read exactly one
// well-formed reply (VER 5, REP 0, RSV 0, a known ATYP and the address length it implies), or
// still waiting for more; never anything in between. Deterministic (fixed seed).
TEST_F(Socks5Test, MutatedProxyRepliesFailCleanlyOrAreReadExactly) {
  const Bytes scripts[] = {
      B({5, 0}) + ReplyCode(0),
      B({5, 0, 5, 0, 0, 4}) + Bytes(16, '\x01') + B({0, 80}),
      B({5, 0, 5, 0, 0, 3, 9}) + "bound.tld" + B({0, 80}),
      B({5, 2, 1, 0}) + ReplyCode(0),
      B({5, 0}) + ReplyCode(5),
  };
  std::mt19937 rng(1928);
  int done = 0, failed = 0, waiting = 0;
  for (int i = 0; i < 20000; ++i) {
    size_t k = rng() % std::size(scripts);
    Bytes in = scripts[k];
    // New bytes: mostly the small values SOCKS5 fields take (versions, codes, ATYPs).
    via::test::EditBytes(in, rng, int(rng() % 4),
                         [&] { return char(rng() % 3 == 0 ? rng() : rng() % 6); });
    const bool creds = k == 3 || rng() % 4 == 0;
    Start(rng() % 2 ? Ip("192.0.2.1") : Name("example.test"), creds ? "u" : "", creds ? "p" : "");
    size_t pos = 0;
    Status st;
    while (st.ok() && !h_->Done() && h_->WantRead() > 0 && pos < in.size()) {
      size_t n = std::min({h_->WantRead(), in.size() - pos, size_t(1 + rng() % 8)});
      st = h_->Feed(reinterpret_cast<const uint8_t*>(in.data()) + pos, n);
      pos += n;
      Sent();
    }
    if (!st.ok()) {
      ASSERT_NE(st.code(), 0) << i;
      ASSERT_FALSE(st.message().empty()) << i;
      ASSERT_FALSE(h_->Done()) << i;
      ASSERT_EQ(h_->Output(), "") << i;  // nothing more is sent after a failure
      ++failed;
    } else if (h_->Done()) {
      // Method reply, the RFC 1929 status if the proxy chose 0x02, then the CONNECT reply.
      const size_t off = 2 + (uint8_t(in[1]) == 2 ? 2 : 0);
      ASSERT_GE(pos, off + 4) << i;
      const uint8_t atyp = uint8_t(in[off + 3]);
      ASSERT_EQ(in.substr(off, 3), B({5, 0, 0})) << i;
      ASSERT_TRUE(atyp == 1 || atyp == 3 || atyp == 4) << i;
      const size_t addr = atyp == 1 ? 4 : atyp == 4 ? 16 : 1 + uint8_t(in[off + 4]);
      ASSERT_EQ(pos, off + 4 + addr + 2) << i;  // not a byte more: the rest is the program's
      ASSERT_EQ(h_->WantRead(), 0u) << i;
      ++done;
    } else {
      ASSERT_EQ(pos, in.size()) << i;  // out of input, still waiting for more
      ++waiting;
    }
  }
  EXPECT_GT(done, 1000);
  EXPECT_GT(failed, 1000);
  EXPECT_GT(waiting, 100);
}

TEST_F(Socks5Test, NothingAfterFailure) {
  EXPECT_EQ(Reply(B({5, 0, 0, 9, 0})).code(), EPROTO);
  EXPECT_EQ(h_->Output(), "");
  EXPECT_EQ(h_->Feed(reinterpret_cast<const uint8_t*>("x"), 1).code(), EPROTO);
}

// ---- targets SOCKS5 cannot carry
// ---- pipelined (`pipeline: true`) ---------------------------------------------------------

TEST_F(Socks5Test, PipelinedNoAuthSendsGreetingAndRequestAtOnce) {
  h_ = std::make_unique<Socks5Handshake>(Name("a.b", 443), "", "", Socks5Handshake::kCmdConnect,
                                         true);
  EXPECT_EQ(Sent(), B({5, 1, 0, 5, 1, 0, 3, 3, 'a', '.', 'b', 0x01, 0xbb}));
  ASSERT_TRUE(Recv(B({5, 0})).ok());
  EXPECT_EQ(Sent(), "");  // nothing more to send: the request went with the greeting
  ASSERT_TRUE(Recv(B({5, 0, 0, 1, 10, 0, 0, 1, 0x1f, 0x90, 'x'})).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(left_, 1u);  // the program's byte
  EXPECT_EQ(wants_, (std::vector<size_t>{2, 5, 5}));
}

TEST_F(Socks5Test, PipelinedUserPassSendsCredentialsBetween) {
  h_ = std::make_unique<Socks5Handshake>(Ip("10.0.0.1", 80), "alice", "pw",
                                         Socks5Handshake::kCmdConnect, true);
  EXPECT_EQ(Sent(), B({5, 1, 2}) + B({1, 5, 'a', 'l', 'i', 'c', 'e', 2, 'p', 'w'}) +
                        B({5, 1, 0, 1, 10, 0, 0, 1, 0, 80}));
  ASSERT_TRUE(Recv(B({5, 2, 1, 0})).ok());
  EXPECT_EQ(Sent(), "");
  ASSERT_TRUE(Recv(ReplyCode(0)).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(wants_, (std::vector<size_t>{2, 2, 5, 5}));
}

// What Tor 0.4.9 sends back for a pipelined greeting + credentials: the credentials' status
// without the method reply.
TEST_F(Socks5Test, PipelinedUserPassAcceptsTorsElidedMethodReply) {
  h_ = std::make_unique<Socks5Handshake>(Name("a.b"), "alice", "pw", Socks5Handshake::kCmdConnect,
                                         true);
  Sent();
  ASSERT_TRUE(Recv(B({1, 0})).ok());
  ASSERT_TRUE(Recv(ReplyCode(0)).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(wants_, (std::vector<size_t>{2, 5, 5}));
  h_ = std::make_unique<Socks5Handshake>(Name("a.b"), "alice", "pw", Socks5Handshake::kCmdConnect,
                                         true);
  Sent();
  EXPECT_EQ(Recv(B({1, 1})).code(), EACCES);  // refused credentials, still
  Start(Name("a.b"), "alice", "pw");          // not pipelined: 0x01 is no method reply
  EXPECT_EQ(Recv(B({1, 0})).code(), EPROTO);
}

TEST_F(Socks5Test, PipelinedLongestFieldsFitOneOutput) {
  h_ = std::make_unique<Socks5Handshake>(Name(std::string(255, 'n')), std::string(255, 'u'),
                                         std::string(255, 'p'), Socks5Handshake::kCmdConnect, true);
  EXPECT_EQ(Sent().size(), 3u + (3 + 255 + 255) + (7 + 255));
}

TEST_F(Socks5Test, PipelinedRefusalsKeepTheirErrnos) {
  h_ = std::make_unique<Socks5Handshake>(Name("a.b"), "alice", "pw", Socks5Handshake::kCmdConnect,
                                         true);
  Sent();
  EXPECT_EQ(Recv(B({5, 2, 1, 1})).code(), EACCES);
  h_ = std::make_unique<Socks5Handshake>(Name("a.b"), "", "", Socks5Handshake::kCmdConnect, true);
  Sent();
  EXPECT_EQ(Recv(B({5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0})).code(), ECONNREFUSED);
  EXPECT_EQ(left_, 5u);
}

// Offered username/password only, the proxy waived it: it has taken the credentials as the
// request. Nothing can be rescued on this connection.
TEST_F(Socks5Test, PipelinedWaivedAuthenticationFailsWithAHint) {
  h_ = std::make_unique<Socks5Handshake>(Name("a.b"), "alice", "pw", Socks5Handshake::kCmdConnect,
                                         true);
  Sent();
  Status st = Recv(B({5, 0}));
  EXPECT_EQ(st.code(), EPROTO);
  EXPECT_NE(st.message().find("set `pipeline: false` for this proxy"), std::string::npos)
      << st.message();
}

TEST_F(Socks5Test, PipelinedInvalidRequestSendsTheGreetingOnly) {
  h_ = std::make_unique<Socks5Handshake>(Name(std::string(256, 'a')), "", "",
                                         Socks5Handshake::kCmdConnect, true);
  EXPECT_EQ(Sent(), B({5, 1, 0}));
  EXPECT_EQ(Recv(B({5, 0})).code(), EINVAL);
}

TEST_F(Socks5Test, StallHintOnlyForAPipelinedProxyThatAnsweredTheGreeting) {
  h_ = std::make_unique<Socks5Handshake>(Name("a.b"), "", "", Socks5Handshake::kCmdConnect, true);
  Sent();
  EXPECT_EQ(h_->StallHint(), "");  // not even the greeting answered: nothing to say
  ASSERT_TRUE(Recv(B({5, 0})).ok());
  EXPECT_NE(h_->StallHint().find("`pipeline: false`"), std::string::npos);
  Start(Name("a.b"));
  ASSERT_TRUE(Recv(B({5, 0})).ok());
  Sent();
  EXPECT_EQ(h_->StallHint(), "");  // not pipelined
}

TEST_F(Socks5Test, DriverPipelinesWhenConfigured) {
  config::Overlay o = Overlay("127.0.0.1");
  o.socks5.username = "alice";
  o.socks5.pipeline = true;
  auto d = CreateOverlay(o);
  ASSERT_TRUE(d.ok());
  auto h = (*d)->NewHandshake(Name("a.b"));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ((*h)->Output(),
            B({5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 0, 5, 1, 0, 3, 3, 'a', '.', 'b', 0, 80}));
  EXPECT_TRUE((*d)->program_socks5({})->pipeline);
}

// -----------------------------------------------------------------

TEST_F(Socks5Test, OverlongNameIsRefusedBeforeConnect) {
  Start(Name(std::string(256, 'a')));
  EXPECT_EQ(Recv(B({5, 0})).code(), EINVAL);
  EXPECT_EQ(Sent(), "");  // never a CONNECT with a truncated length byte
  EXPECT_EQ(Socks5Handshake::Validate(Name(std::string(256, 'a')), "", "").code(), EINVAL);
}

TEST_F(Socks5Test, ValidateChecksCredentialsAndDestination) {
  EXPECT_TRUE(Socks5Handshake::Validate(Name("a.b"), std::string(255, 'u'), "p").ok());
  EXPECT_EQ(Socks5Handshake::Validate(Name("a.b"), "u", std::string(256, 'p')).code(), EINVAL);
  EXPECT_EQ(Socks5Handshake::Validate(Target{}, "", "").code(), EINVAL);
}

TEST_F(Socks5Test, TargetToString) {
  EXPECT_EQ(Name("example.test", 80).ToString(), "example.test:80");
  EXPECT_EQ(Ip("1.2.3.4", 80).ToString(), "1.2.3.4:80");
  EXPECT_EQ(Ip("::1", 80).ToString(), "[::1]:80");
}

// ---- driver --------------------------------------------------------------------------------

TEST_F(Socks5Test, DriverResolvesNumericIpv4) {
  auto d = CreateOverlay(Overlay("127.0.0.1", 9050));
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ((*d)->endpoints().size(), 1u);
  EXPECT_EQ((*d)->endpoints()[0].text, "127.0.0.1:9050");
  EXPECT_EQ((*d)->endpoints()[0].addr.ss_family, AF_INET);
  EXPECT_EQ((*d)->endpoints()[0].len, socklen_t(sizeof(sockaddr_in)));
}

TEST_F(Socks5Test, DriverResolvesNumericIpv6WithOrWithoutBrackets) {
  for (const char* host : {"::1", "[::1]"}) {
    auto d = CreateOverlay(Overlay(host));
    ASSERT_TRUE(d.ok()) << d.status().message();
    ASSERT_EQ((*d)->endpoints().size(), 1u);
    EXPECT_EQ((*d)->endpoints()[0].text, "[::1]:1080");
    EXPECT_EQ((*d)->endpoints()[0].len, socklen_t(sizeof(sockaddr_in6)));
  }
}

TEST_F(Socks5Test, DriverUnresolvableHost) {
  auto d = CreateOverlay(Overlay("no-such-host.invalid"));
  EXPECT_EQ(d.status().code(), EHOSTUNREACH);
  EXPECT_EQ(d.status().message().rfind(
                "overlay app:proxy: cannot resolve proxy host \"no-such-host.invalid\": ", 0),
            0u)
      << d.status().message();
}

TEST_F(Socks5Test, DriverSettings) {
  config::Overlay o = Overlay("127.0.0.1");
  o.socks5.connect_timeout_ms = 2500;
  auto d = CreateOverlay(o);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->id(), "app:proxy");
  EXPECT_EQ((*d)->connect_timeout_ms(), 2500);
}

TEST_F(Socks5Test, DriverUsesConfiguredCredentials) {
  config::Overlay o = Overlay("127.0.0.1");
  o.socks5.username = "alice";
  auto d = CreateOverlay(o);
  ASSERT_TRUE(d.ok());
  auto h = (*d)->NewHandshake(Name("a.b"));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ((*h)->Output(), B({5, 1, 2}));
}

TEST_F(Socks5Test, DriverRefusesTargetSocks5CannotCarry) {
  auto d = CreateOverlay(Overlay("127.0.0.1"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->NewHandshake(Name(std::string(300, 'a'))).status().code(), EINVAL);
}

// The auth request an isolating driver sends for one connection.
TEST_F(Socks5Test, IsolationMintsFreshCredentialsPerConnection) {
  config::Overlay o = Overlay("127.0.0.1", 9050);
  o.socks5.isolate_streams = true;
  o.socks5.username = "configured";
  o.socks5.password = "ignored";
  auto d = CreateOverlay(o);
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::set<Bytes> seen;
  for (int i = 0; i < 2; ++i) {
    auto h = (*d)->NewHandshake(Name("x.y"));
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(Bytes((*h)->Output()), B({5, 1, 2}));
    (*h)->Consumed(3);
    ASSERT_TRUE((*h)->Feed(reinterpret_cast<const uint8_t*>("\x05\x02"), 2).ok());
    Bytes auth((*h)->Output());
    ASSERT_EQ(auth.size(), 1u + 1 + 16 + 1 + 16);
    EXPECT_EQ(auth.substr(0, 2), B({1, 16}));
    EXPECT_EQ(auth[18], char(16));
    Bytes user = auth.substr(2, 16), pass = auth.substr(19, 16);
    EXPECT_EQ(user, pass);
    EXPECT_EQ(user.find_first_not_of("0123456789abcdef"), Bytes::npos) << user;
    EXPECT_TRUE(seen.insert(user).second) << user;
  }
}

TEST_F(Socks5Test, IsolationCredentialFailureIsEio) {
  auto failing = [](void*, size_t, unsigned) -> ssize_t {
    errno = ENOSYS;
    return -1;
  };
  auto cred = RandomIsolationCredential(failing);
  EXPECT_EQ(cred.status().code(), EIO);
  EXPECT_EQ(cred.status().message(),
            "socks5: failed to generate isolation credential: Function not implemented");
}

TEST_F(Socks5Test, IsolationCredentialSurvivesShortReads) {
  auto one_byte = [](void* buf, size_t, unsigned) -> ssize_t {
    *static_cast<uint8_t*>(buf) = 0xab;
    return 1;
  };
  auto cred = RandomIsolationCredential(one_byte);
  ASSERT_TRUE(cred.ok());
  EXPECT_EQ(*cred, "abababababababab");
}

TEST_F(Socks5Test, TailscaleDriverNeedsItsAuthKeyVariable) {
  config::Overlay o = Overlay("");
  o.id = "app:tailnet";
  o.kind = config::OverlayKind::kTailscale;
  o.kind_name = "network.tailscale";
  o.tailscale.auth_key_env = "VIA_UNIT_TEST_UNSET_KEY";
  unsetenv("VIA_UNIT_TEST_UNSET_KEY");
  EXPECT_EQ(CreateOverlay(o).status().code(), EINVAL);
  EXPECT_EQ(CreateOverlay(o).status().message(),
            "overlay app:tailnet: auth_key_env VIA_UNIT_TEST_UNSET_KEY is not set in the broker's "
            "environment; export it before `via broker` starts, or set auth_key");
}

}  // namespace
}  // namespace via::overlays

// ---- Tor's RESOLVE (0xF0) and RESOLVE_PTR (0xF1) -------------------------------------------

namespace via::overlays {
namespace {

class TorResolveTest : public Socks5Test {
 protected:
  std::string Bound() const {
    Target t;
    t.addr = h_->bound_addr();
    return t.ToString();
  }
  Bytes Request(const Target& t, uint8_t cmd) {
    h_ = std::make_unique<Socks5Handshake>(t, "", "", cmd);
    Sent();
    EXPECT_TRUE(Recv(B({5, 0})).ok());
    return Sent();
  }
};

TEST_F(TorResolveTest, ResolveSendsTheNameAndReadsOneAddress) {
  EXPECT_EQ(Request(Name("example.test", 0), Socks5Handshake::kCmdResolve),
            B({5, 0xf0, 0, 3, 12}) + "example.test" + B({0, 0}));
  ASSERT_TRUE(Recv(B({5, 0, 0, 1, 93, 184, 216, 34, 0, 0})).ok());
  EXPECT_TRUE(h_->Done());
  EXPECT_EQ(left_, 0u);
  EXPECT_EQ(Bound(), "93.184.216.34:0");
}

TEST_F(TorResolveTest, ResolveReadsAnIpv6Address) {
  Request(Name("example.test", 0), Socks5Handshake::kCmdResolve);
  Bytes reply = B({5, 0, 0, 4, 0x20, 0x01, 0x0d, 0xb8});
  reply += Bytes(11, '\0') + B({1, 0, 0});
  ASSERT_TRUE(Recv(reply).ok());
  EXPECT_EQ(Bound(), "[2001:db8::1]:0");
}

TEST_F(TorResolveTest, ResolveAnsweredWithANameIsAnError) {
  Request(Name("example.test", 0), Socks5Handshake::kCmdResolve);
  Status s = Recv(B({5, 0, 0, 3, 1, 'x', 0, 0}));
  EXPECT_EQ(s.code(), EPROTO);
  EXPECT_EQ(s.message(), "Tor's RESOLVE reply for example.test:0 carries no address");
}

TEST_F(TorResolveTest, ResolveFailureIsTheReplyCode) {
  Request(Name("nowhere.test", 0), Socks5Handshake::kCmdResolve);
  EXPECT_EQ(Recv(ReplyCode(0x04)).code(), EHOSTUNREACH);
  EXPECT_FALSE(h_->Done());
}

TEST_F(TorResolveTest, ResolvePtrSendsTheAddressAndReadsAName) {
  EXPECT_EQ(Request(Ip("93.184.216.34", 0), Socks5Handshake::kCmdResolvePtr),
            B({5, 0xf1, 0, 1, 93, 184, 216, 34, 0, 0}));
  ASSERT_TRUE(Recv(B({5, 0, 0, 3, 7}) + "example" + B({0, 0})).ok());
  EXPECT_EQ(h_->bound_name(), "example");
  Request(Ip("93.184.216.34", 0), Socks5Handshake::kCmdResolvePtr);
  EXPECT_EQ(Recv(ReplyCode(0)).code(), EPROTO);  // an address where a name belongs
}

TEST_F(TorResolveTest, DriverResolvesOnlyWhenConfigured) {
  config::Overlay o = Overlay("127.0.0.1");
  auto plain = Socks5Overlay::Create(o);
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE((*plain)->remote_resolve());
  EXPECT_EQ((*plain)->NewResolveHandshake(Name("example.test", 0)).status().code(), ENOTSUP);
  o.socks5.remote_resolve = true;
  auto tor = Socks5Overlay::Create(o);
  ASSERT_TRUE(tor.ok());
  EXPECT_TRUE((*tor)->remote_resolve());
  auto hs = (*tor)->NewResolveHandshake(Name("example.test", 0));
  ASSERT_TRUE(hs.ok());
  EXPECT_EQ((*hs)->Output(), B({5, 1, 0}));
}

}  // namespace
}  // namespace via::overlays
