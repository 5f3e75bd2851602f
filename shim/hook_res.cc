// res_query and friends (the resolver API of <resolv.h>: MX, SRV, TXT lookups of mail servers,
// ssh's VerifyHostKeyDNS, ...). glibc's implementation sends its queries with socket calls made
// inside libc, which no preload library sees: under an overlay they would reach the system's
// resolver. So the shim answers them itself: it builds the query with res_mkquery (which only
// formats bytes) and hands it to the broker (DNS_QUERY), exactly like a query a program sent on
// its own UDP socket. A/AAAA get fake addresses, PTR of a fake address its name, other types no
// records (see broker/dns_message.h). The search list is not applied: a name is asked for as
// given (appending local domains would tell the overlay's far end about them).
//
// Whether the process is routed is the broker's answer (NetworkDirect: one HELLO per thread,
// on the first call), never the environment's: a program started with VIA_NETWORK emptied in
// a session, or preloaded with a via.program rule that routes it, is routed all the same.
#include <arpa/nameser.h>
#include <dlfcn.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <resolv.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shim/broker_link.h"
#include "shim/export.h"
#include "shim/process_route.h"
#include "shim/state.h"

namespace via::shim {
namespace {

// glibc's own, for processes without an overlay (resolved lazily, once).
struct ResReal {
  int (*query)(const char*, int, int, unsigned char*, int);
  int (*search)(const char*, int, int, unsigned char*, int);
  int (*querydomain)(const char*, const char*, int, int, unsigned char*, int);
  int (*send)(const unsigned char*, int, unsigned char*, int);
  int (*nquery)(res_state, const char*, int, int, unsigned char*, int);
  int (*nsearch)(res_state, const char*, int, int, unsigned char*, int);
  int (*nquerydomain)(res_state, const char*, const char*, int, int, unsigned char*, int);
  int (*nsend)(res_state, const unsigned char*, int, unsigned char*, int);
};

template <typename Fn>
Fn Next(const char* name, const char* alt) {
  void* p = dlsym(RTLD_NEXT, name);
  if (p == nullptr) p = dlsym(RTLD_NEXT, alt);
  return reinterpret_cast<Fn>(p);
}

const ResReal& RealRes() {
  static ResReal r;
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, [] {
    r.query = Next<decltype(r.query)>("__res_query", "res_query");
    r.search = Next<decltype(r.search)>("__res_search", "res_search");
    r.querydomain = Next<decltype(r.querydomain)>("__res_querydomain", "res_querydomain");
    r.send = Next<decltype(r.send)>("__res_send", "res_send");
    r.nquery = Next<decltype(r.nquery)>("__res_nquery", "res_nquery");
    r.nsearch = Next<decltype(r.nsearch)>("__res_nsearch", "res_nsearch");
    r.nquerydomain = Next<decltype(r.nquerydomain)>("__res_nquerydomain", "res_nquerydomain");
    r.nsend = Next<decltype(r.nsend)>("__res_nsend", "res_nsend");
  });
  return r;
}

int NotAvailable(res_state statp) {
  errno = ENOSYS;
  h_errno = NO_RECOVERY;
  if (statp != nullptr) statp->res_h_errno = NO_RECOVERY;
  return -1;
}

// Sends `query` to the broker; copies the answer. Returns its length, or -1 with h_errno (and
// errno) set like glibc's res_send/res_query: `check_rcode` makes NXDOMAIN, no answer records
// and server errors failures as res_query reports them.
int Ask(res_state statp, const unsigned char* query, int qlen, unsigned char* answer, int anslen,
        bool check_rcode) {
  auto fail = [statp](int herr, int err) {
    h_errno = herr;
    if (statp != nullptr) statp->res_h_errno = herr;
    errno = err;
    return -1;
  };
  if (qlen <= 0 || answer == nullptr || anslen <= 0) return fail(NO_RECOVERY, EINVAL);
  uint8_t buf[kMaxDnsQuery + 512];
  size_t n = 0;
  char msg[512] = {};
  int err = BrokerDnsQuery(query, size_t(qlen), buf, sizeof buf, &n, msg, sizeof msg);
  if (err != 0) {
    Complain("DNS lookup (res_query/res_send) refused: the broker did not answer it: %s", msg);
    return fail(NO_RECOVERY, err);
  }
  if (n < HFIXEDSZ) return fail(TRY_AGAIN, ETIMEDOUT);  // not answered, as by a silent server
  std::memcpy(answer, buf, n < size_t(anslen) ? n : size_t(anslen));
  if (check_rcode) {
    const int rcode = buf[3] & 0x0f;
    const int ancount = (buf[6] << 8) | buf[7];
    if (rcode == NXDOMAIN) return fail(HOST_NOT_FOUND, 0);
    if (rcode == SERVFAIL) return fail(TRY_AGAIN, 0);
    if (rcode != NOERROR) return fail(NO_RECOVERY, 0);
    if (ancount == 0) return fail(NO_DATA, 0);
  }
  return int(n);
}

int Query(res_state statp, const char* name, int cls, int type, unsigned char* answer, int anslen) {
  unsigned char q[PACKETSZ + 64];
  int qlen = res_mkquery(QUERY, name, cls, type, nullptr, 0, nullptr, q, sizeof q);
  if (qlen < 0) {
    h_errno = NO_RECOVERY;
    if (statp != nullptr) statp->res_h_errno = NO_RECOVERY;
    return -1;
  }
  return Ask(statp, q, qlen, answer, anslen, true);
}

int QueryDomain(res_state statp, const char* name, const char* domain, int cls, int type,
                unsigned char* answer, int anslen) {
  char full[NS_MAXDNAME + 2];
  if (domain == nullptr || domain[0] == 0) return Query(statp, name, cls, type, answer, anslen);
  int len = std::snprintf(full, sizeof full, "%s.%s", name, domain);
  if (len < 0 || size_t(len) >= sizeof full) {
    h_errno = NO_RECOVERY;
    errno = EMSGSIZE;
    return -1;
  }
  return Query(statp, full, cls, type, answer, anslen);
}

}  // namespace
}  // namespace via::shim

using namespace via::shim;

#define VIA_RES_HOOK(ret, name, params, args, real_call, routed_call) \
  VIA_EXPORT ret name params {                                        \
    if (!NetworkDirect()) return routed_call;                         \
    auto fn = RealRes().real_call;                                    \
    return fn != nullptr ? fn args : NotAvailable(nullptr);           \
  }

// res_query and res_search: the name as given (no search list under an overlay).
VIA_RES_HOOK(int, res_query, (const char* n, int c, int t, unsigned char* a, int l),
             (n, c, t, a, l), query, Query(nullptr, n, c, t, a, l))
VIA_RES_HOOK(int, __res_query, (const char* n, int c, int t, unsigned char* a, int l),
             (n, c, t, a, l), query, Query(nullptr, n, c, t, a, l))
VIA_RES_HOOK(int, res_search, (const char* n, int c, int t, unsigned char* a, int l),
             (n, c, t, a, l), search, Query(nullptr, n, c, t, a, l))
VIA_RES_HOOK(int, __res_search, (const char* n, int c, int t, unsigned char* a, int l),
             (n, c, t, a, l), search, Query(nullptr, n, c, t, a, l))
VIA_RES_HOOK(int, res_querydomain,
             (const char* n, const char* d, int c, int t, unsigned char* a, int l),
             (n, d, c, t, a, l), querydomain, QueryDomain(nullptr, n, d, c, t, a, l))
VIA_RES_HOOK(int, __res_querydomain,
             (const char* n, const char* d, int c, int t, unsigned char* a, int l),
             (n, d, c, t, a, l), querydomain, QueryDomain(nullptr, n, d, c, t, a, l))
VIA_RES_HOOK(int, res_send, (const unsigned char* q, int ql, unsigned char* a, int l),
             (q, ql, a, l), send, Ask(nullptr, q, ql, a, l, false))
VIA_RES_HOOK(int, __res_send, (const unsigned char* q, int ql, unsigned char* a, int l),
             (q, ql, a, l), send, Ask(nullptr, q, ql, a, l, false))
VIA_RES_HOOK(int, res_nquery, (res_state s, const char* n, int c, int t, unsigned char* a, int l),
             (s, n, c, t, a, l), nquery, Query(s, n, c, t, a, l))
VIA_RES_HOOK(int, __res_nquery, (res_state s, const char* n, int c, int t, unsigned char* a, int l),
             (s, n, c, t, a, l), nquery, Query(s, n, c, t, a, l))
VIA_RES_HOOK(int, res_nsearch, (res_state s, const char* n, int c, int t, unsigned char* a, int l),
             (s, n, c, t, a, l), nsearch, Query(s, n, c, t, a, l))
VIA_RES_HOOK(int, __res_nsearch,
             (res_state s, const char* n, int c, int t, unsigned char* a, int l),
             (s, n, c, t, a, l), nsearch, Query(s, n, c, t, a, l))
VIA_RES_HOOK(int, res_nquerydomain,
             (res_state s, const char* n, const char* d, int c, int t, unsigned char* a, int l),
             (s, n, d, c, t, a, l), nquerydomain, QueryDomain(s, n, d, c, t, a, l))
VIA_RES_HOOK(int, __res_nquerydomain,
             (res_state s, const char* n, const char* d, int c, int t, unsigned char* a, int l),
             (s, n, d, c, t, a, l), nquerydomain, QueryDomain(s, n, d, c, t, a, l))
VIA_RES_HOOK(int, res_nsend, (res_state s, const unsigned char* q, int ql, unsigned char* a, int l),
             (s, q, ql, a, l), nsend, Ask(s, q, ql, a, l, false))
VIA_RES_HOOK(int, __res_nsend,
             (res_state s, const unsigned char* q, int ql, unsigned char* a, int l),
             (s, q, ql, a, l), nsend, Ask(s, q, ql, a, l, false))

// libc's internal entry points behind the functions above (GLIBC_PRIVATE, exported for
// libresolv: its compatibility res_gethostbyname* call them from outside libc, where the shim
// sees the call, and so can any program that looks them up). Under an overlay they are answered
// as the public ones; `ctx` is glibc's struct resolv_context, whose first member is the
// res_state. The second query (A and AAAA in parallel) is not sent: *resplen2 = 0.
namespace {

struct ResolvContextHead {
  res_state resp;
};

res_state StateOf(void* ctx) {
  return ctx != nullptr ? static_cast<ResolvContextHead*>(ctx)->resp : nullptr;
}

void NoSecondAnswer(unsigned char** answerp2, int* nanswerp2, int* resplen2, int* malloced2) {
  if (answerp2 != nullptr) *answerp2 = nullptr;
  if (nanswerp2 != nullptr) *nanswerp2 = 0;
  if (resplen2 != nullptr) *resplen2 = 0;
  if (malloced2 != nullptr) *malloced2 = 0;
}

// glibc's own, looked up once (racing threads find the same pointer).
template <typename Fn>
Fn NextPrivate(void** slot, const char* name) {
  void* f = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
  if (f == nullptr) {
    f = dlsym(RTLD_NEXT, name);
    __atomic_store_n(slot, f, __ATOMIC_RELEASE);
  }
  return reinterpret_cast<Fn>(f);
}

}  // namespace

using ContextQueryFn = int (*)(void*, const char*, int, int, unsigned char*, int, unsigned char**,
                               unsigned char**, int*, int*, int*);
using ContextSendFn = int (*)(void*, const unsigned char*, int, const unsigned char*, int,
                              unsigned char*, int, unsigned char**, unsigned char**, int*, int*,
                              int*);

#define VIA_RES_CONTEXT_QUERY(name)                                                            \
  VIA_EXPORT int name(void* ctx, const char* n, int c, int t, unsigned char* a, int l,         \
                      unsigned char** ap, unsigned char** ap2, int* nap2, int* rl2, int* m2) { \
    if (NetworkDirect()) {                                                                     \
      static void* slot = nullptr;                                                             \
      ContextQueryFn real = NextPrivate<ContextQueryFn>(&slot, #name);                         \
      if (real == nullptr) return NotAvailable(StateOf(ctx));                                  \
      return real(ctx, n, c, t, a, l, ap, ap2, nap2, rl2, m2);                                 \
    }                                                                                          \
    NoSecondAnswer(ap2, nap2, rl2, m2);                                                        \
    if (ap != nullptr && *ap != nullptr) a = *ap;                                              \
    return Query(StateOf(ctx), n, c, t, a, l);                                                 \
  }

VIA_RES_CONTEXT_QUERY(__res_context_query)
VIA_RES_CONTEXT_QUERY(__res_context_search)

VIA_EXPORT int __res_context_send(void* ctx, const unsigned char* q, int ql,
                                  const unsigned char* q2, int ql2, unsigned char* a, int l,
                                  unsigned char** ap, unsigned char** ap2, int* nap2, int* rl2,
                                  int* m2) {
  if (NetworkDirect()) {
    static void* slot = nullptr;
    ContextSendFn real = NextPrivate<ContextSendFn>(&slot, "__res_context_send");
    if (real == nullptr) return NotAvailable(StateOf(ctx));
    return real(ctx, q, ql, q2, ql2, a, l, ap, ap2, nap2, rl2, m2);
  }
  NoSecondAnswer(ap2, nap2, rl2, m2);
  if (ap != nullptr && *ap != nullptr) a = *ap;
  return Ask(StateOf(ctx), q, ql, a, l, false);
}

// getaddrinfo_a: glibc runs its requests on a thread of its own that calls getaddrinfo inside
// libc, where the shim would not see it. Under an overlay the shim answers each request at
// once with its own getaddrinfo (fake addresses from the broker: no waiting on the network)
// and then notifies as asked (GAI_NOWAIT with SIGEV_SIGNAL or SIGEV_THREAD). gai_error reads
// the results; gai_suspend and gai_cancel find nothing in flight.
namespace {

struct Notify {
  void (*fn)(sigval);
  sigval value;
};

void* RunNotify(void* arg) {
  Notify n = *static_cast<Notify*>(arg);
  free(arg);
  n.fn(n.value);
  return nullptr;
}

}  // namespace

VIA_EXPORT int getaddrinfo_a(int mode, gaicb* list[], int nitems, sigevent* sevp) {
  if (NetworkDirect()) {
    using Fn = int (*)(int, gaicb*[], int, sigevent*);
    static Fn real = nullptr;
    if (real == nullptr) real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "getaddrinfo_a"));
    if (real == nullptr) return EAI_SYSTEM;
    return real(mode, list, nitems, sevp);
  }
  for (int i = 0; i < nitems; ++i) {
    if (list == nullptr || list[i] == nullptr) continue;
    list[i]->ar_result = nullptr;
    list[i]->__return = getaddrinfo(list[i]->ar_name, list[i]->ar_service, list[i]->ar_request,
                                    &list[i]->ar_result);
  }
  if (mode == GAI_NOWAIT && sevp != nullptr) {
    if (sevp->sigev_notify == SIGEV_SIGNAL) {
      sigqueue(getpid(), sevp->sigev_signo, sevp->sigev_value);
    } else if (sevp->sigev_notify == SIGEV_THREAD && sevp->sigev_notify_function != nullptr) {
      auto* n = static_cast<Notify*>(malloc(sizeof(Notify)));
      if (n == nullptr) return EAI_MEMORY;
      *n = Notify{sevp->sigev_notify_function, sevp->sigev_value};
      pthread_t t;
      if (pthread_create(&t, sevp->sigev_notify_attributes, RunNotify, n) != 0) {
        free(n);
        return EAI_AGAIN;
      }
      pthread_detach(t);
    }
  }
  return 0;
}
