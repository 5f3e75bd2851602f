#include "loop/event_loop.h"

#include <sys/epoll.h>
#include <time.h>

#include <cerrno>
#include <vector>

namespace via {

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

Status EventLoop::Init() {
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return Status::FromErrno("epoll_create1");
  return Status::Ok();
}

Status EventLoop::Watch(int fd, uint32_t events, Handler handler) {
  auto it = regs_.find(fd);
  if (it != regs_.end()) {
    it->second.handler = std::move(handler);
    return Modify(fd, events);
  }
  uint32_t gen = ++generation_;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = (uint64_t(gen) << 32) | uint32_t(fd);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return Status::FromErrno("epoll_ctl");
  regs_[fd] = Registration{gen, std::move(handler)};
  return Status::Ok();
}

Status EventLoop::Modify(int fd, uint32_t events) {
  auto it = regs_.find(fd);
  if (it == regs_.end()) return Status::Error(ENOENT, "fd not watched");
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = (uint64_t(it->second.generation) << 32) | uint32_t(fd);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return Status::FromErrno("epoll_ctl");
  return Status::Ok();
}

void EventLoop::Unwatch(int fd) {
  if (regs_.erase(fd) > 0) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

uint64_t EventLoop::AddTimer(int64_t ms, Task task) {
  uint64_t id = next_timer_++;
  auto pos = deadlines_.emplace(NowMs() + ms, id);
  timers_.emplace(id, std::make_pair(pos, std::move(task)));
  return id;
}

void EventLoop::CancelTimer(uint64_t id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  deadlines_.erase(it->second.first);
  timers_.erase(it);
}

int64_t EventLoop::NextTimeoutMs() const {
  if (!pending_.empty()) return 0;
  if (deadlines_.empty()) return -1;
  int64_t d = deadlines_.begin()->first - NowMs();
  return d < 0 ? 0 : d;
}

void EventLoop::RunTimers() {
  int64_t now = NowMs();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    uint64_t id = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = timers_.find(id);
    Task task = std::move(it->second.second);
    timers_.erase(it);
    task();
  }
}

void EventLoop::RunPending() {
  // Tasks may queue more tasks; those run on the next iteration.
  std::vector<Task> tasks;
  tasks.swap(pending_);
  for (Task& t : tasks) t();
}

void EventLoop::Run() {
  std::vector<epoll_event> events(64);
  while (!quit_) {
    int n = epoll_wait(epoll_.get(), events.data(), int(events.size()), int(NextTimeoutMs()));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n && !quit_; ++i) {
      int fd = int(uint32_t(events[i].data.u64));
      uint32_t gen = uint32_t(events[i].data.u64 >> 32);
      auto it = regs_.find(fd);
      // The fd may have been unwatched (or re-registered) by an earlier handler in this batch.
      if (it == regs_.end() || it->second.generation != gen) continue;
      Handler h = it->second.handler;  // the handler may unwatch itself
      h(events[i].events);
    }
    RunTimers();
    RunPending();
  }
}

}  // namespace via
