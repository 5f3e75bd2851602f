// Whether this process is routed, as the broker decided it: the questions the hooks ask before
// anything else. Moved out of state.cc so that the process state sits below the broker link
// (which reads it) instead of calling it back.
#include "shim/process_route.h"

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

}  // namespace via::shim

VIA_EXPORT void via_shim_set_passthrough(void) {
  __atomic_store_n(&via::shim::g_passthrough, true, __ATOMIC_RELAXED);
}
