// A SAM v3 session kept open on the event loop (I2P's outbound session, and one per listener),
// and the sockets to the SAM bridge that sessions and STREAM commands use.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"
#include "loop/event_loop.h"
#include "overlays/connect_op.h"
#include "overlays/overlay.h"

namespace via::overlays {

// A blocking TCP socket of the SAM bridge's family (a ConnectOp makes it non-blocking while it
// works and restores the flags).
Result<UniqueFd> SamSocket(const Overlay& bridge);
// A close-on-exec duplicate of `fd`: what a ConnectOp owns while the caller keeps `fd`.
Result<UniqueFd> DupFd(int fd);

// One SAM session: a control socket that ran HELLO + SESSION CREATE and stays open.
class SamSession {
 public:
  using DoneFn = std::function<void(const Status&)>;
  // SESSION CREATE may take 20 s (i2pd) or 40 s with 3-hop tunnels.
  static constexpr int kCreateTimeoutMs = 120000;
  // *loop and *bridge (the overlay whose endpoint is the SAM bridge) must outlive it.
  // `destination` is "TRANSIENT" or base64 private keys; `options` go to SESSION CREATE.
  SamSession(EventLoop* loop, const Overlay* bridge,
             std::vector<std::pair<std::string, std::string>> options, std::string id,
             std::string destination);
  ~SamSession();  // closes the control socket: the router deletes the session
  SamSession(const SamSession&) = delete;
  SamSession& operator=(const SamSession&) = delete;

  // `created` runs once with the result of SESSION CREATE; `lost` once if the router closes an
  // established session. Either may destroy this object.
  void Start(DoneFn created, DoneFn lost);

  const std::string& id() const { return id_; }
  bool ready() const { return ready_; }
  // The session's private keys as SESSION STATUS returned them (valid once ready).
  const std::string& private_keys() const { return private_keys_; }

 private:
  void OnControlEvent();

  EventLoop* loop_;
  const Overlay* bridge_;
  std::vector<std::pair<std::string, std::string>> options_;
  std::string id_;
  std::string destination_;
  UniqueFd ctl_;
  std::unique_ptr<ConnectOp> op_;
  bool watched_ = false;
  bool ready_ = false;
  std::string private_keys_;
  DoneFn lost_;
};

}  // namespace via::overlays
