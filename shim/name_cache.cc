// A per-process cache of the broker's RESOLVE answers (name -> fake addresses), so that a
// program that looks up the same name again and again (a connect by name in a loop, a resolver
// per request) does not pay a round trip to the broker each time.
//
// An entry is used only while the broker's promise lasts (kTagHoldMs: it will not give those
// addresses to another name meanwhile), and only from the broker that made it: entries carry the
// broker's pid and the caller checks its link to that broker is still up. Fixed size, no heap;
// a lock that is only ever tried, so a fork while another thread held it (or contention) means a
// miss, never a wait.
#include <pthread.h>
#include <time.h>

#include <cstring>

#include "shim/shim.h"

namespace via::shim {

namespace {

constexpr int kSlots = 256;  // direct-mapped; a collision replaces the older entry
constexpr int kMaxCached = 4;

// Plain data, zero-initialized in .bss: no member initializers, which would make the compiler
// construct all 256 slots at load time (a static constructor touching ~90 KiB in every process).
struct Slot {
  int64_t expires_ns;  // 0 = empty
  uint32_t broker;
  uint8_t family;
  uint8_t count;
  unsigned char addrs[kMaxCached][sizeof(wire::Addr)];  // wire::Addr, copied with memcpy
  char name[256];
};

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
Slot g_slots[kSlots];

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

uint32_t Hash(const char* name, size_t len, int family) {
  uint32_t h = 2166136261u ^ uint32_t(family);
  for (size_t i = 0; i < len; ++i) h = (h ^ uint8_t(name[i])) * 16777619u;
  return h;
}

}  // namespace

bool NameCacheGet(const char* name, int family, uint32_t broker, wire::Addr* out, int cap,
                  int* count) {
  size_t len = std::strlen(name);
  if (len >= sizeof(Slot::name) || broker == 0) return false;
  Slot& s = g_slots[Hash(name, len, family) % kSlots];
  if (pthread_mutex_trylock(&g_mu) != 0) return false;
  bool hit = s.expires_ns != 0 && s.broker == broker && s.family == family &&
             std::memcmp(s.name, name, len + 1) == 0 && NowNs() < s.expires_ns;
  if (hit) {
    int n = s.count < cap ? s.count : cap;
    for (int i = 0; i < n; ++i) std::memcpy(&out[i], s.addrs[i], sizeof(wire::Addr));
    *count = n;
  }
  pthread_mutex_unlock(&g_mu);
  return hit;
}

void NameCachePut(const char* name, int family, uint32_t broker, const wire::Addr* addrs, int n,
                  uint32_t hold_ms) {
  size_t len = std::strlen(name);
  if (hold_ms == 0 || broker == 0 || n <= 0 || n > kMaxCached || len >= sizeof(Slot::name)) {
    return;
  }
  // Half the promise: the broker's clock started before our request went out.
  int64_t expires = NowNs() + int64_t(hold_ms) * 500000;
  Slot& s = g_slots[Hash(name, len, family) % kSlots];
  if (pthread_mutex_trylock(&g_mu) != 0) return;
  s.expires_ns = expires;
  s.broker = broker;
  s.family = uint8_t(family);
  s.count = uint8_t(n);
  for (int i = 0; i < n; ++i) std::memcpy(s.addrs[i], &addrs[i], sizeof(wire::Addr));
  std::memcpy(s.name, name, len + 1);
  pthread_mutex_unlock(&g_mu);
}

}  // namespace via::shim
