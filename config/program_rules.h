// Per-program rules (`kind: via.program`) and `security.policy` entries for `network.select`:
// the data, and the pure functions that match a process against them. See docs/configuration.md
// ("Program rules, policy and precedence").
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace via::config {

struct SourcePos;
struct Config;

// `kind: via.program`: gives the programs it matches an overlay and/or groups.
//
//   - name: git
//     kind: via.program
//     match: {exe: /usr/bin/git, argv: ["*", "fetch"]}   # argv optional
//     network: app:tor                                     # or direct; optional
//     groups: [vcs]                                        # optional
struct ProgramRule {
  std::string id;  // "namespace:name"
  std::string file;
  int line = 0, column = 0;  // position of the entry
  // Glob (fnmatch, `*` also matches `/`) against /proc/PID/exe. A leading `~/` was expanded to
  // $HOME when loaded. Without a `/` it matches the executable's base name.
  std::string exe;
  // Globs against argv[0], argv[1], ... (a command line shorter than the list never matches).
  std::vector<std::string> argv;
  std::string network;  // "" = none; "direct" or an overlay id ("ns:name")
  std::vector<std::string> groups;
  // `strict: true`: `via run` of a matching command runs it in strict mode (under an overlay).
  bool strict = false;
  std::string network_pos;    // "file:line:col" of `network:`, for late errors
  std::string where() const;  // "file:line"
};

enum class PolicyEffect { kAllow, kDeny };

// `kind: security.policy` entries whose actions include `network.select` (others are skipped).
//
//   - name: deny_network
//     kind: security.policy
//     policy: {actions: "network.select", resources: "*", effect: deny}
//     groups: [untrusted]
struct SecurityPolicy {
  std::string id;
  std::string file;
  int line = 0, column = 0;
  std::vector<std::string> actions;    // as written; one of them matches network.select
  std::vector<std::string> resources;  // "*", "direct", overlay ids (completed), or globs
  PolicyEffect effect = PolicyEffect::kDeny;
  std::vector<std::string> groups;        // empty: applies to every process
  std::vector<std::string> resource_pos;  // "file:line:col" of each resource, for late errors
  std::string where() const;
};

// A process as the broker sees it (from /proc) or as `via check` predicts it.
struct ProcessIdentity {
  std::string exe;                // resolved executable path
  std::vector<std::string> argv;  // its command line
};

// fnmatch(3) without FNM_PATHNAME: `*` also matches `/`.
bool GlobMatch(std::string_view pattern, std::string_view text);
// Whether `rule` matches the process.
bool RuleMatches(const ProgramRule& rule, const ProcessIdentity& p);

// The verdict on an explicit selection of `network` ("direct" or an overlay id) by a process in
// `groups`. Among the policies that apply (action network.select, a group in common or no
// groups, a matching resource), the most specific resource wins (an exact id, then a glob, then
// "*"); at equal specificity deny wins. No applicable policy: allowed.
struct PolicyVerdict {
  bool allowed = true;
  const SecurityPolicy* policy = nullptr;  // the deciding entry, if any
  std::string group;                       // the group it applied through ("" = all)
};
PolicyVerdict CheckSelect(const std::vector<SecurityPolicy>& policies,
                          const std::vector<std::string>& groups, const std::string& network);

}  // namespace via::config
