// Tests for via.route entries (config/parse_rules.cc, config/routes.h): good routes, every broken
// route with its file:line:col, the built-in defaults, `via run --route` specs and matching.
#include "config/routes.h"

#include <gtest/gtest.h>

#include <string>

#include "config/config.h"

namespace via::config {
namespace {

class RoutesTest : public ::testing::Test {
 protected:
  // app:tor (socks5 with a control port: marked as Tor) at line 4, app:i2p at line 9;
  // `entries` from line 13.
  static std::string Doc(const std::string& entries, const std::string& service = "") {
    return "version: \"1.0\"\nnamespace: app\nentries:\n"
           "  - name: tor\n    kind: network.socks5\n    host: 127.0.0.1\n    port: 9050\n"
           "    control_port: 9051\n"
           "  - name: i2p\n    kind: network.i2p\n    host: 127.0.0.1\n    port: 7656\n" +
           entries + service;
  }
  Result<Config> Parse(const std::string& entries, const std::string& service = "") {
    return ParseConfigText(Doc(entries, service), "via.yaml", "/srv");
  }
  std::string Error(const std::string& entries) { return Parse(entries).status().ToString(); }
  // A via.route entry "r" at line 13; its body from line 15.
  static std::string RouteEntry(const std::string& body) {
    return "  - name: r\n    kind: via.route\n" + body;
  }
};

TEST_F(RoutesTest, NameRouteIsRead) {
  auto cfg =
      Parse(RouteEntry("    match: {name: \"*.Example.TEST.\", port: 443}\n"
                       "    network: tor\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  ASSERT_EQ(cfg->routes.size(), 1u);
  const Route& r = cfg->routes[0];
  EXPECT_EQ(r.id, "app:r");
  EXPECT_EQ(r.name, "*.example.test");
  EXPECT_EQ(r.port, 443);
  EXPECT_EQ(r.network, "app:tor");  // a bare unique name becomes the id
  EXPECT_EQ(r.where(), "via.yaml:13");
  EXPECT_EQ(r.MatchText(), "*.example.test:443");
}

TEST_F(RoutesTest, CidrRoutesAreRead) {
  auto cfg = Parse(RouteEntry("    match: {cidr: 10.0.0.0/8}\n    network: block\n") +
                   "  - name: v6\n    kind: via.route\n"
                   "    match: {cidr: \"fd00::/8\", port: 22}\n    network: direct\n");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  ASSERT_EQ(cfg->routes.size(), 2u);
  EXPECT_TRUE(cfg->routes[0].has_cidr);
  EXPECT_EQ(cfg->routes[0].MatchText(), "10.0.0.0/8");
  EXPECT_EQ(cfg->routes[0].network, "block");
  EXPECT_EQ(cfg->routes[1].MatchText(), "[fd00::/8]:22");
  EXPECT_EQ(cfg->routes[1].network, "direct");
}

TEST_F(RoutesTest, UnknownOverlay) {
  EXPECT_EQ(Error(RouteEntry("    match: {name: \"*.onion\"}\n    network: app:nope\n")),
            "via.yaml:16:14: entry app:r (via.route): network: unknown overlay \"app:nope\" "
            "(known: app:tor, app:i2p; or direct, block)");
}

TEST_F(RoutesTest, NoneIsNotARouteNetwork) {
  EXPECT_EQ(Error(RouteEntry("    match: {name: \"*.onion\"}\n    network: none\n")),
            "via.yaml:16:14: entry app:r (via.route): network: must name an overlay (ns:name), "
            "direct or block");
}

TEST_F(RoutesTest, MissingNetwork) {
  EXPECT_EQ(Error(RouteEntry("    match: {name: \"*.onion\"}\n")),
            "via.yaml:13:5: entry app:r (via.route): network: required: an overlay (ns:name), "
            "direct or block");
}

TEST_F(RoutesTest, BadCidr) {
  EXPECT_EQ(Error(RouteEntry("    match: {cidr: 10.0.0.0/33}\n    network: direct\n")),
            "via.yaml:15:19: entry app:r (via.route): match.cidr: \"10.0.0.0/33\": the prefix "
            "length must be a number from 0 to 32");
  EXPECT_EQ(Error(RouteEntry("    match: {cidr: 10.0.0.1/8}\n    network: direct\n")),
            "via.yaml:15:19: entry app:r (via.route): match.cidr: \"10.0.0.1/8\" has host bits "
            "set (the network is 10.0.0.0/8)");
  EXPECT_EQ(Error(RouteEntry("    match: {cidr: tor.example}\n    network: direct\n")),
            "via.yaml:15:19: entry app:r (via.route): match.cidr: \"tor.example\" is not a CIDR "
            "(an IPv4 or IPv6 address, /prefix length)");
}

TEST_F(RoutesTest, NameAndCidrTogether) {
  EXPECT_EQ(
      Error(RouteEntry("    match: {name: \"*.x\", cidr: 10.0.0.0/8}\n    network: direct\n")),
      "via.yaml:15:26: entry app:r (via.route): match.cidr: give name or cidr, not both "
      "(two routes)");
}

TEST_F(RoutesTest, BadGlob) {
  EXPECT_EQ(Error(RouteEntry("    match: {name: \"*.on ion\"}\n    network: direct\n")),
            "via.yaml:15:19: entry app:r (via.route): match.name: \"*.on ion\" may hold letters, "
            "digits, '-', '_', '.' and the glob characters * ? [ ] ! only, not  ");
  EXPECT_EQ(Error(RouteEntry("    match: {name: \"[ab.onion\"}\n    network: direct\n")),
            "via.yaml:15:19: entry app:r (via.route): match.name: \"[ab.onion\" has a '[' "
            "without ']'");
}

TEST_F(RoutesTest, PortOutOfRange) {
  EXPECT_EQ(Error(RouteEntry("    match: {name: \"*.x\", port: 70000}\n    network: direct\n")),
            "via.yaml:15:32: entry app:r (via.route): match.port: must be a port number "
            "(1-65535)");
}

TEST_F(RoutesTest, MatchNeedsNameOrCidr) {
  EXPECT_EQ(Error(RouteEntry("    match: {port: 80}\n    network: direct\n")),
            "via.yaml:15:12: entry app:r (via.route): match: needs name (a glob) or cidr");
  EXPECT_EQ(Error(RouteEntry("    match: {host: x}\n    network: direct\n")),
            "via.yaml:15:13: entry app:r (via.route): match.host: unknown field (known: name, "
            "cidr, port; did you mean port?)");
}

TEST_F(RoutesTest, UnknownField) {
  EXPECT_EQ(Error(RouteEntry("    match: {name: x}\n    network: direct\n    via: tor\n")),
            "via.yaml:17:5: entry app:r (via.route): via: unknown field (known: match, network)");
}

TEST_F(RoutesTest, BuiltinsFollowTheMarkedOverlays) {
  auto cfg = Parse("");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  std::vector<Route> b = BuiltinRoutes(*cfg);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].MatchText(), "*.onion");
  EXPECT_EQ(b[0].network, "app:tor");
  EXPECT_EQ(b[1].MatchText(), "*.i2p");
  EXPECT_EQ(b[1].network, "app:i2p");
  const std::vector<Route> all = EffectiveRoutes(*cfg, {});
  const Route* r = FindNameRoute(all, "x.b32.i2p", 80);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->id, "built-in");
  EXPECT_EQ(r->where(), ".i2p to app:i2p, the I2P overlay");
}

TEST_F(RoutesTest, ConfigRouteOverridesBuiltin) {
  auto cfg = Parse(RouteEntry("    match: {name: \"*.onion\"}\n    network: block\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  std::vector<Route> all = EffectiveRoutes(*cfg, {});
  const Route* r = FindLookupRoute(all, "abc.onion");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->network, "block");
  EXPECT_EQ(r->id, "app:r");
}

TEST_F(RoutesTest, DefaultRoutesCanBeTurnedOff) {
  auto cfg = Parse("", "network_service:\n  default_routes: false\n");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  EXPECT_TRUE(BuiltinRoutes(*cfg).empty());
}

TEST_F(RoutesTest, TorFalseUnmarksAControlPort) {
  std::string doc = Doc("");
  doc.replace(doc.find("    control_port: 9051\n"), 23, "    control_port: 9051\n    tor: false\n");
  auto cfg = ParseConfigText(doc, "via.yaml", "/srv");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  std::vector<Route> b = BuiltinRoutes(*cfg);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].MatchText(), "*.i2p");
}

TEST_F(RoutesTest, RouteSpecs) {
  auto cfg = Parse("");
  ASSERT_TRUE(cfg.ok());
  auto a = ParseRouteSpec("*.Onion:443=tor", *cfg);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->MatchText(), "*.onion:443");
  EXPECT_EQ(a->network, "app:tor");
  auto b = ParseRouteSpec("[fd00::/8]:22=block", *cfg);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->MatchText(), "[fd00::/8]:22");
  auto c = ParseRouteSpec("fd00::/8=direct", *cfg);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->MatchText(), "fd00::/8");
  auto d = ParseRouteSpec("127.0.0.0/8:8080=direct", *cfg);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->MatchText(), "127.0.0.0/8:8080");
  EXPECT_EQ(ParseRouteSpec("*.x=nope", *cfg).status().ToString(),
            "--route *.x=nope: unknown network \"nope\" (an overlay, direct or block) "
            "(GLOB[:PORT]=NETWORK, CIDR[:PORT]=NETWORK, or [IPV6-CIDR]:PORT=NETWORK)");
  EXPECT_FALSE(ParseRouteSpec("*.x:0=direct", *cfg).ok());
  EXPECT_FALSE(ParseRouteSpec("*.x", *cfg).ok());
}

TEST_F(RoutesTest, Matching) {
  Route r;
  ASSERT_EQ(ParseCidr("100.64.0.0/10", &r.cidr), "");
  r.has_cidr = true;
  const uint8_t in[4] = {100, 100, 1, 2}, out[4] = {100, 128, 0, 1};
  EXPECT_TRUE(RouteMatchesAddr(r, 4, in, 80));
  EXPECT_FALSE(RouteMatchesAddr(r, 4, out, 80));
  r.port = 443;
  EXPECT_FALSE(RouteMatchesAddr(r, 4, in, 80));
  EXPECT_TRUE(RouteMatchesAddr(r, 4, in, 443));
  Route n;
  n.name = "*.onion";
  EXPECT_TRUE(RouteMatchesName(n, "ABC.onion", 80));
  EXPECT_FALSE(RouteMatchesName(n, "onion", 80));
}

}  // namespace
}  // namespace via::config
