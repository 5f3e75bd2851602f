// Socks5Handshake byte vectors (RFC 1928/1929) and the driver's isolation credentials.
#include "overlays/socks5.h"

#include <gtest/gtest.h>

#include <set>

namespace via::overlays {
namespace {

using Bytes = std::string;

class Socks5Test : public ::testing::Test {
 protected:
  static Target Name(const std::string& n, uint16_t port) {
    Target t;
    t.name = n;
    t.port = port;
    return t;
  }
  static Target V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port) {
    Target t;
    t.addr.family = 4;
    t.addr.bytes[0] = a;
    t.addr.bytes[1] = b;
    t.addr.bytes[2] = c;
    t.addr.bytes[3] = d;
    t.port = port;
    return t;
  }
  // Takes everything the machine wants to send.
  static Bytes Drain(Handshake& h) {
    Bytes out(h.Output());
    h.Consumed(out.size());
    return out;
  }
  // Feeds `reply` exactly as asked; returns the first error.
  static Status FeedAll(Handshake& h, const Bytes& reply) {
    size_t pos = 0;
    while (pos < reply.size()) {
      size_t want = h.WantRead();
      if (want == 0) return Status::Error(EPROTO, "did not ask for more");
      size_t n = std::min(want, reply.size() - pos);
      Status s = h.Feed(reinterpret_cast<const uint8_t*>(reply.data()) + pos, n);
      if (!s.ok()) return s;
      pos += n;
      Drain(h);
    }
    return Status::Ok();
  }
  // Runs a no-auth handshake to the reply stage and feeds `reply`.
  static Status ConnectReply(const Bytes& reply) {
    Socks5Handshake h(Name("example.test", 80), "", "");
    Drain(h);
    if (Status s = FeedAll(h, Bytes("\x05\x00", 2)); !s.ok()) return s;
    return FeedAll(h, reply);
  }
};

TEST_F(Socks5Test, GreetingWithoutCredentialsOffersNoAuth) {
  Socks5Handshake h(Name("example.test", 80), "", "");
  EXPECT_EQ(Drain(h), Bytes("\x05\x01\x00", 3));
  EXPECT_EQ(h.WantRead(), 2u);
}

TEST_F(Socks5Test, GreetingWithCredentialsOffersUserPass) {
  Socks5Handshake h(Name("example.test", 80), "u", "p");
  EXPECT_EQ(Drain(h), Bytes("\x05\x01\x02", 3));
}

TEST_F(Socks5Test, UsernamePasswordSubnegotiation) {
  Socks5Handshake h(Name("a.b", 443), "alice", "pw");
  Drain(h);
  ASSERT_TRUE(h.Feed(reinterpret_cast<const uint8_t*>("\x05\x02"), 2).ok());
  EXPECT_EQ(Drain(h), Bytes("\x01\x05"
                            "alice"
                            "\x02"
                            "pw",
                            10));
  ASSERT_TRUE(FeedAll(h, Bytes("\x01\x00", 2)).ok());
}

TEST_F(Socks5Test, ConnectByNameUsesAtyp3) {
  Socks5Handshake h(Name("example.test", 8080), "", "");
  Drain(h);
  ASSERT_TRUE(h.Feed(reinterpret_cast<const uint8_t*>("\x05\x00"), 2).ok());
  EXPECT_EQ(Drain(h), Bytes("\x05\x01\x00\x03\x0c"
                            "example.test"
                            "\x1f\x90",
                            19));
}

TEST_F(Socks5Test, ConnectByIpv4UsesAtyp1) {
  Socks5Handshake h(V4(10, 1, 2, 3, 80), "", "");
  Drain(h);
  ASSERT_TRUE(h.Feed(reinterpret_cast<const uint8_t*>("\x05\x00"), 2).ok());
  EXPECT_EQ(Drain(h), Bytes("\x05\x01\x00\x01\x0a\x01\x02\x03\x00\x50", 10));
}

TEST_F(Socks5Test, ConnectByIpv6UsesAtyp4AndMappedGoesAsIpv4) {
  Target t;
  t.addr.family = 6;
  t.addr.bytes[15] = 1;
  t.port = 443;
  Socks5Handshake h(t, "", "");
  Drain(h);
  ASSERT_TRUE(h.Feed(reinterpret_cast<const uint8_t*>("\x05\x00"), 2).ok());
  Bytes req = Drain(h);
  EXPECT_EQ(req.size(), 22u);
  EXPECT_EQ(req[3], '\x04');
  t.addr.bytes[10] = t.addr.bytes[11] = '\xff';
  Socks5Handshake m(t, "", "");
  Drain(m);
  ASSERT_TRUE(m.Feed(reinterpret_cast<const uint8_t*>("\x05\x00"), 2).ok());
  EXPECT_EQ(Drain(m)[3], '\x01');
}

TEST_F(Socks5Test, SuccessReadsExactlyTheReply) {
  for (const Bytes& reply : {Bytes("\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38", 10),
                             Bytes("\x05\x00\x00\x04", 4) + Bytes(16, '\0') + Bytes("\x04\x38", 2),
                             Bytes("\x05\x00\x00\x03\x03"
                                   "abc"
                                   "\x04\x38",
                                   10)}) {
    Socks5Handshake h(Name("example.test", 80), "", "");
    Drain(h);
    ASSERT_TRUE(FeedAll(h, Bytes("\x05\x00", 2)).ok());
    ASSERT_TRUE(FeedAll(h, reply).ok());
    EXPECT_TRUE(h.Done());
    EXPECT_EQ(h.WantRead(), 0u);  // never asks for the program's bytes
  }
}

TEST_F(Socks5Test, OneByteAtATime) {
  Socks5Handshake h(Name("example.test", 80), "", "");
  Drain(h);
  Bytes all = Bytes("\x05\x00", 2);
  for (char c : all) ASSERT_TRUE(h.Feed(reinterpret_cast<const uint8_t*>(&c), 1).ok());
  Drain(h);
  Bytes reply("\x05\x00\x00\x01\x01\x02\x03\x04\x00\x50", 10);
  for (char c : reply) {
    ASSERT_GE(h.WantRead(), 1u);
    ASSERT_TRUE(h.Feed(reinterpret_cast<const uint8_t*>(&c), 1).ok());
  }
  EXPECT_TRUE(h.Done());
}

TEST_F(Socks5Test, ReplyCodesBecomeErrnos) {
  const std::pair<char, int> cases[] = {{1, ECONNREFUSED}, {2, EACCES},       {3, ENETUNREACH},
                                        {4, EHOSTUNREACH}, {5, ECONNREFUSED}, {6, ETIMEDOUT},
                                        {7, EOPNOTSUPP},   {8, EAFNOSUPPORT}, {9, EPROTO}};
  for (auto [code, err] : cases) {
    Status s = ConnectReply(Bytes("\x05", 1) + code + Bytes("\x00\x01\0\0\0\0\0\0", 8));
    EXPECT_EQ(s.code(), err) << int(code);
    EXPECT_NE(s.message().find("example.test:80"), std::string::npos) << s.message();
  }
}

TEST_F(Socks5Test, HostileReplies) {
  EXPECT_EQ(ConnectReply(Bytes("\x04\x00\x00\x01\0\0\0\0\0\0", 10)).code(), EPROTO);  // version
  EXPECT_EQ(ConnectReply(Bytes("\x05\x00\x01\x01\0\0\0\0\0\0", 10)).code(), EPROTO);  // RSV
  EXPECT_EQ(ConnectReply(Bytes("\x05\x00\x00\x09\0\0\0\0\0\0", 10)).code(), EPROTO);  // ATYP
  EXPECT_EQ(ConnectReply(Bytes("\x05\x00\x00\x03\x00\x00\x00", 7)).code(), EPROTO);   // empty name
}

TEST_F(Socks5Test, MethodRefusals) {
  Socks5Handshake none(Name("x.y", 1), "", "");
  Drain(none);
  EXPECT_EQ(FeedAll(none, Bytes("\x05\xff", 2)).code(), EACCES);
  Socks5Handshake unoffered(Name("x.y", 1), "", "");
  Drain(unoffered);
  EXPECT_EQ(FeedAll(unoffered, Bytes("\x05\x02", 2)).code(), EACCES);
  Socks5Handshake notsocks(Name("x.y", 1), "", "");
  Drain(notsocks);
  EXPECT_EQ(FeedAll(notsocks, "HT").code(), EPROTO);
}

TEST_F(Socks5Test, AuthFailureIsEacces) {
  Socks5Handshake h(Name("x.y", 1), "u", "bad");
  Drain(h);
  ASSERT_TRUE(FeedAll(h, Bytes("\x05\x02", 2)).ok());
  Status s = FeedAll(h, Bytes("\x01\x01", 2));
  EXPECT_EQ(s.code(), EACCES);
  EXPECT_NE(s.message().find("rejected username/password"), std::string::npos);
}

TEST_F(Socks5Test, IsolationMintsFreshCredentialsEachTime) {
  config::Overlay o;
  o.id = "app:tor";
  o.kind_name = "network.socks5";
  o.socks5.host = "127.0.0.1";
  o.socks5.port = 9050;
  o.socks5.isolate_streams = true;
  o.socks5.username = "configured";
  o.socks5.password = "ignored";
  auto d = CreateDriver(o);
  ASSERT_TRUE(d.ok()) << d.status().message();
  std::set<Bytes> seen;
  for (int i = 0; i < 20; ++i) {
    auto h = (*d)->NewHandshake(Name("x.y", 1));
    ASSERT_TRUE(h.ok());
    Drain(**h);
    ASSERT_TRUE((*h)->Feed(reinterpret_cast<const uint8_t*>("\x05\x02"), 2).ok());
    Bytes auth(Drain(**h));
    ASSERT_EQ(auth.size(), 1u + 1 + 16 + 1 + 16);
    Bytes user = auth.substr(2, 16), pass = auth.substr(19, 16);
    EXPECT_EQ(user, pass);
    EXPECT_EQ(user.find_first_not_of("0123456789abcdef"), Bytes::npos);
    EXPECT_TRUE(seen.insert(user).second);
  }
}

TEST_F(Socks5Test, DriverResolvesProxyHost) {
  config::Overlay o;
  o.id = "app:p";
  o.socks5.host = "::1";
  o.socks5.port = 1080;
  auto d = CreateDriver(o);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->endpoints().at(0).text, "[::1]:1080");
  o.socks5.host = "no-such-host.invalid";
  auto bad = CreateDriver(o);
  EXPECT_EQ(bad.status().code(), EHOSTUNREACH);
  EXPECT_NE(bad.status().message().find("app:p"), std::string::npos);
}

TEST_F(Socks5Test, UnsupportedKinds) {
  config::Overlay o;
  o.id = "app:tailnet";
  o.kind = config::OverlayKind::kTailscale;
  o.kind_name = "network.tailscale";
  auto d = CreateDriver(o);
  EXPECT_EQ(d.status().code(), ENOTSUP);
  EXPECT_EQ(
      d.status().message(),
      "overlay app:tailnet: kind network.tailscale is not supported by this build of via yet");
}

}  // namespace
}  // namespace via::overlays
