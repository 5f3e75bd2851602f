#include "broker/selector.h"

#include <algorithm>
#include <cerrno>

namespace via::broker {

std::string Describe(const ProcessInfo& p) {
  std::string what = !p.exe.empty() ? p.exe : !p.argv.empty() ? p.argv[0] : "?";
  return p.pid > 0 ? "pid " + std::to_string(p.pid) + " " + what : what;
}

namespace {

config::ProcessIdentity Identity(const ProcessInfo& p) { return {p.exe, p.argv}; }

bool Is(const ProcessInfo& p, pid_t pid, uint64_t start) {
  return pid != 0 && p.pid == pid && p.start == start;
}

std::string Short(const std::string& token) { return token.substr(0, 8); }

}  // namespace

bool SessionInfo::IsRoot(const ProcessInfo& p) const { return Is(p, root, root_start); }

bool SessionInfo::IsHeir(const ProcessInfo& p) const {
  for (const auto& [pid, start] : heirs) {
    if (Is(p, pid, start)) return true;
  }
  return false;
}

bool RecordedGroups::Merge(const RecordedGroups& other) {
  bool added = false;
  for (const std::string& g : other.groups) {
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) {
      groups.push_back(g);
      added = true;
    }
  }
  std::sort(groups.begin(), groups.end());
  for (const std::string& r : other.reasons) {
    if (std::find(reasons.begin(), reasons.end(), r) == reasons.end()) reasons.push_back(r);
  }
  return added;
}

Selection Select(const config::Config& cfg, const SelectRequest& req) {
  Selection sel;
  const auto& chain = req.chain;
  if (chain.empty()) {
    sel.error = Status::Error(ESRCH, "the process is gone");
    return sel;
  }
  auto rooted = [&](size_t i) -> const SessionInfo* {
    return i < chain.size() && req.session_rooted_at ? req.session_rooted_at(chain[i]) : nullptr;
  };

  // Groups: every rule matching the process or an ancestor, every session they carry, and what
  // was recorded for them before (an exec or a rewritten argv does not shed a group).
  std::vector<std::string> selector_groups;  // of whoever makes an explicit selection
  std::vector<RecordedGroups> own(chain.size());
  auto give = [&](size_t i, const std::vector<std::string>& groups, const std::string& why) {
    std::string gs;
    for (const std::string& g : groups) {
      gs += (gs.empty() ? "" : ", ") + g;
      if (std::find(sel.groups.begin(), sel.groups.end(), g) == sel.groups.end()) {
        sel.groups.push_back(g);
      }
      if ((i > 0 || !req.selected_by_parent) &&
          std::find(selector_groups.begin(), selector_groups.end(), g) == selector_groups.end()) {
        selector_groups.push_back(g);
      }
    }
    sel.group_reasons.push_back(gs + ": " + why);
    RecordedGroups r;
    r.groups = groups;
    r.reasons.push_back(gs + ": " + why);
    own[i].Merge(r);
  };
  for (size_t i = 0; i < chain.size(); ++i) {
    const ProcessInfo& p = chain[i];
    for (const config::ProgramRule& r : cfg.programs) {
      if (r.groups.empty() || !config::RuleMatches(r, Identity(p))) continue;
      give(i, r.groups, "rule " + r.id + " (" + r.where() + ") matches " + Describe(p));
    }
    // A session carries the groups its opener had, so they survive re-parenting.
    if (const SessionInfo* s = rooted(i); s != nullptr && !s->groups.empty()) {
      give(i, s->groups,
           "the session " + Short(s->token) + " carried by " + Describe(p) +
               " was opened by a process in them");
    }
  }
  // Then what was recorded when a process first met the broker (after what rules give now, so
  // that a group both give is explained by the rule). A record's reasons name who gave the
  // group then.
  for (size_t i = 0; i < chain.size(); ++i) {
    const ProcessInfo& p = chain[i];
    const RecordedGroups* rec =
        p.pid != 0 && req.recorded_groups ? req.recorded_groups(p) : nullptr;
    if (rec == nullptr) continue;
    auto is_new = [&](const std::string& g) {
      return std::find(sel.groups.begin(), sel.groups.end(), g) == sel.groups.end() ||
             ((i > 0 || !req.selected_by_parent) &&
              std::find(selector_groups.begin(), selector_groups.end(), g) ==
                  selector_groups.end());
    };
    std::vector<std::string> explained;
    for (const std::string& why : rec->reasons) {
      size_t colon = why.find(": ");
      if (colon == std::string::npos) continue;
      std::vector<std::string> gs;
      for (size_t a = 0; a <= colon;) {
        size_t b = std::min(why.find(", ", a), colon);
        gs.push_back(why.substr(a, b - a));
        a = b + 2;
      }
      explained.insert(explained.end(), gs.begin(), gs.end());
      if (std::none_of(gs.begin(), gs.end(), is_new)) continue;
      // Keep the first process's reason: "recorded for P since it started: rule R matches P as
      // it was".
      std::string first = why.substr(colon + 2);
      give(i, gs,
           first.rfind("recorded for ", 0) == 0
               ? first
               : "recorded for " + Describe(p) + " since it started: " + first);
    }
    for (const std::string& g : rec->groups) {
      if (std::find(explained.begin(), explained.end(), g) == explained.end() && is_new(g)) {
        give(i, {g}, "recorded for " + Describe(p) + " since it started");
      }
    }
  }
  std::sort(sel.groups.begin(), sel.groups.end());
  sel.selector_groups = selector_groups;
  // What each member has: its own and its ancestors' (the chain runs child to ancestor).
  sel.chain_groups.resize(chain.size());
  for (size_t i = chain.size(); i-- > 0;) {
    if (i + 1 < chain.size()) sel.chain_groups[i] = sel.chain_groups[i + 1];
    sel.chain_groups[i].Merge(own[i]);
  }

  // A process adopted by a session's root (its own parent died: a double fork) has lost the
  // ancestors between it and the root, and with them maybe groups: it may not select explicitly.
  // The same holds for a session's heirs other than its command (they were such processes when
  // the opener exited).
  std::string adopted;
  for (size_t i = 0; i < chain.size() && adopted.empty(); ++i) {
    if (const SessionInfo* s = rooted(i + 1); s != nullptr && s->IsRoot(chain[i + 1]) &&
                                              s->child != 0 &&
                                              !Is(chain[i], s->child, s->child_start)) {
      adopted = Describe(chain[i]) + " was re-parented to " + Describe(chain[i + 1]) +
                " (its own parent exited), so its lineage is unknown";
    } else if (const SessionInfo* h = rooted(i);
               h != nullptr && h->IsHeir(chain[i]) && !Is(chain[i], h->child, h->child_start)) {
      adopted = Describe(chain[i]) +
                " outlived the via run of its session after its own parent "
                "exited, so its lineage is unknown";
    }
  }

  // A presented token must belong to a session rooted in this process's own ancestry.
  if (!req.token.empty()) {
    const SessionInfo* s = req.session_by_token ? req.session_by_token(req.token) : nullptr;
    if (s == nullptr) {
      sel.error = Status::Error(EACCES,
                                "VIA_SESSION names no open session (it has ended, or the "
                                "token is forged); refusing rather than guessing");
      return sel;
    }
    bool ours = false;
    for (size_t i = 0; i < chain.size(); ++i)
      ours = ours || s->IsRoot(chain[i]) || s->IsHeir(chain[i]);
    if (!ours) {
      sel.error = Status::Error(
          EACCES, "VIA_SESSION " + Short(s->token) + "... belongs to the process tree of pid " +
                      std::to_string(s->root) + ", and " + Describe(chain[0]) +
                      " is not a descendant of it: a forged or stolen session token");
      return sel;
    }
  }

  // The process's own rule.
  const config::ProgramRule* own_rule = nullptr;
  for (const config::ProgramRule& r : cfg.programs) {
    if (!r.network.empty() && config::RuleMatches(r, Identity(chain[0]))) {
      own_rule = &r;
      break;
    }
  }

  // What it inherits: the nearest ancestor that fixed a network for its subtree. (A process
  // that opened a session is inside it too.)
  if (const SessionInfo* s = rooted(0)) {
    sel.inherited = s->network;
    sel.inherited_origin = "the session " + Short(s->token) + " this process opened";
  }
  for (size_t i = 1; i < chain.size() && sel.inherited.empty(); ++i) {
    if (const SessionInfo* s = rooted(i)) {
      sel.inherited = s->network;
      sel.inherited_origin = "inherited from the session " + Short(s->token) + " of " +
                             Describe(chain[i]) + (s->explicit_sel ? " (explicit)" : "");
      break;
    }
    if (const SessionInfo* s = rooted(i + 1);
        s != nullptr && s->explicit_sel && Is(chain[i], s->child, s->child_start)) {
      sel.inherited = s->network;
      sel.inherited_origin = "inherited from " + Describe(chain[i]) +
                             ", started by an explicit via run (session " + Short(s->token) + ")";
      break;
    }
    for (const config::ProgramRule& r : cfg.programs) {
      if (!r.network.empty() && config::RuleMatches(r, Identity(chain[i]))) {
        sel.inherited = r.network;
        sel.inherited_origin = "inherited from " + Describe(chain[i]) + ", which rule " + r.id +
                               " (" + r.where() + ") sends to " + r.network;
        break;
      }
    }
  }

  // 1a. The command an explicit `via run` started: selected (and checked) at that edge.
  const SessionInfo* launched_by = rooted(1);
  if (launched_by != nullptr &&
      (!launched_by->explicit_sel || !Is(chain[0], launched_by->child, launched_by->child_start))) {
    launched_by = nullptr;
  }
  std::string claim_id = req.claim;
  if (req.has_claim && claim_id != "direct") {
    if (const config::Overlay* o = cfg.Find(claim_id)) claim_id = o->id;
  }
  // (unless the process changed VIA_NETWORK before it exec'd: its own explicit selection)
  if (const SessionInfo* s = launched_by;
      s != nullptr && (!req.has_claim || claim_id == s->network)) {
    sel.network = s->network;
    sel.explicit_sel = true;
    sel.origin = "explicit: selected for this command by via run (" + Describe(chain[1]) +
                 ", session " + Short(s->token) + "; checked when the session was opened)";
    return sel;
  }

  std::string fallback, fallback_origin;
  if (own_rule != nullptr) {
    fallback = own_rule->network;
    fallback_origin = "program rule " + own_rule->id + " (" + own_rule->where() + ") matches " +
                      Describe(chain[0]);
  } else if (!sel.inherited.empty()) {
    fallback = sel.inherited;
    fallback_origin = sel.inherited_origin;
  } else if (!cfg.service.default_network.empty()) {
    fallback = cfg.service.default_network;
    fallback_origin = "network_service.default_network";
  } else {
    fallback = "direct";
    fallback_origin = "nothing selected a network";
  }

  if (req.has_claim) {
    std::string claim = req.claim;
    if (claim != "direct") {
      const config::Overlay* o = cfg.Find(claim);
      if (o == nullptr) {
        std::string known;
        for (const auto& ov : cfg.overlays) known += (known.empty() ? "" : ", ") + ov.id;
        sel.error = Status::Error(ENOENT, "unknown overlay \"" + claim + "\" (known: " +
                                              (known.empty() ? "none" : known) + ")");
        return sel;
      }
      claim = o->id;
    }
    bool is_explicit = req.force_explicit ||
                       (claim != fallback && (sel.inherited.empty() || claim != sel.inherited));
    if (is_explicit) {
      sel.explicit_sel = true;
      sel.checked = true;
      if (!adopted.empty()) {
        sel.error =
            Status::Error(EACCES, "explicit selection of " + claim + " refused: " + adopted);
        return sel;
      }
      config::PolicyVerdict v = config::CheckSelect(cfg.policies, selector_groups, claim);
      sel.policy = v.policy;
      if (!v.allowed) {
        std::string why;
        for (const std::string& r : sel.group_reasons) {
          if (v.group.empty() || r.rfind(v.group, 0) == 0 ||
              r.find(", " + v.group) != std::string::npos) {
            why = r;
            break;
          }
        }
        sel.error = Status::Error(
            EACCES, "network.select of " + claim + " is denied by security.policy " + v.policy->id +
                        " (" + v.policy->where() + ")" +
                        (v.group.empty() ? std::string(" (it applies to every process)")
                                         : " for group " + v.group + " (" + why + ")"));
        sel.network = claim;
        return sel;
      }
      sel.network = claim;
      sel.origin =
          "explicit selection (VIA_NETWORK / --network / --direct)" +
          std::string(v.policy != nullptr ? ", allowed by security.policy " + v.policy->id + " (" +
                                                v.policy->where() + ")"
                                          : ", allowed (no security.policy applies)");
      return sel;
    }
  }
  sel.network = fallback;
  sel.origin = fallback_origin;
  return sel;
}

}  // namespace via::broker
