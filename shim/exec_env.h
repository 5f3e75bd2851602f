// The environment a child gets under the exec guard (exec_env.cc): LD_PRELOAD naming this very
// library and the VIA_* variables of this process, put back where a program removed them.
//
// Everything here may run in a vfork child (posix_spawn's callers, Python's subprocess, a raw
// vfork + execve): no malloc, no locks. Memory comes from the caller's stack when small and from
// an anonymous mapping beyond that (ExecScratch); nothing a program passes is ever truncated or
// copied into a fixed buffer.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace via::shim {

// Up to this many bytes come from the caller's stack (a VLA); more from mmap.
constexpr size_t kExecStackBytes = 32 * 1024;

// Memory for one exec: `stack` (the caller's VLA of `stack_cap` bytes) when `need` fits, else an
// anonymous mapping unmapped when the exec returns. In a vfork child whose exec succeeds that
// mapping stays in the parent's address space (the two share it, and nothing runs afterwards to
// unmap it): only for environments or argument lists over kExecStackBytes.
class ExecScratch {
 public:
  ExecScratch(size_t need, void* stack, size_t stack_cap);
  ~ExecScratch();
  ExecScratch(const ExecScratch&) = delete;
  ExecScratch& operator=(const ExecScratch&) = delete;
  // nullptr when no memory could be had (the caller fails with ENOMEM: never an unrepaired exec).
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
  size_t mapped_ = 0;
};

// How many bytes FixEnv needs for `envp` (which may be nullptr: an empty environment, as the
// kernel takes it, e.g. after clearenv()); 0 when `envp` needs no repair.
size_t FixEnvSize(char* const* envp);

// `envp` with LD_PRELOAD naming this library (prepended to each LD_PRELOAD entry that lacks it,
// or added) and the VIA_* variables this process started with (added where missing), built in
// `buf` (`cap` >= FixEnvSize(envp) bytes, aligned for pointers). Returns `envp` itself when
// nothing was missing, nullptr when `cap` is too small.
char* const* FixEnv(char* const* envp, void* buf, size_t cap);

// `via broker --ensure` (the `via` next to this library) run without malloc, locks or libc's
// fork: for the exec guard in a vfork child of a process that has no broker socket yet. Its
// socket path into `path`; ESRCH when no configuration exists anywhere (exit status 3), else
// an errno with the reason in `msg`. Nothing is remembered.
int EnsureBrokerDetached(char* path, size_t cap, char* msg, size_t msgcap);

// The `via` executable next to this library (same directory in a build tree,
// <prefix>/bin/via for <prefix>/lib/via/libvia.so) into `exe`; false when there is none.
bool FindVia(char* exe, size_t cap);

// Finds this library's file (Self) now, once per process: the fork hook calls it so that the
// children inherit the answer instead of each asking the kernel before its exec.
void FindSelf();

// Why a program exec'd by this process would run without the shim although it is preloaded, or
// nullptr: the process changed its effective uid since it started (setpriv, runuser, a daemon
// dropping root; getauxval(AT_EUID) against geteuid(), no system call otherwise) and the new
// user cannot read this library (a build tree in root's home), so the loader would skip it with
// a warning and run the program unrouted. `detail` gets the library's path. Safe in a vfork
// child.
const char* ShimUnreadableReason(char* detail, size_t cap);

// The exec guard's check of `path` (hook_exec.cc) for libc functions that start a program
// themselves (hook_shell.cc): called in the process itself, never in a vfork child. 0, or EPERM
// after one line on stderr.
int CheckExecHere(const char* path);

}  // namespace via::shim
