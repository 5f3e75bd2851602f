// epoll_create, epoll_ctl, poll, ppoll, select, pselect, close, getsockopt: what a program sees of
// a socket whose routed connect is pending (pending_connect.h). Each hook passes straight through,
// after one relaxed load, in a process that never had a pending connect.
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>

#include "shim/export.h"
#include "shim/pending_connect.h"
#include "shim/real.h"

namespace via::shim {
namespace {

constinit LazyFn<int(int)> g_real_epoll_create = {"epoll_create", nullptr};
constinit LazyFn<int(int)> g_real_epoll_create1 = {"epoll_create1", nullptr};
constinit LazyFn<int(int, int, int, epoll_event*)> g_real_epoll_ctl = {"epoll_ctl", nullptr};
constinit LazyFn<int(pollfd*, nfds_t, int)> g_real_poll = {"poll", nullptr};
constinit LazyFn<int(pollfd*, nfds_t, int, size_t)> g_real_poll_chk = {"__poll_chk", nullptr};
constinit LazyFn<int(pollfd*, nfds_t, const timespec*, const sigset_t*)> g_real_ppoll = {"ppoll",
                                                                                         nullptr};
constinit LazyFn<int(pollfd*, nfds_t, const timespec*, const sigset_t*, size_t)> g_real_ppoll_chk =
    {"__ppoll_chk", nullptr};
constinit LazyFn<int(int, fd_set*, fd_set*, fd_set*, timeval*)> g_real_select = {"select", nullptr};
constinit LazyFn<int(int, fd_set*, fd_set*, fd_set*, const timespec*, const sigset_t*)>
    g_real_pselect = {"pselect", nullptr};
constinit LazyFn<int(int)> g_real_close = {"close", nullptr};
constinit LazyFn<int(int, int, int, void*, socklen_t*)> g_real_getsockopt = {"getsockopt", nullptr};

int RealClose(int fd) { return g_real_close(fd); }

bool Poll(pollfd* fds, nfds_t n, int timeout, int* ret) {
  if (timeout < 0) return PendingPoll(fds, n, nullptr, nullptr, ret);
  timespec ts{timeout / 1000, long(timeout % 1000) * 1000000};
  return PendingPoll(fds, n, &ts, nullptr, ret);
}

}  // namespace
}  // namespace via::shim

using namespace via::shim;

// Not a hot path (an event loop makes one instance): every instance is noted, so that a pending
// connect finds registrations made before it without looking at every descriptor.
VIA_EXPORT int epoll_create(int size) noexcept {
  int fd = g_real_epoll_create(size);
  NoteEpoll(fd);
  return fd;
}

VIA_EXPORT int epoll_create1(int flags) noexcept {
  int fd = g_real_epoll_create1(flags);
  NoteEpoll(fd);
  return fd;
}

VIA_EXPORT int epoll_ctl(int epfd, int op, int fd, epoll_event* ev) noexcept {
  int r;
  if (PendingEver() && PendingEpollCtl(epfd, op, fd, ev, &r)) return r;
  return g_real_epoll_ctl(epfd, op, fd, ev);
}

VIA_EXPORT int poll(pollfd* fds, nfds_t n, int timeout) {
  int r;
  if (PendingEver() && Poll(fds, n, timeout, &r)) return r;
  return g_real_poll(fds, n, timeout);
}

VIA_EXPORT int __poll_chk(pollfd* fds, nfds_t n, int timeout, size_t fdslen) {
  int r;
  if (PendingEver() && n <= fdslen / sizeof(pollfd) && Poll(fds, n, timeout, &r)) return r;
  return g_real_poll_chk(fds, n, timeout, fdslen);
}

VIA_EXPORT int ppoll(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask) {
  int r;
  if (PendingEver() && PendingPoll(fds, n, timeout, mask, &r)) return r;
  return g_real_ppoll(fds, n, timeout, mask);
}

VIA_EXPORT int __ppoll_chk(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask,
                           size_t fdslen) {
  int r;
  if (PendingEver() && n <= fdslen / sizeof(pollfd) && PendingPoll(fds, n, timeout, mask, &r)) {
    return r;
  }
  return g_real_ppoll_chk(fds, n, timeout, mask, fdslen);
}

VIA_EXPORT int select(int nfds, fd_set* rd, fd_set* wr, fd_set* ex, timeval* timeout) {
  int r;
  if (PendingEver()) {
    timespec ts;
    if (timeout != nullptr) ts = timespec{timeout->tv_sec, long(timeout->tv_usec) * 1000};
    if (PendingSelect(nfds, rd, wr, ex, timeout != nullptr ? &ts : nullptr, nullptr, &r)) {
      return r;
    }
  }
  return g_real_select(nfds, rd, wr, ex, timeout);
}

VIA_EXPORT int pselect(int nfds, fd_set* rd, fd_set* wr, fd_set* ex, const timespec* timeout,
                       const sigset_t* mask) {
  int r;
  if (PendingEver() && PendingSelect(nfds, rd, wr, ex, timeout, mask, &r)) return r;
  return g_real_pselect(nfds, rd, wr, ex, timeout, mask);
}

VIA_EXPORT int close(int fd) {
  if (PendingEver()) return PendingClose(fd, RealClose);
  return g_real_close(fd);
}

VIA_EXPORT int getsockopt(int fd, int level, int name, void* val, socklen_t* len) noexcept {
  int err;
  if (PendingEver() && level == SOL_SOCKET && name == SO_ERROR && val != nullptr &&
      len != nullptr && *len >= socklen_t(sizeof err) && PendingSoError(fd, &err)) {
    *static_cast<int*>(val) = err;
    *len = sizeof err;
    return 0;
  }
  return g_real_getsockopt(fd, level, name, val, len);
}
