// Non-blocking routed connects (pending_connect.cc; docs/architecture.md, "Non-blocking
// connects"): a routed `connect` on an O_NONBLOCK TCP socket returns EINPROGRESS at once, and a
// shim thread runs the SOCKS5 handshake on the program's own socket. While it runs the socket is
// *pending*: the hooks of hook_pending.cc hide its readiness from epoll, poll and select, and
// getsockopt(SO_ERROR), connect and getpeername answer as for a kernel connect in progress.
//
// Cost for a process that never has a pending connect: one relaxed load (PendingEver) in each
// hook that consults this module.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <time.h>

#include "common/wire.h"
#include "shim/socks5_plan.h"

namespace via::shim {

// Set by the first pending connect of this process (or of a parent before fork), never cleared.
extern bool g_pending_ever;
inline bool PendingEver() { return __atomic_load_n(&g_pending_ever, __ATOMIC_RELAXED); }

// A connect of the non-blocking TCP socket `fd` through the SOCKS5 proxy of `plan` to `name` (or
// `dest` when nullptr), port dest.port. 0: not taken (a blocking socket, or no room): the caller
// runs the blocking path. -1 with errno: EINPROGRESS (the handshake goes on in the shim's
// thread), or the failure of a connect that failed at once (said on stderr and REPORTed, as the
// blocking path does).
int StartPendingSocks5(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest);

// An epoll instance the program made (epoll_create hooks): a pending connect looks for the
// socket's registrations in these.
void NoteEpoll(int epfd);

// The same for a connect the broker runs (`handshake: broker`, I2P, Tailscale, routes by
// destination): CONNECT with the socket attached, in a thread of the shim; the broker's reply is
// the completion and the broker keeps the overlay's connect_timeout. A route to direct: the
// kernel then connects the socket to `sa` (the program's own address), and that ends it. 0: not
// taken; -1 with EINPROGRESS.
int StartPendingBroker(int fd, const wire::Addr& dest, const sockaddr* sa, socklen_t sa_len);

// `connect` again on a socket this module knows: true with the call's result in *ret (-1 with
// EALREADY while pending, the failure's errno after a failure, EISCONN once connected).
bool PendingConnectAgain(int fd, int* ret);
// getsockopt(SO_ERROR): true with *err when the socket is pending (0) or failed (its errno, once).
bool PendingSoError(int fd, int* err);
// getpeername: true while `fd` is pending (the caller answers ENOTCONN).
bool PendingNotConnected(int fd);
// A read or write (`flags`: its MSG_* flags) on `fd` while its connect is pending: true with
// errno EAGAIN on a non-blocking socket (or MSG_DONTWAIT), as the kernel's read or write of a
// connecting socket — no byte may go into the handshake; a socket made blocking since waits for
// the handshake's end and the call goes on (false). False at once in the shim's own threads and
// under its lock (its handshake's own reads and writes).
bool PendingIo(int fd, int flags);
inline bool PendingIoBlocked(int fd, int flags) { return PendingEver() && PendingIo(fd, flags); }
// epoll_ctl on a pending socket: true with the call's result in *ret (the registration is made
// with no events and restored when the handshake ends).
bool PendingEpollCtl(int epfd, int op, int fd, epoll_event* ev, int* ret);
// ppoll (poll: `mask` null) with a pending socket in the set: true with the call's result in *ret.
// `timeout` null waits for ever.
bool PendingPoll(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask, int* ret);
// pselect (select: `mask` null), the same way.
bool PendingSelect(int nfds, fd_set* rd, fd_set* wr, fd_set* ex, const timespec* timeout,
                   const sigset_t* mask, int* ret);
// exec: waits for this process's pending sockets that the new program would inherit (no
// FD_CLOEXEC) to finish, as a blocking connect would have (bounded by their deadlines): the
// thread that drives them does not survive exec.
void PendingWaitBeforeExec();
// close: `real_close` closes; when the program's last descriptor of a pending socket is gone, the
// handshake is dropped (the proxy sees the connection closed, nothing else).
int PendingClose(int fd, int (*real_close)(int));

}  // namespace via::shim
