#include "overlays/i2p/sam_session.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "overlays/i2p/sam.h"

namespace via::overlays {

Result<UniqueFd> SamSocket(const Overlay& bridge) {
  int family = bridge.endpoints().empty() ? AF_INET : bridge.endpoints()[0].addr.ss_family;
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket");
  return fd;
}

Result<UniqueFd> DupFd(int fd) {
  UniqueFd d(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!d) return Status::FromErrno("dup");
  return d;
}

SamSession::SamSession(EventLoop* loop, const Overlay* bridge,
                       std::vector<std::pair<std::string, std::string>> options, std::string id,
                       std::string destination)
    : loop_(loop),
      bridge_(bridge),
      options_(std::move(options)),
      id_(std::move(id)),
      destination_(std::move(destination)) {}

SamSession::~SamSession() {
  op_.reset();
  if (watched_) loop_->Unwatch(ctl_.get());
}

void SamSession::Start(DoneFn created, DoneFn lost) {
  lost_ = std::move(lost);
  auto hs = sam::NewSessionHandshake(id_, destination_, options_);
  if (!hs.ok()) return created(hs.status());
  sam::LineHandshake* line = hs->get();
  auto fd = SamSocket(*bridge_);
  if (!fd.ok()) return created(fd.status());
  ctl_ = std::move(*fd);
  auto dup = DupFd(ctl_.get());
  if (!dup.ok()) return created(dup.status());
  op_ = std::make_unique<ConnectOp>(loop_, bridge_, std::move(*dup), std::move(*hs));
  op_->set_timeout_ms(kCreateTimeoutMs);
  op_->Start([this, line, created](int err, const std::string& msg) {
    if (err != 0) {
      loop_->Post([op = std::shared_ptr<ConnectOp>(std::move(op_))] {});
      return created(Status::Error(err, msg));
    }
    const std::string* dest = line->last_reply().Get("DESTINATION");
    private_keys_ = dest == nullptr ? "" : *dest;
    loop_->Post([op = std::shared_ptr<ConnectOp>(std::move(op_))] {});
    // The session lives as long as this socket; a hang-up means the router dropped it.
    Status w =
        loop_->Watch(ctl_.get(), EPOLLIN | EPOLLRDHUP, [this](uint32_t) { OnControlEvent(); });
    if (!w.ok()) return created(w);
    watched_ = true;
    ready_ = true;
    created(Status::Ok());
  });
}

void SamSession::OnControlEvent() {
  char buf[512];
  ssize_t n = recv(ctl_.get(), buf, sizeof buf, MSG_DONTWAIT);
  if (n > 0) return;  // nothing is expected here; ignore it
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  std::string why =
      n == 0 ? "the SAM bridge closed the session's control socket"
             : std::string("the session's control socket failed: ") + std::strerror(errno);
  loop_->Unwatch(ctl_.get());
  watched_ = false;
  ready_ = false;
  DoneFn lost = std::move(lost_);
  lost_ = nullptr;
  if (lost) lost(Status::Error(ECONNRESET, why));
}

}  // namespace via::overlays
