// Cached RESOLVE answers (name_cache.cc): a program that looks up the same name again and again
// does not pay a round trip to the broker each time.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/wire.h"

namespace via::shim {

// `broker` identifies the broker that answered (its pid, never 0). Get copies up to `cap`
// addresses and returns true on a live hit; Put keeps an answer for half of `hold_ms`.
bool NameCacheGet(const char* name, int family, uint32_t broker, wire::Addr* out, int cap,
                  int* count);
void NameCachePut(const char* name, int family, uint32_t broker, const wire::Addr* addrs, int n,
                  uint32_t hold_ms);
// The name of a fake address from a live entry of `broker`, normalized as the broker does
// (lower case, no trailing dot). False when not cached here (ask the broker).
bool NameCacheReverse(const wire::Addr& addr, uint32_t broker, char* name, size_t cap);

}  // namespace via::shim
