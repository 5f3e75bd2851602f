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

namespace {

// The session chain[i] opened or carries on, or nullptr (also past the chain's end).
const SessionInfo* RootedAt(const SelectRequest& req, size_t i) {
  return i < req.chain.size() && req.session_rooted_at ? req.session_rooted_at(req.chain[i])
                                                        : nullptr;
}

// The groups of the process: every rule matching it or an ancestor, every session they carry,
// and what was recorded for them before (an exec or a rewritten argv does not shed a group).
class Groups {
 public:
  Groups(const SelectRequest& req, Selection* sel)
      : req_(req), sel_(*sel), own_(req.chain.size()) {}

  // What rules give now, and sessions carry (so they survive re-parenting).
  void FromRulesAndSessions(const config::Config& cfg) {
    for (size_t i = 0; i < req_.chain.size(); ++i) {
      const ProcessInfo& p = req_.chain[i];
      for (const config::ProgramRule& r : cfg.programs) {
        if (r.groups.empty() || !config::RuleMatches(r, Identity(p))) continue;
        Give(i, r.groups, "rule " + r.id + " (" + r.where() + ") matches " + Describe(p));
      }
      if (const SessionInfo* s = RootedAt(req_, i); s != nullptr && !s->groups.empty()) {
        Give(i, s->groups,
             "the session " + Short(s->token) + " carried by " + Describe(p) +
                 " was opened by a process in them");
      }
    }
  }

  // Then what was recorded when a process first met the broker (after what rules give now, so
  // that a group both give is explained by the rule). A record's reasons name who gave the
  // group then.
  void FromRecords() {
    for (size_t i = 0; i < req_.chain.size(); ++i) {
      const ProcessInfo& p = req_.chain[i];
      const RecordedGroups* rec =
          p.pid != 0 && req_.recorded_groups ? req_.recorded_groups(p) : nullptr;
      if (rec != nullptr) FromRecord(i, *rec);
    }
  }

  // Into the selection: the sorted groups, those of the selector, and each member's (its own
  // and its ancestors': the chain runs child to ancestor).
  void Finish() {
    std::sort(sel_.groups.begin(), sel_.groups.end());
    sel_.selector_groups = selector_groups_;
    sel_.chain_groups.resize(req_.chain.size());
    for (size_t i = req_.chain.size(); i-- > 0;) {
      if (i + 1 < req_.chain.size()) sel_.chain_groups[i] = sel_.chain_groups[i + 1];
      sel_.chain_groups[i].Merge(own_[i]);
    }
  }

 private:
  // Whether chain[i] makes the explicit selection (not its parent on its behalf).
  bool Selects(size_t i) const { return i > 0 || !req_.selected_by_parent; }

  static bool Has(const std::vector<std::string>& v, const std::string& g) {
    return std::find(v.begin(), v.end(), g) != v.end();
  }

  void Give(size_t i, const std::vector<std::string>& groups, const std::string& why) {
    std::string gs;
    for (const std::string& g : groups) {
      gs += (gs.empty() ? "" : ", ") + g;
      if (!Has(sel_.groups, g)) sel_.groups.push_back(g);
      if (Selects(i) && !Has(selector_groups_, g)) selector_groups_.push_back(g);
    }
    sel_.group_reasons.push_back(gs + ": " + why);
    RecordedGroups r;
    r.groups = groups;
    r.reasons.push_back(gs + ": " + why);
    own_[i].Merge(r);
  }

  void FromRecord(size_t i, const RecordedGroups& rec) {
    const ProcessInfo& p = req_.chain[i];
    auto is_new = [&](const std::string& g) {
      return !Has(sel_.groups, g) || (Selects(i) && !Has(selector_groups_, g));
    };
    std::vector<std::string> explained;
    for (const std::string& why : rec.reasons) {
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
      Give(i, gs,
           first.rfind("recorded for ", 0) == 0
               ? first
               : "recorded for " + Describe(p) + " since it started: " + first);
    }
    for (const std::string& g : rec.groups) {
      if (!Has(explained, g) && is_new(g)) {
        Give(i, {g}, "recorded for " + Describe(p) + " since it started");
      }
    }
  }

  const SelectRequest& req_;
  Selection& sel_;
  std::vector<std::string> selector_groups_;  // of whoever makes an explicit selection
  std::vector<RecordedGroups> own_;
};

// Why the process may not select explicitly, or "". A process adopted by a session's root (its
// own parent died: a double fork) has lost the ancestors between it and the root, and with them
// maybe groups. The same holds for a session's heirs other than its command (they were such
// processes when the opener exited).
std::string AdoptedReason(const SelectRequest& req) {
  const auto& chain = req.chain;
  for (size_t i = 0; i < chain.size(); ++i) {
    if (const SessionInfo* s = RootedAt(req, i + 1); s != nullptr && s->IsRoot(chain[i + 1]) &&
                                                     s->child != 0 &&
                                                     !Is(chain[i], s->child, s->child_start)) {
      return Describe(chain[i]) + " was re-parented to " + Describe(chain[i + 1]) +
             " (its own parent exited), so its lineage is unknown";
    }
    if (const SessionInfo* h = RootedAt(req, i);
        h != nullptr && h->IsHeir(chain[i]) && !Is(chain[i], h->child, h->child_start)) {
      return Describe(chain[i]) +
             " outlived the via run of its session after its own parent "
             "exited, so its lineage is unknown";
    }
  }
  return "";
}

// A presented token must belong to a session rooted in this process's own ancestry.
Status CheckToken(const SelectRequest& req) {
  if (req.token.empty()) return Status::Ok();
  const SessionInfo* s = req.session_by_token ? req.session_by_token(req.token) : nullptr;
  if (s == nullptr) {
    return Status::Error(EACCES,
                         "VIA_SESSION names no open session (it has ended, or the "
                         "token is forged); refusing rather than guessing");
  }
  for (const ProcessInfo& p : req.chain) {
    if (s->IsRoot(p) || s->IsHeir(p)) return Status::Ok();
  }
  return Status::Error(EACCES, "VIA_SESSION " + Short(s->token) +
                                   "... belongs to the process tree of pid " +
                                   std::to_string(s->root) + ", and " + Describe(req.chain[0]) +
                                   " is not a descendant of it: a forged or stolen session token");
}

// The first program rule with a network that matches `p`, or nullptr.
const config::ProgramRule* NetworkRule(const config::Config& cfg, const ProcessInfo& p) {
  for (const config::ProgramRule& r : cfg.programs) {
    if (!r.network.empty() && config::RuleMatches(r, Identity(p))) return &r;
  }
  return nullptr;
}

// What the process inherits: the nearest ancestor that fixed a network for its subtree. (A
// process that opened a session is inside it too.)
void Inherit(const config::Config& cfg, const SelectRequest& req, Selection* sel) {
  const auto& chain = req.chain;
  if (const SessionInfo* s = RootedAt(req, 0)) {
    sel->inherited = s->network;
    sel->inherited_origin = "the session " + Short(s->token) + " this process opened";
    if (!sel->inherited.empty()) return;
  }
  for (size_t i = 1; i < chain.size(); ++i) {
    if (const SessionInfo* s = RootedAt(req, i)) {
      sel->inherited = s->network;
      sel->inherited_origin = "inherited from the session " + Short(s->token) + " of " +
                              Describe(chain[i]) + (s->explicit_sel ? " (explicit)" : "");
      return;
    }
    if (const SessionInfo* s = RootedAt(req, i + 1);
        s != nullptr && s->explicit_sel && Is(chain[i], s->child, s->child_start)) {
      sel->inherited = s->network;
      sel->inherited_origin = "inherited from " + Describe(chain[i]) +
                              ", started by an explicit via run (session " + Short(s->token) +
                              ")";
      return;
    }
    if (const config::ProgramRule* r = NetworkRule(cfg, chain[i])) {
      sel->inherited = r->network;
      sel->inherited_origin = "inherited from " + Describe(chain[i]) + ", which rule " + r->id +
                              " (" + r->where() + ") sends to " + r->network;
      return;
    }
  }
}

// 1a. The command an explicit `via run` started: selected (and checked) at that edge, unless
// the process changed VIA_NETWORK before it exec'd (its own explicit selection). True when that
// decided.
bool SelectedByViaRun(const config::Config& cfg, const SelectRequest& req, Selection* sel) {
  const SessionInfo* s = RootedAt(req, 1);
  if (s == nullptr || !s->explicit_sel || !Is(req.chain[0], s->child, s->child_start)) {
    return false;
  }
  std::string claim_id = req.claim;
  if (req.has_claim && !config::IsBuiltinNetwork(claim_id)) {
    if (const config::Overlay* o = cfg.Find(claim_id)) claim_id = o->id;
  }
  if (req.has_claim && claim_id != s->network) return false;
  sel->network = s->network;
  sel->explicit_sel = true;
  sel->origin = "explicit: selected for this command by via run (" + Describe(req.chain[1]) +
                ", session " + Short(s->token) + "; checked when the session was opened)";
  return true;
}

// 2.-5.: what the process gets when it selects nothing itself.
void Fallback(const config::Config& cfg, const SelectRequest& req, const Selection& sel,
              std::string* network, std::string* origin) {
  if (const config::ProgramRule* r = NetworkRule(cfg, req.chain[0])) {
    *network = r->network;
    *origin = "program rule " + r->id + " (" + r->where() + ") matches " + Describe(req.chain[0]);
  } else if (!sel.inherited.empty()) {
    *network = sel.inherited;
    *origin = sel.inherited_origin;
  } else if (!cfg.service.default_network.empty()) {
    *network = cfg.service.default_network;
    *origin = "network_service.default_network";
  } else {
    *network = "direct";
    *origin = "nothing selected a network";
  }
}

// The security.policy check of an explicit selection of `claim`; fills the selection.
void CheckExplicit(const config::Config& cfg, const std::string& claim, const std::string& adopted,
                   Selection* sel) {
  sel->explicit_sel = true;
  sel->checked = true;
  if (claim == config::kNoNetwork) {
    // Taking the network away widens nothing: no policy and no session can forbid it.
    sel->network = claim;
    sel->origin = "explicit selection of none (always allowed: it only takes the network away)";
    return;
  }
  if (!adopted.empty()) {
    sel->error = Status::Error(EACCES, "explicit selection of " + claim + " refused: " + adopted);
    return;
  }
  config::PolicyVerdict v = config::CheckSelect(cfg.policies, sel->selector_groups, claim);
  sel->policy = v.policy;
  sel->network = claim;
  if (!v.allowed) {
    std::string why;
    for (const std::string& r : sel->group_reasons) {
      if (v.group.empty() || r.rfind(v.group, 0) == 0 ||
          r.find(", " + v.group) != std::string::npos) {
        why = r;
        break;
      }
    }
    sel->error = Status::Error(
        EACCES, "network.select of " + claim + " is denied by security.policy " + v.policy->id +
                    " (" + v.policy->where() + ")" +
                    (v.group.empty() ? std::string(" (it applies to every process)")
                                     : " for group " + v.group + " (" + why + ")"));
    return;
  }
  sel->origin =
      "explicit selection (VIA_NETWORK / --network / --direct)" +
      std::string(v.policy != nullptr ? ", allowed by security.policy " + v.policy->id + " (" +
                                            v.policy->where() + ")"
                                      : ", allowed (no security.policy applies)");
}

// 1b. The process names a network itself: explicit when it differs from what it would get
// anyway. True when that decided (or failed).
bool SelectedByClaim(const config::Config& cfg, const SelectRequest& req,
                     const std::string& fallback, const std::string& adopted, Selection* sel) {
  if (!req.has_claim) return false;
  std::string claim = req.claim;
  if (!config::IsBuiltinNetwork(claim)) {
    const config::Overlay* o = cfg.Find(claim);
    if (o == nullptr) {
      std::string known;
      for (const auto& ov : cfg.overlays) known += (known.empty() ? "" : ", ") + ov.id;
      sel->error = Status::Error(
          ENOENT, "unknown overlay \"" + claim +
                      "\" (known: " + (known.empty() ? "no overlay is configured" : known) + ")");
      return true;
    }
    claim = o->id;
  }
  bool is_explicit = req.force_explicit ||
                     (claim != fallback && (sel->inherited.empty() || claim != sel->inherited));
  if (!is_explicit) return false;
  CheckExplicit(cfg, claim, adopted, sel);
  return true;
}

}  // namespace

Selection Select(const config::Config& cfg, const SelectRequest& req) {
  Selection sel;
  if (req.chain.empty()) {
    sel.error = Status::Error(ESRCH, "the process is gone");
    return sel;
  }
  Groups groups(req, &sel);
  groups.FromRulesAndSessions(cfg);
  groups.FromRecords();
  groups.Finish();
  std::string adopted = AdoptedReason(req);
  if (Status st = CheckToken(req); !st.ok()) {
    sel.error = st;
    return sel;
  }
  Inherit(cfg, req, &sel);
  if (SelectedByViaRun(cfg, req, &sel)) return sel;
  std::string fallback, fallback_origin;
  Fallback(cfg, req, sel, &fallback, &fallback_origin);
  if (SelectedByClaim(cfg, req, fallback, adopted, &sel)) return sel;
  sel.network = fallback;
  sel.origin = fallback_origin;
  return sel;
}

}  // namespace via::broker
