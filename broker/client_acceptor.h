// ClientAcceptor: accepts client connections on the broker's listening socket and decides
// whether each is served: the peer's credentials (SO_PEERCRED) and uid (PeerUidAllowed), the
// client caps derived from the descriptor limit (client_limits.h), and at the descriptor limit
// itself the refusal through a reserve descriptor with a backoff, so that a full backlog costs
// no CPU. A connection it keeps goes to the owner's `admit`. It accepts on the socket path and,
// for processes of a session that changed user, on the abstract socket (peer_lineage.h), where a
// peer of another uid is admitted if its process tree reaches a live session.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "broker/context.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace via::broker {

class ClientAcceptor : public Service {
 public:
  // Takes an accepted connection that passed every check; fails if it cannot be served (then
  // it is closed and not counted).
  // `foreign`: a peer of another uid admitted by its lineage (shim requests only).
  using Admit = std::function<Status(UniqueFd fd, pid_t pid, bool foreign)>;

  ClientAcceptor(BrokerContext* ctx, Admit admit) : Service(ctx), admit_(std::move(admit)) {}
  ~ClientAcceptor() { Stop(); }
  ClientAcceptor(const ClientAcceptor&) = delete;
  ClientAcceptor& operator=(const ClientAcceptor&) = delete;

  // Starts accepting on `listen_fd` (listening, non-blocking); `lineage`: the abstract socket,
  // where peers of another uid may be admitted by their process tree. Called once per socket.
  Status Start(UniqueFd listen_fd, bool lineage = false);
  // Stops answering: the listening sockets are closed.
  void Stop();
  // A served connection of `pid` closed (the per-process cap counts the others).
  void Closed(pid_t pid);

 private:
  struct Listener {
    UniqueFd fd;
    bool lineage = false;
  };
  void OnAccept(const Listener& l);
  // Whether an accepted connection is served. kStop: stop accepting for this wake-up (at the
  // client cap, accepting is paused).
  enum class Admission { kAdmit, kNext, kStop };
  Admission Consider(UniqueFd fd, bool lineage);
  // A peer whose uid is not the broker's: refused on the socket path; on the abstract socket
  // admitted if its process descends from a live session. Logs either way.
  bool AdmitOtherUid(int fd, const ucred& cred, bool lineage);
  Admission CheckClientCaps(int fd, pid_t pid);
  // Out of descriptors: the head of the backlog is refused (closed at once, through the reserve
  // descriptor when none is left) and the listening socket is not polled for a moment.
  void RefusePending(int listen_fd, int accept_errno);
  void PauseAccepting();

  Admit admit_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  UniqueFd reserve_fd_;  // /dev/null, given up to refuse a client past EMFILE
  bool paused_ = false;  // the listening socket is not polled (backoff)
  uint64_t timer_ = 0;
  int64_t backoff_ms_ = 0;
  std::unordered_map<pid_t, size_t> per_pid_;  // served connections per process
};

}  // namespace via::broker
