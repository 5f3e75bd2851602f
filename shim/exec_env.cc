// The child's environment under the exec guard. See exec_env.h.
//
// Which LD_PRELOAD entry is the shim is decided from what the kernel says about this library's
// own mapping (its path, then device and inode), never from a name: a program may put any file
// called "libvia.so" in LD_PRELOAD.
#include "shim/exec_env.h"

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

#include "shim/state.h"

extern char** environ;

// The ELF header of libvia.so itself, as mapped (defined by the linker).
extern "C" const ElfW(Ehdr) __ehdr_start __attribute__((visibility("hidden")));

namespace via::shim {

namespace {

constexpr size_t kPathMax = 4096;

// This library's file as the kernel has it mapped (device and inode are read when needed).
struct SelfFile {
  char path[kPathMax];
  size_t len;
};

SelfFile g_self;
// 0: not known yet, 1: being written, 2: known, 3: cannot be known (no /proc). Written in a
// vfork child too (shared with the parent): the same truth there.
int g_self_state = 0;

// The range of our first PT_LOAD mapping (which holds the ELF header), page aligned.
void FirstMapping(uintptr_t* lo, uintptr_t* hi) {
  const auto* eh = &__ehdr_start;
  const auto* ph =
      reinterpret_cast<const ElfW(Phdr)*>(reinterpret_cast<const char*>(eh) + eh->e_phoff);
  uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  uintptr_t base = reinterpret_cast<uintptr_t>(eh);
  *lo = base & ~(page - 1);
  *hi = *lo + page;
  for (int i = 0; i < eh->e_phnum; ++i) {
    if (ph[i].p_type != PT_LOAD) continue;
    // The header lies at file offset 0 of the first PT_LOAD: its end is base + memsz - offset.
    *hi = (base + ph[i].p_memsz - ph[i].p_offset + page - 1) & ~(page - 1);
    break;
  }
}

// The path of the file mapped at our ELF header: /proc/self/map_files names the mapping
// exactly (one readlink); /proc/self/maps when the mapping's range differs from ours.
bool SelfPath(char* out, size_t cap) {
  uintptr_t lo, hi;
  FirstMapping(&lo, &hi);
  char link[96];
  std::snprintf(link, sizeof link, "/proc/self/map_files/%lx-%lx", (unsigned long)lo,
                (unsigned long)hi);
  ssize_t n = readlink(link, out, cap - 1);
  if (n > 0 && out[0] == '/') {
    out[n] = 0;
    return true;
  }
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  // Lines are "lo-hi perms offset dev inode   path"; a path is at most PATH_MAX.
  char buf[kPathMax + 512];
  size_t have = 0;
  bool found = false;
  uintptr_t ours = reinterpret_cast<uintptr_t>(&__ehdr_start);
  for (;;) {
    ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    have += size_t(r);
    buf[have] = 0;
    char* line = buf;
    char* nl;
    while ((nl = std::strchr(line, '\n')) != nullptr) {
      *nl = 0;
      unsigned long a = 0, b = 0;
      if (std::sscanf(line, "%lx-%lx", &a, &b) == 2 && ours >= a && ours < b) {
        char* slash = std::strchr(line, '/');
        if (slash != nullptr && size_t(nl - slash) < cap) {
          std::memcpy(out, slash, size_t(nl - slash) + 1);
          found = true;
        }
        break;
      }
      line = nl + 1;
    }
    if (found || nl != nullptr) break;
    // Keep the unfinished line; a line longer than the buffer is not ours to parse.
    size_t rest = have - size_t(line - buf);
    if (rest == sizeof buf - 1) break;
    std::memmove(buf, line, rest);
    have = rest;
  }
  close(fd);
  return found;
}

// This library's file, known once per process (inherited across fork). Returns &g_self, or
// `scratch` filled in while another thread publishes the same answer, or nullptr.
const SelfFile* Self(SelfFile* scratch) {
  int state = __atomic_load_n(&g_self_state, __ATOMIC_ACQUIRE);
  if (state == 2) return &g_self;
  if (state == 3) return nullptr;
  SelfFile& f = *scratch;
  if (!SelfPath(f.path, sizeof f.path)) {
    __atomic_store_n(&g_self_state, 3, __ATOMIC_RELEASE);
    return nullptr;
  }
  f.len = std::strlen(f.path);
  // A library replaced on disk while mapped: its path now names the new file, which is the shim
  // the child will load.
  constexpr char kDeleted[] = " (deleted)";
  constexpr size_t kDeletedLen = sizeof kDeleted - 1;
  if (f.len > kDeletedLen && std::strcmp(f.path + f.len - kDeletedLen, kDeleted) == 0) {
    f.len -= kDeletedLen;
    f.path[f.len] = 0;
  }
  // Publish unless another thread is doing so (a fork child may even inherit state 1 from a
  // thread that no longer exists there): never wait for it.
  int expected = 0;
  if (__atomic_compare_exchange_n(&g_self_state, &expected, 1, false, __ATOMIC_ACQUIRE,
                                  __ATOMIC_RELAXED)) {
    g_self = f;
    __atomic_store_n(&g_self_state, 2, __ATOMIC_RELEASE);
  }
  return scratch;
}

}  // namespace

void FindSelf() {
  SelfFile scratch;
  Self(&scratch);
}

namespace {

// Whether the LD_PRELOAD list `list` (entries separated by ':' or ' ', as the loader splits it)
// names this library: by the kernel's path first (no system call), then by device and inode for
// entries that are paths. An entry without '/' is looked up by the loader in its library
// directories, not here: it does not count (the shim is then added once more, and the loader
// maps the same file only once).
bool NamesSelf(const char* list, const SelfFile& self) {
  for (const char* p = list; *p != 0;) {
    size_t len = std::strcspn(p, ": ");
    if (len == self.len && std::memcmp(p, self.path, len) == 0) return true;
    p += len;
    if (*p != 0) ++p;
  }
  // Our device and inode, read only now: the usual list names the library by its own path.
  struct stat ours;
  bool have_ours = false;
  for (const char* p = list; *p != 0;) {
    size_t len = std::strcspn(p, ": ");
    if (len > 0 && len < kPathMax && std::memchr(p, '/', len) != nullptr) {
      if (!have_ours && stat(self.path, &ours) != 0) return false;
      have_ours = true;
      char path[kPathMax];
      std::memcpy(path, p, len);
      path[len] = 0;
      struct stat st;
      if (stat(path, &st) == 0 && st.st_dev == ours.st_dev && st.st_ino == ours.st_ino) {
        return true;
      }
    }
    p += len;
    if (*p != 0) ++p;
  }
  return false;
}

bool IsPreload(const char* entry) { return std::strncmp(entry, "LD_PRELOAD=", 11) == 0; }

struct Var {
  const char* name;
  const char* value;
  // An empty value counts as missing: VIA_SOCKET, VIA_CONFIG and VIA_SESSION only say where
  // the broker and the session are, and a child with all of them emptied would think no broker
  // could route it. (An empty VIA_NETWORK is a program's way to select nothing explicitly: the
  // broker then gives the session's network; it is left as it is.)
  bool empty_is_missing;
};

// The VIA_* variables this process started with, to restore where missing.
size_t SnapshotVars(Var* out) {
  const Settings& s = GetSettings();
  struct {
    Var var;
    unsigned too_long;
  } all[] = {{{"VIA_NETWORK", s.network, false}, kTooLongNetwork},
             {{"VIA_SESSION", s.session, true}, kTooLongSession},
             {{"VIA_SOCKET", s.socket_path, true}, kTooLongSocket},
             {{"VIA_CONFIG", s.config, true}, kTooLongConfig},
             {{"VIA_QUIET", s.quiet ? "1" : "", false}, 0},
             {{"VIA_UNROUTED_EXEC",
               s.unrouted_exec_allowed  ? "allow"
               : s.unrouted_exec_strict ? "strict"
                                        : "",
               false},
              0}};
  size_t n = 0;
  for (const auto& v : all) {
    // A value that did not fit its field is not restored cut short (it would name something else).
    if (v.var.value[0] != 0 && (s.too_long & v.too_long) == 0) out[n++] = v.var;
  }
  return n;
}
constexpr size_t kMaxVars = 6;

// One pass over `envp` for FixEnvSize and FixEnv: what is missing, and the bytes the repair
// needs. `self` is nullptr when this library's file cannot be known.
struct Repair {
  size_t count = 0;  // entries of envp
  size_t bytes = 0;  // strings to add
  bool preload_seen = false;
  bool needed = false;
};

// Where `v` stands in `envp`: -1 when it must be added, the index of the entry (the first, which
// getenv in the child reads) to replace, or -2 when it is there already.
long VarSlot(char* const* envp, const Var& v) {
  size_t len = std::strlen(v.name);
  for (size_t i = 0; envp != nullptr && envp[i] != nullptr; ++i) {
    if (std::strncmp(envp[i], v.name, len) == 0 && envp[i][len] == '=') {
      return v.empty_is_missing && envp[i][len + 1] == 0 ? long(i) : -2;
    }
  }
  return -1;
}

Repair Plan(char* const* envp, const SelfFile* self, const Var* vars, size_t nvars) {
  Repair r;
  for (; envp != nullptr && envp[r.count] != nullptr; ++r.count) {
    const char* e = envp[r.count];
    if (self == nullptr || !IsPreload(e)) continue;
    r.preload_seen = true;
    if (!NamesSelf(e + 11, *self)) {
      r.needed = true;
      r.bytes += 11 + self->len + 1 + std::strlen(e + 11) + 1;
    }
  }
  if (self != nullptr && !r.preload_seen) {
    r.needed = true;
    r.bytes += 11 + self->len + 1;
  }
  for (size_t i = 0; i < nvars; ++i) {
    if (VarSlot(envp, vars[i]) == -2) continue;
    r.needed = true;
    r.bytes += std::strlen(vars[i].name) + 1 + std::strlen(vars[i].value) + 1;
  }
  return r;
}

// Appends "name=a" + "b" at `*at` (room was counted by Plan); returns the string.
char* Put(char** at, const char* name, const char* a, size_t alen, const char* b) {
  char* s = *at;
  size_t nlen = std::strlen(name), blen = std::strlen(b);
  std::memcpy(s, name, nlen);
  s[nlen] = '=';
  std::memcpy(s + nlen + 1, a, alen);
  std::memcpy(s + nlen + 1 + alen, b, blen + 1);
  *at = s + nlen + 1 + alen + blen + 1;
  return s;
}

}  // namespace

bool FindVia(char* exe, size_t cap) {
  SelfFile scratch;
  const SelfFile* self = Self(&scratch);
  if (self == nullptr) return false;
  // The `via` next to the library, as broker_link.cc's EnsureBroker looks for it.
  const char* slash = std::strrchr(self->path, '/');
  int dlen = int(slash - self->path);
  for (const char* pattern : {"%.*s/via", "%.*s/../../bin/via"}) {
    int w = std::snprintf(exe, cap, pattern, dlen, self->path);
    if (w > 0 && size_t(w) < cap && access(exe, X_OK) == 0) return true;
  }
  return false;
}

int EnsureBrokerDetached(char* path, size_t cap, char* msg, size_t msgcap) {
  char exe[kPathMax + 16];
  if (!FindVia(exe, sizeof exe)) {
    std::snprintf(msg, msgcap, "no `via` executable next to libvia.so to start a broker");
    return EHOSTUNREACH;
  }
  // The environment minus LD_PRELOAD (the broker never routes its own sockets).
  size_t n = 0;
  while (environ != nullptr && environ[n] != nullptr) ++n;
  size_t need = (n + 1) * sizeof(char*);
  void* stack[need <= kExecStackBytes ? need / sizeof(void*) + 1 : 1];
  ExecScratch mem(need, stack, sizeof stack);
  if (mem.get() == nullptr) return ENOMEM;
  char** env = static_cast<char**>(mem.get());
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!IsPreload(environ[i])) env[k++] = environ[i];
  }
  env[k] = nullptr;
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return errno;
  char arg0[] = "via", arg1[] = "broker", arg2[] = "--ensure";
  char* argv[] = {arg0, arg1, arg2, nullptr};
  // A plain fork by system call: no atfork handlers, no libc locks; the new process has a
  // private copy of memory and only makes system calls before it execs.
  long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) {
    if (dup2(pipefd[1], 1) == 1) syscall(SYS_execve, exe, argv, env);
    syscall(SYS_exit_group, 127);
  }
  int err = pid < 0 ? errno : 0;
  close(pipefd[1]);
  size_t got = 0;
  while (pid > 0) {
    ssize_t r = read(pipefd[0], path + got, cap - 1 - got);
    if (r > 0 && (got += size_t(r)) < cap - 1) continue;
    if (r < 0 && errno == EINTR) continue;
    break;
  }
  close(pipefd[0]);
  path[got] = 0;
  if (err != 0) return err;
  int status = 0;
  while (waitpid(pid_t(pid), &status, 0) < 0 && errno == EINTR) {
  }
  if (char* nl = std::strchr(path, '\n'); nl != nullptr) *nl = 0;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 3) return ESRCH;  // no configuration anywhere
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || path[0] != '/') {
    std::snprintf(msg, msgcap, "`%s broker --ensure` could not start a broker", exe);
    return EHOSTUNREACH;
  }
  return 0;
}

ExecScratch::ExecScratch(size_t need, void* stack, size_t stack_cap) {
  if (need <= stack_cap) {
    p_ = stack;
    return;
  }
  void* m = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m != MAP_FAILED) {
    p_ = m;
    mapped_ = need;
  }
}

ExecScratch::~ExecScratch() {
  if (mapped_ != 0) {
    int saved = errno;  // the exec's errno is the caller's answer
    munmap(p_, mapped_);
    errno = saved;
  }
}

size_t FixEnvSize(char* const* envp) {
  Var vars[kMaxVars];
  size_t nvars = SnapshotVars(vars);
  SelfFile scratch;
  Repair r = Plan(envp, Self(&scratch), vars, nvars);
  if (!r.needed) return 0;
  // The new array: every entry, perhaps one LD_PRELOAD and the variables, the terminator.
  return (r.count + 1 + nvars + 1) * sizeof(char*) + r.bytes;
}

char* const* FixEnv(char* const* envp, void* buf, size_t cap) {
  Var vars[kMaxVars];
  size_t nvars = SnapshotVars(vars);
  SelfFile scratch;
  const SelfFile* self = Self(&scratch);
  Repair r = Plan(envp, self, vars, nvars);
  if (!r.needed) return envp;
  size_t array = (r.count + 1 + nvars + 1) * sizeof(char*);
  if (cap < array + r.bytes) return nullptr;
  char** out = static_cast<char**>(buf);
  char* store = static_cast<char*>(buf) + array;
  long slots[kMaxVars];
  for (size_t v = 0; v < nvars; ++v) slots[v] = VarSlot(envp, vars[v]);
  size_t k = 0;
  for (size_t i = 0; i < r.count; ++i) {
    const char* e = envp[i];
    size_t v = 0;
    while (v < nvars && slots[v] != long(i)) ++v;
    if (v < nvars) {  // an emptied location: ours in its place
      out[k++] = Put(&store, vars[v].name, vars[v].value, std::strlen(vars[v].value), "");
      continue;
    }
    if (self != nullptr && IsPreload(e) && !NamesSelf(e + 11, *self)) {
      // Ours first, then the program's own list, whole.
      out[k++] = Put(&store, "LD_PRELOAD", self->path, self->len, e[11] != 0 ? ":" : "");
      --store;  // over the terminator: append the program's list
      size_t len = std::strlen(e + 11);
      std::memcpy(store, e + 11, len + 1);
      store += len + 1;
      continue;
    }
    out[k++] = const_cast<char*>(e);
  }
  if (self != nullptr && !r.preload_seen) {
    out[k++] = Put(&store, "LD_PRELOAD", self->path, self->len, "");
  }
  for (size_t i = 0; i < nvars; ++i) {
    if (slots[i] != -1) continue;
    out[k++] = Put(&store, vars[i].name, vars[i].value, std::strlen(vars[i].value), "");
  }
  out[k] = nullptr;
  return out;
}

namespace {

// Whether the mode bits of `st` give `want` (4 read, 1 search) to `euid` with `egid` and
// `groups`: as the kernel decides for a process without capabilities (ACLs not consulted).
bool ModeAllows(const struct stat& st, unsigned want, uid_t euid, gid_t egid, const gid_t* groups,
                int ngroups) {
  if (st.st_uid == euid) return ((st.st_mode >> 6) & want) == want;
  bool member = st.st_gid == egid;
  for (int i = 0; i < ngroups && !member; ++i) member = groups[i] == st.st_gid;
  if (member) return ((st.st_mode >> 3) & want) == want;
  return (st.st_mode & want) == want;
}

// Whether the loader, run by this process's exec with its effective ids and without the
// capabilities it may hold now (setpriv and daemons keep theirs until the exec), can open
// `path`: every directory on the way searchable, the file readable.
bool LoaderCanRead(const char* path) {
  uid_t euid = geteuid();
  if (euid == 0) return true;
  gid_t egid = getegid();
  gid_t groups[256];
  int ngroups = getgroups(256, groups);
  if (ngroups < 0) return false;  // more groups than fit: not worth guessing
  // The path comes from the kernel (/proc/self/map_files or maps): absolute, no symbolic links.
  char prefix[kPathMax];
  size_t len = std::strlen(path);
  if (path[0] != '/' || len >= sizeof prefix) return false;
  std::memcpy(prefix, path, len + 1);
  struct stat st;
  if (stat("/", &st) != 0 || !ModeAllows(st, 1, euid, egid, groups, ngroups)) return false;
  for (size_t i = 1; i < len; ++i) {
    if (path[i] != '/') continue;
    prefix[i] = 0;
    bool searchable = stat(prefix, &st) == 0 && ModeAllows(st, 1, euid, egid, groups, ngroups);
    prefix[i] = '/';
    if (!searchable) return false;
  }
  return stat(path, &st) == 0 && ModeAllows(st, 4, euid, egid, groups, ngroups);
}

}  // namespace

const char* ShimUnreadableReason(char* detail, size_t cap) {
  if (geteuid() == static_cast<uid_t>(getauxval(AT_EUID))) return nullptr;
  SelfFile scratch;
  const SelfFile* self = Self(&scratch);
  if (self == nullptr) {
    std::snprintf(detail, cap, "%s", "its file could not be found in /proc/self");
    return "this process changed user and the shim cannot tell whether the new user can load it";
  }
  if (LoaderCanRead(self->path)) return nullptr;
  std::snprintf(detail, cap, "%s", self->path);
  return "this process changed user and the new user cannot read the shim, so the loader would "
         "skip it";
}

}  // namespace via::shim
