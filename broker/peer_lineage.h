// Peers of another user: which processes besides the broker's own user may talk to it.
//
// The broker's socket sits in a 0700 directory, so only its own user can connect there. A process
// that descends from one of its sessions and then changes user (apt's `_apt` sandbox, runuser,
// setpriv, a daemon dropping root) is still part of that session: it connects to the broker's
// abstract socket (common/broker_address.h), where the broker admits a peer of another uid only if
// the kernel's process tree puts it inside a live session: the process, or one of its ancestors,
// opened a session or carries one on (SessionTable::Session root and heirs). That is the same
// membership a HELLO's session is decided by (broker/selector.cc), so an admitted peer gets the
// session's network and groups, and every other peer is refused before its first request is read.
// docs/configuration.md, "Sessions across a change of user", says who can connect and why.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

#include "broker/session_table.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace via::broker {

// What the broker decided about a peer of another uid on the abstract socket.
struct LineageVerdict {
  bool admitted = false;
  std::string why;  // for the log line: the session and the process it was found at, or why not
};

// The live session `pid` belongs to by the process tree under `proc_root`: walks the parent
// chain through /proc/PID/stat (pid and start time name a process) and stops at the first
// process that opened a session of `sessions` or carries one on. A chain in which a parent
// started after its child is cut there (its pid was reused while we read). Pure but for /proc:
// tests/unit/peer_lineage_test.cc builds a fake one.
LineageVerdict SessionLineage(pid_t pid, const SessionTable& sessions,
                              const std::string& proc_root = "/proc");

// Decides about the peer on `fd` (accepted on the abstract socket; `cred` is its SO_PEERCRED).
// The process is held by a pidfd for the whole walk — SO_PEERPIDFD, the process that connected
// (Linux 6.5); on older kernels pidfd_open(cred.pid), which could name a successor if the
// process exited before the accept and its pid was reused at once — and is still alive after it,
// so /proc was read about that process and not another that got its pid.
LineageVerdict CheckPeerLineage(int fd, const ucred& cred, const SessionTable& sessions);

// Whether a peer admitted by lineage may send requests of `type`: those a shim sends for its
// program (HELLO, CONNECT, RESOLVE, REVERSE, DNS_QUERY, DNS_SOCKET, LISTEN, REPORT); not those
// that control the broker or open and hand on sessions (STATUS, SHUTDOWN, RELOAD, OPEN_SESSION,
// SESSION_CHILD, SESSION_DETACH), which stay with the broker's own user.
bool ForeignPeerMay(uint16_t type);

// The listening abstract socket for the broker on `socket_path` (non-blocking, close-on-exec).
// EADDRINUSE when another process holds the name (an earlier broker still stopping, or someone
// squatting it: processes that change user then cannot reach this broker, and fail closed).
Result<UniqueFd> ListenAbstract(const std::string& socket_path);

}  // namespace via::broker
