// Strict mode's view of the command's processes from `via run` (tools/strict.h): their /proc
// files, their memory and their descriptors, as the seccomp notifications name them.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/kernel_sockaddr.h"
#include "common/unique_fd.h"
#include "common/wire.h"

namespace via::tools::strict {

// "<what>: <strerror(errno)>".
std::string Errno(const char* what);

// "1.2.3.4:80", "[::1]:80".
std::string AddrText(const wire::Addr& a);

// seccomp(2), which glibc does not wrap.
long Seccomp(unsigned op, unsigned flags, void* args);

// The first read of /proc/PID/`file` into `buf` (NUL-terminated); false when it cannot be read.
bool ReadProc(pid_t pid, const std::string& file, char* buf, size_t cap);

// The process (thread group) of thread `tid`: a notification names the calling thread, and
// pidfd_open wants a process.
pid_t ProcessOf(pid_t tid);

// Whether descriptor `fd` of process `pid` is close-on-exec (its fdinfo "flags:", octal).
bool CloseOnExec(pid_t pid, int fd);

// `len` bytes at `addr` in thread `tid`'s memory (process_vm_readv / process_vm_writev); false
// unless all of them moved.
bool ReadMemory(pid_t tid, uint64_t addr, void* out, size_t len);
bool WriteMemory(pid_t tid, uint64_t addr, const void* in, size_t len);

// A duplicate of a calling program's descriptor and what kind of socket it is.
struct CallerSocket {
  pid_t pid = 0;  // the caller's process (the notification names its thread)
  UniqueFd fd;
  int domain = 0, type = 0, protocol = 0;
  wire::SockKind kind() const { return wire::ClassifySocket(domain, type, protocol); }
};

// The pidfds of the command's processes, kept between notifications (a connect costs one
// pidfd_open less). Only by the pid of a thread-group leader: that pid is not reused while its
// process lives, and a pidfd of a process that is gone fails (ESRCH) and is replaced.
class PidfdCache {
 public:
  // The pidfd of thread `tid`'s process, and its pid in *pid; nullptr when it is gone. The
  // caller is usually its process's main thread, whose pidfd opens at once; another thread's
  // id is refused (EINVAL, or ENOENT since Linux 6.9) and its process looked up.
  std::shared_ptr<UniqueFd> Get(pid_t tid, pid_t* pid);
  void Forget(pid_t pid);

 private:
  std::mutex mu_;
  std::map<pid_t, std::shared_ptr<UniqueFd>> fds_;
};

// Takes descriptor `fd` of thread `tid`'s process (pidfd_getfd); false when it is not a socket
// (or gone). With `stream_only`, a socket that is not SOCK_STREAM is left at its type (one
// read: the caller lets the call run as made).
bool TakeSocket(PidfdCache& pidfds, pid_t tid, int fd, CallerSocket* out, bool stream_only = false);

}  // namespace via::tools::strict
