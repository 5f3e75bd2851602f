// dlopen and dlmopen under an overlay. A shared object holding Go code (a -buildmode=c-shared
// library, loaded by Python's ctypes for instance) makes its socket system calls itself, past the
// shim: its load is refused (NULL, and dlerror() says why) before any of its code runs. dlmopen
// into another link-map namespace is refused too: the shim is preloaded into the base namespace
// only, so a library there would call a libc the shim does not interpose.
//
// The loader finds a library relative to its caller (the caller's RUNPATH, $ORIGIN), which it
// learns from the return address. So on x86-64 dlopen and dlmopen are small trampolines that
// ask the gate and then JUMP to the real function, with the caller's return address in place.
//
// Objects loaded as dependencies, or found by a search the gate does not repeat (ld.so.cache,
// RUNPATH), are checked when the process first routes a call (CheckLoadedObjects).
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/binary_check.h"
#include "shim/export.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/state.h"

namespace via::shim {

namespace {

// dlerror() after a refusal: this thread's message, once.
thread_local char t_error[512];
thread_local bool t_error_pending;

void* g_real_dlopen;
void* g_real_dlmopen;
void* g_real_dlerror;

void* RealFn(void** slot, const char* name) {
  void* f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (f == nullptr) {
    f = ResolveNext(name);
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
  }
  return f;
}

// Whether the gate applies; network_service.unrouted_exec comes from the broker (asked only once
// Go code was found), never from the environment.
bool Guarded() { return !ExecUnguarded(); }

// The file dlopen(`file`) would load, as far as the gate can tell without loading it: `file`
// itself when it has a '/', else the first match on LD_LIBRARY_PATH and in the system
// directories (libc's own directory, /lib64, /usr/lib64, /lib, /usr/lib).
bool FindLibrary(const char* file, char* out, size_t cap) {
  if (std::strchr(file, '/') != nullptr) {
    std::snprintf(out, cap, "%s", file);
    return true;
  }
  char libc_dir[256] = {};
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&write), &info) != 0 && info.dli_fname != nullptr) {
    const char* slash = std::strrchr(info.dli_fname, '/');
    if (slash != nullptr && size_t(slash - info.dli_fname) < sizeof libc_dir) {
      std::memcpy(libc_dir, info.dli_fname, size_t(slash - info.dli_fname));
    }
  }
  const char* lists[] = {getenv("LD_LIBRARY_PATH"), libc_dir, "/lib64:/usr/lib64:/lib:/usr/lib"};
  for (const char* list : lists) {
    for (const char* p = list; p != nullptr && *p != 0;) {
      const char* end = std::strchr(p, ':');
      size_t dlen = end == nullptr ? std::strlen(p) : size_t(end - p);
      if (dlen > 0 && dlen + std::strlen(file) + 2 <= cap) {
        std::snprintf(out, cap, "%.*s/%s", int(dlen), p, file);
        if (access(out, F_OK) == 0) return true;
      }
      if (end == nullptr) break;
      p = end + 1;
    }
  }
  return false;
}

void Refuse(const char* what, const char* reason) {
  reinterpret_cast<char* (*)()>(RealFn(&g_real_dlerror, "dlerror"))();  // drop libc's old error
  std::snprintf(t_error, sizeof t_error,
                "via: loading %s refused under %s: %s, so its traffic would not go through the "
                "overlay (network_service.unrouted_exec: allow permits it)",
                what, NetworkLabel(), reason);
  t_error_pending = true;
  Complain("%s", t_error + 5);
}

}  // namespace

void CheckLoadedObjects() {
  if (!Guarded()) return;
  char name[kCheckPathMax];
  if (!LoadedGoObject(name, sizeof name) || BrokerAllowsUnrouted()) return;
  Complain(
      "Go code is loaded in this process (%s), which makes its network system calls itself, "
      "past the shim: stopping it under %s (network_service.unrouted_exec: allow permits it)",
      name, NetworkLabel());
  _exit(126);
}

}  // namespace via::shim

using namespace via::shim;

// The gates: the real function to jump to, or nullptr to return NULL (refused).
extern "C" __attribute__((visibility("hidden"))) void* via_dlopen_gate(const char* file, int mode) {
  void* real = RealFn(&g_real_dlopen, "dlopen");
  if (file == nullptr || (mode & RTLD_NOLOAD) != 0 || !Guarded()) return real;
  char path[kCheckPathMax];
  if (!FindLibrary(file, path, sizeof path)) return real;
  if (const char* reason = SharedObjectReason(path);
      reason != nullptr && !BrokerAllowsUnrouted()) {
    Refuse(path, reason);
    return nullptr;
  }
  return real;
}

extern "C" __attribute__((visibility("hidden"))) void* via_dlmopen_gate(Lmid_t lmid,
                                                                        const char* file,
                                                                        int mode) {
  void* real = RealFn(&g_real_dlmopen, "dlmopen");
  if (lmid != LM_ID_BASE && Guarded() && !BrokerAllowsUnrouted()) {
    Refuse(file != nullptr ? file : "an object",
           "dlmopen into another namespace loads a libc the shim is not preloaded into");
    return nullptr;
  }
  if (via_dlopen_gate(file, mode) == nullptr) return nullptr;
  return real;
}

VIA_EXPORT char* dlerror(void) {
  if (t_error_pending) {
    t_error_pending = false;
    return t_error;
  }
  return reinterpret_cast<char* (*)()>(RealFn(&g_real_dlerror, "dlerror"))();
}

#if defined(__x86_64__)
// At entry %rsp is 8 mod 16; the pushes keep the call to the gate 16-byte aligned.
asm(R"(
  .text
  .globl dlopen
  .type dlopen, @function
dlopen:
  .cfi_startproc
  push %rdi
  .cfi_adjust_cfa_offset 8
  push %rsi
  .cfi_adjust_cfa_offset 8
  sub $8, %rsp
  .cfi_adjust_cfa_offset 8
  call via_dlopen_gate
  add $8, %rsp
  .cfi_adjust_cfa_offset -8
  pop %rsi
  .cfi_adjust_cfa_offset -8
  pop %rdi
  .cfi_adjust_cfa_offset -8
  test %rax, %rax
  jz 1f
  jmp *%rax
1:
  ret
  .cfi_endproc
  .size dlopen, .-dlopen

  .globl dlmopen
  .type dlmopen, @function
dlmopen:
  .cfi_startproc
  push %rdi
  .cfi_adjust_cfa_offset 8
  push %rsi
  .cfi_adjust_cfa_offset 8
  push %rdx
  .cfi_adjust_cfa_offset 8
  call via_dlmopen_gate
  pop %rdx
  .cfi_adjust_cfa_offset -8
  pop %rsi
  .cfi_adjust_cfa_offset -8
  pop %rdi
  .cfi_adjust_cfa_offset -8
  test %rax, %rax
  jz 1f
  jmp *%rax
1:
  ret
  .cfi_endproc
  .size dlmopen, .-dlmopen
)");
#else
// Elsewhere: plain functions (a library's RUNPATH/$ORIGIN is then looked up as libvia.so's).
VIA_EXPORT void* dlopen(const char* file, int mode) {
  void* real = via_dlopen_gate(file, mode);
  return real == nullptr ? nullptr
                         : reinterpret_cast<void* (*)(const char*, int)>(real)(file, mode);
}
VIA_EXPORT void* dlmopen(Lmid_t lmid, const char* file, int mode) {
  void* real = via_dlmopen_gate(lmid, file, mode);
  return real == nullptr
             ? nullptr
             : reinterpret_cast<void* (*)(Lmid_t, const char*, int)>(real)(lmid, file, mode);
}
#endif
