// The shim's view of its process: read from the environment once, on first need, so that a
// program that never opens a socket pays nothing beyond loading the library.
#include <linux/kcmp.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/binary_check.h"
#include "shim/shim.h"

extern char** environ;

namespace via::shim {

namespace {

Settings g_settings;
// 0: not read yet, 1: being read, 2: ready. Not pthread_once: its first call always ends in a
// futex wake, a system call in every process at load time.
int g_state = 0;
bool g_passthrough = false;  // accessed with __atomic builtins

// Copies `v` whole, or sets `flag` in s.too_long (the field keeps the truncated value, which the
// broker refuses as it refuses any unknown name, and which exec never restores into a child).
void Copy(const char* v, char* dst, size_t cap, unsigned flag) {
  size_t n = std::strlen(v);
  if (n >= cap) {
    n = cap - 1;
    g_settings.too_long |= flag;
  } else {
    g_settings.too_long &= ~flag;
  }
  std::memcpy(dst, v, n);
  dst[n] = 0;
}

// One pass over the environment (not seven getenv calls, each a pass of its own), backwards so
// that the first of duplicate entries wins, as with getenv.
void Init() {
  Settings& s = g_settings;
  size_t count = 0;
  while (environ != nullptr && environ[count] != nullptr) ++count;
  for (size_t i = count; i-- > 0;) {
    const char* v = environ[i];
    if (v[0] != 'V' || std::strncmp(v, "VIA_", 4) != 0) continue;
    v += 4;
    if (std::strncmp(v, "NETWORK=", 8) == 0) {
      Copy(v + 8, s.network, sizeof s.network, kTooLongNetwork);
    } else if (std::strncmp(v, "SESSION=", 8) == 0) {
      Copy(v + 8, s.session, sizeof s.session, kTooLongSession);
    } else if (std::strncmp(v, "SOCKET=", 7) == 0) {
      Copy(v + 7, s.socket_path, sizeof s.socket_path, kTooLongSocket);
    } else if (std::strncmp(v, "CONFIG=", 7) == 0) {
      Copy(v + 7, s.config, sizeof s.config, kTooLongConfig);
    } else if (std::strncmp(v, "UNROUTED_EXEC=", 14) == 0) {
      s.unrouted_exec_allowed = std::strcmp(v + 14, "allow") == 0;
      s.unrouted_exec_strict = std::strcmp(v + 14, "strict") == 0;
    } else if (std::strncmp(v, "QUIET=", 6) == 0) {
      s.quiet = v[6] == '1';
    }
  }
  // No VIA_NETWORK: the shim is loaded but nothing selected an overlay for this process.
  s.active = s.network[0] != 0 && std::strcmp(s.network, "direct") != 0;
}

}  // namespace

// The environment is read at load time: a program may clear it (env -i, clearenv) before it
// execs, and exec must still know what to give back. A few getenv calls, no I/O.
void InitOnce() {
  if (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) == 2) return;
  int expected = 0;
  if (__atomic_compare_exchange_n(&g_state, &expected, 1, false, __ATOMIC_ACQUIRE,
                                  __ATOMIC_ACQUIRE)) {
    Init();
    __atomic_store_n(&g_state, 2, __ATOMIC_RELEASE);
    return;
  }
  // Another thread is reading the environment (a few microseconds, no locks inside).
  while (__atomic_load_n(&g_state, __ATOMIC_ACQUIRE) != 2) sched_yield();
}

__attribute__((constructor)) void SnapshotEnvironment() { InitOnce(); }

int64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

const Settings& GetSettings() {
  InitOnce();
  return g_settings;
}

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
    if (err != 0 && !known_routed && NoConfigAnywhere() && s.network[0] == 0 &&
        s.session[0] == 0) {
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
  *allow_unrouted = (flags & wire::kFlagUnroutedExecAllow) != 0;
  return known_routed || (flags & wire::kFlagDirect) == 0;
}

bool BrokerAllowsUnrouted() {
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return true;
  HelloInfo info;
  char msg[256];
  return BrokerHello(&info, msg, sizeof msg) == 0 &&
         (info.flags & wire::kFlagUnroutedExecAllow) != 0;
}

const char* NetworkLabel() {
  const char* n = GetSettings().network;
  return n[0] != 0 ? n : "the network the broker selected";
}

void Complain(const char* fmt, ...) {
  if (GetSettings().quiet) return;
  char buf[1024];
  int n = std::snprintf(buf, sizeof buf, "via: ");
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) return;
  size_t len = static_cast<size_t>(n) + static_cast<size_t>(m);
  if (len > sizeof buf - 2) len = sizeof buf - 2;
  buf[len++] = '\n';
  (void)!write(2, buf, len);
}

}  // namespace via::shim

VIA_EXPORT void via_shim_set_passthrough(void) {
  __atomic_store_n(&via::shim::g_passthrough, true, __ATOMIC_RELAXED);
}
