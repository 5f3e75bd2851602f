// SessionService: which network a client gets, and the sessions `via run` opens. HELLO (the
// selection for a connection, under the current config generation), OPEN_SESSION,
// SESSION_CHILD and SESSION_DETACH (docs/protocol.md), the groups recorded per process, and the
// pruning of detached sessions. Decisions go through selector.h; replies through ClientSink.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "broker/context.h"
#include "broker/process_info.h"
#include "broker/selector.h"
#include "common/wire.h"

namespace via::broker {

class SessionService : public Service {
 public:
  explicit SessionService(BrokerContext* ctx) : Service(ctx) {}
  ~SessionService();
  SessionService(const SessionService&) = delete;
  SessionService& operator=(const SessionService&) = delete;

  void HandleHello(Client& c, const wire::Message& m);
  void HandleOpenSession(Client& c, const wire::Message& m);
  void HandleSessionChild(Client& c, const wire::Message& m);
  void HandleSessionDetach(Client& c, const wire::Message& m);
  // STRICT_PROCESS (broker/strict_process.cc).
  void HandleStrictProcess(Client& c, const wire::Message& m);

  // Selects the client's network from its HELLO (kept in the Client) under the current config.
  void ApplyHello(Client& c);
  // The SOCKS5 fields of a HELLO reply that let the shim run CONNECT itself (kFlagShimSocks5),
  // put into *w when given; returns them as a key ("" when the shim must hand sockets over), so
  // a reload can tell whether what a shim holds is still right.
  std::string ShimPlan(const Client& c, wire::Writer* w) const;
  // A reload: HELLO failures are logged again (once per pid and text).
  void ForgetLoggedErrors() { logged_network_errors_.clear(); }

 private:
  // HELLO with kFlagExecHello: a process about to exec in place has its groups recorded.
  void HandleExecHello(Client& c, const wire::Message& m);
  // HELLO's WAIT_MS: how long a request of `c` that waits on its overlay may take.
  uint32_t OverlayWaitMs(const Client& c) const;
  // The HELLO reply's FLAGS besides those ShimPlan decides.
  uint32_t HelloFlags(const Client& c) const;
  // OPEN_SESSION's selection: for the command the session will start, as a child of the
  // opener (its groups are those of the command and of the opener's whole ancestry).
  SelectRequest CommandRequest(const wire::Message& m, const std::vector<ProcessInfo>& opener,
                               ProcessInfo* command) const;
  // OPEN_SESSION's ROUTE fields (`via run --route`), parsed and checked against policy.
  Status SessionRoutes(const wire::Message& m, const Selection& sel,
                       std::vector<config::Route>* out) const;
  // Records the new session's opener, groups and command groups; replies and logs.
  void SessionOpened(Client& c, const wire::Message& m, const std::string& token,
                     const std::string& id, const std::vector<ProcessInfo>& opener,
                     const Selection& sel);
  // The process tree a selection for `c` is made for: the peer's, or its STRICT_PROCESS's
  // while that process lives (a pooled connection outlives it; a reload then selects for the
  // peer, the session's opener, never for a dead or reused pid).
  static std::vector<ProcessInfo> SelectionChain(const Client& c);
  // The selector's view of the sessions.
  SelectRequest MakeRequest(std::vector<ProcessInfo> chain) const;
  // Ends detached sessions whose heirs are all gone; re-arms itself while any remain.
  void PruneDetached();

  std::set<std::string> logged_network_errors_;  // HELLO failures are logged once per pid+text
  uint64_t prune_timer_ = 0;
};

}  // namespace via::broker
