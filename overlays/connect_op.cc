#include "overlays/connect_op.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace via::overlays {

ConnectOp::ConnectOp(EventLoop* loop, const Overlay* overlay, UniqueFd fd,
                     std::unique_ptr<Handshake> handshake)
    : loop_(loop),
      overlay_(overlay),
      role_(overlay->endpoint_role()),
      fd_(std::move(fd)),
      handshake_(std::move(handshake)) {}

ConnectOp::~ConnectOp() {
  if (phase_ != Phase::kFinished) Release();
}

bool ConnectOp::PickEndpoint(sockaddr_storage* addr, socklen_t* len, std::string* why) {
  int domain = domain_, v6only = 0;
  socklen_t optlen = sizeof domain;
  if (domain == 0) getsockopt(fd_.get(), SOL_SOCKET, SO_DOMAIN, &domain, &optlen);
  if (domain == AF_INET6) {
    optlen = sizeof v6only;
    getsockopt(fd_.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen);
  }
  std::string all;
  for (const Endpoint& e : overlay_->endpoints()) {
    all += (all.empty() ? "" : ", ") + e.text;
    int family = e.addr.ss_family;
    if (family == domain) {
      std::memcpy(addr, &e.addr, e.len);
      *len = e.len;
    } else if (family == AF_INET && domain == AF_INET6 && !v6only) {
      // An IPv6 socket reaches an IPv4 endpoint through its IPv4-mapped address.
      const auto* in = reinterpret_cast<const sockaddr_in*>(&e.addr);
      auto* in6 = reinterpret_cast<sockaddr_in6*>(addr);
      std::memset(addr, 0, sizeof *addr);
      in6->sin6_family = AF_INET6;
      in6->sin6_port = in->sin_port;
      in6->sin6_addr.s6_addr[10] = 0xff;
      in6->sin6_addr.s6_addr[11] = 0xff;
      std::memcpy(&in6->sin6_addr.s6_addr[12], &in->sin_addr, 4);
      *len = sizeof(sockaddr_in6);
    } else {
      continue;
    }
    endpoint_ = e.text;
    return true;
  }
  if (all.empty()) {
    *why = "the overlay has no " + role_ + " address";
  } else if (domain == AF_INET) {
    *why = "the program's socket is IPv4 (AF_INET) and the " + role_ +
           " has only IPv6 addresses (" + all + ")";
  } else {
    *why = "the program's socket is IPv6-only (IPV6_V6ONLY) and the " + role_ +
           " has only IPv4 addresses (" + all + ")";
  }
  return false;
}

void ConnectOp::Start(DoneFn done) {
  done_ = std::move(done);
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string why;
  if (!PickEndpoint(&addr, &len, &why)) return Finish(EAFNOSUPPORT, why);

  int flags = fcntl(fd_.get(), F_GETFL);
  if (flags < 0) return Finish(errno, std::string("fcntl(F_GETFL): ") + std::strerror(errno));
  saved_flags_ = flags;
  if ((flags & O_NONBLOCK) == 0 && fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return Finish(errno, std::string("fcntl(F_SETFL): ") + std::strerror(errno));
  }
  timer_ = loop_->AddTimer(timeout_ms_ > 0 ? timeout_ms_ : overlay_->connect_timeout_ms(), [this] {
    timer_ = 0;
    OnTimeout();
  });

  phase_ = Phase::kConnecting;
  if (connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0) {
    phase_ = Phase::kHandshake;
    return Pump();
  }
  if (errno != EINPROGRESS) {
    int err = errno;
    return Finish(err, "cannot connect to " + role_ + " " + endpoint_ + ": " + std::strerror(err));
  }
  // A proxy on this host (the usual case: tor, i2pd, tailscaled) has completed the TCP handshake
  // by the time connect() returns, so skip the wait for writability (an epoll round trip).
  tcp_info ti{};
  socklen_t tlen = sizeof ti;
  if (getsockopt(fd_.get(), IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0 &&
      ti.tcpi_state == TCP_ESTABLISHED) {
    phase_ = Phase::kHandshake;
    return Pump();
  }
  WaitFor(EPOLLOUT);
}

void ConnectOp::WaitFor(uint32_t events) {
  if (watched_ && events == watched_events_) return;
  Status s = watched_ ? loop_->Modify(fd_.get(), events)
                      : loop_->Watch(fd_.get(), events, [this](uint32_t ev) { OnEvent(ev); });
  if (!s.ok()) return Finish(s.code(), "cannot watch the socket: " + s.message());
  watched_ = true;
  watched_events_ = events;
}

void ConnectOp::OnEvent(uint32_t events) {
  (void)events;  // SO_ERROR and the socket calls themselves tell what happened
  if (phase_ == Phase::kConnecting) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
      return Finish(err,
                    "cannot connect to " + role_ + " " + endpoint_ + ": " + std::strerror(err));
    }
    phase_ = Phase::kHandshake;
  }
  if (phase_ == Phase::kHandshake) Pump();
}

void ConnectOp::OnTimeout() {
  const std::string ms =
      std::to_string(timeout_ms_ > 0 ? timeout_ms_ : overlay_->connect_timeout_ms());
  if (phase_ == Phase::kConnecting) {
    return Finish(ETIMEDOUT,
                  "no connection to " + role_ + " " + endpoint_ + " within " + ms + " ms");
  }
  Finish(ETIMEDOUT, role_ + " " + endpoint_ + " did not finish the handshake within " + ms + " ms");
}

void ConnectOp::Pump() {
  for (;;) {
    std::string_view out = handshake_->Output();
    if (!out.empty()) {
      ssize_t r = send(fd_.get(), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return WaitFor(EPOLLOUT);
      if (r < 0) {
        int err = errno;
        return Finish(err, "sending to " + role_ + " " + endpoint_ + ": " + std::strerror(err));
      }
      handshake_->Consumed(size_t(r));
      // The proxy cannot have answered what we just sent before it ran: wait for its reply
      // rather than try a read that would fail with EAGAIN.
      if (handshake_->Output().empty() && !handshake_->Done() && handshake_->WantRead() > 0) {
        return WaitFor(EPOLLIN);
      }
      continue;
    }
    if (handshake_->Done()) return Finish(0, "");
    size_t want = handshake_->WantRead();
    if (want == 0) return Finish(EPROTO, "the overlay handshake stalled (nothing to send or read)");
    // Exactly what the handshake asks for: the bytes after it belong to the program.
    uint8_t buf[512];
    size_t take = std::min(want, sizeof buf);
    if (handshake_->LineMode()) {
      // Peek, then take through the first '\n' only: what follows is the program's.
      ssize_t p = recv(fd_.get(), buf, take, MSG_DONTWAIT | MSG_PEEK);
      if (p > 0) {
        const void* nl = std::memchr(buf, '\n', size_t(p));
        take = nl == nullptr ? size_t(p) : size_t(static_cast<const uint8_t*>(nl) - buf) + 1;
      }
    }
    ssize_t r = recv(fd_.get(), buf, take, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return WaitFor(EPOLLIN);
    if (r < 0) {
      int err = errno;
      return Finish(err, "reading from " + role_ + " " + endpoint_ + ": " + std::strerror(err));
    }
    if (r == 0) {
      return Finish(ECONNRESET,
                    role_ + " " + endpoint_ + " closed the connection during the handshake");
    }
    Status st = handshake_->Feed(buf, size_t(r));
    if (!st.ok()) return Finish(st.code(), st.message());
  }
}

void ConnectOp::Finish(int err, const std::string& message) {
  if (phase_ == Phase::kFinished) return;
  phase_ = Phase::kFinished;
  Release();
  // Moved out first: the callback may destroy this op, and with it done_.
  DoneFn done = std::move(done_);
  done_ = nullptr;
  if (done) done(err, message);
}

void ConnectOp::Release() {
  if (watched_) loop_->Unwatch(fd_.get());
  watched_ = false;
  if (timer_ != 0) loop_->CancelTimer(timer_);
  timer_ = 0;
  if (saved_flags_ >= 0 && fd_) fcntl(fd_.get(), F_SETFL, saved_flags_);
  fd_.reset();
}

}  // namespace via::overlays
