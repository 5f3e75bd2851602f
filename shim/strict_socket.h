// The shim in a strict session (`via run --strict`, process_route.h StrictHere): its process sits
// in a network namespace with only `lo`, so the socket it runs SOCKS5 on is one the broker made
// in its own namespace and connected to the proxy (PROXY_SOCKET), put in place of the program's.
// No seccomp notification per connect; see docs/architecture.md, "Strict mode".
#pragma once

#include <sys/socket.h>

#include "shim/socks5_plan.h"

namespace via::shim {

// The connect of the program's socket to the proxy, as socks5::ConnectBlocking and
// proxy::StartConnect call it: libc's, or in a strict session (StrictHere: the namespace has no
// way to the proxy) a socket of the broker's namespace connecting to it (PROXY_SOCKET), put in
// place of the program's with its file status flags, close-on-exec, TCP_NODELAY and
// SO_KEEPALIVE. 0, or -1 with errno (EINPROGRESS while it connects). `plan`: whether the next
// socket may come greeted (the same credentials for every connect); greeted() says whether this
// one did, so that the handshake sends its request only (socks5::Client::SkipGreeting).
struct ProxyConnector {
  const Socks5Plan* plan;
  int operator()(int fd, const sockaddr* addr, socklen_t len) const;
  bool greeted() const;
};
// In a strict session, puts the broker's socket in place on `fd` now, connecting to `plan`'s
// proxy (as ProxyConnector), for a caller that records what the descriptor is (its inode, a
// duplicate) before the connect; the next ProxyConnector call for `fd` in this thread returns
// its outcome. Outside one: nothing. False when it failed (the connect then fails the usual way).
bool PlaceProxySocket(int fd, const Socks5Plan& plan);

}  // namespace via::shim
