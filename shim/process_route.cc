// Whether this process is routed, as the broker decided it: the questions the hooks ask before
// anything else. Moved out of state.cc so that the process state sits below the broker link
// (which reads it) instead of calling it back.
#include "shim/process_route.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/wire.h"
#include "shim/binary_check.h"
#include "shim/broker_link.h"
#include "shim/state.h"

namespace via::shim {

namespace {

bool g_passthrough = false;  // accessed with __atomic builtins
int g_only_loopback = 0;     // OnlyLoopbackHere: 0 not read yet, 1 yes, 2 no (__atomic)

// Whether this process's network namespace has no interface but `lo` (/proc/self/net/dev, read
// with plain system calls: safe in a vfork child). Read once: a process can only move to
// another namespace it creates itself (which starts with `lo` alone) or one it already holds.
bool OnlyLoopbackHere() {
  int known = __atomic_load_n(&g_only_loopback, __ATOMIC_RELAXED);
  if (known != 0) return known == 1;
  char buf[4096];
  ssize_t n = -1;
  int fd = open("/proc/self/net/dev", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
  }
  bool only = n > 0 && size_t(n) < sizeof buf - 1;  // a full buffer: too many to be only lo
  if (only) {
    buf[n] = 0;
    // Two header lines, then one line per interface: "  lo: 123 ...".
    const char* line = std::strchr(buf, '\n');
    line = line != nullptr ? std::strchr(line + 1, '\n') : nullptr;
    int count = 0;
    while (line != nullptr && line[1] != 0) {
      const char* name = line + 1;
      while (*name == ' ') ++name;
      if (std::strncmp(name, "lo:", 3) != 0) only = false;
      ++count;
      line = std::strchr(name, '\n');
    }
    only = only && count > 0;
  }
  __atomic_store_n(&g_only_loopback, only ? 1 : 2, __ATOMIC_RELAXED);
  return only;
}

// A strict session (HELLO `flags` say kFlagStrict) as the kernel shows it: nothing but `lo`.
bool StrictFlags(uint32_t flags) { return (flags & wire::kFlagStrict) != 0 && OnlyLoopbackHere(); }

}  // namespace

bool Passthrough() {
  return __atomic_load_n(&g_passthrough, __ATOMIC_RELAXED) || !GetSettings().active;
}

bool NetworkDirect() {
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return true;
  HelloInfo info;
  char msg[256];
  int err = BrokerHello(&info, msg, sizeof msg);
  if (err == 0 && (info.flags & wire::kFlagDirect) != 0) return true;
  CheckLoadedObjects();  // routed: no Go code may be loaded (binary_check.h)
  if (err == 0) return false;
  const Settings& s = GetSettings();
  return NoConfigAnywhere() && s.network[0] == 0 && s.session[0] == 0;
}

bool RoutesApply() {
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return false;
  HelloInfo info;
  char msg[256];
  return BrokerHello(&info, msg, sizeof msg) == 0 && (info.flags & wire::kFlagRoutes) != 0;
}

bool ExecUnguarded() {
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return true;
  const Settings& s = GetSettings();
  // An empty VIA_NETWORK proves nothing: the broker still routes a session's processes (it finds
  // the session from the process tree) and those a program rule matches. Only a process that no
  // broker can be reached from is left alone (and pays nothing).
  return !s.active && s.session[0] == 0 && s.socket_path[0] == 0 && s.config[0] == 0 &&
         !BrokerRoutedThisProcess();
}

namespace {

// Whether this task shares its memory with its parent: a vfork child (or a clone(CLONE_VM)
// one). True when the kernel cannot say (kcmp unavailable): the careful answer.
bool SharesParentMemory() {
  long r = syscall(SYS_kcmp, getpid(), getppid(), KCMP_VM, 0, 0);
  return r != 1 && r != 2 && r != 3;
}

}  // namespace

bool ExecRouted(bool in_parent, char* why, size_t whycap, bool* allow_unrouted) {
  *allow_unrouted = false;
  if (whycap > 0) why[0] = 0;
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return false;
  const Settings& s = GetSettings();
  // Known to be routed (an overlay in VIA_NETWORK, or a broker answer in this process): the
  // broker is still asked, for network_service.unrouted_exec (never read from the environment,
  // which the program controls). This runs only for a binary that would be refused.
  const bool known_routed = s.active || BrokerRoutedThisProcess();
  uint32_t flags = 0;
  int err;
  if (in_parent || !SharesParentMemory()) {
    // The process itself, or a fork child with memory of its own: the ordinary greeting (which
    // may start a broker, and is remembered for later connects).
    HelloInfo info;
    err = BrokerHello(&info, why, whycap);
    flags = info.flags;
    if (err != 0 && !known_routed && NoConfigAnywhere() && s.network[0] == 0 && s.session[0] == 0) {
      return false;  // no configuration anywhere and nothing asked for one: nothing routes it
    }
  } else {
    err = BrokerHelloDetached(&flags, why, whycap);
    if (err == ESRCH && !known_routed && s.network[0] == 0 && s.session[0] == 0) {
      return false;  // as above: no configuration anywhere, nothing asked for one
    }
  }
  if (err != 0) {
    // A refusal from the broker (its policy) is an answer: routed. A broker that cannot be
    // asked: routed too, since only the broker could have said otherwise.
    if (why[0] == 0) std::snprintf(why, whycap, "the via broker did not answer: %s", strerror(err));
    return true;
  }
  // In a strict session the namespace routes (or refuses) whatever the program runs.
  *allow_unrouted = (flags & wire::kFlagUnroutedExecAllow) != 0 || StrictFlags(flags);
  return known_routed || (flags & wire::kFlagDirect) == 0;
}

bool BrokerAllowsUnrouted() {
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return true;
  HelloInfo info;
  char msg[256];
  return BrokerHello(&info, msg, sizeof msg) == 0 &&
         ((info.flags & wire::kFlagUnroutedExecAllow) != 0 || StrictFlags(info.flags));
}

bool StrictHere() {
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return false;
  // Once answered it holds for the process and its forks: a session is strict from its start to
  // its end, and the namespace cannot gain a way out. Until a HELLO succeeds: not strict.
  static int known = 0;  // 1 strict, 2 not (__atomic)
  if (int k = __atomic_load_n(&known, __ATOMIC_RELAXED); k != 0) return k == 1;
  HelloInfo info;
  char msg[256];
  if (BrokerHello(&info, msg, sizeof msg) != 0) return false;
  const bool strict = StrictFlags(info.flags);
  __atomic_store_n(&known, strict ? 1 : 2, __ATOMIC_RELAXED);
  return strict;
}

}  // namespace via::shim

VIA_EXPORT void via_shim_set_passthrough(void) {
  __atomic_store_n(&via::shim::g_passthrough, true, __ATOMIC_RELAXED);
}
