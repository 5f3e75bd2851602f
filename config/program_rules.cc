#include "config/program_rules.h"

#include <fnmatch.h>

#include <algorithm>
#include <string>

namespace via::config {

std::string ProgramRule::where() const { return file + ":" + std::to_string(line); }
std::string SecurityPolicy::where() const { return file + ":" + std::to_string(line); }

bool GlobMatch(std::string_view pattern, std::string_view text) {
  return fnmatch(std::string(pattern).c_str(), std::string(text).c_str(), 0) == 0;
}

bool RuleMatches(const ProgramRule& rule, const ProcessIdentity& p) {
  if (!rule.exe.empty()) {
    if (p.exe.empty()) return false;
    std::string_view subject = p.exe;
    if (rule.exe.find('/') == std::string::npos) {
      size_t slash = subject.rfind('/');
      if (slash != std::string_view::npos) subject = subject.substr(slash + 1);
    }
    if (!GlobMatch(rule.exe, subject)) return false;
  }
  if (rule.argv.size() > p.argv.size()) return false;
  for (size_t i = 0; i < rule.argv.size(); ++i) {
    if (!GlobMatch(rule.argv[i], p.argv[i])) return false;
  }
  return true;
}

namespace {

bool ActionMatches(const SecurityPolicy& p) {
  return std::any_of(p.actions.begin(), p.actions.end(),
                     [](const std::string& a) { return GlobMatch(a, "network.select"); });
}

// 0 = no match, 1 = "*", 2 = another glob, 3 = exact.
int ResourceSpecificity(const SecurityPolicy& p, const std::string& network) {
  int best = 0;
  for (const std::string& r : p.resources) {
    int s = 0;
    if (r == network) {
      s = 3;
    } else if (r == "*") {
      s = 1;
    } else if (r.find_first_of("*?[") != std::string::npos && GlobMatch(r, network)) {
      s = 2;
    }
    best = std::max(best, s);
  }
  return best;
}

}  // namespace

PolicyVerdict CheckSelect(const std::vector<SecurityPolicy>& policies,
                          const std::vector<std::string>& groups, const std::string& network) {
  PolicyVerdict verdict;
  int best = 0;
  bool best_deny = false;
  for (const SecurityPolicy& p : policies) {
    if (!ActionMatches(p)) continue;
    std::string through;
    if (!p.groups.empty()) {
      auto it = std::find_first_of(p.groups.begin(), p.groups.end(), groups.begin(), groups.end());
      if (it == p.groups.end()) continue;
      through = *it;
    }
    int s = ResourceSpecificity(p, network);
    if (s == 0) continue;
    bool deny = p.effect == PolicyEffect::kDeny;
    if (s > best || (s == best && deny && !best_deny)) {
      best = s;
      best_deny = deny;
      verdict.allowed = !deny;
      verdict.policy = &p;
      verdict.group = through;
    }
  }
  return verdict;
}

}  // namespace via::config
