#include "broker/client_acceptor.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "broker/peer_lineage.h"
#include "broker/process_info.h"

namespace via::broker {

Status ClientAcceptor::Start(UniqueFd listen_fd, bool lineage) {
  // One descriptor kept in reserve: past the descriptor limit it is given up for a moment to
  // accept, answer and close the client at the head of the backlog (RefusePending).
  if (!reserve_fd_) reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto l = std::make_unique<Listener>(Listener{std::move(listen_fd), lineage});
  const Listener* raw = l.get();
  listeners_.push_back(std::move(l));
  return loop()->Watch(raw->fd.get(), EPOLLIN, [this, raw](uint32_t) { OnAccept(*raw); });
}

void ClientAcceptor::Stop() {
  for (const auto& l : listeners_) loop()->Unwatch(l->fd.get());
  listeners_.clear();
  if (timer_ != 0) loop()->CancelTimer(timer_);
  timer_ = 0;
}

void ClientAcceptor::Closed(pid_t pid) {
  if (auto per = per_pid_.find(pid); per != per_pid_.end()) {
    if (--per->second == 0) per_pid_.erase(per);
  }
}

void ClientAcceptor::OnAccept(const Listener& l) {
  // A bounded number per wake-up: the clients already connected get their turn in between.
  for (int round = 0; round < 64 && !paused_; ++round) {
    UniqueFd fd(accept4(l.fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        RefusePending(l.fd.get(), err);
        break;
      }
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kAccept, &suppressed)) {
        log()->warn("accept: {}{}", std::strerror(err), SuppressedText(suppressed));
      }
      PauseAccepting();
      break;
    }
    if (Consider(std::move(fd), l.lineage) == Admission::kStop) break;
  }
  clients().UpdateIdle();
}

ClientAcceptor::Admission ClientAcceptor::Consider(UniqueFd fd, bool lineage) {
  Result<ucred> cred = PeerCredentials(fd.get());
  if (!cred.ok()) {
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kAccept, &suppressed)) {
      log()->warn("{}; connection closed{}", cred.status().message(), SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  const bool foreign = !PeerUidAllowed(*cred);
  if (foreign && !AdmitOtherUid(fd.get(), *cred, lineage)) return Admission::kNext;
  if (Admission a = CheckClientCaps(fd.get(), cred->pid); a != Admission::kAdmit) return a;
  if (Status s = admit_(std::move(fd), cred->pid, foreign); !s.ok()) {
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kAccept, &suppressed)) {
      log()->warn("cannot watch a client: {}{}", s.message(), SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  ++per_pid_[cred->pid];
  backoff_ms_ = 0;
  return Admission::kAdmit;
}

bool ClientAcceptor::AdmitOtherUid(int fd, const ucred& cred, bool lineage) {
  uint64_t suppressed = 0;
  if (!lineage) {
    ++ctx_->load.refused_other_uid;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log()->warn("refused connection from uid {} pid {} (this broker serves uid {} only){}",
                  cred.uid, cred.pid, geteuid(), SuppressedText(suppressed));
    }
    return false;
  }
  // On the abstract socket: only a process inside a session (peer_lineage.h).
  LineageVerdict v = CheckPeerLineage(fd, cred, sessions());
  if (!v.admitted) {
    ++ctx_->load.refused_other_uid;
    SendRefusal(fd,
                "the via broker serves uid " + std::to_string(geteuid()) +
                    " and processes of its sessions; this process (uid " +
                    std::to_string(cred.uid) + ") is refused: " + v.why,
                EACCES);
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log()->warn("refused connection from uid {} pid {} {} on the abstract socket: {}{}",
                  cred.uid, cred.pid, ExePath(cred.pid), v.why, SuppressedText(suppressed));
    }
    return false;
  }
  if (LogAllowed(Noisy::kSession, &suppressed)) {
    log()->info("admitted uid {} pid {} {} on the abstract socket: {}{}", cred.uid, cred.pid,
                ExePath(cred.pid), v.why, SuppressedText(suppressed));
  }
  return true;
}

ClientAcceptor::Admission ClientAcceptor::CheckClientCaps(int fd, pid_t pid) {
  const ClientCaps& caps = ctx_->caps;
  if (clients().clients().size() >= caps.total) {
    ++ctx_->load.refused_cap;
    std::string why = "the via broker serves at most " + std::to_string(caps.total) +
                      " connections (its descriptor limit is " +
                      std::to_string(ctx_->nofile_limit) +
                      "); try again later, or see `via status`";
    SendRefusal(fd, why);
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log()->warn("refused a connection from pid {}: at the client cap ({} connections){}", pid,
                  caps.total, SuppressedText(suppressed));
    }
    PauseAccepting();
    return Admission::kStop;
  }
  auto per = per_pid_.find(pid);
  const size_t mine = per == per_pid_.end() ? 0 : per->second;
  if (mine >= caps.per_pid) {
    ++ctx_->load.refused_pid_cap;
    SendRefusal(fd, "this process has " + std::to_string(mine) +
                        " connections to the via broker already (at most " +
                        std::to_string(caps.per_pid) + " per process)");
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log()->warn("refused a connection from pid {}: it has {} already (the cap per process){}",
                  pid, mine, SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  return Admission::kAdmit;
}

void ClientAcceptor::RefusePending(int listen_fd, int accept_errno) {
  // The classic: give up the reserve descriptor, accept the client at the head of the backlog,
  // answer and close it, take the reserve again. Without it the listening socket would stay
  // readable and the loop spin on EMFILE.
  bool refused = false;
  if (reserve_fd_) {
    reserve_fd_.reset();
    UniqueFd fd(accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (fd) {
      refused = true;
      SendRefusal(fd.get(), "the via broker is at its descriptor limit (" +
                                std::to_string(ctx_->nofile_limit) +
                                "); try again later, or see `via status`");
    }
    fd.reset();
    reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
  }
  if (refused) ++ctx_->load.refused_fd_limit;
  uint64_t suppressed = 0;
  if (LogAllowed(Noisy::kAccept, &suppressed)) {
    int open_fds = OpenDescriptors();
    log()->warn("accept: {} ({} of {} descriptors open, {} clients): {}{}",
                std::strerror(accept_errno), open_fds, ctx_->nofile_limit,
                clients().clients().size(),
                refused ? "refused the next client" : "clients wait in the backlog",
                SuppressedText(suppressed));
  }
  PauseAccepting();
}

void ClientAcceptor::PauseAccepting() {
  if (paused_ || listeners_.empty()) return;
  paused_ = true;
  for (const auto& l : listeners_) loop()->Modify(l->fd.get(), 0);
  backoff_ms_ = backoff_ms_ == 0 ? 50 : std::min<int64_t>(backoff_ms_ * 2, 500);
  timer_ = loop()->AddTimer(backoff_ms_, [this] {
    timer_ = 0;
    paused_ = false;
    for (const auto& l : listeners_) loop()->Modify(l->fd.get(), EPOLLIN);
  });
}

}  // namespace via::broker
