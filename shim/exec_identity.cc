// The exec greeting: before a process execs in place, its shim lets the broker record the groups
// the process has now (docs/protocol.md, HELLO FLAGS bit 23). The broker keeps groups per
// process (pid + start time, which an exec does not change), so a program matched by a rule
// that gives it a group keeps the group after it execs something else, even if it never asked
// the broker anything before.
//
// Only while a broker asks for it: it keeps `<socket>.exec-hello` while its config has rules
// that give groups, and `exec-hello` in the runtime directory while any broker there does. The
// shim's cost otherwise is one failed access(2) per exec. The broker is found from VIA_SOCKET,
// or else every broker of the runtime directory that has a marker is greeted.
//
// Runs in vfork children too (posix_spawn, Python's subprocess): the stack only, system calls
// made directly (none of the shim's hooks, no lazy symbol lookups, no malloc, no locks).
#include "shim/exec_identity.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/wire.h"
#include "shim/state.h"

namespace via::shim {

namespace {

constexpr int kReplyWaitMs = 2000;  // a broker that does not answer does not hold up the exec
constexpr char kMarkerSuffix[] = ".exec-hello";

int Sys(long nr, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  long r;
  do {
    r = syscall(nr, a, b, c, d, e, f);
  } while (r < 0 && errno == EINTR);
  return int(r);
}

bool Exists(const char* path) { return Sys(SYS_faccessat, AT_FDCWD, long(path), F_OK, 0) == 0; }

// What the broker said about this program's groups: -1 not asked (or no answer), 0 none (no
// need to greet again: a fork of this process is the same program under the same rules), 1 some
// (greet before every exec: a fork that execs and outlives this process must keep them). Reset
// by exec (a new image); written in vfork children too, where it lands in the parent (fine).
int g_has_groups = -1;

// One HELLO with kFlagExecHello to the broker at `path`, and its reply (or the timeout).
void Greet(const char* path) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  if (len == 0 || len >= sizeof sun.sun_path) return;
  std::memcpy(sun.sun_path, path, len + 1);
  int fd = Sys(SYS_socket, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  if (Sys(SYS_connect, fd, long(&sun), sizeof sun) == 0) {
    uint8_t buf[64];
    wire::Writer w(buf, sizeof buf, wire::kHello, 1);
    w.PutU16(wire::kTagVersion, wire::kVersion);
    w.PutU32(wire::kTagPid, uint32_t(getpid()));
    w.PutU32(wire::kTagFlags, wire::kFlagExecHello);
    if (Sys(SYS_sendto, fd, long(w.data()), long(w.size()), MSG_NOSIGNAL, 0, 0) == int(w.size())) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, kReplyWaitMs) == 1) {
        uint8_t reply[512];
        int n = Sys(SYS_recvfrom, fd, long(reply), sizeof reply, MSG_DONTWAIT, 0, 0);
        wire::Message m;
        wire::Field f;
        uint32_t err = 1, flags = 0;
        if (n > 0 && m.Parse(reply, size_t(n)) == wire::ParseError::kOk &&
            m.Find(wire::kTagErrno, &f) && f.u32(&err) && err == 0 && m.Find(wire::kTagFlags, &f) &&
            f.u32(&flags)) {
          // Several brokers: groups in any of them count.
          if (g_has_groups != 1) g_has_groups = (flags & wire::kFlagHasGroups) != 0 ? 1 : 0;
        }
      }
    }
  }
  Sys(SYS_close, fd);
}

// The directory brokers keep their sockets in by default (common/paths.cc, RuntimeDir).
bool RuntimeDir(char* out, size_t cap) {
  const char* xdg = getenv("XDG_RUNTIME_DIR");
  int n = xdg != nullptr && xdg[0] == '/' ? std::snprintf(out, cap, "%s/via", xdg)
                                          : std::snprintf(out, cap, "/tmp/via-%u", getuid());
  return n > 0 && size_t(n) < cap;
}

struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

// The marker's path: `<socket>.exec-hello` for a process that knows its broker's socket, else
// `exec-hello` in the runtime directory. Into `out`; false when it does not fit.
bool MarkerPath(const char* socket, char* out, size_t cap) {
  int n;
  if (socket[0] != 0) {
    n = std::snprintf(out, cap, "%s%s", socket, kMarkerSuffix);
  } else {
    char dir[4096];
    if (!RuntimeDir(dir, sizeof dir)) return false;
    n = std::snprintf(out, cap, "%s/exec-hello", dir);
  }
  return n > 0 && size_t(n) < cap;
}

// The marker path worked out before the first fork (PrepareExecGreeting), for the children to
// use instead of working it out again each (formatting touches pages a forked child would have
// to fault in). Valid while the process's socket path is still the one it was made for: a path
// given later by `via broker --ensure` makes the children compute it themselves.
char g_marker[4200];
int g_marker_state = 0;  // 0 not made, 1 being written (by one thread), 2 ready
bool g_marker_with_socket = false;

const char* Marker(const char* socket, char* scratch, size_t cap) {
  if (__atomic_load_n(&g_marker_state, __ATOMIC_ACQUIRE) == 2 &&
      g_marker_with_socket == (socket[0] != 0)) {
    return g_marker;
  }
  return MarkerPath(socket, scratch, cap) ? scratch : nullptr;
}

}  // namespace

void PrepareExecGreeting() {
  int expected = 0;
  if (!__atomic_compare_exchange_n(&g_marker_state, &expected, 1, false, __ATOMIC_ACQUIRE,
                                   __ATOMIC_RELAXED)) {
    return;  // made, or being made by another thread (whose children then work it out)
  }
  const char* socket = GetSettings().socket_path;
  if (!MarkerPath(socket, g_marker, sizeof g_marker)) {
    __atomic_store_n(&g_marker_state, 0, __ATOMIC_RELEASE);
    return;
  }
  g_marker_with_socket = socket[0] != 0;
  __atomic_store_n(&g_marker_state, 2, __ATOMIC_RELEASE);
}

void GreetBrokerBeforeExec(const char* file) {
  // Whether or not this process is routed: a group also denies choosing an overlay.
  if (g_has_groups == 0) return;
  char path[4200];
  const char* socket = GetSettings().socket_path;
  // Shells try execve along PATH: greet only for a file that can run.
  auto runnable = [file] {
    return file != nullptr && Sys(SYS_faccessat, AT_FDCWD, long(file), X_OK, 0) == 0;
  };
  const char* marker = Marker(socket, path, sizeof path);
  if (marker == nullptr || !Exists(marker)) return;
  if (socket[0] != 0) {
    if (runnable()) Greet(socket);
    return;
  }
  // No VIA_SOCKET (the shim preloaded without `via run`): every broker here that asks for it.
  char dir[4096];
  if (!RuntimeDir(dir, sizeof dir) || !runnable()) return;
  int dfd = Sys(SYS_openat, AT_FDCWD, long(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  alignas(8) char buf[4096];
  int greeted = 0;
  for (;;) {
    int got = Sys(SYS_getdents64, dfd, long(buf), sizeof buf);
    if (got <= 0) break;
    for (int off = 0; off < got;) {
      const auto* d = reinterpret_cast<const LinuxDirent64*>(buf + off);
      off += d->d_reclen;
      size_t len = strnlen(d->d_name, 256);
      const size_t suffix = sizeof kMarkerSuffix - 1;
      if (len <= suffix || std::strcmp(d->d_name + len - suffix, kMarkerSuffix) != 0) continue;
      // <dir>/<name without the suffix>: the socket.
      int n = std::snprintf(path, sizeof path, "%s/%.*s", dir, int(len - suffix), d->d_name);
      if (n > 0 && size_t(n) < sizeof path && greeted++ < 16) Greet(path);
    }
  }
  Sys(SYS_close, dfd);
}

}  // namespace via::shim
