// A per-process cache of the broker's RESOLVE answers (name -> fake addresses), so that a
// program that looks up the same name again and again (a connect by name in a loop, a resolver
// per request) does not pay a round trip to the broker each time.
//
// An entry is used only while the broker's promise lasts (kTagHoldMs: it will not give those
// addresses to another name meanwhile), and only from the broker that made it: entries carry the
// broker's pid and the caller checks its link to that broker is still up. Fixed size, no heap;
// a lock that is only ever tried, so a fork while another thread held it (or contention) means a
// miss, never a wait.
#include "shim/name_cache.h"

#include <pthread.h>

#include <cstring>

#include "shim/state.h"

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
// Fake address -> 1 + the slot that holds it (0: none), direct-mapped; verified on use.
constexpr int kRevSlots = 1024;
uint16_t g_rev[kRevSlots];

uint32_t AddrHash(const wire::Addr& a) {
  uint32_t h = 2166136261u ^ a.family;
  for (size_t i = 0; i < a.addr_len(); ++i) h = (h ^ a.bytes[i]) * 16777619u;
  return h;
}

bool SameHost(const wire::Addr& a, const wire::Addr& b) {
  return a.family == b.family && std::memcmp(a.bytes, b.bytes, a.addr_len()) == 0;
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
             std::memcmp(s.name, name, len + 1) == 0 && MonotonicNs() < s.expires_ns;
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
  int64_t expires = MonotonicNs() + int64_t(hold_ms) * 500000;
  Slot& s = g_slots[Hash(name, len, family) % kSlots];
  if (pthread_mutex_trylock(&g_mu) != 0) return;
  s.expires_ns = expires;
  s.broker = broker;
  s.family = uint8_t(family);
  s.count = uint8_t(n);
  for (int i = 0; i < n; ++i) {
    std::memcpy(s.addrs[i], &addrs[i], sizeof(wire::Addr));
    g_rev[AddrHash(wire::Unmapped(addrs[i])) % kRevSlots] = uint16_t(&s - g_slots + 1);
  }
  std::memcpy(s.name, name, len + 1);
  pthread_mutex_unlock(&g_mu);
}

bool NameCacheReverse(const wire::Addr& addr, uint32_t broker, char* name, size_t cap) {
  const wire::Addr a = wire::Unmapped(addr);
  if (broker == 0 || pthread_mutex_trylock(&g_mu) != 0) return false;
  bool hit = false;
  int slot = g_rev[AddrHash(a) % kRevSlots];
  if (slot != 0) {
    const Slot& s = g_slots[slot - 1];
    for (int i = 0; i < s.count && !hit; ++i) {
      wire::Addr cached;
      std::memcpy(&cached, s.addrs[i], sizeof cached);
      hit = SameHost(wire::Unmapped(cached), a);
    }
    hit = hit && s.expires_ns != 0 && s.broker == broker && MonotonicNs() < s.expires_ns;
    size_t len = hit ? std::strlen(s.name) : 0;
    if (len > 0 && s.name[len - 1] == '.') --len;  // as the broker's NormalizeName
    hit = hit && len > 0 && len < cap;
    for (size_t i = 0; hit && i < len; ++i) {
      char c = s.name[i];
      name[i] = c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c;
    }
    if (hit) name[len] = 0;
  }
  pthread_mutex_unlock(&g_mu);
  return hit;
}

}  // namespace via::shim
