// Internal declarations of libvia.so, the preload library.
//
// The shim is loaded into every program of a via session, so it links libc only: no libstdc++
// at run time, no exceptions, no RTTI, no static objects with constructors. It asks the broker
// (broker_link.cc), and runs SOCKS5 itself only when the broker said so (socks5_connect.cc, with
// the broker's own state machine). See docs/architecture.md.
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
// Each is resolved with dlsym(RTLD_NEXT) on its own first call, not all at once: a process that
// only ever execs (a shell's child) looks up execve and nothing else. A symbol that resolves to
// libvia.so itself aborts with a message (it would recurse forever).
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

// ---- process state (state.cc) -----------------------------------------------------------------
// Read once from the environment, on the first hooked call that needs it.
struct Settings {
  bool active = false;  // an overlay may apply: VIA_NETWORK is set and not "direct"
  bool quiet = false;   // VIA_QUIET=1
  char network[256] = {};
  char session[96] = {};
  char socket_path[108] = {};  // VIA_SOCKET, or filled by EnsureSocketPath()
  // Snapshots for exec (exec_env.cc): a child whose environment was scrubbed gets these back.
  // VIA_UNROUTED_EXEC=allow: only restored into children (via run sets it from the config). The
  // guard itself asks the broker (kFlagUnroutedExecAllow): the program controls its environment.
  bool unrouted_exec_allowed = false;
  // VIA_UNROUTED_EXEC=strict: a static or Go binary runs in strict mode (`via run --strict`)
  // instead of being refused. Taken from the environment: it only ever contains a program
  // more (a program that removes it is refused as before).
  bool unrouted_exec_strict = false;
  // Values that did not fit their field (kTooLong* bits): never restored into a child, where a
  // truncated value would mean something else. Before `config`: on the page the other fields
  // share, so that reading the environment touches one page of .bss, not two.
  unsigned too_long = 0;
  // VIA_CONFIG: a path, as long as the kernel lets one variable be (MAX_ARG_STRLEN). In .bss:
  // only the pages a value touches cost memory.
  char config[32 * 4096] = {};
};
constexpr unsigned kTooLongNetwork = 1, kTooLongSession = 2, kTooLongSocket = 4, kTooLongConfig = 8;
const Settings& GetSettings();
// Turns the shim off in this process (the `via` binary calls it: its own sockets are its own).
VIA_EXPORT void via_shim_set_passthrough(void);
bool Passthrough();  // from the environment only (the exec hooks: no broker round trip)
// Whether this thread's traffic goes direct, as the broker decided for this process (HELLO
// reply flag). False when the broker cannot be asked: the routed path then reports the error
// (fail closed). True without asking when the shim is turned off, and when nothing asked for an
// overlay (no VIA_NETWORK, no VIA_SESSION) and no configuration exists anywhere.
bool NetworkDirect();
// Whether exec needs no guard (the unrouted-binary check, the environment restore): the shim is
// off, or no broker can route this process: no VIA_NETWORK overlay, no VIA_SESSION, VIA_SOCKET
// or VIA_CONFIG, and no broker answer in this process that said "an overlay" or refused it.
// No system call.
bool ExecUnguarded();
// Once the exec guard found a binary that would run without the shim: whether this process is
// routed, as the broker says (ExecUnguarded() was false). True without asking under a
// VIA_NETWORK overlay or after a routed answer. `in_parent`: the caller runs in the process
// itself (posix_spawn), not in a child that may share its memory (vfork), where the thread's
// broker link must not be touched: a separate one-shot HELLO is used there. True (fail closed)
// with the reason in `why` when the broker cannot be asked.
bool ExecRouted(bool in_parent, char* why, size_t whycap, bool* allow_unrouted);
// Whether the broker says network_service.unrouted_exec is "allow" (one HELLO, cached): the
// dlopen gate and the loaded-objects check ask it only once they found Go code. Not for vfork
// children.
bool BrokerAllowsUnrouted();
// For messages: VIA_NETWORK, or a phrase when the broker chose the network (a program rule).
const char* NetworkLabel();

// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
int64_t MonotonicNs();

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
// Before an exec in place of `file`: lets a broker that asks for it record this process's groups
// (exec_identity.cc). Stack and system calls only (vfork children).
void GreetBrokerBeforeExec(const char* file);
// Works out the path of the marker GreetBrokerBeforeExec looks for, once, before the first fork
// (the fork hook): the children then test it without formatting it again each.
void PrepareExecGreeting();
// Whether a HELLO in this process was answered with an overlay or an error (not "direct").
bool BrokerRoutedThisProcess();
// One HELLO on a connection of its own, closed before returning: touches no state of the shim's
// links, waits for no lock and allocates nothing (for exec in a vfork child). Uses VIA_SOCKET,
// the socket path `via broker --ensure` gave this process, or runs it (EnsureBrokerDetached:
// ESRCH when no configuration exists anywhere). 0 with *flags, the broker's ERRNO (with its
// message in `msg`), or an errno of the link. Bounded wait.
int BrokerHelloDetached(uint32_t* flags, char* msg, size_t msgcap);
// `via broker --ensure` found no configuration at all (exit status 3).
bool NoConfigAnywhere();
int BrokerConnect(int fd, const wire::Addr& dest, char* msg, size_t msgcap);
// What the broker's HELLO reply said about running SOCKS5 in the program (kFlagShimSocks5).
struct Socks5Plan {
  char overlay[256];  // the overlay's id, for messages
  wire::Addr proxies[4];
  int nproxies;
  char username[256], password[256];
  size_t username_len, password_len;
  bool isolate;  // a fresh random credential per connect
  uint32_t timeout_ms;
  wire::Addr fake[2];  // the fake-address ranges, the port field their prefix length
  int nfake;
  uint32_t broker;  // the broker's pid (whose fake addresses and name cache entries)
};
// The calling thread's link, greeted: *plan points at its Socks5Plan when the shim may run SOCKS5
// itself, nullptr when sockets go to the broker (CONNECT). 0 or an errno (the link failed).
int BrokerSocks5Plan(const Socks5Plan** plan, char* msg, size_t msgcap);
// Tells the broker how a connect the shim ran itself went (REPORT): `name` (or nullptr: `dest`
// as the program gave it), the errno and message. A success is sent without waiting (and dropped
// if the link is congested); a failure waits until the broker has logged it.
void BrokerReport(const wire::Addr& dest, const char* name, int err, const char* msg);

// ---- SOCKS5 in the program (socks5_connect.cc) --------------------------------------------
// Connects `fd` through the proxy of `plan` to `name` (or `dest` when nullptr), port dest.port:
// 0, or an errno with the cause in `why` (for REPORT) and "<target> via <overlay>: <why>" in
// `msg` (as the broker words a failed CONNECT). The socket's file status flags are restored.
int ShimSocks5Connect(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                      char* why, size_t whycap, char* msg, size_t msgcap);
// Whether `addr` lies in one of the broker's fake-address ranges.
bool InFakeRange(const Socks5Plan& plan, const wire::Addr& addr);
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

// A DNS query the program sent itself, answered by the broker from its fake-address table.
// *answer_len = 0 when the broker sends no answer (a malformed packet it drops).
constexpr size_t kMaxDnsQuery = 4096;
int BrokerDnsQuery(const void* query, size_t n, uint8_t* answer, size_t cap, size_t* answer_len,
                   char* msg, size_t msgcap);

// A loopback UDP responder in the broker, connected to the program's socket bound at `local`,
// that answers the DNS queries that socket sends it (even by raw system calls).
int BrokerDnsSocket(const wire::Addr& local, wire::Addr* responder, char* msg, size_t msgcap);

// ---- raw DNS sockets (dns_socket.cc) --------------------------------------------------------
// Under an overlay, a UDP socket's datagrams to port 53 (any address) are DNS queries: the shim
// hands them to the broker and delivers the answer on the program's socket (from a loopback
// address, shown to the program as the resolver's). See docs/architecture.md, "Raw DNS".
// connect(fd, resolver:53) of a UDP socket: connects it to a responder of the broker instead
// (BrokerDnsSocket) and remembers the resolver.
int DnsConnect(int fd, const wire::Addr& resolver);
// A send on `fd` to `name` of the bytes in iov: returns 1 and sets *result (bytes "sent" or -1
// with errno) when this is a DNS query that was handled, 0 when the caller goes on as usual
// (always for name == nullptr: a connected DNS socket sends to the broker's responder itself).
int DnsInterceptSend(int fd, const sockaddr* name, socklen_t namelen, const iovec* iov,
                     size_t iovcnt, ssize_t* result);
// After a receive on `fd`: shows the resolver as the source of an answer we delivered.
void DnsRewriteSource(int fd, sockaddr* addr, socklen_t* len);
// getpeername of a connected DNS socket: the resolver.
bool DnsPeer(int fd, wire::Addr* resolver);
// A UDP (datagram, IPPROTO_UDP) socket?
bool IsUdpSocket(int fd);
// ---- cached RESOLVE answers (name_cache.cc) -------------------------------------------------
// `broker` identifies the broker that answered (its pid, never 0). Get copies up to `cap`
// addresses and returns true on a live hit; Put keeps an answer for half of `hold_ms`.
bool NameCacheGet(const char* name, int family, uint32_t broker, wire::Addr* out, int cap,
                  int* count);
void NameCachePut(const char* name, int family, uint32_t broker, const wire::Addr* addrs, int n,
                  uint32_t hold_ms);
// The name of a fake address from a live entry of `broker`, normalized as the broker does
// (lower case, no trailing dot). False when not cached here (ask the broker).
bool NameCacheReverse(const wire::Addr& addr, uint32_t broker, char* name, size_t cap);

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
