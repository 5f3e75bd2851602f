// Random bytes for the broker's secrets and starting points (session tokens, the fake-address
// table's id and first number, a helper's secret).
#pragma once

#include <sys/random.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace via {

// Fills `buf` with `n` bytes from getrandom(2). GRND_NONBLOCK: never stalls the broker's loop
// waiting for the entropy pool at early boot (it fails with EAGAIN instead).
inline Status FillRandom(void* buf, size_t n) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom(p + got, n - got, GRND_NONBLOCK);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::FromErrno("getrandom");
    got += size_t(r);
  }
  return Status::Ok();
}

}  // namespace via
