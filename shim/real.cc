// Resolution of the real libc functions behind the hooks.
#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "shim/shim.h"

namespace via::shim {

namespace {

RealFns g_real;
pthread_once_t g_once = PTHREAD_ONCE_INIT;

void* Load(const char* name) {
  void* self = dlsym(RTLD_DEFAULT, name);
  void* next = dlsym(RTLD_NEXT, name);
  Dl_info mine{}, found{};
  // A "next" symbol that lives in libvia.so itself would make the hook call itself forever.
  if (next == nullptr || (dladdr(reinterpret_cast<void*>(&Load), &mine) != 0 &&
                          dladdr(next, &found) != 0 && mine.dli_fbase == found.dli_fbase)) {
    const char head[] = "via: libvia.so cannot find the real ";
    const char tail[] = " in libc; aborting\n";
    (void)!write(2, head, sizeof(head) - 1);
    (void)!write(2, name, std::strlen(name));
    (void)!write(2, tail, sizeof(tail) - 1);
    abort();
  }
  (void)self;
  return next;
}

template <typename F>
void Set(F*& slot, const char* name) {
  slot = reinterpret_cast<F*>(Load(name));
}

void Init() {
  Set(g_real.connect, "connect");
  Set(g_real.sendto, "sendto");
  Set(g_real.sendmsg, "sendmsg");
  Set(g_real.sendmmsg, "sendmmsg");
  Set(g_real.getpeername, "getpeername");
  Set(g_real.getsockname, "getsockname");
  Set(g_real.listen, "listen");
  Set(g_real.accept, "accept");
  Set(g_real.accept4, "accept4");
  Set(g_real.getaddrinfo, "getaddrinfo");
  Set(g_real.freeaddrinfo, "freeaddrinfo");
  Set(g_real.gethostbyname, "gethostbyname");
  Set(g_real.gethostbyname2, "gethostbyname2");
  Set(g_real.gethostbyname_r, "gethostbyname_r");
  Set(g_real.gethostbyname2_r, "gethostbyname2_r");
  Set(g_real.gethostbyaddr, "gethostbyaddr");
  Set(g_real.gethostbyaddr_r, "gethostbyaddr_r");
  Set(g_real.getnameinfo, "getnameinfo");
  Set(g_real.execve, "execve");
  Set(g_real.fexecve, "fexecve");
  Set(g_real.posix_spawn, "posix_spawn");
  Set(g_real.posix_spawnp, "posix_spawnp");
}

}  // namespace

const RealFns& Real() {
  pthread_once(&g_once, Init);
  return g_real;
}

}  // namespace via::shim
