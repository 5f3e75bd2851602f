// The exec guard's check of a binary (see binary_check.h). Stack only: no malloc, no locks.
#include "shim/binary_check.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

namespace via::shim {

namespace {

// The kernel's exec_binprm: the file and at most 5 interpreters (a 6th level is ELOOP).
constexpr int kMaxInterpreters = 5;
// BINPRM_BUF_SIZE: the kernel reads the `#!` line from the first 256 bytes.
constexpr size_t kShebangBuf = 256;

// ---- this process's dynamic loader ------------------------------------------------------------
// Found once: the kernel ran it as the program's PT_INTERP (AT_BASE != 0; the path is in the
// program's headers, mapped in memory), or ran it as the program itself (`ld.so prog`:
// AT_BASE is 0 and /proc/self/exe is the loader). No malloc, no locks.
struct LoaderId {
  int state;     // 0 not looked up, 1 looked up
  int id_state;  // 0 not stat'ed, 1 dev/ino known, 2 unknown
  bool self;     // the loader is the program itself (AT_BASE 0)
  dev_t dev;
  ino_t ino;
  char path[256];  // the PT_INTERP string ("" when unknown): binaries naming it are cacheable
};
LoaderId g_loader;

// The loader's path, from memory (no system call).
const LoaderId& Loader() {
  if (__atomic_load_n(&g_loader.state, __ATOMIC_ACQUIRE) != 0) return g_loader;
  if (getauxval(AT_BASE) == 0) {
    g_loader.self = true;
  } else {
    auto* ph = reinterpret_cast<const ElfW(Phdr)*>(getauxval(AT_PHDR));
    size_t n = getauxval(AT_PHNUM);
    uintptr_t bias = 0;
    const char* interp = nullptr;
    for (size_t i = 0; ph != nullptr && i < n; ++i) {
      if (ph[i].p_type == PT_PHDR) bias = reinterpret_cast<uintptr_t>(ph) - ph[i].p_vaddr;
    }
    for (size_t i = 0; ph != nullptr && i < n; ++i) {
      if (ph[i].p_type == PT_INTERP) interp = reinterpret_cast<const char*>(bias + ph[i].p_vaddr);
    }
    if (interp != nullptr && interp[0] == '/' && std::strlen(interp) < sizeof g_loader.path) {
      std::memcpy(g_loader.path, interp, std::strlen(interp) + 1);
    }
  }
  __atomic_store_n(&g_loader.state, 1, __ATOMIC_RELEASE);
  return g_loader;
}

// Whether `st` is this process's loader (its device and inode, stat'ed once when needed).
bool IsOurLoader(const struct stat& st) {
  const LoaderId& l = Loader();
  if (__atomic_load_n(&g_loader.id_state, __ATOMIC_ACQUIRE) == 0) {
    struct stat ls;
    bool ok = l.self ? stat("/proc/self/exe", &ls) == 0 : l.path[0] != 0 && stat(l.path, &ls) == 0;
    if (ok) g_loader.dev = ls.st_dev, g_loader.ino = ls.st_ino;
    __atomic_store_n(&g_loader.id_state, ok ? 1 : 2, __ATOMIC_RELEASE);
  }
  return g_loader.id_state == 1 && st.st_dev == l.dev && st.st_ino == l.ino;
}

// Whether PT_INTERP `interp` names this process's loader by its very path.
bool NamesOurLoader(const char* interp) {
  const LoaderId& l = Loader();
  return l.path[0] != 0 && std::strcmp(interp, l.path) == 0;
}

// ---- the verdict cache --------------------------------------------------------------------------
// Files that passed, by identity. Each slot is a seqlock written with a try-lock: a writer that
// finds the slot busy skips caching, a reader that sees it change misses; nobody waits.
struct CacheKey {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime, ctime;
  uid_t euid;  // the capability check is skipped for root
};
enum Verdict : uint8_t { kPassElf = 1, kPassScript = 2, kGoObject = 3, kNotGo = 4 };
struct CacheSlot {
  unsigned seq;  // odd while written
  CacheKey key;
  uint8_t verdict;
  char interp[126];  // kPassScript: "name\0arg\0" of its `#!` line
};
constexpr size_t kCacheSlots = 64;
struct CacheTable {
  bool used;  // a verdict was ever stored (else a lookup cannot hit: skip its stat)
  CacheSlot slots[kCacheSlots];
};
// This process's table, until it first forks (ShareVerdictCache): from then on one table in a
// shared anonymous mapping, which the forked children inherit. A verdict a child works out
// before its exec then serves the parent and every later child, instead of going with the
// child's memory at exec: the usual fork-and-exec loop checks each binary once. The children
// are the same program until they exec (and the key holds the euid), so sharing with them
// trusts nobody new.
CacheTable g_local_cache;
CacheTable* g_cache = &g_local_cache;

CacheTable& Table() { return *__atomic_load_n(&g_cache, __ATOMIC_ACQUIRE); }

CacheKey KeyOf(const struct stat& st, uid_t euid) {
  return CacheKey{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim, euid};
}

bool SameKey(const CacheKey& a, const CacheKey& b) {
  return a.dev == b.dev && a.ino == b.ino && a.size == b.size && a.euid == b.euid && a.mtime.tv_sec == b.mtime.tv_sec &&
         a.mtime.tv_nsec == b.mtime.tv_nsec && a.ctime.tv_sec == b.ctime.tv_sec &&
         a.ctime.tv_nsec == b.ctime.tv_nsec;
}

size_t SlotOf(const CacheKey& k) {
  uint64_t h = uint64_t(k.ino) * 0x9e3779b97f4a7c15ull ^ uint64_t(k.dev);
  return size_t(h >> 58) % kCacheSlots;
}

// Copies the slot's verdict (and script line) if it holds `k`.
bool CacheGet(const CacheKey& k, uint8_t* verdict, char* interp, size_t cap) {
  CacheSlot& s = Table().slots[SlotOf(k)];
  unsigned seq = __atomic_load_n(&s.seq, __ATOMIC_ACQUIRE);
  if ((seq & 1) != 0 || seq == 0) return false;
  CacheSlot copy;
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  std::memcpy(static_cast<void*>(&copy), static_cast<const void*>(&s), sizeof copy);
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  if (__atomic_load_n(&s.seq, __ATOMIC_RELAXED) != seq || !SameKey(copy.key, k)) return false;
  *verdict = copy.verdict;
  if (interp != nullptr && cap >= sizeof copy.interp) {
    std::memcpy(interp, copy.interp, sizeof copy.interp);
  }
  return true;
}

void CachePut(const CacheKey& k, uint8_t verdict, const char* name = nullptr,
              const char* arg = nullptr) {
  // A file changed within the last seconds may change again within the same timestamp tick
  // (ctime is coarse) with the same size: its key would not tell. Checked again next time.
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  if (k.ctime.tv_sec >= now.tv_sec - 2 || k.mtime.tv_sec >= now.tv_sec - 2) return;
  CacheTable& table = Table();
  CacheSlot& s = table.slots[SlotOf(k)];
  char line[sizeof s.interp] = {};
  if (name != nullptr) {
    size_t a = std::strlen(name), b = std::strlen(arg);
    if (a + b + 2 > sizeof line) return;  // too long to cache: checked every time
    std::memcpy(line, name, a + 1);
    std::memcpy(line + a + 1, arg, b + 1);
  }
  unsigned seq = __atomic_load_n(&s.seq, __ATOMIC_RELAXED);
  if ((seq & 1) != 0 || !__atomic_compare_exchange_n(&s.seq, &seq, seq + 1, false, __ATOMIC_ACQUIRE,
                                                     __ATOMIC_RELAXED)) {
    return;
  }
  __atomic_thread_fence(__ATOMIC_RELEASE);
  s.key = k;
  s.verdict = verdict;
  std::memcpy(s.interp, line, sizeof line);
  __atomic_store_n(&s.seq, seq + 2, __ATOMIC_RELEASE);
  __atomic_store_n(&table.used, true, __ATOMIC_RELAXED);
}

// ---- reading the file ---------------------------------------------------------------------------
// The file's first bytes (and a second window, e.g. around the section headers), so that most
// reads cost no system call.
struct FileView {
  int fd;
  const unsigned char* head;
  size_t head_len;
  const unsigned char* tail = nullptr;
  uint64_t tail_off = 0;
  size_t tail_len = 0;

  bool Read(uint64_t at, void* out, size_t len) const {
    if (at + len >= at && at + len <= head_len) {
      std::memcpy(out, head + at, len);
      return true;
    }
    if (tail != nullptr && at >= tail_off && at + len >= at && at + len <= tail_off + tail_len) {
      std::memcpy(out, tail + (at - tail_off), len);
      return true;
    }
    if (at > uint64_t(INT64_MAX)) return false;
    return pread(fd, out, len, off_t(at)) == ssize_t(len);
  }
};

bool ReadEhdr(const FileView& f, Elf64_Ehdr* eh) {
  unsigned char ident[EI_NIDENT];
  if (!f.Read(0, ident, sizeof ident) || std::memcmp(ident, ELFMAG, SELFMAG) != 0) return false;
  if (ident[EI_CLASS] == ELFCLASS64) return f.Read(0, eh, sizeof *eh);
  if (ident[EI_CLASS] != ELFCLASS32) return false;
  Elf32_Ehdr e;
  if (!f.Read(0, &e, sizeof e)) return false;
  std::memcpy(eh->e_ident, e.e_ident, EI_NIDENT);
  eh->e_type = e.e_type, eh->e_machine = e.e_machine, eh->e_phoff = e.e_phoff;
  eh->e_shoff = e.e_shoff, eh->e_phentsize = e.e_phentsize, eh->e_phnum = e.e_phnum;
  eh->e_shentsize = e.e_shentsize, eh->e_shnum = e.e_shnum, eh->e_shstrndx = e.e_shstrndx;
  return true;
}

bool Is64(const Elf64_Ehdr& eh) { return eh.e_ident[EI_CLASS] == ELFCLASS64; }

bool ReadPhdr(const FileView& f, const Elf64_Ehdr& eh, unsigned i, Elf64_Phdr* ph) {
  uint64_t at = eh.e_phoff + uint64_t(i) * eh.e_phentsize;
  if (Is64(eh)) return eh.e_phentsize >= sizeof *ph && f.Read(at, ph, sizeof *ph);
  Elf32_Phdr p;
  if (eh.e_phentsize < sizeof p || !f.Read(at, &p, sizeof p)) return false;
  ph->p_type = p.p_type, ph->p_flags = p.p_flags, ph->p_offset = p.p_offset;
  ph->p_vaddr = p.p_vaddr, ph->p_filesz = p.p_filesz, ph->p_memsz = p.p_memsz;
  return true;
}

bool ReadShdr(const FileView& f, const Elf64_Ehdr& eh, uint64_t i, Elf64_Shdr* sh) {
  uint64_t at = eh.e_shoff + i * eh.e_shentsize;
  if (Is64(eh)) return eh.e_shentsize >= sizeof *sh && f.Read(at, sh, sizeof *sh);
  Elf32_Shdr s;
  if (eh.e_shentsize < sizeof s || !f.Read(at, &s, sizeof s)) return false;
  sh->sh_name = s.sh_name, sh->sh_type = s.sh_type, sh->sh_flags = s.sh_flags;
  sh->sh_offset = s.sh_offset, sh->sh_size = s.sh_size, sh->sh_link = s.sh_link;
  return true;
}

ElfKind Classify(const FileView& f, char* interp, size_t cap) {
  Elf64_Ehdr eh;
  if (!ReadEhdr(f, &eh)) return ElfKind::kNotElf;
  if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN) return ElfKind::kBad;
  if (eh.e_phnum > 4096) return ElfKind::kBad;
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    if (!ReadPhdr(f, eh, i, &ph)) return ElfKind::kBad;
    if (ph.p_type != PT_INTERP) continue;
    // The kernel (binfmt_elf): 2 <= p_filesz <= PATH_MAX, NUL-terminated at its last byte.
    if (ph.p_filesz < 2 || ph.p_filesz > 4096 || ph.p_filesz > cap) return ElfKind::kBad;
    if (!f.Read(ph.p_offset, interp, size_t(ph.p_filesz))) return ElfKind::kBad;
    if (interp[ph.p_filesz - 1] != 0) return ElfKind::kBad;
    return ElfKind::kDynamic;
  }
  return ElfKind::kStatic;
}

// Go's build-ID note (owner "Go", type 4) in a PT_NOTE segment.
bool HasGoNote(const FileView& f, const Elf64_Ehdr& eh) {
  for (unsigned i = 0; i < eh.e_phnum && i < 4096; ++i) {
    Elf64_Phdr ph;
    if (!ReadPhdr(f, eh, i, &ph)) return false;
    if (ph.p_type != PT_NOTE) continue;
    unsigned char notes[1024];
    size_t len = ph.p_filesz < sizeof notes ? size_t(ph.p_filesz) : sizeof notes;
    if (!f.Read(ph.p_offset, notes, len)) continue;
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
      if (namesz > len || descsz > len) break;
      size_t next =
          name_off + ((size_t(namesz) + 3) & ~size_t(3)) + ((size_t(descsz) + 3) & ~size_t(3));
      if (next <= off) break;
      off = next;
    }
  }
  return false;
}

// Section names only Go's linker writes (internal or external linking, stripped or not):
// .go.buildinfo (its build information), .gopclntab (the runtime's function table), .go.module,
// .go.fipsinfo, .note.go.buildid.
bool IsGoSectionName(const char* s, size_t n) {
  static const char* const kNames[] = {".go.buildinfo",    ".gopclntab",
                                       ".go.module",       ".go.fipsinfo",
                                       ".note.go.buildid", ".data.rel.ro.gopclntab"};
  for (const char* name : kNames) {
    size_t len = std::strlen(name);
    if (n > len && std::memcmp(s, name, len + 1) == 0) return true;
  }
  return false;
}

// -1: no section headers to tell; 0/1: whether a Go section is there.
int HasGoSection(FileView& f, const Elf64_Ehdr& eh, unsigned char* win, size_t wincap) {
  if (eh.e_shoff == 0) return -1;
  uint64_t shnum = eh.e_shnum;
  uint32_t strndx = eh.e_shstrndx;
  Elf64_Shdr sh0;
  if (shnum == 0 || strndx == SHN_XINDEX) {  // large counts live in section 0
    if (!ReadShdr(f, eh, 0, &sh0)) return -1;
    if (shnum == 0) shnum = sh0.sh_size;
    if (strndx == SHN_XINDEX) strndx = sh0.sh_link;
  }
  if (shnum == 0 || shnum > 65536 || strndx >= shnum) return -1;
  uint64_t entsize = Is64(eh) ? sizeof(Elf64_Shdr) : sizeof(Elf32_Shdr);
  if (eh.e_shentsize < entsize) return -1;
  // One read for the table and (usually just before it) the names.
  uint64_t end = eh.e_shoff + shnum * eh.e_shentsize;
  if (end < eh.e_shoff) return -1;
  uint64_t start = end > wincap ? end - wincap : 0;
  ssize_t got = pread(f.fd, win, size_t(end - start), off_t(start));
  if (got > 0) {
    f.tail = win, f.tail_off = start, f.tail_len = size_t(got);
  }
  Elf64_Shdr strtab;
  if (!ReadShdr(f, eh, strndx, &strtab)) return -1;
  for (uint64_t i = 1; i < shnum; ++i) {
    Elf64_Shdr sh;
    if (!ReadShdr(f, eh, i, &sh)) return -1;
    if (sh.sh_name >= strtab.sh_size) continue;
    char name[24];
    size_t n = sizeof name;
    if (strtab.sh_size - sh.sh_name < n) n = size_t(strtab.sh_size - sh.sh_name);
    if (!f.Read(strtab.sh_offset + sh.sh_name, name, n)) continue;
    if (IsGoSectionName(name, n)) return 1;
  }
  return 0;
}

// Without section headers: Go's build-information magic, 16-byte aligned, in a writable
// PT_LOAD segment (where .go.buildinfo lives). Read in 4 KiB steps, at most 64 MiB.
bool HasBuildInfoMagic(const FileView& f, const Elf64_Ehdr& eh) {
  static const char kMagic[] = "\xff Go buildinf:";
  uint64_t budget = uint64_t(64) << 20;
  for (unsigned i = 0; i < eh.e_phnum && i < 4096; ++i) {
    Elf64_Phdr ph;
    if (!ReadPhdr(f, eh, i, &ph)) return false;
    if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) == 0) continue;
    unsigned char buf[4096];
    uint64_t first = (ph.p_offset + 15) & ~uint64_t(15);
    for (uint64_t at = first; at < ph.p_offset + ph.p_filesz && budget > 0; at += sizeof buf) {
      ssize_t got = pread(f.fd, buf, sizeof buf, off_t(at));
      if (got <= 0) break;
      budget -= uint64_t(got) < budget ? uint64_t(got) : budget;
      for (ssize_t k = 0; k + 14 <= got; k += 16) {
        if (std::memcmp(buf + k, kMagic, 14) == 0) return true;
      }
    }
  }
  return false;
}

bool IsGo(FileView& f) {
  Elf64_Ehdr eh;
  if (!ReadEhdr(f, &eh) || eh.e_phnum > 4096) return false;
  if (HasGoNote(f, eh)) return true;
  unsigned char win[4096];
  int sections = HasGoSection(f, eh, win, sizeof win);
  f.tail = nullptr;
  if (sections >= 0) return sections == 1;
  return HasBuildInfoMagic(f, eh);
}

// The setuid/setgid part of the check, from the file's metadata.
const char* ModeReason(const struct stat& st) {
  if ((st.st_mode & S_ISUID) != 0 && st.st_uid != geteuid()) return "it is setuid";
  if ((st.st_mode & S_ISGID) != 0 && (st.st_mode & S_IXGRP) != 0 && st.st_gid != getegid()) {
    return "it is setgid";
  }
  return nullptr;
}

void Copy(char* out, size_t cap, const char* s) {
  size_t n = std::strlen(s);
  if (n >= cap) n = cap - 1;
  std::memcpy(out, s, n);
  out[n] = 0;
}

constexpr const char* kGoReason =
    "it is a Go program, which makes its network system calls itself, past the shim";
constexpr const char* kStaticReason = "it is statically linked";

// The program the loader runs: `args` are the loader's arguments after its name (the prefix
// `pre[0..npre)` from `#!` lines, then `argv`).
struct ArgList {
  const char* pre[2 * kMaxInterpreters + 2];
  int npre = 0;
  char* const* argv = nullptr;  // the exec's argv[1..] (may be nullptr)

  int Size() const {
    int n = npre;
    while (argv != nullptr && argv[n - npre] != nullptr && n < 1 << 20) ++n;
    return n;
  }
  const char* At(int i) const { return i < npre ? pre[i] : argv[i - npre]; }
};

void CloseFd(int fd) {
  if (fd >= 0) close(fd);
}

// What one step of Check decided: a final answer (`reason`, nullptr when exec runs under the
// shim), or go on with the next program of the chain.
struct Step {
  bool final;
  const char* reason;
};
constexpr Step kGoOn{false, nullptr};
constexpr Step Final(const char* reason) { return Step{true, reason}; }

// Check's walk down the chain the kernel (and the loader) will follow. Everything on the stack,
// reused level by level: this runs in vfork children.
struct Walk {
  const char* path;  // what exec was asked to run
  char* detail;      // gets the file a reason is about when that is not `path`
  size_t cap;
  uid_t euid;
  const char* current;  // the file this level looks at
  ArgList args;         // its loader arguments
  bool via_loader;      // run by the dynamic loader as its program (not by the kernel)
  int level = 0;        // binfmt handlers run so far (the kernel allows kMaxInterpreters + 1)
  int loader_runs = 0;  // ld.so running ld.so ...
  char lines[kMaxInterpreters + 1][2][kShebangBuf];  // each level's interpreter and argument
  char interp[kCheckPathMax];                        // the current file's PT_INTERP

  // The buffers stay uninitialized: each level writes what it reads.
  Walk(const char* p, ArgList a, bool loader, char* d, size_t c)
      : path(p), detail(d), cap(c), euid(geteuid()), current(p), args(a), via_loader(loader) {}

  // `reason`, naming the current file in `detail` when it is not `path` itself.
  const char* Blame(const char* reason) {
    if (current != path) Copy(detail, cap, current);
    return reason;
  }
  // `reason`, naming `what` in `detail` (also when it is `path`).
  const char* BlameNamed(const char* what, const char* reason) {
    Copy(detail, cap, what);
    return reason;
  }
};

// The current file as one level sees it: its metadata and a cached verdict, or its descriptor
// and first bytes. Closes the descriptor when the level is done.
struct Level {
  struct stat st;
  int fd = -1;
  bool hit = false;  // a cached verdict (kPassElf or kPassScript) for this very file
  uint8_t verdict = 0;
  char cached[sizeof CacheSlot::interp];  // kPassScript: its `#!` line
  unsigned char head[1024];
  ssize_t n = 0;  // bytes in `head`

  Level() = default;
  Level(const Level&) = delete;
  Level& operator=(const Level&) = delete;
  ~Level() { CloseFd(fd); }

  bool IsScript() const {
    return hit ? verdict == kPassScript : (n >= 2 && head[0] == '#' && head[1] == '!');
  }
};

// A process that has cached verdicts tries them first: one stat. (A forked child whose parent
// never checked anything goes straight to reading the file.) A hit still answers setuid/setgid
// from the fresh metadata.
Step LookUpCached(Walk& w, Level& lv) {
  if (!__atomic_load_n(&Table().used, __ATOMIC_RELAXED) || stat(w.current, &lv.st) != 0 ||
      !S_ISREG(lv.st.st_mode)) {
    return kGoOn;
  }
  lv.hit = CacheGet(KeyOf(lv.st, w.euid), &lv.verdict, lv.cached, sizeof lv.cached) &&
           (lv.verdict == kPassElf || lv.verdict == kPassScript);
  const char* reason = lv.hit && !w.via_loader ? ModeReason(lv.st) : nullptr;
  if (reason != nullptr) return Final(w.Blame(reason));
  return kGoOn;
}

// The current file cannot be opened (`open_errno`): what the metadata alone still tells.
Step Unopenable(Walk& w, Level& lv, int open_errno) {
  // Missing (a PATH search tries many): the kernel will say. Unreadable but perhaps executable
  // (mode 4711): the metadata still tells setuid.
  if (w.via_loader || open_errno == ENOENT || open_errno == ENOTDIR) return Final(nullptr);
  if (stat(w.current, &lv.st) != 0 || !S_ISREG(lv.st.st_mode)) return Final(nullptr);
  if (w.current != w.path) Copy(w.detail, w.cap, w.current);  // every answer below is about it
  if (const char* reason = ModeReason(lv.st); reason != nullptr) return Final(reason);
  if (w.euid != 0 && getxattr(w.current, "security.capability", nullptr, 0) > 0) {
    return Final("it has file capabilities");
  }
  // Executable but unreadable (mode 0111): the kernel runs it, and the check cannot tell whether
  // it is static or Go. An interpreter must read a script, so only an ELF file could run: refuse
  // (fail closed). Not executable: the kernel refuses it.
  if (open_errno == EACCES && access(w.current, X_OK) == 0) {
    return Final(
        "it cannot be read, so the check cannot tell whether it would run without the shim");
  }
  return Final(nullptr);
}

// Opens the current file (no cached verdict): its metadata's reasons (setuid/setgid, file
// capabilities: the loader drops LD_PRELOAD), then its first bytes.
Step OpenAndRead(Walk& w, Level& lv) {
  lv.fd = open(w.current, O_RDONLY | O_CLOEXEC);
  if (lv.fd < 0) return Unopenable(w, lv, errno);
  if (fstat(lv.fd, &lv.st) != 0 || !S_ISREG(lv.st.st_mode)) return Final(nullptr);  // the kernel
  if (!w.via_loader) {
    if (const char* reason = ModeReason(lv.st); reason != nullptr) return Final(w.Blame(reason));
    if (w.euid != 0 && fgetxattr(lv.fd, "security.capability", nullptr, 0) > 0) {
      return Final(w.Blame("it has file capabilities"));
    }
  }
  lv.n = pread(lv.fd, lv.head, sizeof lv.head, 0);
  if (lv.n < 0) lv.n = 0;
  return kGoOn;
}

// binfmt_script: the kernel runs `name [arg] current args...`. The walk goes on with `name`.
Step EnterInterpreter(Walk& w, Level& lv) {
  char* name = w.lines[w.level][0];
  char* arg = w.lines[w.level][1];
  if (lv.hit) {
    Copy(name, kShebangBuf, lv.cached);
    Copy(arg, kShebangBuf, lv.cached + std::strlen(lv.cached) + 1);
  } else if (ParseShebang(lv.head, size_t(lv.n), name, kShebangBuf, arg, kShebangBuf) != 1) {
    return Final(nullptr);  // ENOEXEC from the kernel
  } else {
    CachePut(KeyOf(lv.st, w.euid), kPassScript, name, arg);
  }
  if (w.level >= kMaxInterpreters) {  // the kernel: ELOOP
    return Final(w.BlameNamed(w.current, "it nests more interpreters than the check follows"));
  }
  // New argument prefix: name's args are [arg] current <old args>.
  ArgList next;
  next.argv = w.args.argv;
  int k = 0;
  if (arg[0] != 0) next.pre[k++] = arg;
  next.pre[k++] = w.current;
  for (int i = 0; i < w.args.npre && k < int(sizeof next.pre / sizeof next.pre[0]); ++i) {
    next.pre[k++] = w.args.pre[i];
  }
  next.npre = k;
  w.args = next;
  w.current = name;
  ++w.level;
  return kGoOn;
}

// A statically linked file: refused, unless it is this process's ld.so, which runs the program
// named after its options; the walk goes on with that program, as the loader's.
Step EnterLoaderProgram(Walk& w, const struct stat& st) {
  if (!IsOurLoader(st)) {
    return Final(w.Blame(w.via_loader
                             ? "the dynamic loader would run it, and it is statically linked"
                             : kStaticReason));
  }
  int total = w.args.Size();
  const char* list[64];
  int nlist = total < 64 ? total : 64;
  for (int i = 0; i < nlist; ++i) list[i] = w.args.At(i);
  int at = LoaderProgramIndex(list, nlist);
  if (at == -1 && total > nlist) {
    return Final("the dynamic loader's command line is too long to check");
  }
  if (at == -1) return Final(nullptr);  // usage or --version: nothing runs
  if (at == -2) {
    return Final(w.BlameNamed(
        w.current, "the dynamic loader's command line has an option the check does not know"));
  }
  if (at == -3) {
    return Final(w.BlameNamed(
        w.current, "the dynamic loader would load an audit library, outside the shim's namespace"));
  }
  const char* prog = list[at];
  if (std::strchr(prog, '/') == nullptr) {
    return Final(w.BlameNamed(prog, "the dynamic loader would search for the program it runs"));
  }
  if (++w.loader_runs > 4) return Final("the dynamic loader runs itself too many times");
  ArgList next;  // the program's own arguments (they matter if it is the loader again)
  if (at + 1 >= w.args.npre) {
    next.npre = 0;
    next.argv = w.args.argv != nullptr ? w.args.argv + (at + 1 - w.args.npre) : nullptr;
  } else {
    next.npre = w.args.npre - (at + 1);
    for (int i = 0; i < next.npre; ++i) next.pre[i] = w.args.pre[at + 1 + i];
    next.argv = w.args.argv;
  }
  w.args = next;
  w.current = prog;
  w.via_loader = true;
  return kGoOn;
}

// A dynamically linked file (PT_INTERP in `w.interp`): the kernel maps its interpreter and runs
// it. Only this process's loader preloads the shim; another (a static program, a 32-bit or
// foreign loader) runs without it. Then: Go code makes its system calls itself.
const char* CheckDynamic(Walk& w, Level& lv, FileView& f) {
  if (!w.via_loader) {
    struct stat ist;
    bool ours = NamesOurLoader(w.interp);
    if (!ours && stat(w.interp, &ist) == 0 && !IsOurLoader(ist)) {
      return w.BlameNamed(w.interp,
                          "its program interpreter is not this process's dynamic loader (which "
                          "loads the shim)");
    }
  }
  if (IsGo(f)) return w.Blame(kGoReason);
  // Cacheable when the PT_INTERP is the very path of our loader (a path only root controls);
  // any other interpreter path is resolved again at each exec.
  if (!w.via_loader && NamesOurLoader(w.interp)) {
    CachePut(KeyOf(lv.st, w.euid), kPassElf);
  }
  return nullptr;
}

// Follows what the kernel does with `path` (or, when `via_loader`, what the dynamic loader does
// with it as its program), one level (script interpreter, loader's program) at a time.
const char* Check(const char* path, ArgList args, bool via_loader, char* detail, size_t cap) {
  Walk w(path, args, via_loader, detail, cap);
  for (;;) {
    Level lv;
    Step step = LookUpCached(w, lv);
    if (!step.final && !lv.hit) step = OpenAndRead(w, lv);
    if (step.final) return step.reason;
    if (lv.IsScript() && !w.via_loader) {
      step = EnterInterpreter(w, lv);
      if (step.final) return step.reason;
      continue;
    }
    // Via the loader a script does not run; a cached ELF verdict passed.
    if (lv.IsScript() || lv.hit) return nullptr;
    FileView f{lv.fd, lv.head, size_t(lv.n)};
    ElfKind kind = Classify(f, w.interp, sizeof w.interp);
    if (kind == ElfKind::kNotElf || kind == ElfKind::kBad) {
      return nullptr;  // the kernel (or loader) refuses it
    }
    if (kind == ElfKind::kDynamic) return CheckDynamic(w, lv, f);
    step = EnterLoaderProgram(w, lv.st);
    if (step.final) return step.reason;
  }
}

bool g_scan_done;
unsigned long long g_scan_adds;

struct ScanState {
  char* name;
  size_t cap;
  bool found;
};

uint32_t GnuHash(const char* s) {
  uint32_t h = 5381;
  for (; *s != 0; ++s) h = h * 33 + uint8_t(*s);
  return h;
}

uint32_t SysvHash(const char* s) {
  uint32_t h = 0;
  for (; *s != 0; ++s) {
    h = (h << 4) + uint8_t(*s);
    uint32_t g = h & 0xf0000000u;
    if (g != 0) h ^= g >> 24;
    h &= ~g;
  }
  return h;
}

bool Defined(const ElfW(Sym) & sym, const char* strtab, const char* name) {
  return sym.st_shndx != SHN_UNDEF && std::strcmp(strtab + sym.st_name, name) == 0;
}

// Whether a loaded object defines `name` in its dynamic symbol table: a lookup in its hash
// table, in memory (no system call).
bool DefinesSymbol(const ElfW(Sym) * symtab, const char* strtab, const uint32_t* gnu,
                   const uint32_t* sysv, const char* name) {
  if (gnu != nullptr) {
    uint32_t nbuckets = gnu[0], symoffset = gnu[1], bloom_size = gnu[2], shift = gnu[3];
    if (nbuckets == 0 || bloom_size == 0) return false;
    auto* bloom = reinterpret_cast<const ElfW(Addr)*>(gnu + 4);
    const uint32_t* buckets = reinterpret_cast<const uint32_t*>(bloom + bloom_size);
    const uint32_t* chain = buckets + nbuckets;
    constexpr uint32_t kBits = sizeof(ElfW(Addr)) * 8;
    uint32_t h = GnuHash(name);
    ElfW(Addr) word = bloom[(h / kBits) % bloom_size];
    ElfW(Addr) mask = (ElfW(Addr)(1) << (h % kBits)) | (ElfW(Addr)(1) << ((h >> shift) % kBits));
    if ((word & mask) != mask) return false;
    uint32_t i = buckets[h % nbuckets];
    if (i < symoffset) return false;
    for (;; ++i) {
      uint32_t h2 = chain[i - symoffset];
      if ((h | 1) == (h2 | 1) && Defined(symtab[i], strtab, name)) return true;
      if ((h2 & 1) != 0) return false;
    }
  }
  if (sysv != nullptr) {
    uint32_t nbucket = sysv[0];
    if (nbucket == 0) return false;
    const uint32_t* bucket = sysv + 2;
    const uint32_t* chain = bucket + nbucket;
    for (uint32_t i = bucket[SysvHash(name) % nbucket], n = 0; i != STN_UNDEF && n < sysv[1];
         i = chain[i], ++n) {
      if (Defined(symtab[i], strtab, name)) return true;
    }
  }
  return false;
}

// Whether a loaded object holds Go code: it defines cgo's entry points, which every Go object
// that can be loaded into a C program has (-buildmode=c-shared needs cgo; a cgo program too).
bool LoadedObjectIsGo(const dl_phdr_info* info) {
  const ElfW(Dyn)* dyn = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) {
      dyn = reinterpret_cast<const ElfW(Dyn)*>(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    }
  }
  if (dyn == nullptr) return false;
  // The loader relocates these entries in place (not in the vDSO): below the load address
  // they are still offsets.
  auto at = [info](ElfW(Addr) v) { return v < info->dlpi_addr ? v + info->dlpi_addr : v; };
  const ElfW(Sym)* symtab = nullptr;
  const char* strtab = nullptr;
  const uint32_t* gnu = nullptr;
  const uint32_t* sysv = nullptr;
  for (const ElfW(Dyn)* d = dyn; d->d_tag != DT_NULL; ++d) {
    if (d->d_tag == DT_SYMTAB) symtab = reinterpret_cast<const ElfW(Sym)*>(at(d->d_un.d_ptr));
    if (d->d_tag == DT_STRTAB) strtab = reinterpret_cast<const char*>(at(d->d_un.d_ptr));
    if (d->d_tag == DT_GNU_HASH) gnu = reinterpret_cast<const uint32_t*>(at(d->d_un.d_ptr));
    if (d->d_tag == DT_HASH) sysv = reinterpret_cast<const uint32_t*>(at(d->d_un.d_ptr));
  }
  if (symtab == nullptr || strtab == nullptr) return false;
  static const char* const kCgoSymbols[] = {"crosscall2", "_cgo_panic", "_cgo_topofstack",
                                            "x_cgo_init"};
  for (const char* name : kCgoSymbols) {
    if (DefinesSymbol(symtab, strtab, gnu, sysv, name)) return true;
  }
  return false;
}

}  // namespace

int ParseShebang(const unsigned char* buf, size_t n, char* name, size_t namecap, char* arg,
                 size_t argcap) {
  if (n < 2 || buf[0] != '#' || buf[1] != '!') return 0;
  if (n > kShebangBuf) n = kShebangBuf;
  // As fs/binfmt_script.c: the line ends at '\n' or at the end of the buffer; the name ends at
  // a space, tab or NUL; trailing spaces/tabs are trimmed; the rest is one argument.
  char b[kShebangBuf + 1];
  std::memcpy(b, buf, n);
  b[n] = 0;
  auto spacetab = [](char c) { return c == ' ' || c == '\t'; };
  auto terminator = [](char c) { return c == ' ' || c == '\t' || c == 0; };
  char* buf_end = b + n;  // the kernel: one past the last byte it may use
  char* i_end = static_cast<char*>(std::memchr(b, '\n', n));
  if (i_end == nullptr) {
    char* p = b + 2;
    while (p < buf_end && spacetab(*p)) ++p;
    if (p >= buf_end) return -1;  // entire buffer is spaces/tabs
    char* q = p;
    while (q < buf_end && !terminator(*q)) ++q;
    if (q >= buf_end) return -1;  // the interpreter name is truncated
    i_end = buf_end;
  }
  while (i_end > b + 2 && spacetab(i_end[-1])) --i_end;
  *i_end = 0;
  char* i_name = b + 2;
  while (i_name < i_end && spacetab(*i_name)) ++i_name;
  if (i_name >= i_end || *i_name == 0) return -1;  // no interpreter name
  char* i_sep = i_name;
  while (i_sep < i_end && !terminator(*i_sep)) ++i_sep;
  const char* i_arg = "";
  if (i_sep < i_end && *i_sep != 0) {
    char* p = i_sep;
    while (p < i_end && spacetab(*p)) ++p;
    if (p < i_end) i_arg = p;
  }
  size_t name_len = size_t(i_sep - i_name);
  if (name_len + 1 > namecap || std::strlen(i_arg) + 1 > argcap) return -1;
  std::memcpy(name, i_name, name_len);
  name[name_len] = 0;
  std::memcpy(arg, i_arg, std::strlen(i_arg) + 1);
  return 1;
}

ElfKind ClassifyElf(int fd, char* interp, size_t cap) {
  unsigned char head[1024];
  ssize_t n = pread(fd, head, sizeof head, 0);
  FileView f{fd, head, n > 0 ? size_t(n) : 0};
  return Classify(f, interp, cap);
}

bool IsGoFile(int fd) {
  unsigned char head[1024];
  ssize_t n = pread(fd, head, sizeof head, 0);
  FileView f{fd, head, n > 0 ? size_t(n) : 0};
  return IsGo(f);
}

int LoaderProgramIndex(const char* const* args, int n) {
  // glibc 2.36 rtld.c, dl_main: options are consumed while they match; an option that takes a
  // value needs one after it (else it is unknown: usage error).
  static const char* const kFlags[] = {"--list",          "--verify", "--inhibit-cache",
                                       "--list-tunables", "--help",   "--list-diagnostics"};
  static const char* const kWithValue[] = {
      "--library-path", "--inhibit-rpath",        "--preload",
      "--argv0",        "--glibc-hwcaps-prepend", "--glibc-hwcaps-mask"};
  bool audit = false;
  int i = 0;
  while (i < n) {
    const char* a = args[i];
    bool matched = false;
    for (const char* f : kFlags) {
      if (std::strcmp(a, f) == 0) matched = true;
    }
    if (matched) {
      ++i;
      continue;
    }
    for (const char* f : kWithValue) {
      if (std::strcmp(a, f) == 0 && i + 1 < n) matched = true;
    }
    if (std::strcmp(a, "--audit") == 0 && i + 1 < n) matched = audit = true;
    if (matched) {
      i += 2;
      continue;
    }
    if (std::strcmp(a, "--version") == 0) return -1;
    if (a[0] == '-' && a[1] == '-') return -2;  // glibc: "unrecognized option" (also "--")
    break;
  }
  if (audit) return -3;
  return i < n ? i : -1;
}

bool StrictCovers(const char* reason) { return reason == kGoReason || reason == kStaticReason; }

void ShareVerdictCache() {
  Loader();  // from memory: found here once rather than in every child
  if (__atomic_load_n(&g_cache, __ATOMIC_ACQUIRE) != &g_local_cache) return;
  void* p =
      mmap(nullptr, sizeof(CacheTable), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;  // the children check as before, each for itself
  // Empty (zero pages): the few verdicts of the local table are worked out again once.
  CacheTable* expected = &g_local_cache;
  if (!__atomic_compare_exchange_n(&g_cache, &expected, static_cast<CacheTable*>(p), false,
                                   __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
    munmap(p, sizeof(CacheTable));
  }
}

const char* UnroutedReason(const char* path, char* const argv[], char* detail, size_t cap) {
  detail[0] = 0;
  ArgList args;
  args.argv = argv != nullptr && argv[0] != nullptr ? argv + 1 : nullptr;
  return Check(path, args, false, detail, cap);
}

const char* EnvironmentReason(char* const envp[], char* detail, size_t cap) {
  for (size_t i = 0; envp != nullptr && envp[i] != nullptr; ++i) {
    if (std::strncmp(envp[i], "LD_AUDIT=", 9) == 0 && envp[i][9] != 0) {
      Copy(detail, cap, envp[i]);
      return "the dynamic loader would load an audit library, outside the shim's namespace";
    }
  }
  return nullptr;
}

const char* SharedObjectReason(const char* path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return nullptr;
  }
  CacheKey key = KeyOf(st, 0);  // no capability check here: any euid
  uint8_t verdict = 0;
  bool go;
  if (CacheGet(key, &verdict, nullptr, 0) && (verdict == kGoObject || verdict == kNotGo)) {
    go = verdict == kGoObject;
  } else {
    go = IsGoFile(fd);
    CachePut(key, go ? kGoObject : kNotGo);
  }
  close(fd);
  return go ? "it holds Go code, which makes its network system calls itself, past the shim"
            : nullptr;
}

bool LoadedGoObject(char* name, size_t cap) {
  unsigned long long adds = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        *static_cast<unsigned long long*>(data) = info->dlpi_adds;
        return 1;
      },
      &adds);
  if (__atomic_load_n(&g_scan_done, __ATOMIC_ACQUIRE) &&
      __atomic_load_n(&g_scan_adds, __ATOMIC_RELAXED) == adds) {
    return false;
  }
  ScanState state{name, cap, false};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* s = static_cast<ScanState*>(data);
        if (LoadedObjectIsGo(info)) {
          const char* n = info->dlpi_name;
          Copy(s->name, s->cap, n != nullptr && n[0] != 0 ? n : "the program");
          s->found = true;
          return 1;
        }
        return 0;
      },
      &state);
  if (!state.found) {
    __atomic_store_n(&g_scan_adds, adds, __ATOMIC_RELAXED);
    __atomic_store_n(&g_scan_done, true, __ATOMIC_RELEASE);
  }
  return state.found;
}

}  // namespace via::shim
