// SOCKS5 CONNECT run by the shim itself on the program's socket (socks5_connect.cc), when the
// broker's HELLO reply allowed it; the engine is common/proxy_connect.h.
#pragma once

#include <cstddef>

#include "common/wire.h"
#include "shim/socks5_plan.h"

namespace via::shim {

// Connects `fd` through the proxy of `plan` to `name` (or `dest` when nullptr), port dest.port:
// 0, or an errno with the cause in `why` (for REPORT) and "<target> via <overlay>: <why>" in
// `msg` (as the broker words a failed CONNECT). The socket's file status flags are restored.
int ShimSocks5Connect(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                      char* why, size_t whycap, char* msg, size_t msgcap);
// Whether `addr` lies in one of the broker's fake-address ranges.
bool InFakeRange(const Socks5Plan& plan, const wire::Addr& addr);

}  // namespace via::shim
