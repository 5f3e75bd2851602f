// Name lookups: getaddrinfo and friends. Under an overlay no name ever reaches the system
// resolver (not even one that only looks local: libc sends "x.localhost", and a name that
// /etc/hosts lists for the other family only, to DNS): numeric hosts, localhost, *.localhost
// and /etc/hosts are answered here, from the shim's own reading of them; every other name gets
// fake addresses from the broker, and a connect to one sends the name to the overlay. Whether
// the process is routed is the broker's answer (NetworkDirect), not the environment's.
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>

#include <cstdlib>
#include <cstring>

#include "shim/broker_link.h"
#include "shim/export.h"
#include "shim/hosts.h"
#include "shim/names.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/state.h"

namespace via::shim {

int RoutedLookup(const char* name, int af, wire::Addr* out, int cap, int* n) {
  *n = 0;
  if (name[0] == 0 || cap <= 0) return 0;
  wire::Addr a;
  if (ParseNumericHost(name, &a)) {
    if (af == AF_UNSPEC || SysFamily(a) == af) {
      out[0] = a;
      *n = 1;
    }
    return 0;
  }
  int local = LocalLookup(name, af, out, cap);
  if (local >= 0) {
    *n = local;
    return 0;
  }
  char msg[512] = {};
  int err = BrokerResolve(name, WireFamily(af), out, cap, n, msg, sizeof msg);
  if (err != 0 && err != kRouteDirect)
    Complain("cannot resolve %s through %s: %s", name, NetworkLabel(), msg);
  return err;
}

namespace {

constexpr int kRouteDirectSlots = 64;
wire::Addr g_route_direct[kRouteDirectSlots];
int g_route_direct_next = 0;
pthread_mutex_t g_route_direct_mu = PTHREAD_MUTEX_INITIALIZER;

}  // namespace

namespace {

// Under g_route_direct_mu.
void RememberRouteDirectLocked(wire::Addr a) {
  a = wire::Unmapped(a);
  a.port = 0;
  for (const wire::Addr& k : g_route_direct) {
    if (k == a) return;
  }
  g_route_direct[g_route_direct_next] = a;
  g_route_direct_next = (g_route_direct_next + 1) % kRouteDirectSlots;
}

// The same for gethostbyname*'s answer (h_length bytes per address).
void RememberRouteDirect(const hostent* he) {
  if (he == nullptr || he->h_addr_list == nullptr) return;
  if (he->h_length != 4 && he->h_length != 16) return;
  pthread_mutex_lock(&g_route_direct_mu);
  for (char** p = he->h_addr_list; *p != nullptr; ++p) {
    wire::Addr a;
    a.family = he->h_length == 4 ? 4 : 6;
    std::memcpy(a.bytes, *p, size_t(he->h_length));
    RememberRouteDirectLocked(a);
  }
  pthread_mutex_unlock(&g_route_direct_mu);
}

}  // namespace

void RememberRouteDirect(const addrinfo* ai) {
  pthread_mutex_lock(&g_route_direct_mu);
  for (; ai != nullptr; ai = ai->ai_next) {
    wire::Addr a;
    if (wire::AddrFromSockaddr(ai->ai_addr, ai->ai_addrlen, &a)) RememberRouteDirectLocked(a);
  }
  pthread_mutex_unlock(&g_route_direct_mu);
}

bool IsRouteDirect(const wire::Addr& addr) {
  wire::Addr a = wire::Unmapped(addr);
  a.port = 0;
  pthread_mutex_lock(&g_route_direct_mu);
  bool found = false;
  for (const wire::Addr& k : g_route_direct) found = found || (k.family != 0 && k == a);
  pthread_mutex_unlock(&g_route_direct_mu);
  return found;
}

bool RoutedReverse(const wire::Addr& addr, char* name, size_t cap) {
  wire::Addr a = wire::Unmapped(addr);
  return BrokerReverse(a, name, cap) == 0 || HostsReverse(a, name, cap);
}

int FillHostent(const char* name, int af, const wire::Addr* addrs, int count, hostent* he,
                char* buf, size_t buflen) {
  const size_t alen = af == AF_INET ? 4 : 16;
  int n = 0;
  for (int i = 0; i < count; ++i) n += SysFamily(addrs[i]) == af;
  size_t name_len = std::strlen(name) + 1;
  // Pointer arrays first (aligned), then address bytes, then the name.
  uintptr_t base = reinterpret_cast<uintptr_t>(buf);
  uintptr_t aligned = (base + alignof(char*) - 1) & ~(uintptr_t)(alignof(char*) - 1);
  size_t pad = aligned - base;
  size_t need = pad + sizeof(char*) * (1 + size_t(n) + 1) + alen * size_t(n) + name_len;
  if (buf == nullptr || need > buflen) return ERANGE;
  char** aliases = reinterpret_cast<char**>(buf + pad);
  char** list = aliases + 1;
  char* data = reinterpret_cast<char*>(list + n + 1);
  aliases[0] = nullptr;
  int k = 0;
  for (int i = 0; i < count; ++i) {
    if (SysFamily(addrs[i]) != af) continue;
    std::memcpy(data + alen * size_t(k), addrs[i].bytes, alen);
    list[k] = data + alen * size_t(k);
    ++k;
  }
  list[n] = nullptr;
  char* name_copy = data + alen * size_t(n);
  std::memcpy(name_copy, name, name_len);
  he->h_name = name_copy;
  he->h_aliases = aliases;
  he->h_addrtype = af;
  he->h_length = static_cast<int>(alen);
  he->h_addr_list = list;
  return 0;
}

int RoutedHostent(const char* name, int af, hostent* ret, char* buf, size_t buflen,
                  hostent** result, int* h_errnop) {
  *result = nullptr;
  if (af != AF_INET && af != AF_INET6) {
    *h_errnop = NETDB_INTERNAL;
    errno = EAFNOSUPPORT;
    return EAFNOSUPPORT;
  }
  wire::Addr addrs[kMaxAddrs];
  int n = 0;
  if (int err = RoutedLookup(name, af, addrs, kMaxAddrs, &n); err == kRouteDirect) {
    return kRouteDirect;  // a route to direct: the caller asks libc
  } else if (err != 0) {
    *h_errnop = err == ENETUNREACH ? NO_RECOVERY : TRY_AGAIN;  // as getaddrinfo's EAI_FAIL
    return EAGAIN;
  }
  int k = 0;
  for (int i = 0; i < n; ++i) k += SysFamily(addrs[i]) == af;
  if (k == 0) {
    *h_errnop = HOST_NOT_FOUND;
    return ENOENT;
  }
  int err = FillHostent(name, af, addrs, n, ret, buf, buflen);
  if (err != 0) {
    *h_errnop = NETDB_INTERNAL;
    errno = err;
    return err;
  }
  *result = ret;
  *h_errnop = 0;
  return 0;
}

int RoutedHostentByAddr(const void* addr, socklen_t len, int af, hostent* ret, char* buf,
                        size_t buflen, hostent** result, int* h_errnop) {
  *result = nullptr;
  wire::Addr a;
  if (addr == nullptr || (af != AF_INET && af != AF_INET6) || len != (af == AF_INET ? 4u : 16u)) {
    *h_errnop = NETDB_INTERNAL;
    errno = EINVAL;
    return EINVAL;
  }
  a.family = af == AF_INET ? 4 : 6;
  std::memcpy(a.bytes, addr, len);
  char name[256];
  if (!RoutedReverse(a, name, sizeof name)) {
    *h_errnop = HOST_NOT_FOUND;
    return ENOENT;
  }
  int err = FillHostent(name, af, &a, 1, ret, buf, buflen);
  if (err != 0) {
    *h_errnop = NETDB_INTERNAL;
    errno = err;
    return err;
  }
  *result = ret;
  *h_errnop = 0;
  return 0;
}

namespace {

struct HostentStore {
  hostent he;
  char buf[1024];
};
__thread HostentStore t_store;

// False for a route to direct (the caller asks libc); else true with the answer in *out.
bool RoutedHostentStatic(const char* name, int af, hostent** out) {
  hostent* result = nullptr;
  int herr = 0;
  if (RoutedHostent(name, af, &t_store.he, t_store.buf, sizeof t_store.buf, &result, &herr) ==
      kRouteDirect) {
    return false;
  }
  if (result == nullptr) h_errno = herr;
  *out = result;
  return true;
}

// Whether libc resolves `name` as without via: a direct process, unless a route's name glob
// matches it (then the broker decides, as in getaddrinfo).
bool ResolvedByLibc(const char* name) {
  return name == nullptr || (NetworkDirect() && !(RoutesApply() && RouteNamesMatch(name)));
}

// libc's answer for a name routed direct: under an overlay its addresses are remembered, so that
// their connects go direct too (IsRouteDirect), as after getaddrinfo.
hostent* LibcRouteDirect(hostent* he) {
  if (!NetworkDirect()) RememberRouteDirect(he);
  return he;
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
  if (node == nullptr) return real.getaddrinfo(node, service, hints, res);
  int flags = hints != nullptr ? hints->ai_flags : (AI_V4MAPPED | AI_ADDRCONFIG);
  const int family = hints != nullptr ? hints->ai_family : AF_UNSPEC;
  if ((flags & AI_NUMERICHOST) == 0 && IsNumericHost(node)) {
    // libc parses it and asks no one: no broker round trip either. AI_NUMERICHOST makes sure
    // (libc would send "::1" asked for with AF_INET to its resolvers).
    addrinfo h{};
    if (hints != nullptr) h = *hints;
    h.ai_flags = flags | AI_NUMERICHOST;
    return real.getaddrinfo(node, service, &h, res);
  }
  if ((flags & AI_NUMERICHOST) != 0) return real.getaddrinfo(node, service, hints, res);
  // A direct process asks the broker only when routes exist (HELLO flag): then each name is
  // checked against them (a routed one gets fake addresses), else resolved here as before.
  const bool direct = NetworkDirect();
  if (direct && !(RoutesApply() && RouteNamesMatch(node))) {
    return real.getaddrinfo(node, service, hints, res);
  }
  if (family != AF_UNSPEC && family != AF_INET && family != AF_INET6) return EAI_FAMILY;
  // AF_INET6 with AI_V4MAPPED: IPv4 addresses are shown mapped when there is no IPv6 one (or
  // always, with AI_ALL); libc maps them when it builds the result below.
  const bool mapped = family == AF_INET6 && (flags & AI_V4MAPPED) != 0;
  wire::Addr addrs[kMaxAddrs];
  int n = 0;
  if (int err = RoutedLookup(node, mapped ? AF_UNSPEC : family, addrs, kMaxAddrs, &n);
      err == kRouteDirect) {
    int rc = real.getaddrinfo(node, service, hints, res);
    if (rc == 0 && !direct) RememberRouteDirect(*res);
    return rc;
  } else if (err != 0) {
    // ENETUNREACH: no network to resolve through (network none, an overlay with none): retrying
    // cannot help.
    return err == ENETUNREACH ? EAI_FAIL : EAI_AGAIN;
  }
  if (mapped && (flags & AI_ALL) == 0) {
    int v6 = 0;
    for (int i = 0; i < n; ++i) v6 += addrs[i].family == 6;
    if (v6 > 0) {
      int k = 0;
      for (int i = 0; i < n; ++i) {
        if (addrs[i].family == 6) addrs[k++] = addrs[i];
      }
      n = k;
    }
  }
  if (n == 0) return EAI_NONAME;
  // Let libc build the result from the numeric addresses: it is libc-shaped (services, socket
  // types, flags) and libc's own freeaddrinfo frees it.
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
  hostent* he = nullptr;
  if (!ResolvedByLibc(name) && RoutedHostentStatic(name, af, &he)) return he;
  return LibcRouteDirect(Real().gethostbyname2(name, af));
}

VIA_EXPORT hostent* gethostbyname(const char* name) {
  hostent* he = nullptr;
  if (!ResolvedByLibc(name) && RoutedHostentStatic(name, AF_INET, &he)) return he;
  return LibcRouteDirect(Real().gethostbyname(name));
}

VIA_EXPORT int gethostbyname2_r(const char* name, int af, hostent* ret, char* buf, size_t buflen,
                                hostent** result, int* h_errnop) {
  if (!ResolvedByLibc(name)) {
    int rc = RoutedHostent(name, af, ret, buf, buflen, result, h_errnop);
    if (rc != kRouteDirect) return rc;
  }
  int rc = Real().gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop);
  if (rc == 0) LibcRouteDirect(*result);
  return rc;
}

VIA_EXPORT int gethostbyname_r(const char* name, hostent* ret, char* buf, size_t buflen,
                               hostent** result, int* h_errnop) {
  if (!ResolvedByLibc(name)) {
    int rc = RoutedHostent(name, AF_INET, ret, buf, buflen, result, h_errnop);
    if (rc != kRouteDirect) return rc;
  }
  int rc = Real().gethostbyname_r(name, ret, buf, buflen, result, h_errnop);
  if (rc == 0) LibcRouteDirect(*result);
  return rc;
}

// Reverse lookups under an overlay: the name of a fake address, the /etc/hosts name of a listed
// address, "not found" for anything else (a PTR query would tell the local resolver which
// address the program talks to; libc would send one for a loopback address /etc/hosts lacks).
VIA_EXPORT hostent* gethostbyaddr(const void* addr, socklen_t len, int type) {
  if (addr == nullptr || NetworkDirect()) return Real().gethostbyaddr(addr, len, type);
  hostent* result = nullptr;
  int herr = 0;
  RoutedHostentByAddr(addr, len, type, &t_store.he, t_store.buf, sizeof t_store.buf, &result,
                      &herr);
  if (result == nullptr) h_errno = herr;
  return result;
}

VIA_EXPORT int gethostbyaddr_r(const void* addr, socklen_t len, int type, hostent* ret, char* buf,
                               size_t buflen, hostent** result, int* h_errnop) {
  if (addr == nullptr || NetworkDirect()) {
    return Real().gethostbyaddr_r(addr, len, type, ret, buf, buflen, result, h_errnop);
  }
  return RoutedHostentByAddr(addr, len, type, ret, buf, buflen, result, h_errnop);
}

VIA_EXPORT int getnameinfo(const sockaddr* sa, socklen_t salen, char* host, socklen_t hostlen,
                           char* serv, socklen_t servlen, int flags) {
  const RealFns& real = Real();
  // Only a host name can need a lookup (services come from /etc/services), only of an Internet
  // address, and libc refuses the short ones itself (as it does, before any lookup).
  if (host == nullptr || hostlen == 0 || (flags & NI_NUMERICHOST) != 0 || sa == nullptr ||
      salen < sizeof(sa_family_t) || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
      salen < (sa->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6)) ||
      NetworkDirect()) {
    return real.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags);
  }
  wire::Addr a;
  if (sa->sa_family == AF_INET) {
    a.family = 4;
    std::memcpy(a.bytes, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
  } else {
    a.family = 6;
    std::memcpy(a.bytes, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
  }
  char name[256];
  if (!RoutedReverse(a, name, sizeof name)) {
    if ((flags & NI_NAMEREQD) != 0) return EAI_NONAME;
    return real.getnameinfo(sa, salen, host, hostlen, serv, servlen, flags | NI_NUMERICHOST);
  }
  size_t len = std::strlen(name);
  if (len >= hostlen) return EAI_OVERFLOW;
  std::memcpy(host, name, len + 1);
  if (serv != nullptr && servlen > 0) {
    return real.getnameinfo(sa, salen, nullptr, 0, serv, servlen, flags);
  }
  return 0;
}
