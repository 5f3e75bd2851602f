// SessionTable: the sessions opened by `via run` (OPEN_SESSION). A session names a network and
// is owned by the client connection that opened it; it ends when that connection closes. Shims
// of the session's processes present its token in HELLO to get the session's network.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "config/routes.h"

namespace via::broker {

class SessionTable {
 public:
  struct Session {
    std::string token;    // 32 lowercase hex characters (16 random bytes)
    std::string network;  // overlay id or "direct"
    uint64_t owner = 0;   // client connection id
    int64_t opened_ms = 0;
    bool explicit_sel = false;  // opened with an explicit selection (--network/--direct)
    pid_t root = 0;             // the process that opened it, with its start time
    uint64_t root_start = 0;
    pid_t child = 0;  // the command it started (SESSION_CHILD), with its start time
    uint64_t child_start = 0;
    std::vector<std::string> groups;  // of the opener and its ancestors, when it was opened
    // The groups (with reasons) of the command it starts, predicted when it was opened: recorded
    // for the command's process when it is registered (SESSION_CHILD), so that an exec in place
    // before it ever asks the broker does not shed them.
    std::vector<std::string> command_groups, command_reasons;
    // After the opener exited (SESSION_DETACH): its children then, which carry the session on.
    std::vector<std::pair<pid_t, uint64_t>> heirs;
    // `via run --route`: routes ahead of the config's for the session's processes (those that
    // present its token), checked against security.policy when it was opened.
    std::vector<config::Route> routes;
    bool strict = false;  // the command runs in strict mode (SESSION_CHILD's flags)
    bool audit = false;   // ... with --audit, which reports what the namespace refused:
    std::map<std::string, uint64_t> refused;  // by kind (REPORT REFUSED), at most kMaxRefusedKinds
    static constexpr size_t kMaxRefusedKinds = 16;
    bool detached() const { return owner == 0; }
  };

  // Opens a session for `network` owned by client `owner`. Fails only if the kernel has no
  // random bytes for the token.
  Result<const Session*> Open(const std::string& network, uint64_t owner, int64_t now_ms);
  // The session with `token`, or nullptr. The pointer is valid until the session ends.
  const Session* Find(std::string_view token) const;
  Session* FindMutable(std::string_view token);
  // The newest session opened by process (root, start), or nullptr.
  const Session* FindByRoot(pid_t root, uint64_t start) const;
  // Ends every session owned by `owner` and returns them (for the log). Detached sessions have
  // no owner.
  std::vector<Session> EndOwnedBy(uint64_t owner);
  // Hands the session to `heirs`: it outlives its owner's connection until Prune finds none of
  // them alive.
  void Detach(Session* s, std::vector<std::pair<pid_t, uint64_t>> heirs);
  // Ends detached sessions none of whose heirs `alive` reports alive; returns how many ended.
  size_t PruneDetached(const std::function<bool(pid_t, uint64_t)>& alive);
  size_t detached_count() const;

  // ---- groups recorded per process ----
  // Groups are a property of a process from the moment a rule (or session) gave them: the broker
  // records them per (pid, start time) and keeps them for the life of the process, whatever it
  // execs or writes into its argv later. Records only grow. Dead processes' records are pruned
  // (by `alive`) when the table has doubled since the last pruning.
  // Returns true if something was new.
  bool RecordGroups(pid_t pid, uint64_t start, const std::vector<std::string>& groups,
                    const std::vector<std::string>& reasons,
                    const std::function<bool(pid_t, uint64_t)>& alive);
  // The recorded groups of (pid, start), or nullptr. Valid until the next RecordGroups.
  const std::pair<std::vector<std::string>, std::vector<std::string>>* FindGroups(
      pid_t pid, uint64_t start) const;
  size_t recorded_count() const { return recorded_.size(); }

  size_t size() const { return sessions_.size(); }
  // Sorted by token, for stable status output.
  const std::map<std::string, Session, std::less<>>& sessions() const { return sessions_; }

 private:
  std::map<std::string, Session, std::less<>> sessions_;
  std::map<std::pair<pid_t, uint64_t>,
           std::pair<std::vector<std::string>, std::vector<std::string>>>
      recorded_;
  size_t prune_recorded_at_ = 1024;
};

// 16 bytes from getrandom(2) as 32 lowercase hex characters.
Result<std::string> NewSessionToken();

}  // namespace via::broker
