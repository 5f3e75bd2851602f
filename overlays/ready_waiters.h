// ReadyWaiters: the connects waiting for an overlay to get ready (I2P's outbound session, a
// Tailscale node), each bounded by a timer on the loop. Overlay::WhenReady/CancelWait of every
// overlay with a readiness of its own are built on it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>

#include "common/status.h"
#include "loop/event_loop.h"

namespace via::overlays {

class ReadyWaiters {
 public:
  using DoneFn = std::function<void(const Status&)>;

  // *loop must outlive this.
  explicit ReadyWaiters(EventLoop* loop) : loop_(loop) {}
  // Cancels the timers; no waiter is called.
  ~ReadyWaiters();
  ReadyWaiters(const ReadyWaiters&) = delete;
  ReadyWaiters& operator=(const ReadyWaiters&) = delete;

  // Adds a waiter; returns its id (never 0). If it is still waiting after `timeout_ms`, it is
  // removed and called with `timed_out()`, evaluated then.
  uint64_t Add(DoneFn done, int64_t timeout_ms, std::function<Status()> timed_out);
  // Removes a waiter without calling it; unknown ids are ignored.
  void Cancel(uint64_t id);
  // Calls every waiter with `s` and removes it. A waiter added by one of the calls stays.
  void FinishAll(const Status& s);

 private:
  struct Waiter {
    DoneFn done;
    uint64_t timer = 0;
  };
  EventLoop* loop_;
  std::map<uint64_t, Waiter> waiters_;
  uint64_t next_ = 1;
};

}  // namespace via::overlays
