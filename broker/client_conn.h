// ClientConn: the transport of one client connection (a shim's link, the CLI, `via run`): its
// socket and the process at the other end (SO_PEERCRED), datagrams with descriptors in, the
// replies it has not read yet out, and whether the broker reads its requests for now
// (backpressure, client_limits.h). No event loop: the owner watches fd() for WantedEvents().
// tests/unit/client_conn_test.cc drives one over a socketpair.
#pragma once

#include <sys/socket.h>

#include <cerrno>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "broker/client_limits.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace via::broker {

constexpr size_t kMaxFds = 4;  // descriptors accepted per datagram

// The credentials of the process at the other end of an accepted connection (SO_PEERCRED).
Result<ucred> PeerCredentials(int fd);

// Whether the broker serves a peer with these credentials: the uid check of accepted
// connections, in one place. Today: the broker's own effective uid only.
bool PeerUidAllowed(const ucred& cred);

// Answers a connection the broker will not serve (type 0x8000, id 0, like a framing error: the
// shim takes it as the reply to whatever it sent first) and drains what the client sent, so that
// closing it does not reset the connection. Never waits.
void SendRefusal(int fd, const std::string& why, int err = EAGAIN);

class ClientConn {
 public:
  // What the loop watches for while the broker reads the client's requests.
  static constexpr uint32_t kRequestEvents = 0x001 | 0x2000;  // EPOLLIN | EPOLLRDHUP

  ClientConn(UniqueFd fd, pid_t pid) : fd_(std::move(fd)), pid_(pid) {}
  int fd() const { return fd_.get(); }
  pid_t pid() const { return pid_; }

  enum class Received {
    kMessage,    // *n bytes in the buffer, *fds owns the descriptors that came with them
    kAgain,      // nothing queued
    kClosed,     // end of file or an error: the client is gone
    kTruncated,  // the message or its descriptors did not fit; *why says which
  };
  // Receives one datagram into `buf` (kMaxMessage + 1 bytes: the extra one detects an oversized
  // message) and up to kMaxFds descriptors, close-on-exec. The descriptors are owned by *fds on
  // every outcome (a truncated message's too, so that none leaks).
  Received Receive(std::vector<uint8_t>& buf, size_t* n, std::vector<UniqueFd>* fds,
                   std::string* why);

  // Sends a reply at once when none waits before it; otherwise, or when the socket is full, it
  // is queued (a request already read is always answered). Returns true if it was queued. A
  // peer that is gone drops it: its end of file closes the connection.
  bool Send(const uint8_t* data, size_t n, UniqueFd fd = UniqueFd());
  // Sends queued replies until the socket is full. False if the peer is gone.
  bool Flush();
  const Outbox& outbox() const { return outbox_; }

  // Decides whether to read requests, from the reply queue and the client's `ops` in flight
  // (kMaxOpsPerClient). Returns true when it has just stopped reading (for the log and count).
  bool UpdatePaused(size_t ops);
  bool paused() const { return paused_; }
  // Requests unless paused, EPOLLOUT while replies wait.
  uint32_t WantedEvents() const;
  // What the loop is watching for now (the owner sets it after each successful change).
  uint32_t events() const { return events_; }
  void set_events(uint32_t events) { events_ = events; }

 private:
  ssize_t SendOne(const uint8_t* data, size_t n, int fd);

  UniqueFd fd_;
  pid_t pid_ = 0;
  Outbox outbox_;
  bool paused_ = false;
  uint32_t events_ = kRequestEvents;
};

}  // namespace via::broker
