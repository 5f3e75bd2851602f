// SOCKS5 CONNECT run by the shim itself, on the program's socket, in the program's thread: what
// the broker does in ConnectOp, with the same state machine (common/socks5_client.h), when the
// broker's HELLO reply allowed it (kFlagShimSocks5: a SOCKS5 overlay, `handshake: program`). It
// saves the two process hand-offs of a CONNECT through the broker (docs/performance.md). The
// connect itself is common/socks5_plan.h's, with libc's real connect.
#include "shim/socks5_connect.h"

#include "common/socks5_plan.h"
#include "shim/real.h"
#include "shim/strict_socket.h"

namespace via::shim {

int ShimSocks5Connect(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                      char* why, size_t whycap, char* msg, size_t msgcap) {
  return socks5::ConnectBlocking(fd, plan, name, dest, ProxyConnector{&plan}, why, whycap, msg,
                                 msgcap);
}

bool InFakeRange(const Socks5Plan& plan, const wire::Addr& addr) {
  return socks5::InFakeRange(plan, addr);
}

}  // namespace via::shim
