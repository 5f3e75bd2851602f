#include "broker/client_limits.h"

#include <dirent.h>

#include <algorithm>
#include <utility>

namespace via::broker {

void Outbox::Push(const uint8_t* data, size_t n, UniqueFd fd) {
  queue_.push_back({std::vector<uint8_t>(data, data + n), std::move(fd)});
  bytes_ += n;
}

void Outbox::Pop() {
  bytes_ -= queue_.front().bytes.size();
  queue_.pop_front();
}

ClientCaps ClientCaps::ForDescriptorLimit(uint64_t nofile) {
  ClientCaps c;
  // Descriptors the broker needs whatever its clients do: stdio, the log, epoll, signalfd, the
  // listening socket, the reserve descriptor, timers of the overlays...
  constexpr uint64_t kBase = 16;
  uint64_t usable = nofile > kBase ? nofile - kBase : 0;
  uint64_t keep = std::max<uint64_t>(32, usable / 4);
  uint64_t total = usable > keep ? usable - keep : 0;
  c.total = size_t(std::max<uint64_t>(total, 4));
  c.per_pid = std::max<size_t>(8, c.total / 4);
  c.ops = size_t(std::max<uint64_t>(8, keep - keep / 4));
  if (c.per_pid > c.total) c.per_pid = c.total;
  return c;
}

bool LogLimiter::Allow(int64_t now_ms, uint64_t* suppressed) {
  if (tokens_ < 0) {
    tokens_ = burst_;
    last_ms_ = now_ms;
  }
  if (now_ms > last_ms_) {
    tokens_ = std::min<double>(burst_, tokens_ + double(now_ms - last_ms_) * per_minute_ / 60000.0);
    last_ms_ = now_ms;
  }
  if (tokens_ < 1) {
    ++suppressed_;
    ++dropped_total_;
    return false;
  }
  tokens_ -= 1;
  if (suppressed != nullptr) *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

uint64_t NoisyLog::dropped() const {
  uint64_t n = 0;
  for (const LogLimiter& l : limits_) n += l.dropped();
  return n;
}

std::string SuppressedText(uint64_t n) {
  if (n == 0) return "";
  return " (" + std::to_string(n) + " similar line" + (n == 1 ? "" : "s") +
         " suppressed: too many)";
}

int OpenDescriptors() {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // the directory's own descriptor
}

}  // namespace via::broker
