// Name lookups of a routed process, shared by the public hooks (hook_names.cc, hook_res.cc) and
// the hooks of libc's internal names (hook_internal.cc). Under an overlay no lookup ever reaches
// a resolver: numeric hosts are parsed here, local names (localhost, *.localhost, /etc/hosts)
// are answered here, every other name gets fake addresses from the broker.
#pragma once

#include <netdb.h>

#include "common/wire.h"

namespace via::shim {

constexpr int kMaxAddrs = 8;

inline int WireFamily(int af) { return af == AF_INET ? 4 : af == AF_INET6 ? 6 : 0; }
inline int SysFamily(const wire::Addr& a) { return a.family == 4 ? AF_INET : AF_INET6; }

// A numeric host as getaddrinfo parses one without any lookup (dotted IPv4 in the forms
// inet_aton accepts, with nothing after it; an IPv6 literal, optionally with a %scope).
bool ParseNumericHost(const char* name, wire::Addr* out);

// The addresses of `name` for a routed process (`af`: AF_UNSPEC, AF_INET or AF_INET6): 0 with
// up to `cap` addresses in `out` and their count in *n (0: the name is local or numeric but has
// no address of that family), or an errno when the broker could not be asked (complained), or
// kRouteDirect (broker_link.h): a route (or no route, for a direct process with routes) says the
// system resolver answers this name.
// Never calls a libc resolver function.
int RoutedLookup(const char* name, int af, wire::Addr* out, int cap, int* n);

// Addresses the system resolver gave for names whose route is direct, in a routed process: a
// connect to one goes directly, so that a name and its addresses take the same way. A small
// table (the oldest entry makes room); an address that fell out goes through the overlay.
void RememberRouteDirect(const addrinfo* ai);
bool IsRouteDirect(const wire::Addr& addr);

// The name of `addr` for a routed process: a fake address's name, or the first /etc/hosts name
// of a listed address. False when there is none (never asks a resolver: a PTR query would tell
// the local resolver which address the program talks to).
bool RoutedReverse(const wire::Addr& addr, char* name, size_t cap);

// Lays out a hostent for `name` with the addresses of family `af` among `addrs` in `buf`.
// Returns 0 or ERANGE.
int FillHostent(const char* name, int af, const wire::Addr* addrs, int n, hostent* he, char* buf,
                size_t buflen);

// gethostbyname2_r for a routed process. Returns 0 (found: *result = ret), ENOENT (no such
// host or no address of that family: *h_errnop set), ERANGE (buffer too small), EAGAIN (the
// broker could not be asked), or kRouteDirect (a route to direct: the caller asks libc, nothing
// set).
int RoutedHostent(const char* name, int af, hostent* ret, char* buf, size_t buflen,
                  hostent** result, int* h_errnop);

// gethostbyaddr_r for a routed process, same return values.
int RoutedHostentByAddr(const void* addr, socklen_t len, int af, hostent* ret, char* buf,
                        size_t buflen, hostent** result, int* h_errnop);

}  // namespace via::shim
