// system(), popen() and wordexp(): libc starts /bin/sh for them with its own internal
// posix_spawn (or fork and execve), which no preload library can interpose, handing the shell
// `environ` as it is. A program that cleared its environment (clearenv(), environ = NULL) would
// run the shell, and everything the shell starts, without the shim. Under the exec guard these
// hooks check /bin/sh as exec would, and run the real function with `environ` repaired for the
// duration of the call.
//
// These are not async-signal-safe in libc either and never run in a vfork child: malloc is fine.
#include <errno.h>
#include <wordexp.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/exec_env.h"
#include "shim/export.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/state.h"

extern char** environ;

namespace via::shim {

namespace {

constinit LazyFn<int(const char*)> g_system = {"system", nullptr};
constinit LazyFn<FILE*(const char*, const char*)> g_popen = {"popen", nullptr};
constinit LazyFn<int(const char*, wordexp_t*, int)> g_wordexp = {"wordexp", nullptr};

// Runs `call` with `environ` repaired (FixEnv) when it lacks the shim's variables; `on_error`
// (with errno ENOMEM) when the repaired list cannot be built: never the shell without the shim.
// The swap is process-wide: another thread's getenv meanwhile sees the repaired list (a
// superset). If the program replaced `environ` during the call (setenv in another thread copies
// the list), its list stays, and so does the memory its entries may point into.
template <typename Call, typename R>
R WithRepairedEnviron(Call call, R on_error) {
  if (ExecUnguarded()) return call();
  char** saved = environ;
  size_t need = FixEnvSize(saved);
  if (need == 0) return call();
  void* mem = std::malloc(need);
  char* const* fixed = mem != nullptr ? FixEnv(saved, mem, need) : nullptr;
  if (fixed == nullptr) {
    std::free(mem);
    Complain("cannot restore the shim's environment for the shell: %s", std::strerror(ENOMEM));
    errno = ENOMEM;
    return on_error;
  }
  environ = const_cast<char**>(fixed);
  R result = call();
  int err = errno;
  if (environ == fixed) {
    environ = saved;
    std::free(mem);
  }
  errno = err;
  return result;
}

// The exec guard's verdict on the shell libc is about to run (0 or EPERM, after one line).
int CheckShell() { return ExecUnguarded() ? 0 : CheckExecHere("/bin/sh"); }

}  // namespace

}  // namespace via::shim

using namespace via::shim;

VIA_EXPORT int system(const char* command) {
  if (command == nullptr) return g_system(command);  // "is there a shell?": runs nothing
  if (CheckShell() != 0) {
    errno = EPERM;
    return 127 << 8;  // as libc reports a shell that could not be executed
  }
  return WithRepairedEnviron([&] { return g_system(command); }, -1);
}

VIA_EXPORT FILE* popen(const char* command, const char* mode) {
  if (CheckShell() != 0) {
    errno = EPERM;
    return nullptr;
  }
  return WithRepairedEnviron([&] { return g_popen(command, mode); }, static_cast<FILE*>(nullptr));
}

VIA_EXPORT int wordexp(const char* words, wordexp_t* we, int flags) {
  if ((flags & WRDE_NOCMD) != 0) return g_wordexp(words, we, flags);
  // A refused shell: command substitution is refused (WRDE_CMDSUB), the rest expands.
  if (CheckShell() != 0) return g_wordexp(words, we, flags | WRDE_NOCMD);
  return WithRepairedEnviron([&] { return g_wordexp(words, we, flags); }, int(WRDE_NOSPACE));
}
