#include "overlays/connect_op.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "common/proxy_connect.h"

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

namespace {

// The broker's handshakes (overlays::Handshake) as the machine proxy::Pump drives; keeps the
// Status of a refused Feed for its message.
struct PumpedHandshake {
  overlays::Handshake* h;
  Status failure;

  const uint8_t* output() const { return reinterpret_cast<const uint8_t*>(h->Output().data()); }
  size_t output_len() const { return h->Output().size(); }
  void Consumed(size_t n) { h->Consumed(n); }
  size_t WantRead() const { return h->WantRead(); }
  bool Done() const { return h->Done(); }
  bool LineMode() const { return h->LineMode(); }
  int Feed(const uint8_t* data, size_t n) {
    failure = h->Feed(data, n);
    return failure.code();
  }
};

}  // namespace

bool ConnectOp::PickEndpoint(sockaddr_storage* addr, socklen_t* len, std::string* why) {
  int domain = 0;
  bool v6only = false;
  proxy::SocketFamily(fd_.get(), domain_, &domain, &v6only);
  std::string all;
  for (const Endpoint& e : overlay_->endpoints()) {
    all += (all.empty() ? "" : ", ") + e.text;
    if (!proxy::ReachAs(domain, v6only, e.addr, e.len, addr, len)) continue;
    endpoint_ = role_ + " " + e.text;  // as the engine's messages name it
    return true;
  }
  char text[160];
  proxy::NoEndpointText(domain, !all.empty(), role_.c_str(), text, sizeof text);
  *why = text;
  if (!all.empty()) *why += " (" + all + ")";
  return false;
}

void ConnectOp::Start(DoneFn done) {
  done_ = std::move(done);
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string why;
  if (!PickEndpoint(&addr, &len, &why)) return Finish(EAFNOSUPPORT, why);

  char msg[512];
  if (int err = proxy::MakeNonBlocking(fd_.get(), &saved_flags_, msg, sizeof msg); err != 0) {
    return Finish(err, msg);
  }
  timer_ = loop_->AddTimer(timeout_ms(), [this] {
    timer_ = 0;
    OnTimeout();
  });

  phase_ = Phase::kConnecting;
  proxy::Step s = proxy::StartConnect(fd_.get(), ::connect, reinterpret_cast<sockaddr*>(&addr), len,
                                      endpoint_.c_str(), msg, sizeof msg);
  if (s.next == proxy::Next::kFailed) return Finish(s.err, msg);
  if (s.next == proxy::Next::kWaitWritable) {
    // A proxy on this host (the usual case: tor, i2pd, tailscaled) has completed the TCP
    // handshake by the time connect() returns, so skip the wait for writability (an epoll round
    // trip).
    tcp_info ti{};
    socklen_t tlen = sizeof ti;
    if (getsockopt(fd_.get(), IPPROTO_TCP, TCP_INFO, &ti, &tlen) != 0 ||
        ti.tcpi_state != TCP_ESTABLISHED) {
      return WaitFor(EPOLLOUT);
    }
  }
  phase_ = Phase::kHandshake;
  Pump();
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
    char msg[512];
    proxy::Step s = proxy::ConnectResult(fd_.get(), endpoint_.c_str(), msg, sizeof msg);
    if (s.next == proxy::Next::kFailed) return Finish(s.err, msg);
    phase_ = Phase::kHandshake;
  }
  if (phase_ == Phase::kHandshake) Pump();
}

void ConnectOp::OnTimeout() {
  char msg[512];
  proxy::TimeoutText(phase_ == Phase::kConnecting, endpoint_.c_str(), unsigned(timeout_ms()), msg,
                     sizeof msg);
  std::string why = msg;
  if (phase_ != Phase::kConnecting) why += handshake_->StallHint();
  Finish(ETIMEDOUT, why);
}

void ConnectOp::Pump() {
  PumpedHandshake hs{handshake_.get(), Status::Ok()};
  char msg[512];
  proxy::Step s = proxy::Pump(fd_.get(), hs, proxy::Reads::kTryFirst, false, endpoint_.c_str(), msg,
                              sizeof msg);
  switch (s.next) {
    case proxy::Next::kDone:
      return Finish(0, "");
    case proxy::Next::kWaitWritable:
      return WaitFor(EPOLLOUT);
    case proxy::Next::kWaitReadable:
      return WaitFor(EPOLLIN);
    case proxy::Next::kFailed:
      return Finish(s.err, msg);
    case proxy::Next::kHandshakeFailed:
      return Finish(hs.failure.code(), hs.failure.message());
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
