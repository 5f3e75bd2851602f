#include "overlays/ready_waiters.h"

#include <utility>

namespace via::overlays {

ReadyWaiters::~ReadyWaiters() {
  for (auto& [id, w] : waiters_) {
    if (w.timer != 0) loop_->CancelTimer(w.timer);
  }
}

uint64_t ReadyWaiters::Add(DoneFn done, int64_t timeout_ms, std::function<Status()> timed_out) {
  const uint64_t id = next_++;
  Waiter& w = waiters_[id];
  w.done = std::move(done);
  w.timer = loop_->AddTimer(timeout_ms, [this, id, timed_out = std::move(timed_out)] {
    auto it = waiters_.find(id);
    if (it == waiters_.end()) return;
    DoneFn fn = std::move(it->second.done);
    waiters_.erase(it);
    fn(timed_out());
  });
  return id;
}

void ReadyWaiters::Cancel(uint64_t id) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  if (it->second.timer != 0) loop_->CancelTimer(it->second.timer);
  waiters_.erase(it);
}

void ReadyWaiters::FinishAll(const Status& s) {
  // Moved out first: a callback may add a waiter (a retry) or destroy what owns this.
  EventLoop* loop = loop_;
  std::map<uint64_t, Waiter> waiters;
  waiters.swap(waiters_);
  for (auto& [id, w] : waiters) {
    if (w.timer != 0) loop->CancelTimer(w.timer);
    w.done(s);
  }
}

}  // namespace via::overlays
