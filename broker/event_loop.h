// EventLoop: one epoll loop with timers and signals (muduo's shape: poll, dispatch ready
// handlers, run expired timers). Registrations do not own their fd: the owner must Unwatch
// before closing it (an fd shared with another process would otherwise stay in the epoll set).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <unordered_map>

#include "common/status.h"
#include "common/unique_fd.h"

namespace via::broker {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;
  using Task = std::function<void()>;

  EventLoop() = default;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  Status Init();
  // Starts or changes watching `fd` for `events` (EPOLLIN/EPOLLOUT...).
  Status Watch(int fd, uint32_t events, Handler handler);
  Status Modify(int fd, uint32_t events);
  void Unwatch(int fd);

  // Runs `task` once after `ms` milliseconds; returns an id for CancelTimer.
  uint64_t AddTimer(int64_t ms, Task task);
  void CancelTimer(uint64_t id);

  // Runs until Quit().
  void Run();
  void Quit() { quit_ = true; }

 private:
  struct Registration {
    uint32_t generation;
    Handler handler;
  };
  int64_t NextTimeoutMs() const;
  void RunTimers();

  UniqueFd epoll_;
  bool quit_ = false;
  uint32_t generation_ = 0;
  std::unordered_map<int, Registration> regs_;
  uint64_t next_timer_ = 1;
  std::multimap<int64_t, uint64_t> deadlines_;  // deadline (ms, monotonic) -> timer id
  std::unordered_map<uint64_t, std::pair<std::multimap<int64_t, uint64_t>::iterator, Task>> timers_;
};

// Monotonic milliseconds.
int64_t NowMs();

}  // namespace via::broker
