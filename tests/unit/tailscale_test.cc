// The broker <-> via-tsnet control messages and the Tailscale driver's endpoint handling.
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdlib>

#include "overlays/tailscale/helper_message.h"
#include "overlays/tailscale/tailscale_overlay.h"

namespace via::overlays {
namespace {

TEST(HelperMessage, ParsesVerbAndFields) {
  auto m = ParseHelperMessage("STATUS\nstate=Running\nips=100.64.0.1,fd7a::1\nerror=");
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->verb, "STATUS");
  EXPECT_EQ(m->Get("state"), "Running");
  EXPECT_EQ(m->Get("ips"), "100.64.0.1,fd7a::1");
  EXPECT_EQ(m->Get("error"), "");
  EXPECT_EQ(m->Get("absent"), "");
}

TEST(HelperMessage, ValueMayContainEquals) {
  auto m = ParseHelperMessage("ACCEPTED\nname=a=b");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->Get("name"), "a=b");
}

TEST(HelperMessage, RejectsMalformedInput) {
  for (const char* bad : {"", "\nstate=x", "status\nx=1", "STATUS\nnovalue", "STATUS\n=x",
                          "STATUS\nBad-Key=1", "STATUS\n"}) {
    auto m = ParseHelperMessage(bad);
    EXPECT_FALSE(m.ok()) << bad;
    EXPECT_EQ(m.status().code(), EPROTO) << bad;
  }
}

TEST(HelperMessage, FormatKeepsEachValueOnItsLine) {
  std::string s = FormatHelperMessage("CONFIG", {{"auth_key", "k\nmode=attach"}, {"mode", "node"}});
  EXPECT_EQ(s, "CONFIG\nauth_key=k mode=attach\nmode=node");
  auto m = ParseHelperMessage(s);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->Get("mode"), "node");
}

config::Overlay TsOverlay() {
  config::Overlay o;
  o.id = "app:ts";
  o.name = "ts";
  o.ns = "app";
  o.kind = config::OverlayKind::kTailscale;
  o.kind_name = "network.tailscale";
  o.tailscale.auth_key = "tskey-x";
  return o;
}

TEST(TailscaleDriver, NoEndpointUntilRunningAndNoHandshakeEither) {
  auto d = TailscaleOverlay::Create(TsOverlay());
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE((*d)->endpoints().empty());
  Target t;
  t.name = "alpha";
  t.port = 22;
  auto h = (*d)->NewHandshake(t);
  EXPECT_EQ(h.status().code(), ENETUNREACH);
  EXPECT_EQ(h.status().message(), "tailscale node app:ts is not running");
  EXPECT_EQ((*d)->hostname(), "wippy");
  EXPECT_EQ((*d)->secret().size(), 32u);
}

TEST(TailscaleDriver, EndpointMustBeNumericLoopback) {
  auto d = TailscaleOverlay::Create(TsOverlay());
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE((*d)->SetEndpoint("192.0.2.1:1080"));
  EXPECT_FALSE((*d)->SetEndpoint("localhost:1080"));
  EXPECT_FALSE((*d)->SetEndpoint("127.0.0.1:0"));
  EXPECT_FALSE((*d)->SetEndpoint("127.0.0.1:70000"));
  EXPECT_FALSE((*d)->SetEndpoint("127.0.0.1"));
  EXPECT_TRUE((*d)->endpoints().empty());
  ASSERT_TRUE((*d)->SetEndpoint("127.0.0.1:41234"));
  ASSERT_EQ((*d)->endpoints().size(), 1u);
  EXPECT_EQ((*d)->endpoints()[0].text, "127.0.0.1:41234");
  Target t;
  t.name = "alpha";
  t.port = 22;
  auto h = (*d)->NewHandshake(t);
  ASSERT_TRUE(h.ok());
  // SOCKS5 greeting offering username/password only: the helper accepts nothing else.
  EXPECT_EQ((*h)->Output(), std::string_view("\x05\x01\x02", 3));
  (*d)->ClearEndpoint();
  EXPECT_TRUE((*d)->endpoints().empty());
}

TEST(TailscaleDriver, AuthKeyFromTheEnvironment) {
  config::Overlay o = TsOverlay();
  o.tailscale.auth_key.clear();
  o.tailscale.auth_key_env = "VIA_UNIT_TS_KEY";
  setenv("VIA_UNIT_TS_KEY", "tskey-from-env", 1);
  auto d = TailscaleOverlay::Create(o);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->auth_key(), "tskey-from-env");
  unsetenv("VIA_UNIT_TS_KEY");
}

TEST(TailscaleDriver, AttachedEntryNeedsNoKey) {
  config::Overlay o = TsOverlay();
  o.tailscale.auth_key.clear();
  o.tailscale.localapi_socket = "/run/tailscale/tailscaled.sock";
  auto d = TailscaleOverlay::Create(o);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE((*d)->attached());
}

}  // namespace
}  // namespace via::overlays

// The helper answers in SOCKS5, but a refusal is worded for a tailnet, not for a proxy's exit;
// the errno stays the reply code's.
namespace via::overlays {
namespace {

Status Feed(Handshake& h, std::string_view bytes) {
  h.Consumed(h.Output().size());
  return h.Feed(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

TEST(TailscaleOverlay, RefusalsAreWordedForATailnet) {
  auto d = TailscaleOverlay::Create(TsOverlay());
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE((*d)->SetEndpoint("127.0.0.1:41234"));
  Target t;
  t.name = "nobody";
  t.port = 22;
  auto h = (*d)->NewHandshake(t);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(Feed(**h, std::string_view("\x05\x02", 2)).ok());
  ASSERT_TRUE(Feed(**h, std::string_view("\x01\x00", 2)).ok());
  Status s = Feed(**h, std::string_view("\x05\x04\x00\x01\x00", 5));
  EXPECT_EQ(s.code(), EHOSTUNREACH);
  EXPECT_EQ(s.message(),
            "tailscale node wippy of app:ts cannot reach nobody:22: no node of that name in the "
            "tailnet's netmap, or no route to it (helper reply 0x04)");
}

}  // namespace
}  // namespace via::overlays
