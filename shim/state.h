// The shim's view of its process (state.cc): the VIA_* environment, read once at load time, and
// the few things every module needs with it (the clock, the one line on stderr). The bottom of
// the shim: it calls no other module.
#pragma once

#include <cstddef>
#include <cstdint>

namespace via::shim {

// Read once from the environment, on the first hooked call that needs it.
struct Settings {
  bool active = false;  // an overlay may apply: VIA_NETWORK is set and not "direct"
  bool quiet = false;   // VIA_QUIET=1
  char network[256] = {};
  char session[96] = {};
  char socket_path[108] = {};  // VIA_SOCKET, or filled by EnsureSocketPath()
  // Snapshots for exec (exec_env.cc): a child whose environment was scrubbed gets these back.
  // VIA_UNROUTED_EXEC=allow: only restored into children (via run sets it from the config). The
  // guard itself asks the broker (kFlagUnroutedExecAllow): the program controls its environment.
  bool unrouted_exec_allowed = false;
  // VIA_UNROUTED_EXEC=strict: a static or Go binary runs in strict mode (`via run --strict`)
  // instead of being refused. Taken from the environment: it only ever contains a program
  // more (a program that removes it is refused as before).
  bool unrouted_exec_strict = false;
  // Values that did not fit their field (kTooLong* bits): never restored into a child, where a
  // truncated value would mean something else. Before `config`: on the page the other fields
  // share, so that reading the environment touches one page of .bss, not two.
  unsigned too_long = 0;
  // VIA_CONFIG: a path, as long as the kernel lets one variable be (MAX_ARG_STRLEN). In .bss:
  // only the pages a value touches cost memory.
  char config[32 * 4096] = {};
};
constexpr unsigned kTooLongNetwork = 1, kTooLongSession = 2, kTooLongSocket = 4, kTooLongConfig = 8;
const Settings& GetSettings();

// For messages: VIA_NETWORK, or a phrase when the broker chose the network (a program rule).
const char* NetworkLabel();

// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
int64_t MonotonicNs();

// Writes "via: <msg>\n" to stderr unless quiet.
void Complain(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace via::shim
