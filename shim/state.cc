// The shim's view of its process: read from the environment once, on first need, so that a
// program that never opens a socket pays nothing beyond loading the library.
#include "shim/state.h"

#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

extern char** environ;

namespace via::shim {

namespace {

Settings g_settings;
// 0: not read yet, 1: being read, 2: ready. Not pthread_once: its first call always ends in a
// futex wake, a system call in every process at load time.
int g_state = 0;

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
