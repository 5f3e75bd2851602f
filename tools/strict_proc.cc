// Strict mode: see strict_proc.h.
#include "tools/strict_proc.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace via::tools::strict {

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

std::string AddrText(const wire::Addr& a) {
  char ip[INET6_ADDRSTRLEN] = "?";
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, ip, sizeof ip);
  return (a.family == 6 ? "[" + std::string(ip) + "]" : std::string(ip)) + ":" +
         std::to_string(a.port);
}

long Seccomp(unsigned op, unsigned flags, void* args) {
  return syscall(SYS_seccomp, op, flags, args);
}

bool ReadProc(pid_t pid, const std::string& file, char* buf, size_t cap) {
  std::string path = "/proc/" + std::to_string(pid) + "/" + file;
  UniqueFd f(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ssize_t n = f ? read(f.get(), buf, cap - 1) : -1;
  if (n <= 0) return false;
  buf[n] = 0;
  return true;
}

pid_t ProcessOf(pid_t tid) {
  char buf[4096];
  const char* tgid =
      ReadProc(tid, "status", buf, sizeof buf) ? std::strstr(buf, "\nTgid:") : nullptr;
  return tgid != nullptr ? pid_t(std::strtol(tgid + 6, nullptr, 10)) : tid;
}

bool CloseOnExec(pid_t pid, int fd) {
  char buf[512];
  if (!ReadProc(pid, "fdinfo/" + std::to_string(fd), buf, sizeof buf)) return false;
  const char* flags = std::strstr(buf, "flags:");
  return flags != nullptr && (std::strtoul(flags + 6, nullptr, 8) & O_CLOEXEC) != 0;
}

bool ReadMemory(pid_t tid, uint64_t addr, void* out, size_t len) {
  iovec local{out, len}, remote{reinterpret_cast<void*>(addr), len};
  return process_vm_readv(tid, &local, 1, &remote, 1, 0) == ssize_t(len);
}

bool WriteMemory(pid_t tid, uint64_t addr, const void* in, size_t len) {
  iovec local{const_cast<void*>(in), len}, remote{reinterpret_cast<void*>(addr), len};
  return process_vm_writev(tid, &local, 1, &remote, 1, 0) == ssize_t(len);
}

std::shared_ptr<UniqueFd> PidfdCache::Get(pid_t tid, pid_t* pid) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = fds_.find(tid); it != fds_.end()) {
      *pid = tid;
      return it->second;
    }
  }
  *pid = tid;
  UniqueFd fd(int(syscall(SYS_pidfd_open, tid, 0)));
  if (!fd) {
    *pid = ProcessOf(tid);
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = fds_.find(*pid); it != fds_.end()) return it->second;
    fd.reset(int(syscall(SYS_pidfd_open, *pid, 0)));
  }
  if (!fd) return nullptr;
  auto shared = std::make_shared<UniqueFd>(std::move(fd));
  std::lock_guard<std::mutex> lock(mu_);
  if (fds_.size() >= 4096) fds_.clear();
  fds_[*pid] = shared;
  return shared;
}

void PidfdCache::Forget(pid_t pid) {
  std::lock_guard<std::mutex> lock(mu_);
  fds_.erase(pid);
}

bool TakeSocket(PidfdCache& pidfds, pid_t tid, int fd, CallerSocket* out, bool stream_only) {
  for (int attempt = 0; attempt < 2 && !out->fd; ++attempt) {
    std::shared_ptr<UniqueFd> pidfd = pidfds.Get(tid, &out->pid);
    if (!pidfd) return false;
    out->fd.reset(int(syscall(SYS_pidfd_getfd, pidfd->get(), fd, 0)));
    if (!out->fd && errno != ESRCH) return false;  // EBADF: not open
    if (!out->fd) pidfds.Forget(out->pid);         // a cached process that is gone
  }
  socklen_t len = sizeof(int);
  if (!out->fd || getsockopt(out->fd.get(), SOL_SOCKET, SO_TYPE, &out->type, &len) != 0) {
    return false;
  }
  if (stream_only && out->type != SOCK_STREAM) return true;
  return getsockopt(out->fd.get(), SOL_SOCKET, SO_DOMAIN, &out->domain, &len) == 0 &&
         getsockopt(out->fd.get(), SOL_SOCKET, SO_PROTOCOL, &out->protocol, &len) == 0;
}

}  // namespace via::tools::strict
