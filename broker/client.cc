#include "broker/client.h"

#include <unistd.h>

#include <cstdio>

namespace via::broker {

std::string ExePath(pid_t pid) {
  char path[64], buf[4096];
  std::snprintf(path, sizeof path, "/proc/%d/exe", int(pid));
  ssize_t n = readlink(path, buf, sizeof buf - 1);
  if (n <= 0) return "?";
  return std::string(buf, size_t(n));
}

std::string PeerText(const Client& c) {
  return "pid " + std::to_string(c.pid()) + " " + ExePath(c.pid());
}

}  // namespace via::broker
