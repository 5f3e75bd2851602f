// exec and posix_spawn. Under an overlay, two things would let a child escape it:
//  - a binary that runs without the shim: setuid/setgid or with file capabilities (the loader
//    drops LD_PRELOAD), or statically linked (no loader at all), or whose traffic the shim
//    would not see: a Go program (dynamically linked for cgo, it still makes its socket system
//    calls itself). Its exec fails with EPERM and one line, unless
//    network_service.unrouted_exec is "allow".
//  - an environment without the shim's variables (env -i, sudo-like resets): they are put back.
//
// These hooks run in vfork children too (posix_spawn, Python's subprocess), so they use only the
// stack: no malloc, no locks.
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/binary_check.h"
#include "shim/exec_env.h"
#include "shim/exec_identity.h"
#include "shim/export.h"
#include "shim/pending_connect.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/state.h"

extern char** environ;

namespace via::shim {

namespace {

constexpr size_t kPathMax = 4096;

// CheckExec's answer for a binary strict mode covers, under `unrouted_exec: strict`: run it
// through `via run --strict` (ExecStrict) instead.
constexpr int kRunStrict = -2;

// 0 if `path` may be executed, else EPERM (after one line on stderr), or kRunStrict when
// `strict_ok` (the caller can run `path` through `via run --strict`). The binary is judged first
// (no broker round trip for the usual dynamic binary); only a binary that would run without the
// shim makes the guard ask whether this process is routed (ExecRouted). `in_parent`: called in
// the process itself (posix_spawn), never in a vfork child.
int CheckExec(const char* path, char* const argv[], char* const envp[], bool in_parent = false,
              bool strict_ok = false) {
  if (path == nullptr || ExecUnguarded()) return 0;
  char interp[kPathMax];  // not cleared: 4 KiB of stores, and a page fault in a forked child
  interp[0] = 0;
  const char* reason = EnvironmentReason(envp, interp, sizeof interp);
  if (reason == nullptr) reason = ShimUnreadableReason(interp, sizeof interp);
  if (reason == nullptr) reason = UnroutedReason(path, argv, interp, sizeof interp);
  if (reason == nullptr) return 0;
  char why[512];
  bool allow_unrouted = false;
  if (!ExecRouted(in_parent, why, sizeof why, &allow_unrouted) || allow_unrouted) return 0;
  char via[kPathMax];
  if (strict_ok && GetSettings().unrouted_exec_strict && StrictCovers(reason) &&
      FindVia(via, sizeof via)) {
    Complain("%s runs in strict mode under %s: %s%s%s (network_service.unrouted_exec: strict)",
             path, NetworkLabel(), reason, interp[0] != 0 ? ": " : "", interp);
    return kRunStrict;
  }
  Complain(
      "exec of %s refused under %s: %s%s%s, so its traffic would not go through the overlay "
      "(network_service.unrouted_exec: allow permits it)%s%s",
      path, NetworkLabel(), reason, interp[0] != 0 ? ": " : "", interp, why[0] != 0 ? "; " : "",
      why);
  return EPERM;
}

}  // namespace

int CheckExecHere(const char* path) { return CheckExec(path, nullptr, environ, true); }

namespace {

// `via run --strict [-q] --argv0 ARGV0 -- PATH ARGS...` into `out` (room for the program's
// arguments plus kStrictExtra), for a binary CheckExec answered kRunStrict.
constexpr size_t kStrictExtra = 9;
void StrictArgv(const char* via, const char* path, char* const argv[], char** out) {
  size_t k = 0;
  out[k++] = const_cast<char*>(via);
  out[k++] = const_cast<char*>("run");
  out[k++] = const_cast<char*>("--strict");
  if (GetSettings().quiet) out[k++] = const_cast<char*>("-q");
  out[k++] = const_cast<char*>("--argv0");
  out[k++] = const_cast<char*>(argv != nullptr && argv[0] != nullptr ? argv[0] : path);
  out[k++] = const_cast<char*>("--");
  out[k++] = const_cast<char*>(path);
  for (size_t i = 1; argv != nullptr && argv[0] != nullptr && argv[i] != nullptr; ++i) {
    out[k++] = argv[i];
  }
  out[k] = nullptr;
}

size_t ArgCount(char* const argv[]) {
  size_t n = 0;
  while (argv != nullptr && argv[n] != nullptr) ++n;
  return n;
}

}  // namespace

namespace {

// Calls exec(environment) with `envp` repaired by FixEnv: in memory from the stack, or mapped
// when larger (exec either replaces the process or fails, and the memory goes with it).
template <typename Exec>
int WithFixedEnv(char* const envp[], Exec exec) {
  if (ExecUnguarded()) return exec(const_cast<char**>(envp));
  size_t need = FixEnvSize(envp);
  if (need == 0) return exec(const_cast<char**>(envp));
  void* stack[need <= kExecStackBytes ? need / sizeof(void*) + 1 : 1];
  ExecScratch mem(need, stack, sizeof stack);
  char* const* fixed = mem.get() != nullptr ? FixEnv(envp, mem.get(), need) : nullptr;
  if (fixed == nullptr) {
    // Never an exec with the shim's variables missing.
    Complain("cannot restore the shim's environment for exec (%zu bytes): %s", need,
             std::strerror(ENOMEM));
    errno = ENOMEM;
    return -1;
  }
  return exec(const_cast<char**>(fixed));
}

template <typename Exec>
int CheckedExec(const char* path, char* const argv[], char* const envp[], Exec exec,
                bool strict_ok = true);

// exec of `via run --strict ... -- path argv...` (CheckExec said kRunStrict). `via` itself is
// checked as any binary, never run strictly in turn.
int ExecStrict(const char* path, char* const argv[], char* const envp[]) {
  char via[kPathMax];
  if (!FindVia(via, sizeof via)) {
    errno = EPERM;
    return -1;
  }
  size_t need = (ArgCount(argv) + kStrictExtra) * sizeof(char*);
  void* stack[need <= kExecStackBytes ? need / sizeof(void*) + 1 : 1];
  ExecScratch mem(need, stack, sizeof stack);
  if (mem.get() == nullptr) {
    errno = ENOMEM;
    return -1;
  }
  char** a = static_cast<char**>(mem.get());
  StrictArgv(via, path, argv, a);
  return CheckedExec(
      via, a, envp, [&](char** env) { return Real().execve(via, a, env); }, false);
}

// Checks the binary at `path`, then calls exec(environment) with envp repaired. `strict_ok`:
// `path` names the file for another process too (not /proc/self/fd/N), so a binary strict mode
// covers may run through `via run --strict`.
template <typename Exec>
int CheckedExec(const char* path, char* const argv[], char* const envp[], Exec exec,
                bool strict_ok) {
  if (int err = CheckExec(path, argv, envp, false, strict_ok); err != 0) {
    if (err == kRunStrict) return ExecStrict(path, argv, envp);
    errno = err;
    return -1;
  }
  GreetBrokerBeforeExec(path);
  if (PendingEver()) PendingWaitBeforeExec();  // the shim thread ends with this image
  return WithFixedEnv(envp, exec);
}

// execve with both checks. Never returns on success.
int CheckedExecve(const char* path, char* const argv[], char* const envp[]) {
  return CheckedExec(path, argv, envp, [&](char** env) { return Real().execve(path, argv, env); });
}

// A file the kernel would not run (ENOEXEC) as a /bin/sh script, as glibc's execvpe does:
// "/bin/sh file argv[1]...". The argument array is as long as the program's (stack or mapped).
int ExecWithShell(const char* file, char* const argv[], char* const envp[]) {
  size_t argc = 0;
  while (argv != nullptr && argv[argc] != nullptr) ++argc;
  size_t need = (argc + 3) * sizeof(char*);
  void* stack[need <= kExecStackBytes ? need / sizeof(void*) + 1 : 1];
  ExecScratch mem(need, stack, sizeof stack);
  if (mem.get() == nullptr) {
    errno = ENOMEM;
    return -1;
  }
  char** sh_argv = static_cast<char**>(mem.get());
  sh_argv[0] = const_cast<char*>("/bin/sh");
  sh_argv[1] = const_cast<char*>(file);
  size_t k = 2;
  for (size_t i = 1; i < argc; ++i) sh_argv[k++] = argv[i];
  sh_argv[k] = nullptr;
  return CheckedExecve("/bin/sh", sh_argv, envp);
}

// execvpe as glibc does it (PATH search, /bin/sh for ENOEXEC), with every candidate checked.
int CheckedExecvpe(const char* file, char* const argv[], char* const envp[]) {
  if (file == nullptr || file[0] == 0) {
    errno = ENOENT;
    return -1;
  }
  if (std::strchr(file, '/') != nullptr) {
    CheckedExecve(file, argv, envp);
    if (errno == ENOEXEC) goto shell;
    return -1;
  }
  {
    const char* path = getenv("PATH");
    if (path == nullptr) path = "/bin:/usr/bin";
    bool got_eacces = false;
    size_t flen = std::strlen(file);
    for (const char* p = path;; ++p) {
      const char* end = std::strchr(p, ':');
      size_t dlen = end == nullptr ? std::strlen(p) : size_t(end - p);
      char candidate[kPathMax];
      if (dlen + flen + 2 <= sizeof candidate) {
        if (dlen == 0) {
          std::memcpy(candidate, file, flen + 1);  // empty entry: current directory
        } else {
          std::memcpy(candidate, p, dlen);
          candidate[dlen] = '/';
          std::memcpy(candidate + dlen + 1, file, flen + 1);
        }
        CheckedExecve(candidate, argv, envp);
        if (errno == ENOEXEC) return ExecWithShell(candidate, argv, envp);
        if (errno == EACCES) {
          got_eacces = true;
        } else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV &&
                   errno != ETIMEDOUT) {
          return -1;  // EPERM from our check among them: stop here, as the kernel's EPERM would
        }
      }
      if (end == nullptr) break;
      p = end;
    }
    errno = got_eacces ? EACCES : ENOENT;
    return -1;
  }
shell:
  return ExecWithShell(file, argv, envp);
}

// Finds `file` on PATH the way posix_spawnp will, for the check.
bool SearchPath(const char* file, char* out, size_t cap) {
  if (std::strchr(file, '/') != nullptr) {
    return size_t(std::snprintf(out, cap, "%s", file)) < cap;
  }
  const char* path = getenv("PATH");
  if (path == nullptr) path = "/bin:/usr/bin";
  for (const char* p = path;; ++p) {
    const char* end = std::strchr(p, ':');
    size_t dlen = end == nullptr ? std::strlen(p) : size_t(end - p);
    // A candidate longer than a path may be is one the kernel refuses: never check a cut one.
    int w = std::snprintf(out, cap, "%.*s%s%s", int(dlen), p, dlen ? "/" : "", file);
    if (w > 0 && size_t(w) < cap && access(out, X_OK) == 0) return true;
    if (end == nullptr) return false;
    p = end;
  }
}

// Collects execl-style arguments (after `first`) into `argv` (capacity `cap`).
size_t CountArgs(const char* first, va_list ap) {
  size_t n = 1;
  va_list copy;
  va_copy(copy, ap);
  if (first != nullptr) {
    while (va_arg(copy, const char*) != nullptr) ++n;
  }
  va_end(copy);
  return n;
}

}  // namespace

}  // namespace via::shim

using namespace via::shim;

// fork: the new process is what libc makes it. Before the first fork of a guarded process, the
// parent gets ready, once, for children that will exec: the real execve and fexecve looked up,
// this library's file found (FindSelf), the binary check's verdicts shared with the children
// (ShareVerdictCache), the exec greeting's marker path formatted (PrepareExecGreeting).
// Otherwise each child would work these out again in memory its exec throws away, and a
// fork-and-exec loop would pay for them every time.
VIA_EXPORT pid_t fork(void) {
  static int prepared;  // a child inherits it (and the shared verdicts)
  if (__atomic_load_n(&prepared, __ATOMIC_ACQUIRE) == 0 && !ExecUnguarded()) {
    Real().execve.Resolve();
    Real().fexecve.Resolve();
    FindSelf();
    ShareVerdictCache();
    PrepareExecGreeting();
    __atomic_store_n(&prepared, 1, __ATOMIC_RELEASE);
  }
  return Real().fork();
}

VIA_EXPORT int execve(const char* path, char* const argv[], char* const envp[]) {
  return CheckedExecve(path, argv, envp);
}

VIA_EXPORT int execv(const char* path, char* const argv[]) {
  return CheckedExecve(path, argv, environ);
}

VIA_EXPORT int execvpe(const char* file, char* const argv[], char* const envp[]) {
  return CheckedExecvpe(file, argv, envp);
}

VIA_EXPORT int execvp(const char* file, char* const argv[]) {
  return CheckedExecvpe(file, argv, environ);
}

#define VIA_COLLECT_ARGS(first, argv, ap_name)                             \
  va_list ap_name;                                                         \
  va_start(ap_name, first);                                                \
  size_t argc_ = CountArgs(first, ap_name);                                \
  char* argv[argc_ + 1];                                                   \
  argv[0] = const_cast<char*>(first);                                      \
  for (size_t i_ = 1; i_ < argc_; ++i_) argv[i_] = va_arg(ap_name, char*); \
  argv[argc_] = nullptr;

VIA_EXPORT int execl(const char* path, const char* arg, ...) {
  VIA_COLLECT_ARGS(arg, argv, ap);
  va_end(ap);
  return CheckedExecve(path, argv, environ);
}

VIA_EXPORT int execlp(const char* file, const char* arg, ...) {
  VIA_COLLECT_ARGS(arg, argv, ap);
  va_end(ap);
  return CheckedExecvpe(file, argv, environ);
}

VIA_EXPORT int execle(const char* path, const char* arg, ...) {
  VIA_COLLECT_ARGS(arg, argv, ap);
  char* const* envp = va_arg(ap, char* const*);
  va_end(ap);
  return CheckedExecve(path, argv, envp);
}

VIA_EXPORT int fexecve(int fd, char* const argv[], char* const envp[]) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  return CheckedExec(
      path, argv, envp, [&](char** env) { return Real().fexecve(fd, argv, env); }, false);
}

namespace {

// glibc's file action list behind posix_spawn_file_actions_t (spawn_int.h; this layout since
// glibc 2.29, which added chdir/fchdir).
struct GlibcSpawnAction {
  int tag;  // 0 close, 1 dup2, 2 open, 3 chdir, 4 fchdir, 5 closefrom, 6 tcsetpgrp
  union {
    struct {
      int fd, newfd;
    } dup2;
    struct {
      int fd;
      char* path;
      int oflag;
      mode_t mode;
    } open;
    struct {
      char* path;
    } chdir;
    struct {
      int fd;
    } fchdir;
  } a;
};

// The file a posix_spawn child will execute for `path`: a relative path is resolved in the
// directory the file actions leave the child in (addchdir_np, addfchdir_np), not ours. False
// when that cannot be told (fchdir to a descriptor the actions themselves set up): the caller
// refuses, as it cannot check the binary.
bool SpawnTarget(const char* path, const posix_spawn_file_actions_t* fa, char* out, size_t cap) {
  size_t len = std::strlen(path);
  if (path[0] == '/' || fa == nullptr || fa->__used <= 0) {
    return size_t(std::snprintf(out, cap, "%s", path)) < cap;
  }
  const auto* acts = reinterpret_cast<const GlibcSpawnAction*>(fa->__actions);
  char dir[kPathMax] = "";  // "": the caller's working directory
  for (int i = 0; i < fa->__used; ++i) {
    const GlibcSpawnAction& act = acts[i];
    if (act.tag == 3) {
      const char* d = act.a.chdir.path;
      char joined[kPathMax];
      int w = d[0] == '/' || dir[0] == 0 ? std::snprintf(joined, sizeof joined, "%s", d)
                                         : std::snprintf(joined, sizeof joined, "%s/%s", dir, d);
      if (w < 0 || size_t(w) >= sizeof joined) return false;
      std::memcpy(dir, joined, size_t(w) + 1);
    } else if (act.tag == 4) {
      int fd = act.a.fchdir.fd;
      for (int j = 0; j < i; ++j) {  // a descriptor the child opens or dup2s itself
        if ((acts[j].tag == 2 && acts[j].a.open.fd == fd) ||
            (acts[j].tag == 1 && acts[j].a.dup2.newfd == fd)) {
          return false;
        }
      }
      std::snprintf(dir, sizeof dir, "/proc/self/fd/%d", fd);
    }
  }
  int w = dir[0] == 0 ? std::snprintf(out, cap, "%s", path)
                      : std::snprintf(out, cap, "%s/%.*s", dir, int(len), path);
  return w >= 0 && size_t(w) < cap;
}

// CheckExec for what a posix_spawn child will run (0 or an errno).
int CheckSpawn(const char* path, const posix_spawn_file_actions_t* fa, char* const argv[],
               char* const envp[]) {
  if (path == nullptr || ExecUnguarded()) return 0;
  char target[2 * kPathMax];
  if (!SpawnTarget(path, fa, target, sizeof target)) {
    Complain(
        "spawn of %s refused under %s: the directory its file actions change to cannot be "
        "checked",
        path, NetworkLabel());
    return EPERM;
  }
  return CheckExec(target, argv, envp, true, true);
}

// posix_spawn and friends for a binary CheckSpawn answered kRunStrict: `spawn(via, argv')` with
// argv' = `via run --strict ... -- path argv...` (in the parent: any memory will do).
template <typename Spawn>
int SpawnStrict(const char* path, char* const argv[], Spawn spawn) {
  char via[kPathMax];
  if (!FindVia(via, sizeof via)) return EPERM;
  size_t need = (ArgCount(argv) + kStrictExtra) * sizeof(char*);
  void* stack[need <= kExecStackBytes ? need / sizeof(void*) + 1 : 1];
  ExecScratch mem(need, stack, sizeof stack);
  if (mem.get() == nullptr) return ENOMEM;
  char** a = static_cast<char**>(mem.get());
  StrictArgv(via, path, argv, a);
  return spawn(via, a);
}

}  // namespace

// posix_spawn returns its error (errno is not its contract).
template <typename Spawn>
int SpawnWithFixedEnv(char* const envp[], Spawn spawn) {
  int rc = WithFixedEnv(envp, spawn);
  return rc == -1 && errno == ENOMEM ? ENOMEM : rc;
}

namespace {

// posix_spawn, posix_spawnp, pidfd_spawn and pidfd_spawnp: `target` (the file the child will
// run; nullptr when a PATH search found none, and the real function will say so) is checked;
// a binary strict mode covers is spawned as `via run --strict ...` with `by_path(file, argv,
// env)` (the non-searching variant), anything else as called, `as_called(env)`, always with
// the environment repaired.
template <typename ByPath, typename AsCalled>
int GuardedSpawn(const char* target, const posix_spawn_file_actions_t* fa, char* const argv[],
                 char* const envp[], ByPath by_path, AsCalled as_called) {
  if (target != nullptr) {
    int err = CheckSpawn(target, fa, argv, envp);
    if (err == kRunStrict) {
      return SpawnStrict(target, argv, [&](const char* via, char** a) {
        return SpawnWithFixedEnv(envp, [&](char** env) { return by_path(via, a, env); });
      });
    }
    if (err != 0) return err;
  }
  return SpawnWithFixedEnv(envp, as_called);
}

}  // namespace

VIA_EXPORT int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* fa,
                           const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  auto by_path = [&](const char* p, char* const a[], char** env) {
    return Real().posix_spawn(pid, p, fa, attr, a, env);
  };
  return GuardedSpawn(path, fa, argv, envp, by_path,
                      [&](char** env) { return by_path(path, argv, env); });
}

VIA_EXPORT int posix_spawnp(pid_t* pid, const char* file, const posix_spawn_file_actions_t* fa,
                            const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  char found[kPathMax];
  return GuardedSpawn(
      SearchPath(file, found, sizeof found) ? found : nullptr, fa, argv, envp,
      [&](const char* p, char* const a[], char** env) {
        return Real().posix_spawn(pid, p, fa, attr, a, env);
      },
      [&](char** env) { return Real().posix_spawnp(pid, file, fa, attr, argv, env); });
}

// execveat(2): the file is `path` relative to `dirfd` (or the descriptor itself with
// AT_EMPTY_PATH and an empty path); the check reads it through /proc/self/fd as fexecve's does.
VIA_EXPORT int execveat(int dirfd, const char* path, char* const argv[], char* const envp[],
                        int flags) {
  if (path == nullptr) {
    errno = EFAULT;
    return -1;
  }
  size_t len = std::strlen(path);
  if (len >= kPathMax) {
    errno = ENAMETOOLONG;  // what the kernel says of such a path
    return -1;
  }
  char target[kPathMax + 32];
  if (path[0] == '/' || (dirfd == AT_FDCWD && path[0] != 0)) {
    std::memcpy(target, path, len + 1);
  } else if (path[0] == 0 && (flags & AT_EMPTY_PATH) != 0) {
    std::snprintf(target, sizeof target, "/proc/self/fd/%d", dirfd);
  } else {
    std::snprintf(target, sizeof target, "/proc/self/fd/%d/%s", dirfd, path);
  }
  return CheckedExec(
      target, argv, envp,
      [&](char** env) { return int(syscall(SYS_execveat, dirfd, path, argv, env, flags)); }, false);
}

// glibc 2.39's pidfd_spawn and pidfd_spawnp (posix_spawn answering with a pidfd): guarded as
// posix_spawn is. Resolved on first call only, so a libc without them is never asked.
namespace {
using PidfdSpawnFn = int(int*, const char*, const posix_spawn_file_actions_t*,
                         const posix_spawnattr_t*, char* const[], char* const[]);
constinit LazyFn<PidfdSpawnFn> g_pidfd_spawn = {"pidfd_spawn", nullptr};
constinit LazyFn<PidfdSpawnFn> g_pidfd_spawnp = {"pidfd_spawnp", nullptr};
}  // namespace

VIA_EXPORT int pidfd_spawn(int* pidfd, const char* path, const posix_spawn_file_actions_t* fa,
                           const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  auto by_path = [&](const char* p, char* const a[], char** env) {
    return g_pidfd_spawn(pidfd, p, fa, attr, a, env);
  };
  return GuardedSpawn(path, fa, argv, envp, by_path,
                      [&](char** env) { return by_path(path, argv, env); });
}

VIA_EXPORT int pidfd_spawnp(int* pidfd, const char* file, const posix_spawn_file_actions_t* fa,
                            const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  char found[kPathMax];
  return GuardedSpawn(
      SearchPath(file, found, sizeof found) ? found : nullptr, fa, argv, envp,
      [&](const char* p, char* const a[], char** env) {
        return g_pidfd_spawn(pidfd, p, fa, attr, a, env);
      },
      [&](char** env) { return g_pidfd_spawnp(pidfd, file, fa, attr, argv, env); });
}
