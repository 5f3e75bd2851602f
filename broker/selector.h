// Selector: which network a process gets, and whether its explicit selection is allowed. Pure:
// it sees the process tree (from /proc, or predicted by `via check`) and the sessions through the
// request, and the rules and policies through the config.
//
// Precedence (docs/configuration.md, "Program rules, policy and precedence"):
//   1. the process's own explicit selection (checked against security.policy for its groups);
//   2. the first via.program rule with a network that matches the process;
//   3. the inherited selection: the nearest ancestor that opened a session (`via run`), was
//      started by an explicit `via run`, or matches a rule with a network;
//   4. network_service.default_network;
//   5. direct.
// A process's groups are those of every rule matching it or any ancestor, and those the broker
// recorded for it or an ancestor: groups are a property of the process (pid + start time) from
// the moment a rule gave them, kept across exec and argv changes (Selection::chain_groups says
// what to record).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "broker/process_info.h"
#include "common/status.h"
#include "config/config.h"

namespace via::broker {

// A session as the selector needs it.
struct SessionInfo {
  std::string token;
  std::string network;        // overlay id or "direct"
  bool explicit_sel = false;  // opened with --network/--direct
  pid_t root = 0;             // the process that opened it (`via run`)
  uint64_t root_start = 0;
  pid_t child = 0;  // the command it started (0: not registered)
  uint64_t child_start = 0;
  std::vector<std::string> groups;  // of the opener's ancestry: given to every member
  // After the opener exited: its children then, which carry the session (and its groups) on.
  std::vector<std::pair<pid_t, uint64_t>> heirs;
  bool IsRoot(const ProcessInfo& p) const;
  bool IsHeir(const ProcessInfo& p) const;
};

// The groups recorded for one process (pid + start time), with one reason line per rule or
// session that gave them.
struct RecordedGroups {
  std::vector<std::string> groups;
  std::vector<std::string> reasons;
  // Adds `other`'s groups and reasons not already here; true if a group was new.
  bool Merge(const RecordedGroups& other);
};

struct SelectRequest {
  std::vector<ProcessInfo> chain;  // [0] the process, then its ancestors
  bool has_claim = false;          // the process names a network (HELLO NETWORK)
  std::string claim;
  bool force_explicit = false;  // the claim is explicit even if it equals the inherited one
  // chain[0] is a command about to be started by chain[1] (OPEN_SESSION, `via check -- CMD`):
  // the selection is chain[1]'s, so it is checked against the groups of chain[1] and above.
  bool selected_by_parent = false;
  std::string token;  // HELLO SESSION ("" none)
  // The session `p` opened, or carries on as an heir; nullptr if none.
  std::function<const SessionInfo*(const ProcessInfo&)> session_rooted_at;
  std::function<const SessionInfo*(std::string_view)> session_by_token;
  // The groups recorded for `p` earlier, or nullptr.
  std::function<const RecordedGroups*(const ProcessInfo&)> recorded_groups;
};

struct Selection {
  Status error;                    // ENOENT (unknown overlay), EACCES (policy, token)
  std::string network = "direct";  // overlay id or "direct"
  std::string origin;              // why, for logs and `via check`
  bool explicit_sel = false;
  bool checked = false;                      // an explicit selection was checked against policy
  std::vector<std::string> groups;           // sorted, unique
  std::vector<std::string> selector_groups;  // those an explicit selection was checked with
  std::vector<std::string> group_reasons;    // one line per rule that gave groups
  const config::SecurityPolicy* policy = nullptr;  // the entry that decided the check
  std::string inherited;                           // what the process would inherit ("" none)
  std::string inherited_origin;
  // For each member of the chain, the groups it has now (its own rules, its recorded groups and
  // those of its ancestors in the chain): what the broker records for it.
  std::vector<RecordedGroups> chain_groups;
};

Selection Select(const config::Config& config, const SelectRequest& req);

// "pid 12 /usr/bin/curl" (or the argv[0] when the executable is unknown).
std::string Describe(const ProcessInfo& p);

}  // namespace via::broker
