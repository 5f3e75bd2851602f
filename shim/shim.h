// Internal declarations of libvia.so, the preload library.
//
// The shim is loaded into every program of a via session, so it links libc only: no libstdc++
// at run time, no exceptions, no RTTI, no static objects with constructors. It never speaks an
// overlay protocol; it asks the broker (broker_link.cc). See docs/architecture.md.
#pragma once

#include <netdb.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "common/wire.h"

#define VIA_EXPORT extern "C" __attribute__((visibility("default")))

namespace via::shim {

// ---- real libc functions (real.cc) --------------------------------------------------------
// Each is resolved with dlsym(RTLD_NEXT) on first use; a symbol that resolves to the hook itself
// aborts with a message (it would recurse forever).
struct RealFns {
  int (*connect)(int, const sockaddr*, socklen_t);
  ssize_t (*sendto)(int, const void*, size_t, int, const sockaddr*, socklen_t);
  ssize_t (*sendmsg)(int, const msghdr*, int);
  int (*sendmmsg)(int, mmsghdr*, unsigned int, int);
  int (*getpeername)(int, sockaddr*, socklen_t*);
  int (*getsockname)(int, sockaddr*, socklen_t*);
  int (*listen)(int, int);
  int (*accept)(int, sockaddr*, socklen_t*);
  int (*accept4)(int, sockaddr*, socklen_t*, int);
  int (*getaddrinfo)(const char*, const char*, const addrinfo*, addrinfo**);
  void (*freeaddrinfo)(addrinfo*);
  hostent* (*gethostbyname)(const char*);
  hostent* (*gethostbyname2)(const char*, int);
  int (*gethostbyname_r)(const char*, hostent*, char*, size_t, hostent**, int*);
  int (*gethostbyname2_r)(const char*, int, hostent*, char*, size_t, hostent**, int*);
  hostent* (*gethostbyaddr)(const void*, socklen_t, int);
  int (*gethostbyaddr_r)(const void*, socklen_t, int, hostent*, char*, size_t, hostent**, int*);
  int (*getnameinfo)(const sockaddr*, socklen_t, char*, socklen_t, char*, socklen_t, int);
  int (*execve)(const char*, char* const[], char* const[]);
  int (*fexecve)(int, char* const[], char* const[]);
  int (*posix_spawn)(pid_t*, const char*, const posix_spawn_file_actions_t*,
                     const posix_spawnattr_t*, char* const[], char* const[]);
  int (*posix_spawnp)(pid_t*, const char*, const posix_spawn_file_actions_t*,
                      const posix_spawnattr_t*, char* const[], char* const[]);
};
const RealFns& Real();

// ---- process state (state.cc) -----------------------------------------------------------------
// Read once from the environment, on the first hooked call that needs it.
struct Settings {
  bool active = false;  // an overlay may apply: VIA_NETWORK is set and not "direct"
  bool quiet = false;   // VIA_QUIET=1
  char network[256] = {};
  char session[96] = {};
  char socket_path[108] = {};  // VIA_SOCKET, or filled by EnsureSocketPath()
  // Snapshots for exec (hook_exec.cc): a child whose environment was scrubbed gets these back.
  bool unrouted_exec_allowed = false;  // VIA_UNROUTED_EXEC=allow
  char config[1024] = {};              // VIA_CONFIG
  char preload[2048] = {};             // this process's LD_PRELOAD
};
const Settings& GetSettings();
// Turns the shim off in this process (the `via` binary calls it: its own sockets are its own).
VIA_EXPORT void via_shim_set_passthrough(void);
bool Passthrough();

// Writes "via: <msg>\n" to stderr unless quiet.
void Complain(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- the broker link (broker_link.cc) -------------------------------------------------------
// One connection per thread, opened lazily, re-opened after fork or if the program closed or
// replaced the descriptor. Each call returns 0 or an errno; `msg` (if given) gets the broker's
// message.
struct HelloInfo {
  uint32_t flags = 0;
};
int BrokerHello(HelloInfo* info, char* msg, size_t msgcap);
int BrokerConnect(int fd, const wire::Addr& dest, char* msg, size_t msgcap);
// Fills up to `cap` fake addresses for `name` (family 0 any, 4, 6); *count gets how many.
int BrokerResolve(const char* name, int family, wire::Addr* out, int cap, int* count, char* msg,
                  size_t msgcap);
// Name of a fake address; ENOENT if `addr` is not one.
int BrokerReverse(const wire::Addr& addr, char* name, size_t namecap);
// LISTEN (docs/protocol.md): `pass_fd` is the broker's end of the listener's socketpair, `bound`
// what the program bound. *flags gets the reply's FLAGS, `address` the overlay address (or "").
int BrokerListen(int pass_fd, const wire::Addr& bound, uint32_t* flags, char* address,
                 size_t addrcap, char* msg, size_t msgcap);

// ---- inbound listeners (hook_listen.cc) -------------------------------------------------------
// Whether `fd` is a listener the shim put in place of a program's socket; *bound gets the
// address the program bound (stateless: read from the socket's abstract name).
bool ViaListener(int fd, wire::Addr* bound);

// ---- local names (hosts.cc) -----------------------------------------------------------------
// Answers `name` locally if it is "localhost" (and friends) or listed in /etc/hosts: fills up to
// `cap` addresses of `family` (0 any, AF_INET, AF_INET6) and returns how many (possibly 0 when
// the name is listed only with the other family). Returns -1 when the name is not local.
int LocalLookup(const char* name, int family, wire::Addr* out, int cap);
// Is this address listed in /etc/hosts (for reverse lookups)? Copies the first name.
bool HostsReverse(const wire::Addr& addr, char* name, size_t namecap);
// Numeric host strings that libc parses without any lookup (inet_aton forms, IPv6 literals).
bool IsNumericHost(const char* name);

// ---- routed sockets (routed.cc) -------------------------------------------------------------
// Remembers the destination a routed socket was connected to, keyed by fd and validated by
// inode so that a closed-and-reused fd number is never mistaken for the routed socket.
void RememberRouted(int fd, const wire::Addr& dest);
bool LookupRouted(int fd, wire::Addr* dest);

}  // namespace via::shim
