#include "broker/client_acceptor.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace via::broker {

Status ClientAcceptor::Start(UniqueFd listen_fd) {
  // One descriptor kept in reserve: past the descriptor limit it is given up for a moment to
  // accept, answer and close the client at the head of the backlog (RefusePending).
  reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
  listen_fd_ = std::move(listen_fd);
  return loop()->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
}

void ClientAcceptor::Stop() {
  if (listen_fd_) loop()->Unwatch(listen_fd_.get());
  listen_fd_.reset();
  if (timer_ != 0) loop()->CancelTimer(timer_);
  timer_ = 0;
}

void ClientAcceptor::Closed(pid_t pid) {
  if (auto per = per_pid_.find(pid); per != per_pid_.end()) {
    if (--per->second == 0) per_pid_.erase(per);
  }
}

void ClientAcceptor::OnAccept() {
  // A bounded number per wake-up: the clients already connected get their turn in between.
  for (int round = 0; round < 64 && !paused_; ++round) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        RefusePending(err);
        break;
      }
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kAccept, &suppressed)) {
        log()->warn("accept: {}{}", std::strerror(err), SuppressedText(suppressed));
      }
      PauseAccepting();
      break;
    }
    if (Consider(std::move(fd)) == Admission::kStop) break;
  }
  clients().UpdateIdle();
}

ClientAcceptor::Admission ClientAcceptor::Consider(UniqueFd fd) {
  Result<ucred> cred = PeerCredentials(fd.get());
  if (!cred.ok()) {
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kAccept, &suppressed)) {
      log()->warn("{}; connection closed{}", cred.status().message(), SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  if (!PeerUidAllowed(*cred)) {
    ++ctx_->load.refused_other_uid;
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log()->warn("refused connection from uid {} pid {} (this broker serves uid {} only){}",
                  cred->uid, cred->pid, geteuid(), SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  if (Admission a = CheckClientCaps(fd.get(), cred->pid); a != Admission::kAdmit) return a;
  if (Status s = admit_(std::move(fd), cred->pid); !s.ok()) {
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

void ClientAcceptor::RefusePending(int accept_errno) {
  // The classic: give up the reserve descriptor, accept the client at the head of the backlog,
  // answer and close it, take the reserve again. Without it the listening socket would stay
  // readable and the loop spin on EMFILE.
  bool refused = false;
  if (reserve_fd_) {
    reserve_fd_.reset();
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
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
  if (paused_ || !listen_fd_) return;
  paused_ = true;
  loop()->Modify(listen_fd_.get(), 0);
  backoff_ms_ = backoff_ms_ == 0 ? 50 : std::min<int64_t>(backoff_ms_ * 2, 500);
  timer_ = loop()->AddTimer(backoff_ms_, [this] {
    timer_ = 0;
    paused_ = false;
    if (listen_fd_) loop()->Modify(listen_fd_.get(), EPOLLIN);
  });
}

}  // namespace via::broker
