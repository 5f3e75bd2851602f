// Name lookups: getaddrinfo and friends. Under an overlay a remote name never reaches the
// system resolver: the broker maps it to a fake address, and a connect to that address sends the
// name to the overlay. localhost, numeric hosts and /etc/hosts are answered by libc as usual.
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>

#include <cstdlib>
#include <cstring>

#include "shim/shim.h"

namespace via::shim {

namespace {

constexpr int kMaxAddrs = 8;

int WireFamily(int af) { return af == AF_INET ? 4 : af == AF_INET6 ? 6 : 0; }
int SysFamily(const wire::Addr& a) { return a.family == 4 ? AF_INET : AF_INET6; }

// Does libc answer `name` without asking DNS (numeric, localhost, /etc/hosts)?
bool AnsweredLocally(const char* name) {
  if (IsNumericHost(name)) return true;
  wire::Addr dummy[1];
  return LocalLookup(name, 0, dummy, 1) >= 0;
}

// Asks the broker for fake addresses; on failure complains and returns the errno.
int Resolve(const char* name, int af, wire::Addr* out, int* n) {
  char msg[512] = {};
  int err = BrokerResolve(name, WireFamily(af), out, kMaxAddrs, n, msg, sizeof msg);
  if (err != 0) Complain("cannot resolve %s through %s: %s", name, NetworkLabel(), msg);
  return err;
}

// Lays out a hostent for `name` with `addrs` in `buf`. Returns 0 or ERANGE.
int FillHostent(const char* name, int af, const wire::Addr* addrs, int n, hostent* he, char* buf,
                size_t buflen) {
  size_t alen = af == AF_INET ? 4 : 16;
  size_t name_len = std::strlen(name) + 1;
  // Pointer arrays first (aligned), then address bytes, then the name.
  uintptr_t base = reinterpret_cast<uintptr_t>(buf);
  uintptr_t aligned = (base + alignof(char*) - 1) & ~(uintptr_t)(alignof(char*) - 1);
  size_t pad = aligned - base;
  size_t need = pad + sizeof(char*) * (1 + n + 1) + alen * n + name_len;
  if (need > buflen) return ERANGE;
  char** aliases = reinterpret_cast<char**>(buf + pad);
  char** list = aliases + 1;
  char* data = reinterpret_cast<char*>(list + n + 1);
  aliases[0] = nullptr;
  for (int i = 0; i < n; ++i) {
    std::memcpy(data + alen * i, addrs[i].bytes, alen);
    list[i] = data + alen * i;
  }
  list[n] = nullptr;
  char* name_copy = data + alen * n;
  std::memcpy(name_copy, name, name_len);
  he->h_name = name_copy;
  he->h_aliases = aliases;
  he->h_addrtype = af;
  he->h_length = static_cast<int>(alen);
  he->h_addr_list = list;
  return 0;
}

struct HostentStore {
  hostent he;
  char buf[1024];
};
__thread HostentStore t_store;

// The body of gethostbyname2_r under an overlay, for a remote name.
int RemoteHostent(const char* name, int af, hostent* ret, char* buf, size_t buflen,
                  hostent** result, int* h_errnop) {
  *result = nullptr;
  wire::Addr addrs[kMaxAddrs];
  int n = 0;
  if (Resolve(name, af, addrs, &n) != 0) {
    *h_errnop = TRY_AGAIN;
    return EAGAIN;
  }
  int k = 0;
  for (int i = 0; i < n; ++i) {
    if (SysFamily(addrs[i]) == af) addrs[k++] = addrs[i];
  }
  if (k == 0) {
    *h_errnop = HOST_NOT_FOUND;
    return ENOENT;
  }
  int err = FillHostent(name, af, addrs, k, ret, buf, buflen);
  if (err != 0) {
    *h_errnop = NETDB_INTERNAL;
    return err;
  }
  *result = ret;
  *h_errnop = 0;
  return 0;
}

hostent* RemoteHostentStatic(const char* name, int af) {
  hostent* result = nullptr;
  int herr = 0;
  RemoteHostent(name, af, &t_store.he, t_store.buf, sizeof t_store.buf, &result, &herr);
  if (result == nullptr) h_errno = herr;
  return result;
}

// Appends list `b` to list `a`; returns the head.
addrinfo* Append(addrinfo* a, addrinfo* b) {
  if (a == nullptr) return b;
  addrinfo* t = a;
  while (t->ai_next != nullptr) t = t->ai_next;
  t->ai_next = b;
  return a;
}

}  // namespace

}  // namespace via::shim

using namespace via::shim;
namespace wire = via::wire;

VIA_EXPORT int getaddrinfo(const char* node, const char* service, const addrinfo* hints,
                           addrinfo** res) {
  const RealFns& real = Real();
  if (node == nullptr || NetworkDirect()) return real.getaddrinfo(node, service, hints, res);
  int flags = hints != nullptr ? hints->ai_flags : (AI_V4MAPPED | AI_ADDRCONFIG);
  int family = hints != nullptr ? hints->ai_family : AF_UNSPEC;
  if ((flags & AI_NUMERICHOST) != 0 || AnsweredLocally(node) ||
      (family != AF_UNSPEC && family != AF_INET && family != AF_INET6)) {
    return real.getaddrinfo(node, service, hints, res);
  }
  wire::Addr addrs[kMaxAddrs];
  int n = 0;
  if (Resolve(node, family, addrs, &n) != 0) return EAI_AGAIN;
  if (n == 0) return EAI_NONAME;
  // Let libc build the result from the numeric fake addresses: it is libc-shaped (services,
  // socket types, flags) and libc's own freeaddrinfo frees it.
  addrinfo h{};
  if (hints != nullptr) h = *hints;
  h.ai_flags = (flags & ~(AI_CANONNAME | AI_ADDRCONFIG)) | AI_NUMERICHOST;
  h.ai_canonname = nullptr;
  h.ai_addr = nullptr;
  h.ai_next = nullptr;
  addrinfo* head = nullptr;
  for (int i = 0; i < n; ++i) {
    char text[INET6_ADDRSTRLEN];
    inet_ntop(SysFamily(addrs[i]), addrs[i].bytes, text, sizeof text);
    h.ai_family = family == AF_UNSPEC ? SysFamily(addrs[i]) : family;
    addrinfo* part = nullptr;
    int rc = real.getaddrinfo(text, service, &h, &part);
    if (rc != 0) {
      if (head != nullptr) real.freeaddrinfo(head);
      return rc;
    }
    head = Append(head, part);
  }
  if ((flags & AI_CANONNAME) != 0 && head != nullptr) {
    free(head->ai_canonname);
    head->ai_canonname = strdup(node);
  }
  *res = head;
  return 0;
}

// Results are built by libc (see getaddrinfo above), so libc frees them. Hooked so that a result
// can never be handed to a different allocator than the one that built it.
VIA_EXPORT void freeaddrinfo(addrinfo* ai) noexcept { Real().freeaddrinfo(ai); }

VIA_EXPORT hostent* gethostbyname2(const char* name, int af) {
  if (name == nullptr || NetworkDirect() || AnsweredLocally(name) ||
      (af != AF_INET && af != AF_INET6)) {
    return Real().gethostbyname2(name, af);
  }
  return RemoteHostentStatic(name, af);
}

VIA_EXPORT hostent* gethostbyname(const char* name) {
  if (name == nullptr || NetworkDirect() || AnsweredLocally(name)) {
    return Real().gethostbyname(name);
  }
  return RemoteHostentStatic(name, AF_INET);
}

VIA_EXPORT int gethostbyname2_r(const char* name, int af, hostent* ret, char* buf, size_t buflen,
                                hostent** result, int* h_errnop) {
  if (name == nullptr || NetworkDirect() || AnsweredLocally(name) ||
      (af != AF_INET && af != AF_INET6)) {
    return Real().gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
  }
  return RemoteHostent(name, af, ret, buf, buflen, result, h_errnop);
}

VIA_EXPORT int gethostbyname_r(const char* name, hostent* ret, char* buf, size_t buflen,
                               hostent** result, int* h_errnop) {
  if (name == nullptr || NetworkDirect() || AnsweredLocally(name)) {
    return Real().gethostbyname_r(name, ret, buf, buflen, result, h_errnop);
  }
  return RemoteHostent(name, AF_INET, ret, buf, buflen, result, h_errnop);
}

namespace via::shim {
namespace {

// Under an overlay: the name of a fake address; libc for loopback and /etc/hosts addresses;
// "not found" for anything else, because a PTR query would tell the local resolver which
// address the program talks to. Returns 1 to ask libc, else 0 with *result set or not.
int ReverseHostent(const void* addr, socklen_t len, int type, hostent* ret, char* buf,
                   size_t buflen, hostent** result, int* h_errnop) {
  *result = nullptr;
  wire::Addr a;
  a.family = type == AF_INET ? 4 : 6;
  std::memcpy(a.bytes, addr, len);
  char name[256];
  if (BrokerReverse(a, name, sizeof name) == 0) {
    int err = FillHostent(name, type, &a, 1, ret, buf, buflen);
    if (err != 0) {
      *h_errnop = NETDB_INTERNAL;
      return -err;
    }
    *result = ret;
    *h_errnop = 0;
    return 0;
  }
  if (wire::IsLoopback(a) || HostsReverse(a, name, sizeof name)) return 1;
  *h_errnop = HOST_NOT_FOUND;
  return 0;
}

bool ReverseApplies(const void* addr, socklen_t len, int type) {
  return addr != nullptr && !NetworkDirect() && (type == AF_INET || type == AF_INET6) &&
         len == (type == AF_INET ? 4u : 16u);
}

}  // namespace
}  // namespace via::shim

VIA_EXPORT hostent* gethostbyaddr(const void* addr, socklen_t len, int type) {
  if (!ReverseApplies(addr, len, type)) return Real().gethostbyaddr(addr, len, type);
  hostent* result = nullptr;
  int herr = 0;
  int rc =
      ReverseHostent(addr, len, type, &t_store.he, t_store.buf, sizeof t_store.buf, &result, &herr);
  if (rc == 1) return Real().gethostbyaddr(addr, len, type);
  if (result == nullptr) h_errno = herr;
  return result;
}

VIA_EXPORT int gethostbyaddr_r(const void* addr, socklen_t len, int type, hostent* ret, char* buf,
                               size_t buflen, hostent** result, int* h_errnop) {
  if (!ReverseApplies(addr, len, type)) {
    return Real().gethostbyaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop);
  }
  int rc = ReverseHostent(addr, len, type, ret, buf, buflen, result, h_errnop);
  if (rc == 1) return Real().gethostbyaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop);
  return rc < 0 ? -rc : (*result == nullptr ? ENOENT : 0);
}

VIA_EXPORT int getnameinfo(const sockaddr* sa, socklen_t salen, char* host, socklen_t hostlen,
                           char* serv, socklen_t servlen, int flags) {
  const RealFns& real = Real();
  wire::Addr a;
  if (host == nullptr || hostlen == 0 || (flags & NI_NUMERICHOST) != 0 || NetworkDirect() ||
      !wire::AddrFromSockaddr(sa, salen, &a)) {
    return real.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
  }
  char name[256];
  if (BrokerReverse(wire::Unmapped(a), name, sizeof name) == 0) {
    if (std::strlen(name) >= hostlen) return EAI_OVERFLOW;
    std::memcpy(host, name, std::strlen(name) + 1);
    if (serv != nullptr && servlen > 0) {
      return real.getnameinfo(sa, salen, nullptr, 0, serv, servlen, flags);
    }
    return 0;
  }
  if (wire::IsLoopback(a) || HostsReverse(wire::Unmapped(a), name, sizeof name)) {
    return real.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
  }
  if ((flags & NI_NAMEREQD) != 0) return EAI_NONAME;
  return real.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags | NI_NUMERICHOST);
}
