// libc's exported internal names that reach the DNS, and the old remote-shell helpers that
// resolve names inside libc (issue 17, cause 9). Under an overlay each is answered by the same
// code as the public functions (names.h) or refused; a direct process gets glibc's own.
//
// glibc 2.36 exports, besides the public resolver API (hook_names.cc, hook_res.cc):
//  - the NSS DNS module's functions (_nss_dns_*, GLIBC_PRIVATE; the module is built into libc),
//  - __res_context_query/search/send (hook_res.cc),
//  - rcmd/rexec/ruserok and their _af and i- variants, which call getaddrinfo inside libc.
// What no preload library can reach (libc's calls to its own hidden aliases, a dlsym on libc's
// own handle, the SunRPC compatibility symbols) is listed in README.md, "Limits".
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <nss.h>

#include <cstdint>
#include <cstring>

#include "shim/broker_link.h"
#include "shim/export.h"
#include "shim/names.h"
#include "shim/process_route.h"
#include "shim/state.h"

namespace via::shim {
namespace {

// glibc's own, looked up once (racing threads find the same pointer).
void* Next(void** slot, const char* name) {
  void* f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (f == nullptr) {
    f = dlsym(RTLD_NEXT, name);
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
  }
  return f;
}

// Calls glibc's `name` with the hook's own arguments, or `missing` when it does not exist.
#define VIA_FORWARD(name, type, missing, ...)             \
  do {                                                    \
    static void* slot = nullptr;                          \
    auto fn = reinterpret_cast<type>(Next(&slot, #name)); \
    return fn != nullptr ? fn(__VA_ARGS__) : (missing);   \
  } while (0)

// RoutedHostent's result as an NSS module reports it.
nss_status Status(int err, int* errnop) {
  switch (err) {
    case 0:
      return NSS_STATUS_SUCCESS;
    case ENOENT:
      *errnop = ENOENT;
      return NSS_STATUS_NOTFOUND;
    case ERANGE:
      *errnop = ERANGE;  // the caller retries with a larger buffer
      return NSS_STATUS_TRYAGAIN;
    default:
      *errnop = err;
      return NSS_STATUS_UNAVAIL;
  }
}

nss_status NotFound(int* errnop, int* h_errnop) {
  *errnop = ENOENT;
  *h_errnop = HOST_NOT_FOUND;
  return NSS_STATUS_NOTFOUND;
}

void SayRefused(const char* what) {
  Complain("%s refused: it resolves and connects inside libc, out of via's reach (%s)", what,
           NetworkLabel());
}

}  // namespace
}  // namespace via::shim

using namespace via::shim;
namespace wire = via::wire;

// ---- the NSS DNS module ------------------------------------------------------------------------

// Whether the real module resolves `name`: a direct process, unless a route's name glob matches
// it (then the broker decides, as in getaddrinfo).
static bool LibcResolves(const char* name) {
  return NetworkDirect() && !(name != nullptr && RoutesApply() && RouteNamesMatch(name));
}

using HostByName3Fn = nss_status (*)(const char*, int, hostent*, char*, size_t, int*, int*,
                                     int32_t*, char**);
using HostByName2Fn = nss_status (*)(const char*, int, hostent*, char*, size_t, int*, int*);
using HostByNameFn = nss_status (*)(const char*, hostent*, char*, size_t, int*, int*);
using HostByName4Fn = nss_status (*)(const char*, gaih_addrtuple**, char*, size_t, int*, int*,
                                     int32_t*);
using HostByAddr2Fn = nss_status (*)(const void*, socklen_t, int, hostent*, char*, size_t, int*,
                                     int*, int32_t*);
using HostByAddrFn = nss_status (*)(const void*, socklen_t, int, hostent*, char*, size_t, int*,
                                    int*);
using CanonNameFn = nss_status (*)(const char*, char*, size_t, char**, int*, int*);
using NetByNameFn = nss_status (*)(const char*, netent*, char*, size_t, int*, int*);
using NetByAddrFn = nss_status (*)(uint32_t, int, netent*, char*, size_t, int*, int*);

VIA_EXPORT nss_status _nss_dns_gethostbyname3_r(const char* name, int af, hostent* result,
                                                char* buffer, size_t buflen, int* errnop,
                                                int* h_errnop, int32_t* ttlp, char** canonp) {
  if (LibcResolves(name)) {
    VIA_FORWARD(_nss_dns_gethostbyname3_r, HostByName3Fn, NSS_STATUS_UNAVAIL, name, af, result,
                buffer, buflen, errnop, h_errnop, ttlp, canonp);
  }
  if (name == nullptr) return NotFound(errnop, h_errnop);
  hostent* r = nullptr;
  int err = RoutedHostent(name, af, result, buffer, buflen, &r, h_errnop);
  if (err == kRouteDirect) {  // a route to direct: the real module resolves it
    VIA_FORWARD(_nss_dns_gethostbyname3_r, HostByName3Fn, NSS_STATUS_UNAVAIL, name, af, result,
                buffer, buflen, errnop, h_errnop, ttlp, canonp);
  }
  if (err == 0) {
    if (ttlp != nullptr) *ttlp = 0;
    if (canonp != nullptr) *canonp = result->h_name;
  }
  return Status(err, errnop);
}

VIA_EXPORT nss_status _nss_dns_gethostbyname2_r(const char* name, int af, hostent* result,
                                                char* buffer, size_t buflen, int* errnop,
                                                int* h_errnop) {
  if (LibcResolves(name)) {
    VIA_FORWARD(_nss_dns_gethostbyname2_r, HostByName2Fn, NSS_STATUS_UNAVAIL, name, af, result,
                buffer, buflen, errnop, h_errnop);
  }
  return _nss_dns_gethostbyname3_r(name, af, result, buffer, buflen, errnop, h_errnop, nullptr,
                                   nullptr);
}

VIA_EXPORT nss_status _nss_dns_gethostbyname_r(const char* name, hostent* result, char* buffer,
                                               size_t buflen, int* errnop, int* h_errnop) {
  if (LibcResolves(name)) {
    VIA_FORWARD(_nss_dns_gethostbyname_r, HostByNameFn, NSS_STATUS_UNAVAIL, name, result, buffer,
                buflen, errnop, h_errnop);
  }
  return _nss_dns_gethostbyname3_r(name, AF_INET, result, buffer, buflen, errnop, h_errnop, nullptr,
                                   nullptr);
}

// getaddrinfo's entry: every address of the name (both families) as a list of tuples laid out
// in `buffer`.
VIA_EXPORT nss_status _nss_dns_gethostbyname4_r(const char* name, gaih_addrtuple** pat,
                                                char* buffer, size_t buflen, int* errnop,
                                                int* h_errnop, int32_t* ttlp) {
  if (LibcResolves(name)) {
    VIA_FORWARD(_nss_dns_gethostbyname4_r, HostByName4Fn, NSS_STATUS_UNAVAIL, name, pat, buffer,
                buflen, errnop, h_errnop, ttlp);
  }
  if (name == nullptr || pat == nullptr) return NotFound(errnop, h_errnop);
  wire::Addr addrs[kMaxAddrs];
  int n = 0;
  int err = RoutedLookup(name, AF_UNSPEC, addrs, kMaxAddrs, &n);
  if (err == kRouteDirect) {  // a route to direct: the real module resolves it
    VIA_FORWARD(_nss_dns_gethostbyname4_r, HostByName4Fn, NSS_STATUS_UNAVAIL, name, pat, buffer,
                buflen, errnop, h_errnop, ttlp);
  }
  if (err != 0) {
    *h_errnop = err == ENETUNREACH ? NO_RECOVERY : TRY_AGAIN;  // as getaddrinfo's EAI_FAIL
    return Status(err == ENOENT || err == ERANGE ? EAGAIN : err, errnop);
  }
  if (n == 0) return NotFound(errnop, h_errnop);
  const size_t name_len = std::strlen(name) + 1;
  uintptr_t base = reinterpret_cast<uintptr_t>(buffer);
  uintptr_t aligned =
      (base + alignof(gaih_addrtuple) - 1) & ~uintptr_t(alignof(gaih_addrtuple) - 1);
  const size_t need = (aligned - base) + sizeof(gaih_addrtuple) * size_t(n) + name_len;
  if (buffer == nullptr || need > buflen) {
    *h_errnop = NETDB_INTERNAL;
    return Status(ERANGE, errnop);
  }
  auto* tuples = reinterpret_cast<gaih_addrtuple*>(aligned);
  char* name_copy = reinterpret_cast<char*>(tuples + n);
  std::memcpy(name_copy, name, name_len);
  for (int i = 0; i < n; ++i) {
    gaih_addrtuple& t = tuples[i];
    std::memset(&t, 0, sizeof t);
    t.next = i + 1 < n ? &tuples[i + 1] : nullptr;
    t.name = i == 0 ? name_copy : nullptr;
    t.family = SysFamily(addrs[i]);
    std::memcpy(t.addr, addrs[i].bytes, addrs[i].family == 4 ? 4 : 16);
  }
  *pat = tuples;
  if (ttlp != nullptr) *ttlp = 0;
  *h_errnop = 0;
  return NSS_STATUS_SUCCESS;
}

VIA_EXPORT nss_status _nss_dns_gethostbyaddr2_r(const void* addr, socklen_t len, int af,
                                                hostent* result, char* buffer, size_t buflen,
                                                int* errnop, int* h_errnop, int32_t* ttlp) {
  if (NetworkDirect()) {
    VIA_FORWARD(_nss_dns_gethostbyaddr2_r, HostByAddr2Fn, NSS_STATUS_UNAVAIL, addr, len, af, result,
                buffer, buflen, errnop, h_errnop, ttlp);
  }
  hostent* r = nullptr;
  int err = RoutedHostentByAddr(addr, len, af, result, buffer, buflen, &r, h_errnop);
  if (err == EINVAL) err = ENOENT;
  if (err == 0 && ttlp != nullptr) *ttlp = 0;
  return Status(err, errnop);
}

VIA_EXPORT nss_status _nss_dns_gethostbyaddr_r(const void* addr, socklen_t len, int af,
                                               hostent* result, char* buffer, size_t buflen,
                                               int* errnop, int* h_errnop) {
  if (NetworkDirect()) {
    VIA_FORWARD(_nss_dns_gethostbyaddr_r, HostByAddrFn, NSS_STATUS_UNAVAIL, addr, len, af, result,
                buffer, buflen, errnop, h_errnop);
  }
  return _nss_dns_gethostbyaddr2_r(addr, len, af, result, buffer, buflen, errnop, h_errnop,
                                   nullptr);
}

// The canonical name (CNAME target) of a name: under an overlay the name itself, as the broker
// keeps it (no resolver learns it).
VIA_EXPORT nss_status _nss_dns_getcanonname_r(const char* name, char* buffer, size_t buflen,
                                              char** result, int* errnop, int* h_errnop) {
  if (NetworkDirect()) {
    VIA_FORWARD(_nss_dns_getcanonname_r, CanonNameFn, NSS_STATUS_UNAVAIL, name, buffer, buflen,
                result, errnop, h_errnop);
  }
  if (name == nullptr || result == nullptr) return NotFound(errnop, h_errnop);
  const size_t len = std::strlen(name) + 1;
  if (buffer == nullptr || len > buflen) {
    *h_errnop = NETDB_INTERNAL;
    return Status(ERANGE, errnop);
  }
  std::memcpy(buffer, name, len);
  *result = buffer;
  *h_errnop = 0;
  return NSS_STATUS_SUCCESS;
}

// Networks by name or number (RFC 1101 PTR records): never asked under an overlay.
VIA_EXPORT nss_status _nss_dns_getnetbyname_r(const char* name, netent* result, char* buffer,
                                              size_t buflen, int* errnop, int* h_errnop) {
  if (NetworkDirect()) {
    VIA_FORWARD(_nss_dns_getnetbyname_r, NetByNameFn, NSS_STATUS_UNAVAIL, name, result, buffer,
                buflen, errnop, h_errnop);
  }
  return NotFound(errnop, h_errnop);
}

VIA_EXPORT nss_status _nss_dns_getnetbyaddr_r(uint32_t net, int type, netent* result, char* buffer,
                                              size_t buflen, int* errnop, int* h_errnop) {
  if (NetworkDirect()) {
    VIA_FORWARD(_nss_dns_getnetbyaddr_r, NetByAddrFn, NSS_STATUS_UNAVAIL, net, type, result, buffer,
                buflen, errnop, h_errnop);
  }
  return NotFound(errnop, h_errnop);
}

// ---- rcmd, rexec, ruserok
// ------------------------------------------------------------------------ They resolve the host
// (and the names of .rhosts/hosts.equiv) with libc's own getaddrinfo and connect with libc's own
// connect: nothing of that passes the shim. Under an overlay they are refused (rcmd/rexec: -1 with
// EPERM; ruserok/iruserok: -1, "not allowed").
using RcmdAfFn = int (*)(char**, unsigned short, const char*, const char*, const char*, int*,
                         sa_family_t);
using RcmdFn = int (*)(char**, unsigned short, const char*, const char*, const char*, int*);
using RexecAfFn = int (*)(char**, int, const char*, const char*, const char*, int*, sa_family_t);
using RexecFn = int (*)(char**, int, const char*, const char*, const char*, int*);
using RuserokAfFn = int (*)(const char*, int, const char*, const char*, sa_family_t);
using RuserokFn = int (*)(const char*, int, const char*, const char*);
using IruserokAfFn = int (*)(const void*, int, const char*, const char*, sa_family_t);
using IruserokFn = int (*)(uint32_t, int, const char*, const char*);

#define VIA_REFUSE(what) \
  do {                   \
    SayRefused(what);    \
    errno = EPERM;       \
    return -1;           \
  } while (0)

VIA_EXPORT int rcmd_af(char** ahost, unsigned short port, const char* locuser, const char* remuser,
                       const char* cmd, int* fd2p, sa_family_t af) {
  if (!NetworkDirect()) VIA_REFUSE("rcmd");
  VIA_FORWARD(rcmd_af, RcmdAfFn, -1, ahost, port, locuser, remuser, cmd, fd2p, af);
}

VIA_EXPORT int rcmd(char** ahost, unsigned short port, const char* locuser, const char* remuser,
                    const char* cmd, int* fd2p) {
  if (!NetworkDirect()) VIA_REFUSE("rcmd");
  VIA_FORWARD(rcmd, RcmdFn, -1, ahost, port, locuser, remuser, cmd, fd2p);
}

VIA_EXPORT int rexec_af(char** ahost, int port, const char* user, const char* pass, const char* cmd,
                        int* fd2p, sa_family_t af) {
  if (!NetworkDirect()) VIA_REFUSE("rexec");
  VIA_FORWARD(rexec_af, RexecAfFn, -1, ahost, port, user, pass, cmd, fd2p, af);
}

VIA_EXPORT int rexec(char** ahost, int port, const char* user, const char* pass, const char* cmd,
                     int* fd2p) {
  if (!NetworkDirect()) VIA_REFUSE("rexec");
  VIA_FORWARD(rexec, RexecFn, -1, ahost, port, user, pass, cmd, fd2p);
}

VIA_EXPORT int ruserok_af(const char* rhost, int superuser, const char* ruser, const char* luser,
                          sa_family_t af) {
  if (!NetworkDirect()) VIA_REFUSE("ruserok");
  VIA_FORWARD(ruserok_af, RuserokAfFn, -1, rhost, superuser, ruser, luser, af);
}

VIA_EXPORT int ruserok(const char* rhost, int superuser, const char* ruser, const char* luser) {
  if (!NetworkDirect()) VIA_REFUSE("ruserok");
  VIA_FORWARD(ruserok, RuserokFn, -1, rhost, superuser, ruser, luser);
}

VIA_EXPORT int iruserok_af(const void* raddr, int superuser, const char* ruser, const char* luser,
                           sa_family_t af) {
  if (!NetworkDirect()) VIA_REFUSE("iruserok");
  VIA_FORWARD(iruserok_af, IruserokAfFn, -1, raddr, superuser, ruser, luser, af);
}

VIA_EXPORT int iruserok(uint32_t raddr, int superuser, const char* ruser, const char* luser) {
  if (!NetworkDirect()) VIA_REFUSE("iruserok");
  VIA_FORWARD(iruserok, IruserokFn, -1, raddr, superuser, ruser, luser);
}

// ---- SunRPC (compatibility symbols) ----------------------------------------------------------
// glibc keeps clnt_create, callrpc and getrpcport for old binaries only (no header, no default
// version): they resolve the host with libc's own gethostbyname_r and talk to it with libc's
// own socket calls. An old binary's versioned reference binds to these definitions too. Under
// an overlay they are refused; a direct process gets glibc's, found by version.
namespace via::shim {
namespace {

void* NextCompat(void** slot, const char* name) {
  void* f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (f == nullptr) {
    f = dlvsym(RTLD_NEXT, name, "GLIBC_2.2.5");
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
  }
  return f;
}

#define VIA_FORWARD_COMPAT(name, type, missing, ...)            \
  do {                                                          \
    static void* slot = nullptr;                                \
    auto fn = reinterpret_cast<type>(NextCompat(&slot, #name)); \
    return fn != nullptr ? fn(__VA_ARGS__) : (missing);         \
  } while (0)

}  // namespace
}  // namespace via::shim

using XdrProc = int (*)(void*, void*, ...);
using ClntCreateFn = void* (*)(const char*, unsigned long, unsigned long, const char*);
using CallRpcFn = int (*)(const char*, unsigned long, unsigned long, unsigned long, XdrProc,
                          const char*, XdrProc, char*);
using GetRpcPortFn = unsigned short (*)(const char*, unsigned long, unsigned long, unsigned int);

VIA_EXPORT void* clnt_create(const char* host, unsigned long prog, unsigned long vers,
                             const char* proto) {
  if (!NetworkDirect()) {
    SayRefused("clnt_create");
    errno = EPERM;
    return nullptr;
  }
  VIA_FORWARD_COMPAT(clnt_create, ClntCreateFn, nullptr, host, prog, vers, proto);
}

VIA_EXPORT int callrpc(const char* host, unsigned long prog, unsigned long vers, unsigned long proc,
                       XdrProc inproc, const char* in, XdrProc outproc, char* out) {
  constexpr int kRpcUnknownHost = 13;  // enum clnt_stat RPC_UNKNOWNHOST
  if (!NetworkDirect()) {
    SayRefused("callrpc");
    return kRpcUnknownHost;
  }
  VIA_FORWARD_COMPAT(callrpc, CallRpcFn, kRpcUnknownHost, host, prog, vers, proc, inproc, in,
                     outproc, out);
}

VIA_EXPORT unsigned short getrpcport(const char* host, unsigned long prog, unsigned long vers,
                                     unsigned int proto) {
  if (!NetworkDirect()) {
    SayRefused("getrpcport");
    return 0;
  }
  VIA_FORWARD_COMPAT(getrpcport, GetRpcPortFn, 0, host, prog, vers, proto);
}

// ---- the NSS machinery, driven by hand ---------------------------------------------------------
// __nss_hosts_lookup2, __nss_lookup, __nss_next2 and __nss_lookup_function (GLIBC_PRIVATE) hand
// out pointers to the modules' functions: the DNS module's are libc's own, which no hook sees.
// Under an overlay a pointer to one of them is replaced by the shim's function of that name.
namespace via::shim {
namespace {

struct DnsFn {
  const char* name;
  void* ours;
  void* slot;  // glibc's, looked up once
};

DnsFn g_dns_fns[] = {
    {"_nss_dns_gethostbyname_r", reinterpret_cast<void*>(&_nss_dns_gethostbyname_r), nullptr},
    {"_nss_dns_gethostbyname2_r", reinterpret_cast<void*>(&_nss_dns_gethostbyname2_r), nullptr},
    {"_nss_dns_gethostbyname3_r", reinterpret_cast<void*>(&_nss_dns_gethostbyname3_r), nullptr},
    {"_nss_dns_gethostbyname4_r", reinterpret_cast<void*>(&_nss_dns_gethostbyname4_r), nullptr},
    {"_nss_dns_gethostbyaddr_r", reinterpret_cast<void*>(&_nss_dns_gethostbyaddr_r), nullptr},
    {"_nss_dns_gethostbyaddr2_r", reinterpret_cast<void*>(&_nss_dns_gethostbyaddr2_r), nullptr},
    {"_nss_dns_getcanonname_r", reinterpret_cast<void*>(&_nss_dns_getcanonname_r), nullptr},
    {"_nss_dns_getnetbyname_r", reinterpret_cast<void*>(&_nss_dns_getnetbyname_r), nullptr},
    {"_nss_dns_getnetbyaddr_r", reinterpret_cast<void*>(&_nss_dns_getnetbyaddr_r), nullptr},
};

// `f`, or the shim's function in place of glibc's DNS module function `f` (routed processes).
// The broker is asked only for a DNS module function (libnss_compat's passwd lookups, say,
// never make a process greet it).
void* RouteModuleFn(void* f) {
  if (f == nullptr) return f;
  for (DnsFn& d : g_dns_fns) {
    if (Next(&d.slot, d.name) == f) return NetworkDirect() ? f : d.ours;
  }
  return f;
}

}  // namespace
}  // namespace via::shim

using NssLookupFunctionFn = void* (*)(void*, const char*);
using NssLookupFn = int (*)(void**, const char*, const char*, void**);
using NssNext2Fn = int (*)(void**, const char*, const char*, void**, int, int);

VIA_EXPORT void* __nss_lookup_function(void* ni, const char* fct_name) {
  static void* slot = nullptr;
  auto real = reinterpret_cast<NssLookupFunctionFn>(Next(&slot, "__nss_lookup_function"));
  return real != nullptr ? RouteModuleFn(real(ni, fct_name)) : nullptr;
}

#define VIA_NSS_LOOKUP(name, type, ...)                           \
  do {                                                            \
    static void* slot = nullptr;                                  \
    auto real = reinterpret_cast<type>(Next(&slot, #name));       \
    if (real == nullptr) return -1;                               \
    int rc = real(__VA_ARGS__);                                   \
    if (rc == 0 && fctp != nullptr) *fctp = RouteModuleFn(*fctp); \
    return rc;                                                    \
  } while (0)

VIA_EXPORT int __nss_lookup(void** ni, const char* fct_name, const char* fct2_name, void** fctp) {
  VIA_NSS_LOOKUP(__nss_lookup, NssLookupFn, ni, fct_name, fct2_name, fctp);
}

VIA_EXPORT int __nss_hosts_lookup2(void** ni, const char* fct_name, const char* fct2_name,
                                   void** fctp) {
  VIA_NSS_LOOKUP(__nss_hosts_lookup2, NssLookupFn, ni, fct_name, fct2_name, fctp);
}

VIA_EXPORT int __nss_next2(void** ni, const char* fct_name, const char* fct2_name, void** fctp,
                           int status, int all_values) {
  VIA_NSS_LOOKUP(__nss_next2, NssNext2Fn, ni, fct_name, fct2_name, fctp, status, all_values);
}
