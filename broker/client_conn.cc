#include "broker/client_conn.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>

#include "common/wire.h"

namespace via::broker {

static_assert(ClientConn::kRequestEvents == (EPOLLIN | EPOLLRDHUP));

Result<ucred> PeerCredentials(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Status::FromErrno("SO_PEERCRED");
  }
  return cred;
}

bool PeerUidAllowed(const ucred& cred) { return cred.uid == geteuid(); }

void SendRefusal(int fd, const std::string& why, int err) {
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kReplyBit, 0);
  w.PutU32(wire::kTagErrno, uint32_t(err));
  w.PutString(wire::kTagMessage, why);
  if (w.ok()) send(fd, w.data(), w.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  // What the client sent already (its HELLO) is read and dropped: closing a socket with unread
  // data resets the connection, and the client would get ECONNRESET instead of the reason.
  for (int i = 0; i < 4; ++i) {
    char sink[256];
    int passed[kMaxFds];
    size_t npassed = 0;
    int msg_flags = 0;
    if (wire::ReceiveDatagram(fd, sink, sizeof sink, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, passed,
                              &npassed, &msg_flags) <= 0) {
      break;
    }
    for (size_t k = 0; k < npassed; ++k) close(passed[k]);
  }
}

ClientConn::Received ClientConn::Receive(std::vector<uint8_t>& buf, size_t* n,
                                         std::vector<UniqueFd>* fds, std::string* why) {
  int passed[kMaxFds];
  size_t npassed = 0;
  int msg_flags = 0;
  ssize_t r;
  do {
    r = wire::ReceiveDatagram(fd_.get(), buf.data(), buf.size(), MSG_DONTWAIT | MSG_CMSG_CLOEXEC,
                              passed, &npassed, &msg_flags);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Received::kAgain;
  if (r <= 0) return Received::kClosed;
  // Take ownership of every descriptor at once, so none can leak on any path.
  fds->clear();
  for (size_t i = 0; i < npassed; ++i) fds->emplace_back(passed[i]);
  if ((msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    *why = (msg_flags & MSG_TRUNC) ? wire::ParseErrorText(wire::ParseError::kTooLarge)
                                   : "the descriptors attached to the message did not fit (more "
                                     "than 4, or the broker is at its descriptor limit)";
    return Received::kTruncated;
  }
  *n = size_t(r);
  return Received::kMessage;
}

bool ClientConn::Send(const uint8_t* data, size_t n, UniqueFd fd) {
  if (outbox_.empty()) {
    ssize_t r = SendOne(data, n, fd.get());
    // Any other error than EAGAIN: the client is gone, and its end-of-file closes it.
    if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return false;
  }
  outbox_.Push(data, n, std::move(fd));
  return true;
}

// One datagram, with `fd` attached when >= 0, without waiting; retried on EINTR.
ssize_t ClientConn::SendOne(const uint8_t* data, size_t n, int fd) {
  ssize_t r;
  do {
    r = fd < 0 ? send(fd_.get(), data, n, MSG_NOSIGNAL | MSG_DONTWAIT)
               : wire::SendDatagram(fd_.get(), data, n, fd, MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  return r;
}

bool ClientConn::Flush() {
  while (!outbox_.empty()) {
    const auto& msg = outbox_.front();
    ssize_t r = SendOne(msg.data(), msg.size(), outbox_.front_fd());
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (r < 0) return false;
    outbox_.Pop();
  }
  return true;
}

bool ClientConn::UpdatePaused(size_t ops) {
  bool over = outbox_.Full() || ops >= kMaxOpsPerClient;
  if (over && !paused_) {
    paused_ = true;
    return true;
  }
  if (paused_ && outbox_.empty() && ops < kMaxOpsPerClient) paused_ = false;
  return false;
}

uint32_t ClientConn::WantedEvents() const {
  return (paused_ ? 0 : kRequestEvents) | (outbox_.empty() ? 0 : uint32_t(EPOLLOUT));
}

}  // namespace via::broker
