// Tests for via.program and security.policy entries (config/parse_rules.cc,
// config/program_rules.h): every field error with its file:line:col, rule matching, and the
// network.select verdict.
#include "config/program_rules.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <optional>
#include <string>

#include "config/config.h"

namespace via::config {
namespace {

class ProgramRulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* h = std::getenv("HOME")) old_home_ = h;
    ::setenv("HOME", "/home/me", 1);
  }
  void TearDown() override {
    old_home_ ? ::setenv("HOME", old_home_->c_str(), 1) : ::unsetenv("HOME");
  }

  // Overlay app:tor at line 4, app:other at line 7; `entries` (indented lines) from line 10.
  static std::string Doc(const std::string& entries) {
    return "version: \"1.0\"\nnamespace: app\nentries:\n"
           "  - name: tor\n    kind: network.socks5\n    host: 127.0.0.1\n"
           "  - name: other\n    kind: network.socks5\n    host: 127.0.0.1\n" +
           entries;
  }
  // Fixes the socks5 port lines missing above (kept short for the line numbers).
  static std::string Fix(std::string text) {
    size_t at = 0;
    while ((at = text.find("host: 127.0.0.1\n", at)) != std::string::npos) {
      at += 16;
      text.insert(at, "    port: 1080\n");
    }
    return text;
  }
  Result<Config> Parse(const std::string& entries) {
    return ParseConfigText(Fix(Doc(entries)), "via.yaml", "/srv");
  }
  std::string Error(const std::string& entries) { return Parse(entries).status().ToString(); }
  // A via.program entry "r" (at line 12) with `body` lines indented under it.
  static std::string Program(const std::string& body) {
    return "  - name: r\n    kind: via.program\n" + body;
  }
  static std::string Policy(const std::string& body) {
    return "  - name: p\n    kind: security.policy\n" + body;
  }

  std::optional<std::string> old_home_;
};

// Line numbers: overlays take lines 4-11, so the first extra entry starts at line 12.

TEST_F(ProgramRulesTest, ProgramFieldsAreRead) {
  auto cfg =
      Parse(Program("    match: {exe: ~/untrusted/*, argv: [\"*\", \"~/x\"]}\n    network: tor\n"
                    "    groups: [untrusted, lab]\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ASSERT_EQ(cfg->programs.size(), 1u);
  const ProgramRule& r = cfg->programs[0];
  EXPECT_EQ(r.id, "app:r");
  EXPECT_EQ(r.exe, "/home/me/untrusted/*");
  EXPECT_EQ(r.argv, (std::vector<std::string>{"*", "/home/me/x"}));
  EXPECT_EQ(r.network, "app:tor");  // a unique bare name is completed
  EXPECT_EQ(r.groups, (std::vector<std::string>{"untrusted", "lab"}));
  EXPECT_EQ(r.where(), "via.yaml:12");
  EXPECT_EQ(cfg->skipped_entries, 0);
}

TEST_F(ProgramRulesTest, DirectAndASingleGroupString) {
  auto cfg = Parse(Program("    match: {exe: apt}\n    network: direct\n    groups: admin\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_EQ(cfg->programs[0].network, "direct");
  EXPECT_EQ(cfg->programs[0].groups, (std::vector<std::string>{"admin"}));
}

TEST_F(ProgramRulesTest, MatchIsRequired) {
  EXPECT_EQ(Error(Program("    network: tor\n")),
            "via.yaml:12:5: entry app:r (via.program): match: required: a mapping with exe (a "
            "path or glob) and/or argv (a list)");
}

TEST_F(ProgramRulesTest, MatchMustBeAMapping) {
  EXPECT_EQ(Error(Program("    match: /usr/bin/git\n    network: tor\n")),
            "via.yaml:14:12: entry app:r (via.program): match: must be a mapping with exe and/or "
            "argv");
}

TEST_F(ProgramRulesTest, EmptyMatch) {
  EXPECT_EQ(Error(Program("    match: {}\n    network: tor\n")),
            "via.yaml:14:12: entry app:r (via.program): match: needs exe and/or argv");
}

TEST_F(ProgramRulesTest, UnknownMatchFieldHasAHint) {
  EXPECT_EQ(Error(Program("    match: {exec: git}\n    network: tor\n")),
            "via.yaml:14:13: entry app:r (via.program): match.exec: unknown field (known: exe, "
            "argv; did you mean exe?)");
}

TEST_F(ProgramRulesTest, RelativeExe) {
  EXPECT_EQ(Error(Program("    match: {exe: bin/git}\n    network: tor\n")),
            "via.yaml:14:18: entry app:r (via.program): match.exe: \"bin/git\" is relative; "
            "write an absolute path, ~/..., or a bare program name (matched against the "
            "executable's base name)");
}

TEST_F(ProgramRulesTest, TildeUserIsNotExpanded) {
  EXPECT_EQ(Error(Program("    match: {exe: ~bob/x}\n    network: tor\n")),
            "via.yaml:14:18: entry app:r (via.program): match.exe: \"~bob/x\": only ~/ (your "
            "home) is expanded");
}

TEST_F(ProgramRulesTest, ExeMustBeAString) {
  EXPECT_EQ(Error(Program("    match: {exe: [a, b]}\n    network: tor\n")),
            "via.yaml:14:18: entry app:r (via.program): match.exe: must be a path, a glob or a "
            "program name");
}

TEST_F(ProgramRulesTest, EmptyExe) {
  EXPECT_EQ(Error(Program("    match: {exe: \"\"}\n    network: tor\n")),
            "via.yaml:14:18: entry app:r (via.program): match.exe: must be a path, a glob or a "
            "program name");
}

TEST_F(ProgramRulesTest, ArgvMustBeAList) {
  EXPECT_EQ(Error(Program("    match: {argv: git}\n    network: tor\n")),
            "via.yaml:14:19: entry app:r (via.program): match.argv: must be a non-empty list of "
            "globs (argv[0], argv[1], ...)");
}

TEST_F(ProgramRulesTest, ArgvItemsMustBeStrings) {
  EXPECT_EQ(Error(Program("    match:\n      argv: [git, {a: b}]\n    network: tor\n")),
            "via.yaml:15:19: entry app:r (via.program): match.argv: each item must be a string "
            "(a glob)");
}

TEST_F(ProgramRulesTest, UnknownNetwork) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    network: app:nope\n")),
            "via.yaml:15:14: entry app:r (via.program): network: unknown overlay \"app:nope\" "
            "(known: app:tor, app:other; or direct, none)");
}

TEST_F(ProgramRulesTest, EmptyNetwork) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    network: \"\"\n")),
            "via.yaml:15:14: entry app:r (via.program): network: must name an overlay (ns:name), "
            "direct or none");
}

TEST_F(ProgramRulesTest, NetworkMustBeAString) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    network: [tor]\n")),
            "via.yaml:15:14: entry app:r (via.program): network: must be a string, not a list");
}

TEST_F(ProgramRulesTest, RuleThatDoesNothing) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n")),
            "via.yaml:12:5: entry app:r (via.program): network: a program rule needs network, "
            "groups and/or strict (it does nothing otherwise)");
}

TEST_F(ProgramRulesTest, StrictAloneIsARule) {
  auto cfg = Parse(Program("    match: {exe: gh}\n    strict: true\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ASSERT_EQ(cfg->programs.size(), 1u);
  EXPECT_TRUE(cfg->programs[0].strict);
  EXPECT_EQ(Error(Program("    match: {exe: gh}\n    strict: maybe\n")),
            "via.yaml:15:13: entry app:r (via.program): strict: must be true or false, not "
            "\"maybe\"");
}

TEST_F(ProgramRulesTest, GroupsMustBeNames) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    groups: {a: b}\n")),
            "via.yaml:15:13: entry app:r (via.program): groups: must be a list of group names");
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    groups: [\"two words\"]\n")),
            "via.yaml:15:14: entry app:r (via.program): groups: group \"two words\" must not "
            "contain spaces");
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    groups: [\"\"]\n")),
            "via.yaml:15:14: entry app:r (via.program): groups: each group must be a non-empty "
            "name");
}

TEST_F(ProgramRulesTest, UnknownProgramField) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    netwrk: tor\n")),
            "via.yaml:15:5: entry app:r (via.program): netwrk: unknown field (known: match, "
            "network, groups, strict; did you mean network?)");
}

TEST_F(ProgramRulesTest, DuplicateRuleName) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    network: tor\n") +
                  Program("    match: {exe: ssh}\n    network: tor\n")),
            "via.yaml:16:11: entry app:r (via.program): name: duplicate entry app:r (first "
            "defined at via.yaml:12:5)");
}

TEST_F(ProgramRulesTest, UnsupportedViaKind) {
  EXPECT_EQ(Error("  - name: x\n    kind: via.programme\n"),
            "via.yaml:13:11: entry app:x (via.programme): kind: unsupported via kind: "
            "via.programme (supported: via.program, via.route)");
}

// ---- security.policy ----------------------------------------------------------------------

TEST_F(ProgramRulesTest, SeedPolicyIsRead) {
  auto cfg =
      Parse(Policy("    policy:\n      actions: \"network.select\"\n      resources: \"*\"\n"
                   "      effect: deny\n    groups:\n      - untrusted\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ASSERT_EQ(cfg->policies.size(), 1u);
  const SecurityPolicy& p = cfg->policies[0];
  EXPECT_EQ(p.id, "app:p");
  EXPECT_EQ(p.actions, (std::vector<std::string>{"network.select"}));
  EXPECT_EQ(p.resources, (std::vector<std::string>{"*"}));
  EXPECT_EQ(p.effect, PolicyEffect::kDeny);
  EXPECT_EQ(p.groups, (std::vector<std::string>{"untrusted"}));
}

TEST_F(ProgramRulesTest, PolicyListsAndCompletedIds) {
  auto cfg =
      Parse(Policy("    policy: {actions: [network.bind, network.select], resources: [tor, direct, "
                   "\"app:*\"], effect: allow}\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_EQ(cfg->policies[0].resources, (std::vector<std::string>{"app:tor", "direct", "app:*"}));
  EXPECT_EQ(cfg->policies[0].effect, PolicyEffect::kAllow);
  EXPECT_TRUE(cfg->policies[0].groups.empty());
}

TEST_F(ProgramRulesTest, PoliciesForOtherActionsAreSkipped) {
  auto cfg = Parse(
      Policy("    policy: {actions: http.request, resources: \"*\", effect: deny, conditions: x}\n"
             "    extra: whatever\n"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  EXPECT_TRUE(cfg->policies.empty());
  EXPECT_EQ(cfg->skipped_entries, 1);
}

TEST_F(ProgramRulesTest, PolicyEffectRequired) {
  EXPECT_EQ(Error(Policy("    policy: {actions: network.select, resources: \"*\"}\n")),
            "via.yaml:14:13: entry app:p (security.policy): policy.effect: required: allow or "
            "deny");
}

TEST_F(ProgramRulesTest, PolicyBadEffect) {
  EXPECT_EQ(
      Error(Policy("    policy: {actions: network.select, resources: \"*\", effect: block}\n")),
      "via.yaml:14:63: entry app:p (security.policy): policy.effect: must be allow or deny, "
      "not \"block\"");
}

TEST_F(ProgramRulesTest, PolicyResourcesRequired) {
  EXPECT_EQ(Error(Policy("    policy: {actions: network.select, effect: deny}\n")),
            "via.yaml:14:13: entry app:p (security.policy): policy.resources: required: \"*\", an "
            "overlay id, or a list");
}

TEST_F(ProgramRulesTest, PolicyUnknownResource) {
  EXPECT_EQ(
      Error(Policy("    policy:\n      actions: network.select\n      resources: [tor, app:tro]\n"
                   "      effect: deny\n")),
      "via.yaml:16:24: entry app:p (security.policy): policy.resources: unknown overlay "
      "\"app:tro\" (known: app:tor, app:other; or direct, \"*\", a glob such as app:*)");
}

TEST_F(ProgramRulesTest, PolicyEmptyResourceList) {
  EXPECT_EQ(Error(Policy("    policy: {actions: network.select, resources: [], effect: deny}\n")),
            "via.yaml:14:50: entry app:p (security.policy): policy.resources: must be a string "
            "or a non-empty list of strings");
}

TEST_F(ProgramRulesTest, PolicyConditionsAreRefused) {
  EXPECT_EQ(Error(Policy("    policy:\n      actions: network.select\n      resources: \"*\"\n"
                         "      effect: deny\n      conditions: {x: y}\n")),
            "via.yaml:18:7: entry app:p (security.policy): policy.conditions: via cannot evaluate "
            "conditions, so a network.select policy must not have them (split it into policies "
            "without conditions)");
}

TEST_F(ProgramRulesTest, PolicyMisspeltFieldHasAHint) {
  EXPECT_EQ(Error(Policy("    policy:\n      actions: network.select\n      resources: \"*\"\n"
                         "      efect: deny\n")),
            "via.yaml:17:7: entry app:p (security.policy): policy.efect: unknown field (known: "
            "actions, resources, effect; did you mean effect?)");
}

TEST_F(ProgramRulesTest, MisspeltActionsKeyIsNotSilentlySkipped) {
  EXPECT_EQ(Error(Policy("    policy:\n      action: network.select\n      resources: \"*\"\n"
                         "      effect: deny\n")),
            "via.yaml:15:7: entry app:p (security.policy): policy.action: unknown field (known: "
            "actions, resources, effect; did you mean actions?)");
}

TEST_F(ProgramRulesTest, PolicyUnknownEntryField) {
  EXPECT_EQ(Error(Policy("    policy: {actions: network.select, resources: \"*\", effect: deny}\n"
                         "    group: [untrusted]\n")),
            "via.yaml:15:5: entry app:p (security.policy): group: unknown field (known: policy, "
            "groups; did you mean groups?)");
}

TEST_F(ProgramRulesTest, PolicyGroupsMustBeNames) {
  EXPECT_EQ(Error(Policy("    policy: {actions: network.select, resources: \"*\", effect: deny}\n"
                         "    groups: [[a]]\n")),
            "via.yaml:15:14: entry app:p (security.policy): groups: each group must be a "
            "non-empty name");
}

TEST_F(ProgramRulesTest, PolicyAndRuleNamesShareTheNamespace) {
  EXPECT_EQ(Error(Program("    match: {exe: git}\n    network: tor\n") +
                  "  - name: r\n    kind: security.policy\n"
                  "    policy: {actions: network.select, resources: \"*\", effect: deny}\n"),
            "via.yaml:16:11: entry app:r (security.policy): name: duplicate entry app:r (first "
            "defined at via.yaml:12:5)");
}

// ---- matching -------------------------------------------------------------------------------

TEST(RuleMatchesTest, ExeGlobCrossesSlashes) {
  ProgramRule r;
  r.exe = "/home/me/untrusted/*";
  EXPECT_TRUE(RuleMatches(r, {"/home/me/untrusted/a/b", {}}));
  EXPECT_FALSE(RuleMatches(r, {"/home/me/trusted/a", {}}));
  EXPECT_FALSE(RuleMatches(r, {"", {}}));  // unknown executable: no match
}

TEST(RuleMatchesTest, BareNameMatchesTheBaseName) {
  ProgramRule r;
  r.exe = "git";
  EXPECT_TRUE(RuleMatches(r, {"/usr/bin/git", {"git"}}));
  EXPECT_FALSE(RuleMatches(r, {"/usr/bin/gitk", {"gitk"}}));
}

TEST(RuleMatchesTest, ArgvGlobsArePositional) {
  ProgramRule r;
  r.exe = "/usr/bin/python3*";
  r.argv = {"*", "*/untrusted/*"};
  EXPECT_TRUE(RuleMatches(r, {"/usr/bin/python3.11", {"python3", "/home/me/untrusted/x.py"}}));
  EXPECT_FALSE(RuleMatches(r, {"/usr/bin/python3.11", {"python3", "/home/me/ok.py"}}));
  EXPECT_FALSE(RuleMatches(r, {"/usr/bin/python3.11", {"python3"}}));  // too short
}

// ---- the network.select verdict ----------------------------------------------------------

SecurityPolicy Pol(const std::string& id, std::vector<std::string> resources, PolicyEffect e,
                   std::vector<std::string> groups, std::string action = "network.select") {
  SecurityPolicy p;
  p.id = id;
  p.actions = {action};
  p.resources = std::move(resources);
  p.effect = e;
  p.groups = std::move(groups);
  return p;
}

TEST(CheckSelectTest, SeedDenyAppliesToItsGroupOnly) {
  std::vector<SecurityPolicy> ps{Pol("app:deny", {"*"}, PolicyEffect::kDeny, {"untrusted"})};
  PolicyVerdict v = CheckSelect(ps, {"lab", "untrusted"}, "direct");
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.policy->id, "app:deny");
  EXPECT_EQ(v.group, "untrusted");
  EXPECT_TRUE(CheckSelect(ps, {"lab"}, "direct").allowed);
  EXPECT_TRUE(CheckSelect(ps, {}, "app:tor").allowed);
}

TEST(CheckSelectTest, ExactAllowBeatsWildcardDeny) {
  std::vector<SecurityPolicy> ps{Pol("app:deny", {"*"}, PolicyEffect::kDeny, {"u"}),
                                 Pol("app:tor_ok", {"app:tor"}, PolicyEffect::kAllow, {"u"})};
  EXPECT_TRUE(CheckSelect(ps, {"u"}, "app:tor").allowed);
  EXPECT_FALSE(CheckSelect(ps, {"u"}, "direct").allowed);
  EXPECT_FALSE(CheckSelect(ps, {"u"}, "app:other").allowed);
}

TEST(CheckSelectTest, DenyWinsAtEqualSpecificity) {
  std::vector<SecurityPolicy> ps{Pol("app:a", {"direct"}, PolicyEffect::kAllow, {}),
                                 Pol("app:d", {"direct"}, PolicyEffect::kDeny, {})};
  PolicyVerdict v = CheckSelect(ps, {}, "direct");
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.policy->id, "app:d");
}

TEST(CheckSelectTest, GlobResourceAndGlobAction) {
  std::vector<SecurityPolicy> ps{
      Pol("app:d", {"app:*"}, PolicyEffect::kDeny, {}, "network.*"),
      Pol("app:other_action", {"*"}, PolicyEffect::kDeny, {}, "network.bind")};
  EXPECT_FALSE(CheckSelect(ps, {}, "app:tor").allowed);
  EXPECT_TRUE(CheckSelect(ps, {}, "direct").allowed);  // app:* does not cover direct
}

TEST(CheckSelectTest, NothingAppliesMeansAllowed) {
  PolicyVerdict v = CheckSelect({}, {"untrusted"}, "direct");
  EXPECT_TRUE(v.allowed);
  EXPECT_EQ(v.policy, nullptr);
}

}  // namespace
}  // namespace via::config
