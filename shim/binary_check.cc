// The exec guard's check of a binary (see binary_check.h). Stack only: no malloc, no locks.
#include "shim/binary_check.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

namespace via::shim {

namespace {

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

}  // namespace

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

}  // namespace via::shim
