// The real libc functions behind the hooks (real.cc).
//
// Each is resolved with dlsym(RTLD_NEXT) on its own first call, not all at once: a process that
// only ever execs (a shell's child) looks up execve and nothing else. A symbol that resolves to
// libvia.so itself aborts with a message (it would recurse forever).
#pragma once

#include <netdb.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/types.h>

namespace via::shim {

void* ResolveNext(const char* name);

template <typename F>
struct LazyFn;
template <typename R, typename... A>
struct LazyFn<R(A...)> {
  const char* name;
  mutable void* fn;  // read and written with __atomic builtins; racing resolvers agree
  R operator()(A... a) const {
    void* f = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);
    if (f == nullptr) {
      f = ResolveNext(name);
      __atomic_store_n(&fn, f, __ATOMIC_RELEASE);
    }
    return reinterpret_cast<R (*)(A...)>(f)(a...);
  }
  // Resolves now (a process about to fork resolves what its children will call: a lookup in
  // each child would fault in the loader's pages and be lost at exec).
  void Resolve() const {
    if (__atomic_load_n(&fn, __ATOMIC_ACQUIRE) == nullptr) {
      __atomic_store_n(&fn, ResolveNext(name), __ATOMIC_RELEASE);
    }
  }
};

struct RealFns {
  LazyFn<int(int, const sockaddr*, socklen_t)> connect;
  LazyFn<ssize_t(int, const void*, size_t, int, const sockaddr*, socklen_t)> sendto;
  LazyFn<ssize_t(int, const msghdr*, int)> sendmsg;
  LazyFn<int(int, mmsghdr*, unsigned int, int)> sendmmsg;
  LazyFn<int(int, sockaddr*, socklen_t*)> getpeername;
  LazyFn<int(int, sockaddr*, socklen_t*)> getsockname;
  LazyFn<int(int, int)> listen;
  LazyFn<int(int, sockaddr*, socklen_t*)> accept;
  LazyFn<int(int, sockaddr*, socklen_t*, int)> accept4;
  LazyFn<ssize_t(int, void*, size_t, int, sockaddr*, socklen_t*)> recvfrom;
  LazyFn<ssize_t(int, msghdr*, int)> recvmsg;
  LazyFn<int(int, mmsghdr*, unsigned int, int, struct timespec*)> recvmmsg;
  LazyFn<int(const char*, const char*, const addrinfo*, addrinfo**)> getaddrinfo;
  LazyFn<void(addrinfo*)> freeaddrinfo;
  LazyFn<hostent*(const char*)> gethostbyname;
  LazyFn<hostent*(const char*, int)> gethostbyname2;
  LazyFn<int(const char*, hostent*, char*, size_t, hostent**, int*)> gethostbyname_r;
  LazyFn<int(const char*, int, hostent*, char*, size_t, hostent**, int*)> gethostbyname2_r;
  LazyFn<hostent*(const void*, socklen_t, int)> gethostbyaddr;
  LazyFn<int(const void*, socklen_t, int, hostent*, char*, size_t, hostent**, int*)>
      gethostbyaddr_r;
  LazyFn<int(const sockaddr*, socklen_t, char*, socklen_t, char*, socklen_t, int)> getnameinfo;
  LazyFn<int(const char*, char* const[], char* const[])> execve;
  LazyFn<int(int, char* const[], char* const[])> fexecve;
  LazyFn<int(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*,
             char* const[], char* const[])>
      posix_spawn;
  LazyFn<int(pid_t*, const char*, const posix_spawn_file_actions_t*, const posix_spawnattr_t*,
             char* const[], char* const[])>
      posix_spawnp;
  LazyFn<pid_t()> fork;
};
const RealFns& Real();

}  // namespace via::shim
