// EventLoop: one epoll loop (muduo's shape: poll, dispatch ready handlers, run expired timers,
// run queued work). Single-threaded: every method must be called on the loop's thread.
//
// Registrations do not own their fd: the owner must Unwatch before closing it. (epoll tracks the
// open file description, and a socket received over SCM_RIGHTS is shared with the program, so a
// closed-but-registered fd would keep firing.)
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"

namespace via {

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

  // Runs `task` after the handlers of the current iteration (or the next one), e.g. to destroy
  // an object whose handler is still on the stack.
  void Post(Task task) { pending_.push_back(std::move(task)); }

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
  void RunPending();

  UniqueFd epoll_;
  bool quit_ = false;
  uint32_t generation_ = 0;
  std::unordered_map<int, Registration> regs_;
  uint64_t next_timer_ = 1;
  std::multimap<int64_t, uint64_t> deadlines_;  // deadline (ms, monotonic) -> timer id
  std::unordered_map<uint64_t, std::pair<std::multimap<int64_t, uint64_t>::iterator, Task>> timers_;
  std::vector<Task> pending_;
};

// Monotonic milliseconds.
int64_t NowMs();

}  // namespace via
