// What one client connection may make the broker hold or write (docs/protocol.md, "Limits"):
// the replies queued for a client that does not read them, how many connections one program
// and all programs together may hold, and how often a client can make the broker write a log
// line. Pure bookkeeping, no I/O: tests/unit/client_limits_test.cc.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "common/unique_fd.h"

namespace via::broker {

// Replies waiting for a client to read them. Past the bound (Full) the broker stops reading that
// client's requests (backpressure: they wait in the kernel's socket buffer, whose size the
// kernel bounds) until the queue is empty again; other clients are served meanwhile.
class Outbox {
 public:
  static constexpr size_t kMaxCount = 64;          // replies
  static constexpr size_t kMaxBytes = 256 * 1024;  // bytes of replies

  // `fd`, when valid, goes out attached to the reply (SCM_RIGHTS) and is closed once sent.
  void Push(const uint8_t* data, size_t n, UniqueFd fd = UniqueFd());
  const std::vector<uint8_t>& front() const { return queue_.front().bytes; }
  int front_fd() const { return queue_.front().fd.get(); }
  void Pop();
  bool empty() const { return queue_.empty(); }
  size_t size() const { return queue_.size(); }
  size_t bytes() const { return bytes_; }
  // Stop reading requests: the queue is at its bound. (One reply past the bound may be queued:
  // a request already read is always answered, and a reply is at most 64 KiB.)
  bool Full() const { return queue_.size() >= kMaxCount || bytes_ >= kMaxBytes; }

 private:
  struct Entry {
    std::vector<uint8_t> bytes;
    UniqueFd fd;
  };
  std::deque<Entry> queue_;
  size_t bytes_ = 0;
};

// Requests that hold a descriptor or a timer in the broker (CONNECT, a remote RESOLVE) one
// connection may have in flight before the broker stops reading its requests. A shim has one.
constexpr size_t kMaxOpsPerClient = 64;

// How many client connections the broker keeps, derived from its descriptor limit: every client
// holds one descriptor, and a quarter of them (at least 32) stay for what clients ask for
// (CONNECT's duplicate of the program's socket, DNS responders, listeners, the overlays' own
// sockets), most of them for connects in flight. One process (SO_PEERCRED pid) may hold a
// quarter of the clients (at least 8): a shim opens one connection per thread.
struct ClientCaps {
  size_t total = 0;
  size_t per_pid = 0;
  // CONNECTs (and remote resolves) in flight over all clients: each holds a descriptor. Past it
  // a CONNECT is answered EAGAIN at once.
  size_t ops = 0;
  static ClientCaps ForDescriptorLimit(uint64_t nofile);
};

// A token bucket per kind of log line a client can trigger again and again (framing errors,
// refused connections, failed connects...): `burst` lines at once, then `per_minute`.
class LogLimiter {
 public:
  LogLimiter(int burst = 20, int per_minute = 60) : burst_(burst), per_minute_(per_minute) {}
  // True if a line may be written at `now_ms`; *suppressed then gets how many were dropped since
  // the last one that was written (to say so in that line).
  bool Allow(int64_t now_ms, uint64_t* suppressed);
  uint64_t dropped() const { return dropped_total_; }

 private:
  int burst_, per_minute_;
  double tokens_ = -1;  // < 0: not started (full)
  int64_t last_ms_ = 0;
  uint64_t suppressed_ = 0;
  uint64_t dropped_total_ = 0;
};

// The kinds of log line a client can trigger repeatedly, each with its own LogLimiter.
enum class Noisy { kAccept, kRefused, kMalformed, kConnectFailed, kDns, kSession, kOther, kCount };
class NoisyLog {
 public:
  // DNS lines are an audit of what programs looked up: a larger allowance (200, then 10 a
  // second).
  NoisyLog() { limits_[size_t(Noisy::kDns)] = LogLimiter(200, 600); }
  // As LogLimiter::Allow for lines of `kind`.
  bool Allow(Noisy kind, int64_t now_ms, uint64_t* suppressed) {
    return limits_[size_t(kind)].Allow(now_ms, suppressed);
  }
  // Lines dropped since start, over all kinds.
  uint64_t dropped() const;

 private:
  LogLimiter limits_[size_t(Noisy::kCount)];
};

// " (N similar lines suppressed)" or "".
std::string SuppressedText(uint64_t n);

// Descriptors this process has open (entries of /proc/self/fd), or -1.
int OpenDescriptors();

}  // namespace via::broker
