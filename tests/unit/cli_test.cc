// The command line's pure parts: argument parsing, LD_PRELOAD composition, URL parsing and the
// probe's IP extraction.
#include "tools/cli.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "tools/probe.h"
#include "tools/strict.h"

namespace via::tools {
namespace {

class ParseArgsTest : public ::testing::Test {
 protected:
  // Parses `words` (without the command name) with `via run`'s flags.
  Result<Args> Run(std::initializer_list<const char*> words) { return Parse("run", words, true); }
  Result<Args> Parse(const std::string& command, std::initializer_list<const char*> words,
                     bool stop_at_operand) {
    storage_.assign({command});
    for (const char* w : words) storage_.push_back(w);
    argv_.clear();
    for (auto& s : storage_) argv_.push_back(s.data());
    return ParseArgs(command, int(argv_.size()), argv_.data(),
                     {{"--config", true},
                      {"--network", true},
                      {"--direct", false},
                      {"--quiet", false},
                      {"--help", false}},
                     {{"-c", "--config"}, {"-n", "--network"}, {"-q", "--quiet"}}, stop_at_operand);
  }
  std::vector<std::string> storage_;
  std::vector<char*> argv_;
};

TEST_F(ParseArgsTest, FlagsThenDoubleDashThenCommand) {
  auto a = Run({"-c", "via.yaml", "--network", "app:tor", "--", "curl", "-s", "http://x/"});
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->Get("--config"), "via.yaml");
  EXPECT_EQ(a->Get("--network"), "app:tor");
  EXPECT_EQ(a->rest, (std::vector<std::string>{"curl", "-s", "http://x/"}));
}

TEST_F(ParseArgsTest, DoubleDashIsOptionalBeforeACommand) {
  auto a = Run({"-q", "curl", "--network", "x"});
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->Has("--quiet"));
  EXPECT_FALSE(a->Has("--network"));  // belongs to curl
  EXPECT_EQ(a->rest, (std::vector<std::string>{"curl", "--network", "x"}));
}

TEST_F(ParseArgsTest, InlineValueAndAliases) {
  auto a = Run({"--network=app:tor", "-n", "app:other", "--", "true"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->Get("--network"), "app:other");  // the last one wins
}

TEST_F(ParseArgsTest, EverythingAfterDoubleDashIsTheCommandEvenDashes) {
  auto a = Run({"--", "--help"});
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->Has("--help"));
  EXPECT_EQ(a->rest, (std::vector<std::string>{"--help"}));
}

TEST_F(ParseArgsTest, UnknownFlagNamesTheCommandsHelp) {
  auto a = Run({"--bogus", "--", "true"});
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(), "unknown option --bogus for 'run'; try 'via run --help'");
}

TEST_F(ParseArgsTest, MissingValue) {
  auto a = Run({"--network"});
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(), "option --network needs a value; try 'via run --help'");
}

TEST_F(ParseArgsTest, SwitchWithValueIsAnError) {
  auto a = Run({"--direct=yes", "true"});
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(), "option --direct takes no value; try 'via run --help'");
}

TEST_F(ParseArgsTest, WithoutStopAtOperandFlagsMayFollowOperands) {
  auto a = Parse("check", {"extra", "-c", "via.yaml"}, false);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->Get("--config"), "via.yaml");
  EXPECT_EQ(a->rest, (std::vector<std::string>{"extra"}));
}

TEST_F(ParseArgsTest, LoneDashIsAnOperand) {
  auto a = Run({"-"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->rest, (std::vector<std::string>{"-"}));
}

TEST(PreloadWithShimTest, AloneWhenNothingWasPreloaded) {
  EXPECT_EQ(PreloadWithShim("", "/b/libvia.so"), "/b/libvia.so");
}

TEST(PreloadWithShimTest, PrependedToOthers) {
  EXPECT_EQ(PreloadWithShim("/x/a.so:/y/b.so", "/b/libvia.so"), "/b/libvia.so:/x/a.so:/y/b.so");
  EXPECT_EQ(PreloadWithShim("/x/a.so /y/b.so", "/b/libvia.so"), "/b/libvia.so:/x/a.so:/y/b.so");
}

TEST(PreloadWithShimTest, OnceEvenWhenNestedOrAnotherCopyIsPreloaded) {
  EXPECT_EQ(PreloadWithShim("/b/libvia.so:/x/a.so", "/b/libvia.so"), "/b/libvia.so:/x/a.so");
  EXPECT_EQ(PreloadWithShim("/x/a.so:/usr/lib/via/libvia.so", "/b/libvia.so"),
            "/b/libvia.so:/x/a.so");
  EXPECT_EQ(PreloadWithShim("/x/notlibvia.so", "/b/libvia.so"), "/b/libvia.so:/x/notlibvia.so");
}

TEST(ParseUrlTest, DefaultsAndQueryWithoutPath) {
  auto u = ParseUrl("https://api.ipify.org?format=json");
  ASSERT_TRUE(u.ok());
  EXPECT_TRUE(u->https);
  EXPECT_EQ(u->host, "api.ipify.org");
  EXPECT_EQ(u->port, 443);
  EXPECT_EQ(u->path, "/?format=json");
}

TEST(ParseUrlTest, PortAndPath) {
  auto u = ParseUrl("http://example.test:8080/ip");
  ASSERT_TRUE(u.ok());
  EXPECT_FALSE(u->https);
  EXPECT_EQ(u->host, "example.test");
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->path, "/ip");
}

TEST(ParseUrlTest, BracketedIpv6) {
  auto u = ParseUrl("http://[::1]:81/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 81);
  auto v = ParseUrl("https://[fd00::2]/x");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->host, "fd00::2");
  EXPECT_EQ(v->port, 443);
}

TEST(ParseUrlTest, Rejects) {
  EXPECT_FALSE(ParseUrl("ftp://example.test/").ok());
  EXPECT_FALSE(ParseUrl("http:///path").ok());
  EXPECT_FALSE(ParseUrl("http://host:0/").ok());
  EXPECT_FALSE(ParseUrl("http://host:99999/").ok());
  EXPECT_FALSE(ParseUrl("http://host:80x/").ok());
  EXPECT_FALSE(ParseUrl("http://[::1/").ok());
}

TEST(ExtractIpTest, JsonObject) {
  EXPECT_EQ(ExtractIp(R"({"ip":"203.0.113.42"})"), "203.0.113.42");
  EXPECT_EQ(ExtractIp("{ \"ip\" : \"2001:db8::1\" }\n"), "2001:db8::1");
  EXPECT_EQ(ExtractIp(R"({"country":"x","ip":"185.220.101.61"})"), "185.220.101.61");
}

TEST(ExtractIpTest, PlainBodyIsTrimmed) {
  EXPECT_EQ(ExtractIp("  198.51.100.7\r\n"), "198.51.100.7");
  EXPECT_EQ(ExtractIp(""), "");
  EXPECT_EQ(ExtractIp(" \n"), "");
}

TEST(ExtractIpTest, KeyWithoutStringValueFallsBackToTheBody) {
  EXPECT_EQ(ExtractIp(R"({"ip": null})"), R"({"ip": null})");
  EXPECT_EQ(ExtractIp(R"({"ip": null, "x": "y"})"), R"({"ip": null, "x": "y"})");
}

TEST(ExtractIpTest, TheKeyNotAValue) {
  EXPECT_EQ(ExtractIp(R"({"kind": "ip", "ip": "192.0.2.1"})"), "192.0.2.1");
}

TEST(StrictParseCidrTest, RangesAsHelloSendsThem) {
  // The prefix length goes in the port, as HELLO's FAKE_NET carries it.
  auto v4 = strict::ParseCidr("198.18.0.0/15");
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(v4->family, 4);
  EXPECT_EQ(v4->port, 15);
  EXPECT_EQ(v4->bytes[0], 198);
  EXPECT_EQ(v4->bytes[1], 18);
  auto v6 = strict::ParseCidr("fd76:6961:ff00::/64");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->family, 6);
  EXPECT_EQ(v6->port, 64);
  EXPECT_EQ(v6->bytes[0], 0xfd);
  for (const char* bad : {"198.18.0.0", "198.18.0.0/33", "198.18.0.0/", "198.18.0.0/1x",
                          "fd76::/129", "example.test/8", ""}) {
    EXPECT_FALSE(strict::ParseCidr(bad).has_value()) << bad;
  }
}

}  // namespace
}  // namespace via::tools
