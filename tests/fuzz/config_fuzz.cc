// Fuzz target for the config loader (config/config.cc and the parts it uses): arbitrary bytes as
// one configuration file, through ParseConfigText (the text path of LoadConfig: YAML, the Wippy
// registry entries, network_service:, program rules and policies, then the whole-config checks).
//
// Invariants (abort on a break): an error has a message naming the file; a config that loads is
// one the broker can start from: every overlay's id is ns:name and Find() returns it, ports are
// 1..65535, credentials at most 255 bytes (one SOCKS5 length byte), timeouts positive, the
// fake-address ranges are ones FakeAddressPool accepts, and the fingerprint is 16 hex digits.
// Its program rules and policies are then matched against a few processes
// (config/program_rules.cc): a denial names the deny policy that decided it.
//
// yaml-cpp itself is a system library built without the sanitizers' coverage: the fuzzer
// steers by config/'s branches. With clang (-DVIA_FUZZ=ON, CXX=clang++) a libFuzzer target,
// else a standalone driver that replays the corpus and deterministic mutations
// (standalone_main.h); docs/fuzzing.md.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "broker/fake_address_pool.h"
#include "config/config.h"

namespace {

namespace config = via::config;

void Check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = config::ParseConfigText(text, "fuzz.yaml", "/nonexistent/fuzz");
  if (!r.ok()) {
    Check(r.status().code() != 0 && !r.status().message().empty());
    Check(r.status().message().find("fuzz.yaml") != std::string::npos);
    return 0;
  }
  const config::Config& c = *r;
  Check(c.fingerprint.size() == 16 &&
        c.fingerprint.find_first_not_of("0123456789abcdef") == std::string::npos);
  for (const config::Overlay& o : c.overlays) {
    Check(o.id == o.ns + ":" + o.name && !o.ns.empty() && !o.name.empty());
    Check(c.Find(o.id) == &o);
    switch (o.kind) {
      case config::OverlayKind::kSocks5:
        Check(!o.socks5.host.empty() && o.socks5.port >= 1 && o.socks5.port <= 65535);
        Check(o.socks5.username.size() <= 255 && o.socks5.password.size() <= 255);
        Check(o.socks5.connect_timeout_ms > 0);
        break;
      case config::OverlayKind::kI2p:
        Check(!o.i2p.host.empty() && o.i2p.port >= 1 && o.i2p.port <= 65535);
        Check(!o.i2p.session_name.empty() && o.i2p.session_name.size() <= 64);
        Check(o.i2p.connect_timeout_ms > 0);
        break;
      case config::OverlayKind::kTailscale:
        Check(o.tailscale.connect_timeout_ms > 0);
        break;
    }
  }
  Check(c.service.idle_timeout_s >= 0);
  // An explicit `state_dir: ""` means none (docs/configuration.md); otherwise absolute.
  Check(c.service.state_dir.empty() || c.service.state_dir[0] == '/');
  Check(via::broker::FakeAddressPool::Create(c.service.fake_ipv4, c.service.fake_ipv6, 1).ok());
  // The loaded rules and policies matched against processes, as the broker does for every
  // HELLO: a few fixed ones, and one made of the input's own lines (exe, then argv).
  std::vector<config::ProcessIdentity> processes{
      {"/usr/bin/curl", {"curl", "-s", "http://example.com/"}},
      {"/home/me/untrusted/tool", {"tool", "--fetch"}},
      {"", {}},
  };
  config::ProcessIdentity own;
  for (size_t start = 0; start < text.size() && own.argv.size() < 8;) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string line(text.substr(start, std::min<size_t>(end - start, 256)));
    if (own.exe.empty()) own.exe = line;
    own.argv.push_back(line);
    start = end + 1;
  }
  processes.push_back(own);
  for (const config::ProcessIdentity& p : processes) {
    std::vector<std::string> groups;
    for (const config::ProgramRule& rule : c.programs) {
      if (config::RuleMatches(rule, p))
        groups.insert(groups.end(), rule.groups.begin(), rule.groups.end());
    }
    for (const std::string& network : {std::string("direct"), std::string("app:tor")}) {
      config::PolicyVerdict v = config::CheckSelect(c.policies, groups, network);
      if (!v.allowed) Check(v.policy != nullptr && v.policy->effect == config::PolicyEffect::kDeny);
    }
    for (const config::Overlay& o : c.overlays) (void)config::CheckSelect(c.policies, groups, o.id);
  }
  return 0;
}

#define VIA_FUZZ_NAME "config_fuzz"
#include "tests/fuzz/standalone_main.h"
