// ConnectOp: one routed connect. Drives the program's own socket (the broker's duplicate of it,
// received with SCM_RIGHTS) to the overlay's endpoint and through the overlay's handshake, as a
// state machine on the EventLoop, without ever blocking the loop (the steps are
// common/proxy_connect.h, shared with the shim; the waiting is the loop's):
//
//   connect (non-blocking) -> wait writable -> SO_ERROR -> write Output() / read exactly
//   WantRead() bytes / Feed ... until Done() -> restore the file status flags -> close the dup
//
// No byte after the handshake is ever read: it belongs to the program.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/unique_fd.h"
#include "loop/event_loop.h"
#include "overlays/handshake.h"
#include "overlays/overlay.h"

namespace via::overlays {

class ConnectOp {
 public:
  // Called exactly once with 0 or an errno and a message (empty on success), unless the op is
  // destroyed first. The op is finished by then (flags restored, duplicate closed), so the
  // callback may destroy it.
  using DoneFn = std::function<void(int err, const std::string& message)>;

  // *loop and *overlay must outlive the op. `fd` is the broker's duplicate of the program's
  // socket, already checked to be a TCP socket (or a socket of the overlay's own).
  ConnectOp(EventLoop* loop, const Overlay* overlay, UniqueFd fd,
            std::unique_ptr<Handshake> handshake);
  // Cancels an unfinished op: unwatches, cancels the timer, restores the flags, closes the dup.
  ~ConnectOp();
  ConnectOp(const ConnectOp&) = delete;
  ConnectOp& operator=(const ConnectOp&) = delete;

  // Starts connecting. `done` may run before Start returns (e.g. no usable endpoint).
  void Start(DoneFn done);
  // The socket's family (SO_DOMAIN) when the caller already asked the kernel; saves asking again.
  void set_domain(int domain) { domain_ = domain; }
  // Replaces the overlay's connect_timeout for this op (before Start), e.g. for I2P's SESSION
  // CREATE, which takes 20 s on i2pd.
  void set_timeout_ms(int ms) { timeout_ms_ = ms; }

 private:
  enum class Phase { kIdle, kConnecting, kHandshake, kFinished };

  // Picks the first endpoint the socket can reach; false if none.
  bool PickEndpoint(sockaddr_storage* addr, socklen_t* len, std::string* why);
  void OnEvent(uint32_t events);
  void OnTimeout();
  // Moves handshake bytes until the socket would block, the handshake is done, or it fails.
  void Pump();
  void WaitFor(uint32_t events);
  void Finish(int err, const std::string& message);
  void Release();  // unwatch, cancel the timer, restore flags, close
  int timeout_ms() const { return timeout_ms_ > 0 ? timeout_ms_ : overlay_->connect_timeout_ms(); }

  EventLoop* loop_;
  const Overlay* overlay_;
  const std::string role_;  // the endpoint in messages: "proxy", "SAM bridge"...
  UniqueFd fd_;
  std::unique_ptr<Handshake> handshake_;
  DoneFn done_;
  Phase phase_ = Phase::kIdle;
  int domain_ = 0;        // 0: not known yet
  std::string endpoint_;  // for messages, with the role: "proxy 127.0.0.1:9050"
  int saved_flags_ = -1;  // -1 until changed
  bool watched_ = false;
  uint32_t watched_events_ = 0;
  uint64_t timer_ = 0;
  int timeout_ms_ = 0;  // 0: the overlay's connect_timeout
};

}  // namespace via::overlays
