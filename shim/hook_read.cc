// read, readv, recv (and the _FORTIFY_SOURCE entry points __read_chk, __recv_chk,
// __recvfrom_chk, which libc would serve through its hidden names), write, writev, send: only
// for optimistic data (optimistic.h). A socket whose SOCKS5 replies are unread has them taken off
// before the program's first read; a write checks for a refusal that has already come. With no
// such socket in the process each hook costs one relaxed load before libc's function.
// recvfrom, recvmsg and recvmmsg are hook_recv.cc's; sendto, sendmsg and sendmmsg
// hook_connect.cc's.
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "shim/export.h"
#include "shim/optimistic.h"
#include "shim/pending_connect.h"
#include "shim/real.h"

using namespace via::shim;

namespace {

constinit LazyFn<ssize_t(int, void*, size_t)> g_real_read = {"read", nullptr};
constinit LazyFn<ssize_t(int, void*, size_t, size_t)> g_real_read_chk = {"__read_chk", nullptr};
constinit LazyFn<ssize_t(int, const iovec*, int)> g_real_readv = {"readv", nullptr};
constinit LazyFn<ssize_t(int, void*, size_t, int)> g_real_recv = {"recv", nullptr};
constinit LazyFn<ssize_t(int, void*, size_t, size_t, int)> g_real_recv_chk = {"__recv_chk",
                                                                              nullptr};
constinit LazyFn<ssize_t(int, void*, size_t, size_t, int, sockaddr*, socklen_t*)>
    g_real_recvfrom_chk = {"__recvfrom_chk", nullptr};
constinit LazyFn<ssize_t(int, const void*, size_t)> g_real_write = {"write", nullptr};
constinit LazyFn<ssize_t(int, const iovec*, int)> g_real_writev = {"writev", nullptr};
constinit LazyFn<ssize_t(int, const void*, size_t, int)> g_real_send = {"send", nullptr};

// The replies of an optimistic socket stand between the program and its first byte.
// A pending connect (pending_connect.h) stands before both: EAGAIN until it is done.
inline bool RepliesFirst(int fd, int flags) {
  if (PendingIoBlocked(fd, flags)) return true;
  return OptimisticAny() && OptimisticBeforeRead(fd, flags) != 0;
}

inline bool RefusedBeforeWrite(int fd, int flags = 0) {
  if (PendingIoBlocked(fd, flags)) return true;
  return OptimisticAny() && OptimisticBeforeWrite(fd) != 0;
}

}  // namespace

VIA_EXPORT ssize_t read(int fd, void* buf, size_t n) {
  if (RepliesFirst(fd, 0)) return -1;
  return g_real_read(fd, buf, n);
}

VIA_EXPORT ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen) {
  if (RepliesFirst(fd, 0)) return -1;
  return g_real_read_chk(fd, buf, n, buflen);
}

VIA_EXPORT ssize_t readv(int fd, const iovec* iov, int iovcnt) {
  if (RepliesFirst(fd, 0)) return -1;
  return g_real_readv(fd, iov, iovcnt);
}

VIA_EXPORT ssize_t recv(int fd, void* buf, size_t n, int flags) {
  if (RepliesFirst(fd, flags)) return -1;
  return g_real_recv(fd, buf, n, flags);
}

VIA_EXPORT ssize_t __recv_chk(int fd, void* buf, size_t n, size_t buflen, int flags) {
  if (RepliesFirst(fd, flags)) return -1;
  return g_real_recv_chk(fd, buf, n, buflen, flags);
}

VIA_EXPORT ssize_t __recvfrom_chk(int fd, void* buf, size_t n, size_t buflen, int flags,
                                  sockaddr* addr, socklen_t* len) {
  if (RepliesFirst(fd, flags)) return -1;
  return g_real_recvfrom_chk(fd, buf, n, buflen, flags, addr, len);
}

VIA_EXPORT ssize_t write(int fd, const void* buf, size_t n) {
  if (RefusedBeforeWrite(fd)) return -1;
  return g_real_write(fd, buf, n);
}

VIA_EXPORT ssize_t writev(int fd, const iovec* iov, int iovcnt) {
  if (RefusedBeforeWrite(fd)) return -1;
  return g_real_writev(fd, iov, iovcnt);
}

VIA_EXPORT ssize_t send(int fd, const void* buf, size_t n, int flags) {
  if (RefusedBeforeWrite(fd, flags)) return -1;
  return g_real_send(fd, buf, n, flags);
}
