// Optimistic data (`optimistic_data: true` on a network.socks5 entry, HELLO flag kFlagOptimistic):
// the shim's SOCKS5 connect returns as soon as the CONNECT request is written, so the program's
// first bytes follow the request without waiting for the proxy's reply (one round trip saved).
// The replies (method choice, credentials status, CONNECT reply) are then still on the socket,
// ahead of the target's bytes: the read hooks (hook_read.cc, hook_recv.cc) take them off before
// the program's first read returns anything, and a refusal becomes that read's error. See
// docs/architecture.md, "Optimistic data".
//
// The table of sockets whose replies are unread is keyed by descriptor number and validated by
// inode (a number closed and reused is never taken for the socket). A process that never made
// such a socket pays one relaxed atomic load per read or write hook (OptimisticAny); once every
// pending socket's replies are read, the count is back to 0 and so is the cost. While some are
// pending, a call on another descriptor costs one more relaxed load (a bitmap of the pending
// numbers) and takes no lock.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/socks5_client.h"
#include "common/wire.h"
#include "shim/socks5_plan.h"

namespace via::shim {

// Sockets whose replies are still unread (entries of the table, stale ones included).
extern int g_optimistic_pending;

// The hooks' fast path: false when no socket of this process waits for its replies.
inline bool OptimisticAny() {
  return __atomic_load_n(&g_optimistic_pending, __ATOMIC_RELAXED) != 0;
}

// As ShimSocks5Connect, but returns 0 once the CONNECT request is written (the greeting and
// credentials answered first when not pipelined) and remembers `fd` as waiting for its replies.
// Failures before that point (the proxy unreachable, a refused greeting) are returned as there.
int OptimisticConnect(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                      char* why, size_t whycap, char* msg, size_t msgcap);

// Remembers `fd`, on which `hs` has written the CONNECT request (hs.RequestSent()), as waiting
// for its replies, which the first read or write then takes (a handshake run elsewhere, such as
// a background connect, hands its socket over here). `overlay`, `name` (nullptr: by address) and
// `dest` name the connect in messages and REPORT; `deadline_ms` (MonotonicNs / 1e6) is when the
// replies are given up (connect_timeout). False when out of memory: the caller reads them itself.
bool OptimisticAdopt(int fd, const socks5::Client& hs, const char* overlay, const char* name,
                     const wire::Addr& dest, int64_t deadline_ms);

// Before a read on `fd` with MSG_* `flags` (MSG_DONTWAIT counts as a non-blocking socket): when
// the socket's replies are unread, reads them (and only them). 0: go on with the real call. -1
// with errno: EAGAIN (non-blocking, or SO_RCVTIMEO passed, and the replies are not all there),
// EINTR (a signal while waiting), or the refusal (ECONNREFUSED, ECONNRESET, ETIMEDOUT,
// EHOSTUNREACH, ENETUNREACH), said on stderr and REPORTed to the broker; the socket is then shut
// down and forgotten.
int OptimisticBeforeRead(int fd, int flags);

// Before a write on `fd`: reads the replies if they have all come (never waits), so that a
// refusal is this write's error; otherwise the write goes on behind the request. 0 or -1 with
// errno, as OptimisticBeforeRead.
int OptimisticBeforeWrite(int fd);

}  // namespace via::shim
