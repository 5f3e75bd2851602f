// Resolution of the real libc functions behind the hooks, one symbol at a time on first use.
#include "shim/real.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

// The ELF header of libvia.so itself, as mapped (defined by the linker).
extern "C" const ElfW(Ehdr) __ehdr_start __attribute__((visibility("hidden")));

namespace via::shim {

namespace {

// Constant-initialized: no constructor runs at load time.
RealFns g_real = {
    {"connect", nullptr},         {"sendto", nullptr},
    {"sendmsg", nullptr},         {"sendmmsg", nullptr},
    {"getpeername", nullptr},     {"getsockname", nullptr},
    {"listen", nullptr},          {"accept", nullptr},
    {"accept4", nullptr},         {"recvfrom", nullptr},
    {"recvmsg", nullptr},         {"recvmmsg", nullptr},
    {"getaddrinfo", nullptr},     {"freeaddrinfo", nullptr},
    {"gethostbyname", nullptr},   {"gethostbyname2", nullptr},
    {"gethostbyname_r", nullptr}, {"gethostbyname2_r", nullptr},
    {"gethostbyaddr", nullptr},   {"gethostbyaddr_r", nullptr},
    {"getnameinfo", nullptr},     {"execve", nullptr},
    {"fexecve", nullptr},         {"posix_spawn", nullptr},
    {"posix_spawnp", nullptr},    {"fork", nullptr},
};

// Whether `p` lies inside libvia.so's own mapping. Read from our program headers in memory: no
// dladdr (which walks every loaded object under the loader's lock).
bool InsideSelf(const void* p) {
  const auto* eh = &__ehdr_start;
  const auto* ph =
      reinterpret_cast<const ElfW(Phdr)*>(reinterpret_cast<const char*>(eh) + eh->e_phoff);
  uintptr_t base = reinterpret_cast<uintptr_t>(eh);
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  for (int i = 0; i < eh->e_phnum; ++i) {
    if (ph[i].p_type != PT_LOAD) continue;
    if (ph[i].p_vaddr < lo) lo = ph[i].p_vaddr;
    if (ph[i].p_vaddr + ph[i].p_memsz > hi) hi = ph[i].p_vaddr + ph[i].p_memsz;
  }
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  // A shared object's ELF header is at virtual address 0 of its first PT_LOAD.
  return lo <= hi && a >= base + lo && a < base + hi;
}

}  // namespace

void* ResolveNext(const char* name) {
  void* next = dlsym(RTLD_NEXT, name);
  // A "next" symbol that lives in libvia.so itself would make the hook call itself forever.
  if (next == nullptr || InsideSelf(next)) {
    const char head[] = "via: libvia.so cannot find the real ";
    const char tail[] = " in libc; aborting\n";
    (void)!write(2, head, sizeof(head) - 1);
    (void)!write(2, name, std::strlen(name));
    (void)!write(2, tail, sizeof(tail) - 1);
    abort();
  }
  return next;
}

const RealFns& Real() { return g_real; }

}  // namespace via::shim
