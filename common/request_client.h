// RequestClient: the client side of the broker protocol (docs/protocol.md), the one used by the
// shim (shim/broker_link.cc) and the command line (tools/broker_client.cc). It connects to the
// broker's socket, sends a request (with a descriptor attached, SCM_RIGHTS) and waits for the
// reply with the request's id until a deadline, skipping stale replies and receiving the
// descriptors a reply carries. Header-only, libc only, no heap, no exceptions, no signals of its
// own: the shim runs it inside arbitrary programs. What a failure means for the connection
// (reconnect, greet again) is the caller's: the shim keeps one link per thread on top of it, the
// command line one connection per BrokerClient.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/wire.h"

namespace via::wire {

// CLOCK_MONOTONIC in nanoseconds: deadlines are points on it.
inline int64_t ClockNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The deadline `ms` milliseconds from now.
inline int64_t DeadlineInMs(int64_t ms) { return ClockNs() + ms * 1000000; }

// Milliseconds left until `deadline_ns`, at least 0 (a poll timeout).
inline int LeftMs(int64_t deadline_ns) {
  int64_t left = (deadline_ns - ClockNs()) / 1000000;
  return left < 0 ? 0 : left > 0x7fffffff ? 0x7fffffff : int(left);
}

// Sleeps `ms` (or less), restarting after signals.
inline void SleepMs(int64_t ms) {
  timespec ts{time_t(ms / 1000), long((ms % 1000) * 1000000)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Connects the non-blocking SOCK_SEQPACKET socket `fd` to the broker at `sun` (`len` bytes: a
// path or an abstract address), calling `connect_fn(fd, sockaddr*, socklen_t)` (the shim passes
// libc's real connect, past its own hook). A full backlog (a stopped or flooded broker: EAGAIN at
// once, since the socket is non-blocking) is tried again, with pauses of up to 100 ms, until
// `deadline_ns`. 0, ETIMEDOUT when the backlog stayed full, or connect's errno.
template <typename ConnectFn>
int ConnectUntil(int fd, const sockaddr_un& sun, socklen_t len, int64_t deadline_ns,
                 ConnectFn connect_fn) {
  int64_t pause_ms = 1;
  for (;;) {
    if (connect_fn(fd, reinterpret_cast<const sockaddr*>(&sun), len) == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return errno;
    const int left = LeftMs(deadline_ns);
    if (left == 0) return ETIMEDOUT;
    SleepMs(pause_ms < left ? pause_ms : left);
    pause_ms = pause_ms * 2 > 100 ? 100 : pause_ms * 2;
  }
}

// What a reply says: its ERRNO (0: the broker said yes; EPROTO when the field is missing) and,
// in *message, its MESSAGE, or a null view (data() == nullptr) when the reply has none: the
// caller words the errno itself then.
inline int ReplyErrno(const Message& m, std::string_view* message) {
  Field f;
  uint32_t err = EPROTO;
  if (m.Find(kTagErrno, &f)) f.u32(&err);
  *message = m.Find(kTagMessage, &f) ? f.str() : std::string_view();
  return static_cast<int>(err);
}

// Where RequestClient::Call puts a reply: the caller's buffer (`cap` bytes; a reply that does not
// fit is an error, never read cut short) and room for the descriptors attached to it. After a
// successful Call, `message` is a parsed view of `buf` and fds[0..nfds) are the descriptors the
// reply carried, owned by the caller (close-on-exec). Descriptors beyond `fdcap` (0: the caller
// expects none) are closed. After a failed Call, `error` says why in words (static text).
struct Reply {
  static constexpr size_t kMaxFds = 4;  // more on one reply is malformed

  uint8_t* buf = nullptr;
  size_t cap = 0;
  size_t fdcap = 0;

  Message message;
  size_t len = 0;
  int fds[kMaxFds] = {-1, -1, -1, -1};
  size_t nfds = 0;
  const char* error = "";

  Reply(uint8_t* b, size_t c, size_t fd_room = 0)
      : buf(b), cap(c), fdcap(fd_room < kMaxFds ? fd_room : kMaxFds) {}
};

// One connection's request/reply exchange: the request ids and the wait for each reply. Does not
// own `fd` (the caller opens and closes it); a non-blocking socket keeps a broker that does not
// read from blocking a send. Not thread-safe: one caller at a time.
class RequestClient {
 public:
  constexpr RequestClient() = default;
  constexpr explicit RequestClient(int fd) : fd_(fd) {}

  int fd() const { return fd_; }
  // The connection to use from now on (or none: -1). Ids go on counting: an id is never used
  // twice by one client.
  void set_fd(int fd) { fd_ = fd; }
  // The id of the next request: a Writer is built with it.
  uint32_t NextId() { return next_id_++; }

  // Sends the request `w` (built with an id from NextId), with `pass_fd` attached when >= 0, and
  // waits until `deadline_ns` for its reply: a message with the request's id, or with id 0 (what
  // a broker that refuses the connection sends before closing it). Replies with other ids answer
  // earlier requests the caller gave up on: they are read and dropped. When the broker closed the
  // connection before the request could be sent (EPIPE, ECONNRESET), a refusal it left is the
  // reply. Returns 0 (then *reply holds the parsed message) or an errno with reply->error:
  // ETIMEDOUT, ECONNRESET (the broker closed the connection), EPROTO (a reply that is malformed,
  // larger than reply->cap or with more descriptors than Reply::kMaxFds), or the errno of the
  // failing system call (reply->error then names the step: "sending to the broker"...). Signals
  // restart every wait; the deadline holds across them.
  int Call(const Writer& w, int pass_fd, int64_t deadline_ns, Reply* reply) {
    reply->error = "";
    reply->nfds = 0;
    if (int err = Send(w, pass_fd, deadline_ns); err != 0) {
      if ((err == EPIPE || err == ECONNRESET) && Receive(0, reply, /*refusal_only=*/true) == 0) {
        return 0;
      }
      if (err == ETIMEDOUT) {
        return Fail(reply, err, "no room to send the request before the deadline");
      }
      return Fail(reply, err, "sending to the broker");
    }
    return Await(GetLE32(w.data() + 8), deadline_ns, reply);
  }

  // Waits until `deadline_ns` for the reply to the request with id `want_id`, sent before (Post):
  // as Call, without the send.
  int Await(uint32_t want_id, int64_t deadline_ns, Reply* reply) {
    reply->error = "";
    reply->nfds = 0;
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      int ready = poll(&p, 1, LeftMs(deadline_ns));
      if (ready == 0) return Fail(reply, ETIMEDOUT, "no reply before the deadline");
      if (ready < 0) {
        if (errno == EINTR) continue;
        return Fail(reply, errno, "waiting for the broker");
      }
      int err = Receive(want_id, reply, false);
      if (err == EAGAIN) continue;  // a stale reply, or nothing after all
      return err;
    }
  }

  // Sends `w` with no reply expected and without waiting (REPORT): false when it could not be
  // sent at once (a full link drops it).
  bool Post(const Writer& w) {
    return send(fd_, w.data(), w.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
           static_cast<ssize_t>(w.size());
  }

 private:
  static int Fail(Reply* reply, int err, const char* why) {
    reply->error = why;
    return err;
  }

  // Sends `w` (non-blocking socket: waits for room until the deadline). 0 or an errno.
  int Send(const Writer& w, int pass_fd, int64_t deadline_ns) {
    for (;;) {
      if (SendDatagram(fd_, w.data(), w.size(), pass_fd) >= 0) return 0;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
      pollfd p{fd_, POLLOUT, 0};
      int ready = poll(&p, 1, LeftMs(deadline_ns));
      if (ready == 0) return ETIMEDOUT;
      if (ready < 0 && errno != EINTR) return errno;
    }
  }

  // Reads one datagram without waiting. The reply to `want_id` (or a message with id 0): 0, or
  // EPROTO when it is malformed. A stale reply (dropped, with its descriptors) or nothing to
  // read: EAGAIN. `refusal_only`: only a message with id 0 counts; EAGAIN otherwise.
  int Receive(uint32_t want_id, Reply* reply, bool refusal_only) {
    int fds[Reply::kMaxFds];
    size_t nfds = 0;
    int flags = 0;
    ssize_t r = ReceiveDatagram(fd_, reply->buf, reply->cap, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, fds,
                                &nfds, &flags);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) return EAGAIN;
      return Fail(reply, errno, "reading from the broker");
    }
    if (r == 0) return Fail(reply, ECONNRESET, "the broker closed the connection");
    const size_t n = static_cast<size_t>(r);
    const uint32_t id = n >= kHeaderSize ? GetLE32(reply->buf + 8) : 0;
    const bool stale = n >= kHeaderSize && id != want_id && id != 0;
    int err = 0;
    if (refusal_only && (n < kHeaderSize || id != 0)) {
      err = EAGAIN;
    } else if (stale) {
      err = EAGAIN;  // a reply to an earlier request that timed out here: not this one's
    } else if ((flags & MSG_TRUNC) != 0) {
      err = Fail(reply, EPROTO, "reply larger than the room for it");
    } else if ((flags & MSG_CTRUNC) != 0) {
      err = Fail(reply, EPROTO, "reply with more descriptors attached than a reply may carry");
    } else if (ParseError pe = reply->message.Parse(reply->buf, n); pe != ParseError::kOk) {
      err = Fail(reply, EPROTO, ParseErrorText(pe));
    }
    // The descriptors go to the caller only with the reply it takes, and only as many as it has
    // room for; every other one is closed here.
    size_t kept = 0;
    for (size_t i = 0; i < nfds; ++i) {
      if (err == 0 && kept < reply->fdcap) {
        reply->fds[kept++] = fds[i];
      } else {
        close(fds[i]);
      }
    }
    if (err != 0) return err;
    reply->nfds = kept;
    reply->len = n;
    return 0;
  }

  int fd_ = -1;
  uint32_t next_id_ = 1;
};

}  // namespace via::wire
