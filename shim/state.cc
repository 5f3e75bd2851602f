// The shim's view of its process: read from the environment once, on first need, so that a
// program that never opens a socket pays nothing beyond loading the library.
#include <pthread.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/shim.h"

namespace via::shim {

namespace {

Settings g_settings;
pthread_once_t g_once = PTHREAD_ONCE_INIT;
bool g_passthrough = false;  // accessed with __atomic builtins

void CopyEnv(const char* var, char* dst, size_t cap) {
  const char* v = getenv(var);
  if (v == nullptr) return;
  size_t n = std::strlen(v);
  if (n >= cap) n = cap - 1;
  std::memcpy(dst, v, n);
  dst[n] = 0;
}

void Init() {
  Settings& s = g_settings;
  CopyEnv("VIA_NETWORK", s.network, sizeof s.network);
  CopyEnv("VIA_SESSION", s.session, sizeof s.session);
  CopyEnv("VIA_SOCKET", s.socket_path, sizeof s.socket_path);
  CopyEnv("VIA_CONFIG", s.config, sizeof s.config);
  CopyEnv("LD_PRELOAD", s.preload, sizeof s.preload);
  const char* unrouted = getenv("VIA_UNROUTED_EXEC");
  s.unrouted_exec_allowed = unrouted != nullptr && std::strcmp(unrouted, "allow") == 0;
  const char* quiet = getenv("VIA_QUIET");
  s.quiet = quiet != nullptr && quiet[0] == '1';
  // No VIA_NETWORK: the shim is loaded but nothing selected an overlay for this process.
  s.active = s.network[0] != 0 && std::strcmp(s.network, "direct") != 0;
}

}  // namespace

// The environment is read at load time: a program may clear it (env -i, clearenv) before it
// execs, and exec must still know what to give back. A few getenv calls, no I/O.
__attribute__((constructor)) void SnapshotEnvironment() { pthread_once(&g_once, Init); }

const Settings& GetSettings() {
  pthread_once(&g_once, Init);
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
  if (err == 0) return (info.flags & wire::kFlagDirect) != 0;
  const Settings& s = GetSettings();
  return NoConfigAnywhere() && s.network[0] == 0 && s.session[0] == 0;
}

bool ExecUnguarded() {
  if (__atomic_load_n(&g_passthrough, __ATOMIC_RELAXED)) return true;
  return !GetSettings().active && !BrokerRoutedThisProcess();
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
