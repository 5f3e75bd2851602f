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
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/shim.h"

extern char** environ;

namespace via::shim {

namespace {

constexpr size_t kPathMax = 4096;

bool IsLoader(const char* path) {
  const char* base = std::strrchr(path, '/');
  base = base == nullptr ? path : base + 1;
  return std::strncmp(base, "ld-linux", 8) == 0 || std::strncmp(base, "ld.so", 5) == 0;
}

// Whether the ELF file behind `fd` has a PT_INTERP program header (is dynamically linked).
// `head` holds the first `n` bytes of the file; program headers beyond it are read with pread.
// Returns -1 when it is not an ELF file we can read.
int HasInterpreter(int fd, const unsigned char* head, ssize_t n) {
  if (n < EI_NIDENT || std::memcmp(head, ELFMAG, SELFMAG) != 0) return -1;
  uint64_t phoff;
  uint16_t phentsize, phnum, type;
  if (head[EI_CLASS] == ELFCLASS64 && n >= ssize_t(sizeof(Elf64_Ehdr))) {
    Elf64_Ehdr eh;
    std::memcpy(&eh, head, sizeof eh);
    phoff = eh.e_phoff, phentsize = eh.e_phentsize, phnum = eh.e_phnum, type = eh.e_type;
  } else if (head[EI_CLASS] == ELFCLASS32 && n >= ssize_t(sizeof(Elf32_Ehdr))) {
    Elf32_Ehdr eh;
    std::memcpy(&eh, head, sizeof eh);
    phoff = eh.e_phoff, phentsize = eh.e_phentsize, phnum = eh.e_phnum, type = eh.e_type;
  } else {
    return -1;
  }
  if (type != ET_EXEC && type != ET_DYN) return -1;
  if (phentsize < sizeof(uint32_t) || phnum > 4096) return -1;
  for (uint16_t i = 0; i < phnum; ++i) {
    uint64_t at = phoff + uint64_t(i) * phentsize;
    uint32_t p_type;
    if (at + sizeof p_type <= uint64_t(n)) {
      std::memcpy(&p_type, head + at, sizeof p_type);  // usual case: already read
    } else if (pread(fd, &p_type, sizeof p_type, off_t(at)) != ssize_t(sizeof p_type)) {
      return -1;
    }
    if (p_type == PT_INTERP) return 1;
  }
  return 0;
}

// Copies `len` bytes at file offset `at` into `out`: from `head` (the file's first `n` bytes)
// when they are there, else with one pread. Stack only (vfork children).
bool ReadAt(int fd, const unsigned char* head, ssize_t n, uint64_t at, void* out, size_t len) {
  if (at + len <= uint64_t(n)) {
    std::memcpy(out, head + at, len);
    return true;
  }
  return pread(fd, out, len, off_t(at)) == ssize_t(len);
}

// Whether the ELF file behind `fd` carries Go's build-ID note (owner "Go", type 4) in a PT_NOTE
// segment: a Go program. Go makes its socket system calls itself (even when dynamically linked
// for cgo), so the shim would see none of its connects. Program headers and notes usually lie
// within `head` (the file's first `n` bytes): no extra system call then. Stack only.
bool IsGoProgram(int fd, const unsigned char* head, ssize_t n) {
  if (n < ssize_t(sizeof(Elf64_Ehdr)) || head[EI_CLASS] != ELFCLASS64) return false;
  Elf64_Ehdr eh;
  std::memcpy(&eh, head, sizeof eh);
  if (eh.e_phentsize < sizeof(Elf64_Phdr) || eh.e_phnum > 4096) return false;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    if (!ReadAt(fd, head, n, eh.e_phoff + uint64_t(i) * eh.e_phentsize, &ph, sizeof ph)) {
      return false;
    }
    if (ph.p_type != PT_NOTE) continue;
    unsigned char notes[1024];
    size_t len = ph.p_filesz < sizeof notes ? size_t(ph.p_filesz) : sizeof notes;
    if (!ReadAt(fd, head, n, ph.p_offset, notes, len)) continue;
    size_t off = 0;
    while (off + 12 <= len) {
      uint32_t namesz, descsz, type;
      std::memcpy(&namesz, notes + off, 4);
      std::memcpy(&descsz, notes + off + 4, 4);
      std::memcpy(&type, notes + off + 8, 4);
      size_t name_off = off + 12;
      if (namesz == 4 && type == 4 && name_off + 4 <= len &&
          std::memcmp(notes + name_off, "Go\0\0", 4) == 0) {
        return true;
      }
      size_t next =
          name_off + ((size_t(namesz) + 3) & ~size_t(3)) + ((size_t(descsz) + 3) & ~size_t(3));
      if (next <= off || namesz > len || descsz > len) break;
      off = next;
    }
  }
  return false;
}

// The setuid/setgid part of the check, from the file's metadata.
const char* ModeReason(const struct stat& st) {
  if ((st.st_mode & S_ISUID) != 0 && st.st_uid != geteuid()) return "it is setuid";
  if ((st.st_mode & S_ISGID) != 0 && (st.st_mode & S_IXGRP) != 0 && st.st_gid != getegid()) {
    return "it is setgid";
  }
  return nullptr;
}

// Why exec of `path` would run without the shim, or nullptr. `interp` names a script's
// interpreter when that is the reason. Four system calls for a readable binary (open, fstat, one
// pread that also covers the program headers and usually the notes, close): this runs before
// every exec of a session.
const char* UnroutedReason(const char* path, int depth, char* interp, size_t interp_cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    // Missing (a PATH search tries many): the kernel will say. Unreadable but perhaps executable
    // (mode 4711): the metadata still tells setuid.
    if (errno == ENOENT || errno == ENOTDIR) return nullptr;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return nullptr;
    if (const char* reason = ModeReason(st); reason != nullptr) return reason;
    if (geteuid() != 0 && getxattr(path, "security.capability", nullptr, 0) > 0) {
      return "it has file capabilities";
    }
    return nullptr;
  }
  struct stat st;
  const char* reason = nullptr;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return nullptr;  // the kernel will say
  }
  if ((reason = ModeReason(st)) != nullptr ||
      (geteuid() != 0 && fgetxattr(fd, "security.capability", nullptr, 0) > 0 &&
       (reason = "it has file capabilities") != nullptr)) {
    close(fd);
    return reason;
  }
  unsigned char head[1024];
  ssize_t n = pread(fd, head, sizeof head - 1, 0);
  if (n >= 2 && head[0] == '#' && head[1] == '!' && depth == 0) {
    head[n] = 0;
    char* p = reinterpret_cast<char*>(head) + 2;
    while (*p == ' ' || *p == '\t') ++p;
    size_t len = std::strcspn(p, " \t\r\n");
    if (len > 0 && len < interp_cap) {
      std::memcpy(interp, p, len);
      interp[len] = 0;
      char unused[8];
      if (UnroutedReason(interp, 1, unused, sizeof unused) != nullptr) {
        reason = "its interpreter would run without the shim";
      }
    }
  } else if (int dynamic = HasInterpreter(fd, head, n); dynamic == 0 && !IsLoader(path)) {
    reason = "it is statically linked";
  } else if (dynamic == 1 && IsGoProgram(fd, head, n)) {
    reason = "it is a Go program, which makes its network system calls itself, past the shim";
  }
  close(fd);
  return reason;
}

// 0 if `path` may be executed, else EPERM (after one line on stderr).
int CheckExec(const char* path) {
  const Settings& s = GetSettings();
  if (path == nullptr || ExecUnguarded() || s.unrouted_exec_allowed) return 0;
  char interp[kPathMax] = {};
  const char* reason = UnroutedReason(path, 0, interp, sizeof interp);
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
int CheckedExec(const char* path, char* const envp[], Exec exec) {
  if (int err = CheckExec(path); err != 0) {
    errno = err;
    return -1;
  }
  GreetBrokerBeforeExec(path);
  size_t n = 0;
  while (envp != nullptr && envp[n] != nullptr) ++n;
  char* fixed[n + 9];
  char store[8192];
  return exec(const_cast<char**>(FixEnv(envp, fixed, n + 9, store, sizeof store)));
}

// execve with both checks. Never returns on success.
int CheckedExecve(const char* path, char* const argv[], char* const envp[]) {
  return CheckedExec(path, envp, [&](char** env) { return Real().execve(path, argv, env); });
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
  return CheckedExec(path, envp, [&](char** env) { return Real().fexecve(fd, argv, env); });
}

VIA_EXPORT int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* fa,
                           const posix_spawnattr_t* attr, char* const argv[], char* const envp[]) {
  if (int err = CheckExec(path); err != 0) return err;
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
    if (int err = CheckExec(found); err != 0) return err;
  }
  size_t n = 0;
  while (envp != nullptr && envp[n] != nullptr) ++n;
  char* fixed[n + 9];
  char store[8192];
  return Real().posix_spawnp(pid, file, fa, attr, argv,
                             const_cast<char**>(FixEnv(envp, fixed, n + 9, store, sizeof store)));
}
