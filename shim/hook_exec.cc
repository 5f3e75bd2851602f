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
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/binary_check.h"
#include "shim/shim.h"

extern char** environ;

namespace via::shim {

namespace {

constexpr size_t kPathMax = 4096;

// 0 if `path` may be executed with `argv` and `envp`, else EPERM (after one line on stderr).
int CheckExec(const char* path, char* const argv[], char* const envp[]) {
  const Settings& s = GetSettings();
  if (path == nullptr || ExecUnguarded() || s.unrouted_exec_allowed) return 0;
  char interp[kPathMax] = {};
  const char* reason = EnvironmentReason(envp, interp, sizeof interp);
  if (reason == nullptr) reason = UnroutedReason(path, argv, interp, sizeof interp);
  if (reason == nullptr) return 0;
  Complain(
      "exec of %s refused under %s: %s%s%s, so its traffic would not go through the overlay "
      "(network_service.unrouted_exec: allow permits it)",
      path, NetworkLabel(), reason, interp[0] != 0 ? ": " : "", interp);
  return EPERM;
}

bool HasVar(char* const* envp, const char* name, size_t len, const char** value) {
  for (size_t i = 0; envp != nullptr && envp[i] != nullptr; ++i) {
    if (std::strncmp(envp[i], name, len) == 0 && envp[i][len] == '=') {
      *value = envp[i] + len + 1;
      return true;
    }
  }
  return false;
}

// Our own entry of LD_PRELOAD (the one naming libvia.so), into `out`.
bool ShimEntry(char* out, size_t cap) {
  const char* p = GetSettings().preload;
  while (*p != 0) {
    size_t len = std::strcspn(p, ": ");
    if (len >= 9 && std::strncmp(p + len - 9, "libvia.so", 9) == 0 && len < cap) {
      std::memcpy(out, p, len);
      out[len] = 0;
      return true;
    }
    p += len;
    if (*p != 0) ++p;
  }
  return false;
}

// Environment with the shim's variables restored where missing: pointers in `out` (capacity
// `cap`), new strings in `store`. Returns `envp` itself when nothing was missing.
char* const* FixEnv(char* const* envp, char** out, size_t cap, char* store, size_t store_cap) {
  const Settings& s = GetSettings();
  if (ExecUnguarded() || envp == nullptr) return envp;
  size_t n = 0;
  while (envp[n] != nullptr) ++n;
  if (n + 8 > cap) return envp;
  size_t used = 0;
  size_t k = 0;
  auto add = [&](const char* name, const char* v1, const char* v2) {
    int w = std::snprintf(store + used, store_cap - used, "%s=%s%s", name, v1, v2);
    if (w < 0 || size_t(w) >= store_cap - used) return;
    out[k++] = store + used;
    used += size_t(w) + 1;
  };
  char shim[kPathMax];
  bool have_shim = ShimEntry(shim, sizeof shim);
  const char* preload = nullptr;
  bool changed = false;
  for (size_t i = 0; i < n; ++i) {
    if (std::strncmp(envp[i], "LD_PRELOAD=", 11) == 0) {
      preload = envp[i] + 11;
      if (have_shim && std::strstr(preload, "libvia.so") == nullptr) {
        add("LD_PRELOAD", shim, preload[0] != 0 ? ":" : "");
        if (preload[0] != 0) {  // append the program's own list after ours
          size_t len = std::strlen(out[k - 1]);
          int w = std::snprintf(out[k - 1] + len, store_cap - used, "%s", preload);
          if (w > 0) used += size_t(w);
        }
        changed = true;
        continue;
      }
    }
    out[k++] = envp[i];
  }
  if (preload == nullptr && have_shim) {
    add("LD_PRELOAD", shim, "");
    changed = true;
  }
  struct {
    const char* name;
    const char* value;
  } vars[] = {{"VIA_NETWORK", s.network},
              {"VIA_SESSION", s.session},
              {"VIA_SOCKET", s.socket_path},
              {"VIA_CONFIG", s.config},
              {"VIA_QUIET", s.quiet ? "1" : ""},
              {"VIA_UNROUTED_EXEC", s.unrouted_exec_allowed ? "allow" : ""}};
  for (const auto& v : vars) {
    const char* current;
    if (v.value[0] == 0 || HasVar(envp, v.name, std::strlen(v.name), &current)) continue;
    add(v.name, v.value, "");
    changed = true;
  }
  out[k] = nullptr;
  return changed ? out : envp;
}

// Checks the binary at `path`, then calls exec(environment) with envp repaired by FixEnv (on the
// stack: exec either replaces the process or fails).
template <typename Exec>
int CheckedExec(const char* path, char* const argv[], char* const envp[], Exec exec) {
  if (int err = CheckExec(path, argv, envp); err != 0) {
    errno = err;
    return -1;
  }
  size_t n = 0;
  while (envp != nullptr && envp[n] != nullptr) ++n;
  char* fixed[n + 9];
  char store[8192];
  return exec(const_cast<char**>(FixEnv(envp, fixed, n + 9, store, sizeof store)));
}

// execve with both checks. Never returns on success.
int CheckedExecve(const char* path, char* const argv[], char* const envp[]) {
  return CheckedExec(path, argv, envp, [&](char** env) { return Real().execve(path, argv, env); });
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
        if (errno == ENOEXEC) {
          size_t argc = 0;
          while (argv[argc] != nullptr) ++argc;
          char* sh_argv[argc + 2];
          sh_argv[0] = const_cast<char*>("/bin/sh");
          sh_argv[1] = candidate;
          for (size_t i = 1; i <= argc; ++i) sh_argv[i + 1] = argv[i];
          CheckedExecve("/bin/sh", sh_argv, envp);
          return -1;
        }
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
shell : {
  size_t argc = 0;
  while (argv[argc] != nullptr) ++argc;
  char* sh_argv[argc + 2];
  sh_argv[0] = const_cast<char*>("/bin/sh");
  sh_argv[1] = const_cast<char*>(file);
  for (size_t i = 1; i <= argc; ++i) sh_argv[i + 1] = argv[i];
  CheckedExecve("/bin/sh", sh_argv, envp);
  return -1;
}
}

// Finds `file` on PATH the way posix_spawnp will, for the check.
bool SearchPath(const char* file, char* out, size_t cap) {
  if (std::strchr(file, '/') != nullptr) {
    std::snprintf(out, cap, "%s", file);
    return true;
  }
  const char* path = getenv("PATH");
  if (path == nullptr) path = "/bin:/usr/bin";
  for (const char* p = path;; ++p) {
    const char* end = std::strchr(p, ':');
    size_t dlen = end == nullptr ? std::strlen(p) : size_t(end - p);
    std::snprintf(out, cap, "%.*s%s%s", int(dlen), p, dlen ? "/" : "", file);
    if (access(out, X_OK) == 0) return true;
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
  return CheckedExec(path, argv, envp, [&](char** env) { return Real().fexecve(fd, argv, env); });
}

VIA_EXPORT int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* fa,
                           const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  if (int err = CheckExec(path, argv, envp); err != 0) return err;
  size_t n = 0;
  while (envp != nullptr && envp[n] != nullptr) ++n;
  char* fixed[n + 9];
  char store[8192];
  return Real().posix_spawn(pid, path, fa, attr, argv,
                            const_cast<char**>(FixEnv(envp, fixed, n + 9, store, sizeof store)));
}

VIA_EXPORT int posix_spawnp(pid_t* pid, const char* file, const posix_spawn_file_actions_t* fa,
                            const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  char found[kPathMax];
  if (SearchPath(file, found, sizeof found)) {
    if (int err = CheckExec(found, argv, envp); err != 0) return err;
  }
  size_t n = 0;
  while (envp != nullptr && envp[n] != nullptr) ++n;
  char* fixed[n + 9];
  char store[8192];
  return Real().posix_spawnp(pid, file, fa, attr, argv,
                             const_cast<char**>(FixEnv(envp, fixed, n + 9, store, sizeof store)));
}
