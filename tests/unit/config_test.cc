// Tests for config/config.h: the Wippy registry format, network_service, and every error text.
#include "config/config.h"

#include <gtest/gtest.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <optional>
#include <random>
#include <regex>
#include <string>

namespace via::config {
namespace {

std::string TestdataDir() {
#ifdef VIA_TESTDATA_DIR
  return std::string(VIA_TESTDATA_DIR) + "/config";
#else
  std::string here = __FILE__;
  return here.substr(0, here.rfind('/')) + "/testdata/config";
#endif
}

std::string RealPath(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) != nullptr ? buf : p;
}

// Sets an environment variable for the life of the object and restores the old value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    value ? ::setenv(name, value, 1) : ::unsetenv(name);
  }
  ~ScopedEnv() { old_ ? ::setenv(name_, old_->c_str(), 1) : ::unsetenv(name_); }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

class ConfigTest : public ::testing::Test {
 protected:
  // A registry document: version, namespace app, and `entries` (already indented).
  static std::string Doc(const std::string& entries, const std::string& tail = "") {
    return "version: \"1.0\"\nnamespace: app\nentries:\n" + entries + tail;
  }
  // One socks5 entry "tor" (line 4) with `fields`, each line indented under the entry.
  static std::string Socks5(const std::string& fields) {
    return Doc("  - name: tor\n    kind: network.socks5\n" + Indent(fields));
  }
  static std::string Indent(const std::string& lines) {
    std::string out;
    size_t start = 0;
    while (start < lines.size()) {
      size_t end = lines.find('\n', start);
      if (end == std::string::npos) end = lines.size();
      out += "    " + lines.substr(start, end - start) + "\n";
      start = end + 1;
    }
    return out;
  }

  Result<Config> Parse(const std::string& text) {
    return ParseConfigText(text, "via.yaml", "/srv/app");
  }
  // The error message of parsing `text` ("OK" if it parsed).
  std::string Error(const std::string& text) { return Parse(text).status().ToString(); }
  std::string LoadError(const std::string& path) { return LoadConfig(path).status().ToString(); }
  // The connect_timeout_ms of a socks5 entry with `connect_timeout: <value>`.
  static int TimeoutMs(const std::string& value) {
    return Only(ParseConfigText(Socks5("host: h\nport: 1\nconnect_timeout: " + value), "via.yaml",
                                "/"))
        .socks5.connect_timeout_ms;
  }
  // The single overlay of a config that must parse (a copy: `cfg` is usually a temporary).
  static Overlay Only(const Result<Config>& cfg) {
    EXPECT_TRUE(cfg.ok()) << cfg.status().message();
    if (!cfg.ok() || cfg->overlays.size() != 1) {
      ADD_FAILURE() << "expected exactly one overlay";
      return Overlay();
    }
    return cfg->overlays[0];
  }

  const std::string seed_ = TestdataDir() + "/seed";
  const std::string project_ = TestdataDir() + "/project";
};

// ---- broken configurations, many times over -----------------------------------------------

// A config with every kind and most fields, edited at random the way a hand-edited file goes
// wrong (a line lost or repeated, indentation off by two, a character replaced by YAML syntax,
// two lines swapped, the file cut short). Each edit either still parses or fails with an error
// that starts with file:line:col; nothing throws or crashes. Deterministic.
TEST_F(ConfigTest, MutatedConfigsParseOrNameTheirError) {
  const std::string base =
      "version: \"1.0\"\n"
      "namespace: app\n"
      "entries:\n"
      "  - name: tor\n"
      "    kind: network.socks5\n"
      "    host: 127.0.0.1\n"
      "    port: 9050\n"
      "    isolate_streams: true\n"
      "    connect_timeout: 10s\n"
      "    remote_resolve: true\n"
      "  - name: proxy\n"
      "    kind: network.socks5\n"
      "    host: \"[::1]\"\n"
      "    port: 1080\n"
      "    username: user\n"
      "    password: secret\n"
      "  - name: i2p\n"
      "    kind: network.i2p\n"
      "    host: 127.0.0.1\n"
      "    port: 7656\n"
      "    destination: ephemeral\n"
      "    options:\n"
      "      inbound.length: 0\n"
      "      outbound.length: 0\n"
      "  - name: tailnet\n"
      "    kind: network.tailscale\n"
      "    hostname: via-node\n"
      "    auth_key_env: TS_AUTHKEY\n"
      "    ephemeral: true\n"
      "  - name: git\n"
      "    kind: via.program\n"
      "    match:\n"
      "      exe: /usr/bin/git\n"
      "      argv: [\"*\", fetch]\n"
      "    network: app:tor\n"
      "    groups: [vcs]\n"
      "  - name: deny_untrusted\n"
      "    kind: security.policy\n"
      "    policy:\n"
      "      actions: network.select\n"
      "      resources: \"*\"\n"
      "      effect: deny\n"
      "    groups: [untrusted]\n"
      "  - name: host\n"
      "    kind: process.host\n"
      "    workers: 4\n"
      "network_service:\n"
      "  state_dir: /tmp/via-state\n"
      "  default_network: app:tor\n"
      "  fake_ipv4: 198.18.0.0/15\n"
      "  fake_ipv6: fd76:6961:ff00::/64\n"
      "  loopback: direct\n"
      "  listen: overlay\n";
  ASSERT_TRUE(Parse(base).ok()) << Error(base);

  std::vector<std::string> lines;
  for (size_t start = 0; start < base.size();) {
    size_t end = base.find('\n', start);
    lines.push_back(base.substr(start, end - start));
    start = end + 1;
  }
  const std::string syntax = ":-[]{}\"'#&*!|>%@`, \t0123456789";
  const std::regex where("^via\\.yaml:[0-9]+:[0-9]+: ");  // file:line:col, then the error
  std::mt19937 rng(1929);
  int ok = 0, failed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::vector<std::string> l = lines;
    for (int e = 0, edits = 1 + int(rng() % 2); e < edits && !l.empty(); ++e) {
      size_t at = rng() % l.size();
      switch (rng() % 6) {
        case 0:
          l.erase(l.begin() + long(at));
          break;
        case 1:
          l.insert(l.begin() + long(at), l[at]);
          break;
        case 2:
          l[at] = rng() % 2 ? "  " + l[at] : l[at].substr(std::min<size_t>(2, l[at].size()));
          break;
        case 3:
          if (!l[at].empty()) l[at][rng() % l[at].size()] = syntax[rng() % syntax.size()];
          break;
        case 4:
          std::swap(l[at], l[rng() % l.size()]);
          break;
        default:
          l.resize(at);
      }
    }
    std::string text;
    for (const std::string& line : l) text += line + "\n";
    Result<Config> r = Parse(text);
    if (r.ok()) {
      ++ok;
      continue;
    }
    ++failed;
    const std::string& msg = r.status().message();
    ASSERT_NE(r.status().code(), 0) << i;
    ASSERT_TRUE(std::regex_search(msg, where)) << i << ": " << msg << "\n" << text;
  }
  EXPECT_GT(ok, 100);
  EXPECT_GT(failed, 1000);
}

// ---- the seed configuration -----------------------------------------------------------------

TEST_F(ConfigTest, SeedLoadsUnchanged) {
  auto cfg = LoadConfig(seed_ + "/_index.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ASSERT_EQ(cfg->overlays.size(), 2u);
  EXPECT_EQ(cfg->overlays[0].id, "app:tor");
  EXPECT_EQ(cfg->overlays[1].id, "app:tailnet");
  EXPECT_EQ(cfg->skipped_entries, 4);  // deny_network (security.policy) is read, not skipped
  ASSERT_EQ(cfg->policies.size(), 1u);
  EXPECT_EQ(cfg->policies[0].id, "app:deny_network");
}

TEST_F(ConfigTest, SeedTorIsAnIsolatingSocks5Proxy) {
  auto cfg = LoadConfig(seed_ + "/_index.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  const Overlay& tor = cfg->overlays[0];
  EXPECT_EQ(tor.kind, OverlayKind::kSocks5);
  EXPECT_EQ(tor.socks5.host, "127.0.0.1");
  EXPECT_EQ(tor.socks5.port, 9050);
  EXPECT_TRUE(tor.socks5.isolate_streams);
  EXPECT_EQ(tor.socks5.connect_timeout_ms, 15000);
}

TEST_F(ConfigTest, SeedTailnetIsParsed) {
  auto cfg = LoadConfig(seed_ + "/_index.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  const Overlay& ts = cfg->overlays[1];
  EXPECT_EQ(ts.kind, OverlayKind::kTailscale);
  EXPECT_EQ(ts.tailscale.hostname, "wippy-node");
  EXPECT_EQ(ts.tailscale.auth_key_env, "TS_AUTHKEY");
  EXPECT_TRUE(ts.tailscale.ephemeral);
}

TEST_F(ConfigTest, SeedWippyYamlGivesDefaultNetworkAndStateDir) {
  auto cfg = LoadConfig(seed_ + "/_index.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_EQ(cfg->service.default_network, "app:tor");
  EXPECT_EQ(cfg->service.state_dir, RealPath(seed_) + "/.wippy/net");
  EXPECT_EQ(cfg->files, (std::vector<std::string>{RealPath(seed_) + "/_index.yaml",
                                                  RealPath(seed_) + "/.wippy.yaml"}));
}

TEST_F(ConfigTest, SourceIsAbsoluteAndFingerprintIsHex) {
  auto cfg = LoadConfig(seed_ + "/../seed/_index.yaml");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_EQ(cfg->source, RealPath(seed_) + "/_index.yaml");
  EXPECT_EQ(cfg->fingerprint.size(), 16u);
  EXPECT_EQ(cfg->fingerprint.find_first_not_of("0123456789abcdef"), std::string::npos);
}

// ---- network.socks5 -------------------------------------------------------------------------

TEST_F(ConfigTest, Socks5FieldsAndDefaults) {
  Overlay o = Only(Parse(Socks5("host: proxy.lan\nport: 1080\nusername: u\npassword: p")));
  EXPECT_EQ(o.socks5.host, "proxy.lan");
  EXPECT_EQ(o.socks5.username, "u");
  EXPECT_EQ(o.socks5.password, "p");
  EXPECT_FALSE(o.socks5.isolate_streams);
  EXPECT_EQ(o.socks5.connect_timeout_ms, 15000);
  EXPECT_EQ(o.pos.ToString(), "via.yaml:4:5");
}

TEST_F(ConfigTest, Socks5Isolation) {
  EXPECT_EQ(Only(Parse(Socks5("host: h\nport: 1"))).socks5.isolation, Isolation::kNone);
  Overlay legacy = Only(Parse(Socks5("host: h\nport: 1\nisolate_streams: true")));
  EXPECT_EQ(legacy.socks5.isolation, Isolation::kConnection);
  for (Isolation i : {Isolation::kNone, Isolation::kConnection, Isolation::kDestination,
                      Isolation::kProcess, Isolation::kProgram, Isolation::kSession}) {
    Overlay o =
        Only(Parse(Socks5(std::string("host: h\nport: 1\nisolation: ") + IsolationName(i))));
    EXPECT_EQ(o.socks5.isolation, i);
    EXPECT_EQ(o.socks5.isolate_streams, i == Isolation::kConnection);
  }
  // Both given: they must agree.
  EXPECT_EQ(Only(Parse(Socks5("host: h\nport: 1\nisolate_streams: true\nisolation: connection")))
                .socks5.isolation,
            Isolation::kConnection);
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nisolate_streams: false\nisolation: connection")),
            "via.yaml:8:22: entry app:tor (network.socks5): isolate_streams: contradicts "
            "isolation: connection (isolate_streams: true means isolation: connection; give only "
            "one)");
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nisolation: circuit")),
            "via.yaml:8:16: entry app:tor (network.socks5): isolation: must be connection, "
            "destination, process, program, session or none, not \"circuit\"");
}

TEST_F(ConfigTest, Socks5ControlPort) {
  Overlay o = Only(Parse(Socks5("host: h\nport: 1\ncontrol_port: 9051\ncontrol_password: pw")));
  EXPECT_EQ(o.socks5.control_port, 9051);
  EXPECT_EQ(o.socks5.control_password, "pw");
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\ncontrol_port: 70000")),
            "via.yaml:8:19: entry app:tor (network.socks5): control_port: must be a port number "
            "(1-65535)");
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\ncontrol_password: pw")),
            "via.yaml:8:23: entry app:tor (network.socks5): control_password: needs control_port "
            "(Tor's ControlPort on host)");
}

TEST_F(ConfigTest, MissingHost) {
  EXPECT_EQ(Error(Socks5("port: 9050")),
            "via.yaml:4:5: entry app:tor (network.socks5): host: network: host is required");
}

TEST_F(ConfigTest, EmptyHostPointsAtTheValue) {
  EXPECT_EQ(Error(Socks5("host: \"\"\nport: 9050")),
            "via.yaml:6:11: entry app:tor (network.socks5): host: network: host is required");
}

TEST_F(ConfigTest, MissingPort) {
  EXPECT_EQ(Error(Socks5("host: 127.0.0.1")),
            "via.yaml:4:5: entry app:tor (network.socks5): port: network: invalid port (port is "
            "required)");
}

TEST_F(ConfigTest, PortZero) {
  EXPECT_EQ(Error(Socks5("host: 127.0.0.1\nport: 0")),
            "via.yaml:7:11: entry app:tor (network.socks5): port: network: invalid port (0 is not "
            "in 1..65535)");
}

TEST_F(ConfigTest, PortTooLarge) {
  EXPECT_EQ(Error(Socks5("host: 127.0.0.1\nport: 70000")),
            "via.yaml:7:11: entry app:tor (network.socks5): port: network: invalid port (70000 is "
            "not in 1..65535)");
}

TEST_F(ConfigTest, PortNotANumber) {
  EXPECT_EQ(Error(Socks5("host: 127.0.0.1\nport: \"abc\"")),
            "via.yaml:7:11: entry app:tor (network.socks5): port: network: invalid port (\"abc\" "
            "is not a number)");
}

TEST_F(ConfigTest, PortAsAList) {
  EXPECT_EQ(Error(Socks5("host: 127.0.0.1\nport: [1080]")),
            "via.yaml:7:11: entry app:tor (network.socks5): port: network: invalid port (a list "
            "is not a number)");
}

TEST_F(ConfigTest, UsernameLongerThanRfc1929Allows) {
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nusername: " + std::string(256, 'u'))),
            "via.yaml:8:15: entry app:tor (network.socks5): username: too long (256 bytes, at "
            "most 255 as in RFC 1929)");
}

TEST_F(ConfigTest, PasswordOf255BytesIsFine) {
  Overlay o = Only(Parse(Socks5("host: h\nport: 1\npassword: " + std::string(255, 'p'))));
  EXPECT_EQ(o.socks5.password.size(), 255u);
}

TEST_F(ConfigTest, HostMustBeAString) {
  EXPECT_EQ(Error(Socks5("host: {a: b}\nport: 1")),
            "via.yaml:6:11: entry app:tor (network.socks5): host: must be a string, not a "
            "mapping");
}

TEST_F(ConfigTest, WrongBool) {
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nisolate_streams: maybe")),
            "via.yaml:8:22: entry app:tor (network.socks5): isolate_streams: must be true or "
            "false, not \"maybe\"");
}

TEST_F(ConfigTest, UnknownFieldIsRejectedWithAHint) {
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nisolate_stream: true")),
            "via.yaml:8:5: entry app:tor (network.socks5): isolate_stream: unknown field (known: "
            "host, port, username, password, isolate_streams, isolation, connect_timeout, "
            "remote_resolve, pipeline, optimistic_data, control_port, control_password, tor; did "
            "you mean isolate_streams?)");
}

TEST_F(ConfigTest, CommonEntryKeysAreAllowed) {
  Overlay o = Only(Parse(Socks5(
      "host: h\nport: 1\nmeta: {comment: x}\nlifecycle: {auto_start: true}\ndescription: d")));
  EXPECT_EQ(o.socks5.host, "h");
}

TEST_F(ConfigTest, RepeatedFieldIsRejected) {
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nport: 2")),
            "via.yaml:8:5: entry app:tor (network.socks5): port: given twice (first at "
            "via.yaml:7:5)");
}

TEST_F(ConfigTest, RemoteResolveIsOffByDefaultAndABool) {
  EXPECT_FALSE(
      Only(ParseConfigText(Socks5("host: h\nport: 1"), "via.yaml", "/")).socks5.remote_resolve);
  EXPECT_TRUE(
      Only(ParseConfigText(Socks5("host: h\nport: 1\nremote_resolve: true"), "via.yaml", "/"))
          .socks5.remote_resolve);
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nremote_resolve: tor")),
            "via.yaml:8:21: entry app:tor (network.socks5): remote_resolve: must be true or "
            "false, not \"tor\"");
}

TEST_F(ConfigTest, PipelineIsOffByDefaultAndABool) {
  EXPECT_FALSE(Only(ParseConfigText(Socks5("host: h\nport: 1"), "via.yaml", "/")).socks5.pipeline);
  EXPECT_TRUE(Only(ParseConfigText(Socks5("host: h\nport: 1\npipeline: true"), "via.yaml", "/"))
                  .socks5.pipeline);
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\npipeline: maybe")),
            "via.yaml:8:15: entry app:tor (network.socks5): pipeline: must be true or false, not "
            "\"maybe\"");
}

TEST_F(ConfigTest, OptimisticDataIsOffByDefaultAndABool) {
  EXPECT_FALSE(
      Only(ParseConfigText(Socks5("host: h\nport: 1"), "via.yaml", "/")).socks5.optimistic_data);
  EXPECT_TRUE(
      Only(ParseConfigText(Socks5("host: h\nport: 1\noptimistic_data: true"), "via.yaml", "/"))
          .socks5.optimistic_data);
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\noptimistic_data: soon")),
            "via.yaml:8:22: entry app:tor (network.socks5): optimistic_data: must be true or "
            "false, not \"soon\"");
}

TEST_F(ConfigTest, ConnectTimeoutForms) {
  EXPECT_EQ(TimeoutMs("500ms"), 500);
  EXPECT_EQ(TimeoutMs("2"), 2000);
  EXPECT_EQ(TimeoutMs("1.5s"), 1500);
  EXPECT_EQ(TimeoutMs("2m"), 120000);
  EXPECT_EQ(TimeoutMs("10m"), 600000);
}

TEST_F(ConfigTest, ConnectTimeoutNotADuration) {
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nconnect_timeout: fast")),
            "via.yaml:8:22: entry app:tor (network.socks5): connect_timeout: \"fast\" is not a "
            "duration (use seconds, or e.g. 500ms, 15s, 2m)");
}

TEST_F(ConfigTest, ConnectTimeoutOutOfRange) {
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nconnect_timeout: 11m")),
            "via.yaml:8:22: entry app:tor (network.socks5): connect_timeout: 11m is out of range "
            "(more than 0, at most 10m)");
  EXPECT_EQ(Error(Socks5("host: h\nport: 1\nconnect_timeout: 0")),
            "via.yaml:8:22: entry app:tor (network.socks5): connect_timeout: 0 is out of range "
            "(more than 0, at most 10m)");
}

// ---- entries in general ---------------------------------------------------------------------

TEST_F(ConfigTest, DuplicateNamesNameBothPositions) {
  std::string tor = "  - name: tor\n    kind: network.socks5\n    host: h\n    port: 1\n";
  EXPECT_EQ(Error(Doc(tor + tor)),
            "via.yaml:8:11: entry app:tor (network.socks5): name: duplicate overlay app:tor "
            "(first defined at via.yaml:4:5)");
}

TEST_F(ConfigTest, UnsupportedNetworkKind) {
  EXPECT_EQ(Error(Doc("  - name: x\n    kind: network.foo\n")),
            "via.yaml:5:11: entry app:x (network.foo): kind: unsupported network kind: "
            "network.foo (supported: network.socks5, network.tailscale, network.i2p)");
}

TEST_F(ConfigTest, OtherKindsAreSkippedWhateverTheirFields) {
  auto cfg =
      Parse(Doc("  - name: a\n    kind: process.host\n    anything: [1, 2]\n"
                "  - name: b\n    kind: something.else\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_TRUE(cfg->overlays.empty());
  EXPECT_EQ(cfg->skipped_entries, 2);
}

TEST_F(ConfigTest, EntryWithoutKind) {
  EXPECT_EQ(Error(Doc("  - name: x\n    host: h\n")),
            "via.yaml:4:5: entry app:x: kind: required (a non-empty string)");
}

TEST_F(ConfigTest, NamespaceIsRequiredWithEntries) {
  EXPECT_EQ(Error("entries:\n  - name: x\n    kind: process.host\n"),
            "via.yaml:1:1: namespace: required (a non-empty string) when the file has entries");
}

TEST_F(ConfigTest, YamlSyntaxErrorHasAPosition) {
  EXPECT_EQ(Error(Doc("  - name: tor\n    kind: [network.socks5\n    host: h\n")),
            "via.yaml:6:9: YAML syntax error: end of sequence flow not found");
}

TEST_F(ConfigTest, StrayTokenIsASyntaxErrorNotAHang) {
  // yaml-cpp's LoadAll loops forever on this (jbeder/yaml-cpp#1040).
  EXPECT_EQ(Error("# nothing but\n,\n"), "via.yaml:2:1: YAML syntax error: unexpected \",\"");
}

TEST_F(ConfigTest, OneDocumentPerFile) {
  EXPECT_EQ(Error("namespace: app\n---\nnamespace: lab\n"),
            "via.yaml:2:1: only one YAML document per file is supported");
}

TEST_F(ConfigTest, EmptyDocumentIsAnEmptyConfig) {
  auto cfg = Parse("# nothing yet\n");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_TRUE(cfg->overlays.empty());
  EXPECT_EQ(cfg->service.state_dir, "/srv/app/.wippy/net");
}

// ---- network.tailscale and network.i2p ------------------------------------------------------

TEST_F(ConfigTest, TailscaleNeedsAnAuthKey) {
  EXPECT_EQ(Error(Doc("  - name: ts\n    kind: network.tailscale\n    hostname: n\n")),
            "via.yaml:4:5: entry app:ts (network.tailscale): auth_key: network: tailscale "
            "auth_key or auth_key_env is required");
}

TEST_F(ConfigTest, TailscaleFields) {
  Overlay o =
      Only(Parse(Doc("  - name: ts\n    kind: network.tailscale\n    auth_key: tskey-1\n"
                     "    state_dir: /var/lib/ts\n    control_url: https://hs.example\n")));
  EXPECT_EQ(o.tailscale.auth_key, "tskey-1");
  EXPECT_EQ(o.tailscale.state_dir, "/var/lib/ts");
  EXPECT_EQ(o.tailscale.control_url, "https://hs.example");
  EXPECT_FALSE(o.tailscale.ephemeral);
}

TEST_F(ConfigTest, TailscaleViaExtensions) {
  Overlay o = Only(
      Parse(Doc("  - name: ts\n    kind: network.tailscale\n    auth_key_env: TS_KEY\n"
                "    connect_timeout: 5s\n    helper: /opt/via-tsnet\n    ephemeral: true\n")));
  EXPECT_EQ(o.tailscale.connect_timeout_ms, 5000);
  EXPECT_EQ(o.tailscale.helper, "/opt/via-tsnet");
  EXPECT_TRUE(o.tailscale.ephemeral);
  Overlay d = Only(Parse(Doc("  - name: ts\n    kind: network.tailscale\n    auth_key: k\n")));
  EXPECT_EQ(d.tailscale.connect_timeout_ms, 30000);
}

TEST_F(ConfigTest, TailscaleAttachedToTailscaledNeedsNoKey) {
  Overlay o =
      Only(Parse(Doc("  - name: ts\n    kind: network.tailscale\n"
                     "    localapi_socket: /run/tailscale/tailscaled.sock\n")));
  EXPECT_EQ(o.tailscale.localapi_socket, "/run/tailscale/tailscaled.sock");
  EXPECT_TRUE(o.tailscale.auth_key.empty());
}

// Four lines (the entry at column 5 of the first), then `extra` (already indented).
static std::string TsEntry(const std::string& name, const std::string& extra = "") {
  return "  - name: " + name + "\n    kind: network.tailscale\n    hostname: same\n" +
         "    auth_key: k\n" + extra;
}

TEST_F(ConfigTest, TailscaleStateDirIsDerivedFromTheFullNameNotTheHostname) {
  // Same hostname, no state_dir: two directories (so two node keys), named after ns:name.
  auto cfg = Parse(Doc(TsEntry("a") + TsEntry("b")));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ASSERT_EQ(cfg->overlays.size(), 2u);
  EXPECT_EQ(TailscaleStateDir(cfg->overlays[0], cfg->service),
            "/srv/app/.wippy/net/tailscale/app:a");
  EXPECT_EQ(TailscaleStateDir(cfg->overlays[1], cfg->service),
            "/srv/app/.wippy/net/tailscale/app:b");
  // A given state_dir is used as given; a relative one is joined to the file's directory.
  auto given = Parse(Doc(TsEntry("a", "    state_dir: /var/lib/ts/\n") +
                         TsEntry("b", "    state_dir: nodes/../b\n")));
  ASSERT_TRUE(given.ok()) << given.status().message();
  EXPECT_EQ(TailscaleStateDir(given->overlays[0], given->service), "/var/lib/ts");
  EXPECT_EQ(TailscaleStateDir(given->overlays[1], given->service), "/srv/app/b");
}

TEST_F(ConfigTest, TailscaleDirNameIsOnePathComponentAndOneToOne) {
  EXPECT_EQ(TailscaleDirName("app:ts"), "app:ts");
  EXPECT_EQ(TailscaleDirName("app:a.b-c_d"), "app:a.b-c_d");
  EXPECT_EQ(TailscaleDirName("ns/x:../y"), "ns%2Fx:..%2Fy");
  EXPECT_EQ(TailscaleDirName(".:.."), "%2E:..");
  EXPECT_EQ(TailscaleDirName("a%2F:b"), "a%252F:b");  // '%' itself is escaped: no collisions
  EXPECT_EQ(TailscaleDirName("n:\xc3\xbc *"), "n:%C3%BC%20%2A");
  // A name that looks like a path stays one directory under tailscale/.
  Overlay o = Only(Parse(Doc(TsEntry("../../etc"))));
  EXPECT_EQ(o.id, "app:../../etc");
  Result<Config> cfg = Parse(Doc(TsEntry("../../etc")));
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(TailscaleStateDir(o, cfg->service), "/srv/app/.wippy/net/tailscale/app:..%2F..%2Fetc");
}

TEST_F(ConfigTest, TwoTailscaleEntriesInOneStateDirAreRefused) {
  // b's state_dir (spelt differently) is a's derived directory.
  EXPECT_EQ(
      Error(Doc(TsEntry("a") + TsEntry("b", "    state_dir: .wippy/net//tailscale/x/../app:a/\n"))),
      "via.yaml:12:16: entry app:b (network.tailscale): state_dir: "
      "/srv/app/.wippy/net/tailscale/app:a is also the state directory of entry app:a "
      "(via.yaml:4:5); two nodes in one directory would register one node key twice: "
      "give each entry its own state_dir");
  // Both given: the same directory, written two ways.
  EXPECT_EQ(Error(Doc(TsEntry("a", "    state_dir: /var/lib/ts\n") +
                      TsEntry("b", "    state_dir: /var/lib/./ts/\n"))),
            "via.yaml:13:16: entry app:b (network.tailscale): state_dir: /var/lib/ts is also the "
            "state directory of entry app:a (via.yaml:4:5); two nodes in one directory would "
            "register one node key twice: give each entry its own state_dir");
  // No base directory: both would be tsnet's default directory. The error is at the entry.
  EXPECT_EQ(Error(Doc(TsEntry("a") + TsEntry("b"), "network_service:\n  state_dir: \"\"\n")),
            "via.yaml:8:5: entry app:b (network.tailscale): state_dir: tsnet's default directory "
            "(network_service.state_dir is \"\") is also the state directory of entry app:a "
            "(via.yaml:4:5); two nodes in one directory would register one node key twice: give "
            "each entry its own state_dir");
  // One entry with no base directory is fine, and so are two with their own state_dir.
  EXPECT_TRUE(Parse(Doc(TsEntry("a"), "network_service:\n  state_dir: \"\"\n")).ok());
  EXPECT_TRUE(Parse(Doc(TsEntry("a", "    state_dir: /x/a\n") + TsEntry("b"),
                        "network_service:\n  state_dir: \"\"\n"))
                  .ok());
}

TEST_F(ConfigTest, TailscaleEntriesInTwoFilesCannotShareAStateDir) {
  char tmpl[] = "/tmp/via-config-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  auto write = [&](const std::string& name, const std::string& text) {
    FILE* f = fopen((dir + "/" + name).c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs(text.c_str(), f);
    fclose(f);
  };
  write("a.yaml", Doc(TsEntry("a", "    state_dir: shared\n")));
  write("b.yaml", "version: \"1.0\"\nnamespace: other\nentries:\n" +
                      TsEntry("b", "    state_dir: ./shared\n"));
  EXPECT_EQ(LoadError(dir),
            dir + "/b.yaml:8:16: entry other:b (network.tailscale): state_dir: " + dir +
                "/shared is also the state directory of entry app:a (" + dir +
                "/a.yaml:4:5); two nodes in one directory would register one node key twice: "
                "give each entry its own state_dir");
  unlink((dir + "/a.yaml").c_str());
  unlink((dir + "/b.yaml").c_str());
  rmdir(dir.c_str());
}

TEST_F(ConfigTest, TailscaleEntryNameTooLongForADirectory) {
  std::string name(300, 'n');
  EXPECT_EQ(Error(Doc(TsEntry(name))),
            "via.yaml:4:5: entry app:" + name +
                " (network.tailscale): state_dir: the default directory name (from the entry's "
                "namespace and name) is longer than 255 bytes: set state_dir");
  EXPECT_TRUE(Parse(Doc(TsEntry(name, "    state_dir: /x\n"))).ok());
}

TEST_F(ConfigTest, TailscaleConnectTimeoutMustBeADuration) {
  EXPECT_EQ(Error(Doc("  - name: ts\n    kind: network.tailscale\n    auth_key: k\n"
                      "    connect_timeout: soon\n")),
            "via.yaml:7:22: entry app:ts (network.tailscale): connect_timeout: \"soon\" is not a "
            "duration (use seconds, or e.g. 500ms, 15s, 2m)");
}

TEST_F(ConfigTest, I2pNeedsHostAndPort) {
  EXPECT_EQ(Error(Doc("  - name: g\n    kind: network.i2p\n    host: 127.0.0.1\n")),
            "via.yaml:4:5: entry app:g (network.i2p): port: network: invalid port (port is "
            "required)");
}

// ---- network.i2p: every field ----------------------------------------------------------------

class I2pConfigTest : public ConfigTest {
 protected:
  // One i2p entry "i2p" (line 4, `fields` from line 8) with host and port plus `fields`.
  static std::string I2p(const std::string& fields) {
    return Doc("  - name: i2p\n    kind: network.i2p\n    host: 127.0.0.1\n    port: 7656\n" +
               Indent(fields));
  }
};

TEST_F(I2pConfigTest, Defaults) {
  Overlay o = Only(ParseConfigText(I2p(""), "via.yaml", "/"));
  EXPECT_EQ(o.kind, OverlayKind::kI2p);
  EXPECT_EQ(o.i2p.host, "127.0.0.1");
  EXPECT_EQ(o.i2p.port, 7656);
  EXPECT_EQ(o.i2p.session_name, "wippy");
  EXPECT_EQ(o.i2p.destination, I2pDestination::kPersistent);
  EXPECT_TRUE(o.i2p.options.empty());
  EXPECT_EQ(o.i2p.connect_timeout_ms, 60000);
}

TEST_F(I2pConfigTest, AllFields) {
  Overlay o = Only(ParseConfigText(
      I2p("session_name: my-app.1\ndestination: ephemeral\nconnect_timeout: 90s\noptions:\n"
          "  inbound.length: 0\n  outbound.length: 0\n  i2cp.leaseSetType: 1\n"
          "  i2cp.dontPublishLeaseSet: false\n"),
      "via.yaml", "/"));
  EXPECT_EQ(o.i2p.session_name, "my-app.1");
  EXPECT_EQ(o.i2p.destination, I2pDestination::kEphemeral);
  EXPECT_EQ(o.i2p.connect_timeout_ms, 90000);
  std::vector<std::pair<std::string, std::string>> want = {{"inbound.length", "0"},
                                                           {"outbound.length", "0"},
                                                           {"i2cp.leaseSetType", "1"},
                                                           {"i2cp.dontPublishLeaseSet", "false"}};
  EXPECT_EQ(o.i2p.options, want);
}

TEST_F(I2pConfigTest, PersistentIsAccepted) {
  EXPECT_EQ(Only(ParseConfigText(I2p("destination: persistent"), "via.yaml", "/")).i2p.destination,
            I2pDestination::kPersistent);
}

TEST_F(I2pConfigTest, HostIsRequired) {
  EXPECT_EQ(Error(Doc("  - name: g\n    kind: network.i2p\n    port: 7656\n")),
            "via.yaml:4:5: entry app:g (network.i2p): host: network: host is required");
}

TEST_F(I2pConfigTest, PortOutOfRange) {
  EXPECT_EQ(Error(Doc("  - name: g\n    kind: network.i2p\n    host: h\n    port: 70000\n")),
            "via.yaml:7:11: entry app:g (network.i2p): port: network: invalid port (70000 is not "
            "in 1..65535)");
}

TEST_F(I2pConfigTest, UnknownField) {
  EXPECT_EQ(Error(I2p("sesion_name: x")),
            "via.yaml:8:5: entry app:i2p (network.i2p): sesion_name: unknown field (known: host, "
            "port, session_name, destination, options, connect_timeout; did you mean "
            "session_name?)");
}

TEST_F(I2pConfigTest, SessionNameWithSpace) {
  EXPECT_EQ(Error(I2p("session_name: \"a b\"")),
            "via.yaml:8:19: entry app:i2p (network.i2p): session_name: \"a b\" may hold only "
            "letters, digits, '.', '_' and '-' (it becomes part of SAM session IDs)");
}

TEST_F(I2pConfigTest, SessionNameEmpty) {
  EXPECT_EQ(Error(I2p("session_name: \"\"")),
            "via.yaml:8:19: entry app:i2p (network.i2p): session_name: must not be empty");
}

TEST_F(I2pConfigTest, SessionNameTooLong) {
  EXPECT_EQ(Error(I2p("session_name: " + std::string(65, 'a'))),
            "via.yaml:8:19: entry app:i2p (network.i2p): session_name: too long (65 bytes, at "
            "most 64)");
}

TEST_F(I2pConfigTest, SessionNameNotAString) {
  EXPECT_EQ(Error(I2p("session_name: [a]")),
            "via.yaml:8:19: entry app:i2p (network.i2p): session_name: must be a string, not a "
            "list");
}

TEST_F(I2pConfigTest, DestinationUnknown) {
  EXPECT_EQ(Error(I2p("destination: transient")),
            "via.yaml:8:18: entry app:i2p (network.i2p): destination: must be persistent or "
            "ephemeral, not \"transient\"");
}

TEST_F(I2pConfigTest, OptionsNotAMapping) {
  EXPECT_EQ(Error(I2p("options: inbound.length=0")),
            "via.yaml:8:14: entry app:i2p (network.i2p): options: must be a mapping, not "
            "\"inbound.length=0\"");
}

TEST_F(I2pConfigTest, OptionValueNotScalar) {
  EXPECT_EQ(Error(I2p("options:\n  inbound.length: [0]")),
            "via.yaml:9:23: entry app:i2p (network.i2p): options.inbound.length: must be a single "
            "value");
}

TEST_F(I2pConfigTest, OptionKeyGivenTwice) {
  EXPECT_EQ(Error(I2p("options:\n  a: 1\n  a: 2")),
            "via.yaml:10:7: entry app:i2p (network.i2p): options.a: given twice (first at "
            "via.yaml:9:7)");
}

TEST_F(I2pConfigTest, OptionKeyWithEquals) {
  EXPECT_EQ(Error(I2p("options:\n  \"a=b\": 1")),
            "via.yaml:9:7: entry app:i2p (network.i2p): options.a=b: the key may hold only "
            "letters, digits, '.', '_' and '-'");
}

TEST_F(I2pConfigTest, OptionKeyReserved) {
  EXPECT_EQ(Error(I2p("options:\n  destination: TRANSIENT")),
            "via.yaml:9:7: entry app:i2p (network.i2p): options.destination: set by via itself "
            "(use session_name and destination)");
  EXPECT_EQ(Error(I2p("options:\n  STYLE: RAW")),
            "via.yaml:9:7: entry app:i2p (network.i2p): options.STYLE: set by via itself (use "
            "session_name and destination)");
  EXPECT_EQ(Error(I2p("options:\n  ID: x")),
            "via.yaml:9:7: entry app:i2p (network.i2p): options.ID: set by via itself (use "
            "session_name and destination)");
}

TEST_F(I2pConfigTest, OptionValueWithSpace) {
  EXPECT_EQ(Error(I2p("options:\n  inbound.length: \"0 ID=evil\"")),
            "via.yaml:9:23: entry app:i2p (network.i2p): options.inbound.length: \"0 ID=evil\" "
            "may hold only letters, digits and . _ - , : / + ~ @");
}

TEST_F(I2pConfigTest, OptionValueEmpty) {
  EXPECT_EQ(Error(I2p("options:\n  inbound.length: \"\"")),
            "via.yaml:9:23: entry app:i2p (network.i2p): options.inbound.length: must not be "
            "empty");
}

TEST_F(I2pConfigTest, OptionValueControlChar) {
  EXPECT_EQ(Error(I2p("options:\n  a: \"x\\ty\"")),
            "via.yaml:9:10: entry app:i2p (network.i2p): options.a: must not contain control "
            "characters");
}

TEST_F(I2pConfigTest, ConnectTimeoutBad) {
  EXPECT_EQ(Error(I2p("connect_timeout: soon")),
            "via.yaml:8:22: entry app:i2p (network.i2p): connect_timeout: \"soon\" is not a "
            "duration (use seconds, or e.g. 500ms, 15s, 2m)");
}

TEST_F(ConfigTest, ServiceListen) {
  EXPECT_EQ(Parse("# x\n")->service.listen, ListenPolicy::kOverlay);
  EXPECT_EQ(Parse("network_service:\n  listen: local\n")->service.listen, ListenPolicy::kLocal);
  EXPECT_EQ(Parse("network_service:\n  listen: refuse\n")->service.listen, ListenPolicy::kRefuse);
  EXPECT_EQ(Parse("network_service:\n  listen: overlay\n")->service.listen, ListenPolicy::kOverlay);
  EXPECT_EQ(Error("network_service:\n  listen: yes\n"),
            "via.yaml:2:11: network_service.listen: must be overlay, local or refuse, not \"yes\"");
}

// ---- network_service ------------------------------------------------------------------------

TEST_F(ConfigTest, ServiceDefaults) {
  auto cfg = Parse(Socks5("host: h\nport: 1"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_EQ(cfg->service.default_network, "");
  EXPECT_EQ(cfg->service.fake_ipv4, "198.18.0.0/15");
  EXPECT_EQ(cfg->service.fake_ipv6, "fd76:6961:ff00::/64");
  EXPECT_EQ(cfg->service.loopback, LoopbackPolicy::kDirect);
  EXPECT_EQ(cfg->service.idle_timeout_s, 30);
}

TEST_F(ConfigTest, ServiceInTheRegistryFile) {
  auto cfg = Parse(Socks5("host: h\nport: 1") +
                   "network_service:\n  state_dir: run/net\n  default_network: tor\n"
                   "  loopback: overlay\n  idle_timeout: 0\n  fake_ipv6: fd00:1:2::/48\n");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_EQ(cfg->service.state_dir, "/srv/app/run/net");
  EXPECT_EQ(cfg->service.default_network, "app:tor");  // a unique bare name is completed
  EXPECT_EQ(cfg->service.loopback, LoopbackPolicy::kOverlay);
  EXPECT_EQ(cfg->service.idle_timeout_s, 0);
  EXPECT_EQ(cfg->service.fake_ipv6, "fd00:1:2::/48");
}

TEST_F(ConfigTest, UnknownDefaultNetwork) {
  EXPECT_EQ(Error(Socks5("host: h\nport: 1") + "network_service:\n  default_network: app:nope\n"),
            "via.yaml:9:20: network_service.default_network: unknown overlay \"app:nope\" "
            "(known: app:tor; or direct, none)");
}

TEST_F(ConfigTest, BadLoopbackValue) {
  EXPECT_EQ(Error("network_service:\n  loopback: allow\n"),
            "via.yaml:2:13: network_service.loopback: must be direct, overlay or refuse, not "
            "\"allow\"");
}

TEST_F(ConfigTest, Handshake) {
  EXPECT_TRUE(Parse("network_service:\n  idle_timeout: 5\n")->service.handshake_in_program);
  EXPECT_TRUE(Parse("network_service:\n  handshake: program\n")->service.handshake_in_program);
  EXPECT_FALSE(Parse("network_service:\n  handshake: broker\n")->service.handshake_in_program);
  EXPECT_EQ(Error("network_service:\n  handshake: shim\n"),
            "via.yaml:2:14: network_service.handshake: must be program or broker, not \"shim\"");
}

TEST_F(ConfigTest, UnknownServiceKey) {
  EXPECT_EQ(Error("network_service:\n  default_netwrok: app:tor\n"),
            "via.yaml:2:3: network_service.default_netwrok: unknown setting (known: state_dir, "
            "fake_ipv4, fake_ipv6, default_network, loopback, idle_timeout, unrouted_exec, listen, "
            "handshake, strict, default_routes; did you mean default_network?)");
}

TEST_F(ConfigTest, UnroutedExec) {
  EXPECT_FALSE(Parse("network_service:\n  unrouted_exec: refuse\n")->service.unrouted_exec_allowed);
  EXPECT_TRUE(Parse("network_service:\n  unrouted_exec: allow\n")->service.unrouted_exec_allowed);
  auto strict = Parse("network_service:\n  unrouted_exec: strict\n");
  EXPECT_TRUE(strict->service.unrouted_exec_strict);
  EXPECT_FALSE(strict->service.unrouted_exec_allowed);
  // strict is the default; refuse and allow turn it off.
  auto unset = Parse("network_service:\n  loopback: direct\n");
  EXPECT_TRUE(unset->service.unrouted_exec_strict);
  EXPECT_FALSE(unset->service.unrouted_exec_allowed);
  EXPECT_FALSE(Parse("network_service:\n  unrouted_exec: refuse\n")->service.unrouted_exec_strict);
  EXPECT_FALSE(Parse("network_service:\n  unrouted_exec: allow\n")->service.unrouted_exec_strict);
  EXPECT_EQ(Error("network_service:\n  unrouted_exec: maybe\n"),
            "via.yaml:2:18: network_service.unrouted_exec: must be refuse, allow or strict, not "
            "\"maybe\"");
}

TEST_F(ConfigTest, Strict) {
  EXPECT_FALSE(Parse("network_service:\n  loopback: direct\n")->service.strict);
  EXPECT_TRUE(Parse("network_service:\n  strict: true\n")->service.strict);
  EXPECT_EQ(Error("network_service:\n  strict: yes please\n"),
            "via.yaml:2:11: network_service.strict: must be false or true, not \"yes please\"");
}

TEST_F(ConfigTest, BadIdleTimeout) {
  EXPECT_EQ(Error("network_service:\n  idle_timeout: -1\n"),
            "via.yaml:2:17: network_service.idle_timeout: must be a whole number of seconds from "
            "0 to 86400, not \"-1\"");
}

TEST_F(ConfigTest, BadCidrSyntax) {
  EXPECT_EQ(Error("network_service:\n  fake_ipv4: 198.18.0.0\n"),
            "via.yaml:2:14: network_service.fake_ipv4: \"198.18.0.0\" is not an IPv4 network "
            "with a prefix between /8 and /24");
}

TEST_F(ConfigTest, CidrOfTheWrongFamily) {
  EXPECT_EQ(Error("network_service:\n  fake_ipv6: 198.18.0.0/15\n"),
            "via.yaml:2:14: network_service.fake_ipv6: \"198.18.0.0/15\" is not an IPv6 network "
            "with a prefix between /48 and /112");
}

TEST_F(ConfigTest, CidrPrefixOutOfBounds) {
  EXPECT_EQ(Error("network_service:\n  fake_ipv4: 10.0.0.0/28\n"),
            "via.yaml:2:14: network_service.fake_ipv4: \"10.0.0.0/28\" is not an IPv4 network "
            "with a prefix between /8 and /24");
  EXPECT_EQ(Error("network_service:\n  fake_ipv6: fd00::/40\n"),
            "via.yaml:2:14: network_service.fake_ipv6: \"fd00::/40\" is not an IPv6 network with "
            "a prefix between /48 and /112");
}

TEST_F(ConfigTest, CidrLoopbackAndMulticastAreRefused) {
  EXPECT_EQ(Error("network_service:\n  fake_ipv4: 127.0.0.0/8\n"),
            "via.yaml:2:14: network_service.fake_ipv4: \"127.0.0.0/8\" is a loopback range");
  EXPECT_EQ(Error("network_service:\n  fake_ipv4: 239.1.0.0/16\n"),
            "via.yaml:2:14: network_service.fake_ipv4: \"239.1.0.0/16\" is a multicast range");
  EXPECT_EQ(Error("network_service:\n  fake_ipv6: ff05::/64\n"),
            "via.yaml:2:14: network_service.fake_ipv6: \"ff05::/64\" is a multicast range");
  EXPECT_EQ(Error("network_service:\n  fake_ipv6: ::/96\n"),
            "via.yaml:2:14: network_service.fake_ipv6: \"::/96\" is a loopback or reserved range "
            "(it holds ::1 or ::)");
}

TEST_F(ConfigTest, CidrWithHostBits) {
  EXPECT_EQ(Error("network_service:\n  fake_ipv4: 198.18.0.1/15\n"),
            "via.yaml:2:14: network_service.fake_ipv4: \"198.18.0.1/15\" has host bits set (did "
            "you mean 198.18.0.0/15?)");
}

// ---- files and directories ------------------------------------------------------------------

TEST_F(ConfigTest, DirectoryLoadsEveryYamlFileSorted) {
  auto cfg = LoadConfig(project_ + "/registry");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  std::string dir = RealPath(project_);
  EXPECT_EQ(cfg->source, dir + "/registry");
  EXPECT_EQ(cfg->files,
            (std::vector<std::string>{dir + "/registry/10-app.yaml", dir + "/registry/20-lab.yaml",
                                      dir + "/.wippy.yaml"}));
  EXPECT_EQ(cfg->overlays.size(), 3u);
  EXPECT_EQ(cfg->skipped_entries, 1);
}

TEST_F(ConfigTest, DirectoryTakesServiceFromParentWippyYaml) {
  auto cfg = LoadConfig(project_ + "/registry");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_EQ(cfg->service.state_dir, RealPath(project_) + "/state/net");
  EXPECT_EQ(cfg->service.default_network, "app:tor");
  EXPECT_EQ(cfg->service.fake_ipv4, "10.77.0.0/16");
  EXPECT_EQ(cfg->service.loopback, LoopbackPolicy::kRefuse);
  EXPECT_EQ(cfg->service.idle_timeout_s, 5);
}

TEST_F(ConfigTest, FindByFullAndBareName) {
  auto cfg = LoadConfig(project_ + "/registry");
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ASSERT_NE(cfg->Find("garlic"), nullptr);
  EXPECT_EQ(cfg->Find("garlic")->id, "lab:garlic");
  EXPECT_EQ(cfg->Find("lab:tor")->socks5.username, "alice");
  EXPECT_EQ(cfg->Find("tor"), nullptr);  // app:tor and lab:tor: ambiguous
  EXPECT_EQ(cfg->Find("app:nope"), nullptr);
}

TEST_F(ConfigTest, UnreadableFile) {
  EXPECT_EQ(LoadError(project_ + "/missing.yaml"),
            project_ + "/missing.yaml: cannot read: No such file or directory");
}

TEST_F(ConfigTest, ServiceGivenTwice) {
  EXPECT_EQ(Error("network_service:\n  loopback: direct\nnetwork_service:\n  loopback: refuse\n"),
            "via.yaml:3:1: network_service: given twice (first at via.yaml:1:1)");
}

// ---- FindConfig -----------------------------------------------------------------------------

TEST_F(ConfigTest, FindConfigPrefersViaConfig) {
  ScopedEnv env("VIA_CONFIG", (seed_ + "/_index.yaml").c_str());
  auto found = FindConfig();
  ASSERT_TRUE(found.ok()) << found.status().message();
  EXPECT_EQ(*found, RealPath(seed_) + "/_index.yaml");
}

TEST_F(ConfigTest, FindConfigListsEveryPlaceLooked) {
  if (access("/etc/via", F_OK) == 0) GTEST_SKIP() << "/etc/via exists on this machine";
  char tmpl[] = "/tmp/via-config-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  char old_cwd[PATH_MAX];
  ASSERT_NE(getcwd(old_cwd, sizeof old_cwd), nullptr);
  ASSERT_EQ(chdir(tmpl), 0);
  ScopedEnv env("VIA_CONFIG", nullptr);
  ScopedEnv xdg("XDG_CONFIG_HOME", tmpl);
  auto found = FindConfig();
  EXPECT_EQ(chdir(old_cwd), 0);
  rmdir(tmpl);
  EXPECT_EQ(found.status().message(),
            "no configuration found (looked at ./_index.yaml, ./via.yaml, " + std::string(tmpl) +
                "/via/, /etc/via/); pass one with -c PATH or set VIA_CONFIG");
}

TEST_F(ConfigTest, MissingViaConfigIsAnErrorNotAFallThrough) {
  ScopedEnv env("VIA_CONFIG", "/nonexistent/via.yaml");
  auto found = FindConfig();
  EXPECT_EQ(found.status().code(), ENOENT);
  EXPECT_EQ(found.status().message(),
            "$VIA_CONFIG names /nonexistent/via.yaml, which does not exist; fix or unset "
            "VIA_CONFIG");
}

}  // namespace
}  // namespace via::config
