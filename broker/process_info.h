// What the kernel says about a process: /proc/PID/stat (parent, start time), /proc/PID/exe and
// /proc/PID/cmdline. The broker identifies its peers with these, never with what they send.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace via::broker {

struct ProcessInfo {
  pid_t pid = 0;
  pid_t ppid = 0;
  uint64_t start = 0;  // start time in clock ticks since boot: (pid, start) names one process
  std::string exe;     // readlink /proc/PID/exe ("" if unreadable, e.g. a kernel thread)
  std::vector<std::string> argv;
  bool ok = false;  // false: the process is gone (or /proc is not readable)
};

// Reads one process from `proc_root` (normally "/proc").
ProcessInfo ReadProcess(pid_t pid, const std::string& proc_root = "/proc");

// The process and its ancestors, `pid` first, up to (not including) pid 0; at most `max`.
// A process that vanishes mid-walk ends the chain there.
std::vector<ProcessInfo> Ancestry(pid_t pid, size_t max = 128,
                                  const std::string& proc_root = "/proc");

// The pids whose parent is `pid` now (a scan of /proc/*/stat).
std::vector<pid_t> ChildrenOf(pid_t pid, const std::string& proc_root = "/proc");

// Parses the text of /proc/PID/stat (the comm field may hold spaces and parentheses).
bool ParseStat(const std::string& text, pid_t* ppid, uint64_t* start);

}  // namespace via::broker
