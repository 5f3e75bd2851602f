#include "broker/process_info.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

namespace via::broker {

namespace {

bool ReadSmallFile(const std::string& path, std::string* out, size_t cap = 1 << 16) {
  int fd;
  do {
    fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return false;
  out->clear();
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, size_t(n));
    if (out->size() >= cap) break;
  }
  close(fd);
  return true;
}

}  // namespace

bool ParseStat(const std::string& text, pid_t* ppid, uint64_t* start) {
  size_t close = text.rfind(')');
  if (close == std::string::npos || close + 2 >= text.size()) return false;
  // After ") ": field 3 (state), 4 (ppid), ..., 22 (starttime).
  size_t pos = close + 2;
  int field = 3;
  long long ppid_v = -1;
  unsigned long long start_v = 0;
  bool have_start = false;
  while (pos < text.size() && field <= 22) {
    size_t end = text.find(' ', pos);
    if (end == std::string::npos) end = text.size();
    std::string tok = text.substr(pos, end - pos);
    char* e = nullptr;
    if (field == 4) {
      ppid_v = std::strtoll(tok.c_str(), &e, 10);
      if (e == tok.c_str() || *e != 0) return false;
    } else if (field == 22) {
      start_v = std::strtoull(tok.c_str(), &e, 10);
      if (e == tok.c_str() || *e != 0) return false;
      have_start = true;
    }
    pos = end + 1;
    ++field;
  }
  if (ppid_v < 0 || !have_start) return false;
  *ppid = pid_t(ppid_v);
  *start = start_v;
  return true;
}

ProcessInfo ReadProcess(pid_t pid, const std::string& proc_root) {
  ProcessInfo p;
  p.pid = pid;
  const std::string dir = proc_root + "/" + std::to_string(pid);
  std::string stat;
  if (!ReadSmallFile(dir + "/stat", &stat) || !ParseStat(stat, &p.ppid, &p.start)) return p;
  char buf[4096];
  ssize_t n = readlink((dir + "/exe").c_str(), buf, sizeof buf - 1);
  if (n > 0) p.exe.assign(buf, size_t(n));
  std::string cmdline;
  if (ReadSmallFile(dir + "/cmdline", &cmdline)) {
    size_t start = 0;
    while (start < cmdline.size()) {
      size_t end = cmdline.find('\0', start);
      if (end == std::string::npos) end = cmdline.size();
      p.argv.push_back(cmdline.substr(start, end - start));
      start = end + 1;
    }
  }
  // The process may have exited (and its pid been reused) while we read: read stat again.
  std::string again;
  pid_t ppid2 = 0;
  uint64_t start2 = 0;
  if (!ReadSmallFile(dir + "/stat", &again) || !ParseStat(again, &ppid2, &start2) ||
      start2 != p.start) {
    ProcessInfo gone;
    gone.pid = pid;
    return gone;
  }
  p.ppid = ppid2;  // may have changed by re-parenting; the newer value is the truth now
  p.ok = true;
  return p;
}

std::vector<ProcessInfo> Ancestry(pid_t pid, size_t max, const std::string& proc_root) {
  std::vector<ProcessInfo> chain;
  while (pid > 0 && chain.size() < max) {
    ProcessInfo p = ReadProcess(pid, proc_root);
    if (!p.ok) break;
    pid = p.ppid;
    chain.push_back(std::move(p));
  }
  return chain;
}

std::vector<pid_t> ChildrenOf(pid_t pid, const std::string& proc_root) {
  std::vector<pid_t> out;
  DIR* d = opendir(proc_root.c_str());
  if (d == nullptr) return out;
  while (dirent* de = readdir(d)) {
    char* end = nullptr;
    long n = std::strtol(de->d_name, &end, 10);
    if (n <= 0 || *end != 0) continue;
    std::string stat;
    pid_t ppid = 0;
    uint64_t start = 0;
    if (ReadSmallFile(proc_root + "/" + de->d_name + "/stat", &stat) &&
        ParseStat(stat, &ppid, &start) && ppid == pid) {
      out.push_back(pid_t(n));
    }
  }
  closedir(d);
  return out;
}

}  // namespace via::broker
