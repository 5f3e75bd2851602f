// The exec guard's check of a binary: would exec of this file run code without the shim, or code
// whose traffic the shim would not see? It decides from what the kernel and the dynamic loader
// will do with the file, never from its name:
//  - a `#!` script: the kernel runs its interpreter (with the optional argument), which may be a
//    script again; the chain is followed as binfmt_script does, to the ELF file that runs;
//  - an ELF file without a program interpreter runs without the loader (statically linked),
//    unless it IS this process's dynamic loader (same device and inode), which then runs the
//    program named on its command line (after its options): that program is checked;
//  - an ELF file whose PT_INTERP is not this process's dynamic loader: that interpreter runs
//    instead of the loader that would preload the shim;
//  - Go code (recognised by its sections, build-ID note and build-info magic), which makes its
//    socket system calls itself;
//  - setuid/setgid or file capabilities (the loader drops LD_PRELOAD).
// Verdicts for files that pass are cached per (device, inode, size, mtime, ctime, euid): a
// repeated exec of the same binary costs one stat, also from the children of a forking process
// (ShareVerdictCache).
//
// Stack only, no malloc, no locks: this runs in vfork children too.
#pragma once

#include <cstddef>

namespace via::shim {

constexpr size_t kCheckPathMax = 4096;

// Why exec of `path` with arguments `argv` (may be nullptr) would run code without the shim, or
// nullptr. `detail` (capacity `cap`, at least 1) gets the file the reason is about when that is
// not `path` itself (an interpreter, the program the loader would run), else "".
const char* UnroutedReason(const char* path, char* const argv[], char* detail, size_t cap);

// Why the dynamic loader, given environment `envp`, would load code outside the shim's reach,
// or nullptr: LD_AUDIT (audit libraries run in their own link-map namespace, with a libc the
// shim is not preloaded into). `detail` gets the value.
const char* EnvironmentReason(char* const envp[], char* detail, size_t cap);

// Why loading the shared object at `path` (dlopen) would bring in code whose traffic the shim
// would not see (Go), or nullptr (also when the file cannot be read: the loader will say).
const char* SharedObjectReason(const char* path);

// Whether an object loaded in this process (at start or by dlopen since) holds Go code: fills
// `name` with its path and returns true. Scans only when the set of loaded objects grew since
// the last call (dl_iterate_phdr's add counter); cached per file. Not for vfork children.
bool LoadedGoObject(char* name, size_t cap);

// Under an overlay: if an object loaded in this process holds Go code (LoadedGoObject), says so
// and ends the process (exit status 126): its traffic would bypass the overlay. For the first
// routed call of a process (and after dlopen added objects). hook_dlopen.cc.
void CheckLoadedObjects();

// Whether strict mode (`via run --strict`: a network namespace, connects placed by via) covers
// a binary refused for `reason` (an UnroutedReason): a statically linked program or a Go one,
// run directly. Not setuid or capabilities (no_new_privs would drop them), not the loader's or
// an interpreter's cases.
bool StrictCovers(const char* reason);

// Before this process first forks (the fork hook): its verdicts go to a table shared with the
// children it forks from then on, so a verdict one child works out before its exec is not lost
// with the child's memory. Once per process; harmless to call again.
void ShareVerdictCache();

// ---- exposed for the unit tests ----
// Parses a `#!` line as the kernel's binfmt_script does: `buf` holds the file's first `n` bytes
// (n <= 256 are used). On success (1) `name` gets the interpreter, `arg` the optional argument
// ("" when none). 0: not a script. -1: a script the kernel refuses (ENOEXEC).
int ParseShebang(const unsigned char* buf, size_t n, char* name, size_t namecap, char* arg,
                 size_t argcap);
// What the ELF file behind `fd` is. Fills `interp` with its PT_INTERP (when kDynamic).
enum class ElfKind { kNotElf, kBad, kStatic, kDynamic };
ElfKind ClassifyElf(int fd, char* interp, size_t cap);
// Whether the ELF file behind `fd` holds Go code.
bool IsGoFile(int fd);
// The program glibc's ld.so would run given its arguments `args[0..n)` (after the loader's own
// name): its index, or -1 when none runs (usage, --version), -2 for an option it does not know.
int LoaderProgramIndex(const char* const* args, int n);

}  // namespace via::shim
