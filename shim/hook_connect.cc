// connect, sendto(MSG_FASTOPEN) and getpeername.
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

#include "shim/shim.h"

namespace via::shim {

namespace {

enum class Route { kDirect, kOverlay, kRefuse };

bool IsUnspecified(const wire::Addr& addr) {
  wire::Addr a = wire::Unmapped(addr);
  static const uint8_t kZero[16] = {};
  return std::memcmp(a.bytes, kZero, a.addr_len()) == 0;
}

// Decides what a connect of `fd` to `sa` must do. Returns 0, or an errno when the decision itself
// failed (the broker, needed for the loopback policy, is unreachable): fail closed.
int Decide(int fd, const sockaddr* sa, socklen_t len, wire::Addr* dest, Route* route, char* msg,
           size_t msgcap) {
  *route = Route::kDirect;
  if (sa == nullptr || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) || Passthrough()) {
    return 0;
  }
  if (!wire::AddrFromSockaddr(sa, len, dest)) return 0;  // the kernel reports EINVAL
  int type = 0;
  socklen_t tlen = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type != SOCK_STREAM) return 0;
  if (wire::IsLoopback(*dest) || IsUnspecified(*dest)) {
    HelloInfo info;
    int err = BrokerHello(&info, msg, msgcap);
    if (err != 0) return err;
    if (info.flags & wire::kFlagLoopbackRefuse) {
      *route = Route::kRefuse;
    } else if (info.flags & wire::kFlagLoopbackRoute) {
      *route = Route::kOverlay;
    }
    return 0;
  }
  *route = Route::kOverlay;
  return 0;
}

// Routes `fd` to `dest` through the broker. Returns 0 or -1 with errno set.
int RoutedConnect(int fd, const wire::Addr& dest) {
  char msg[512] = {};
  int err = BrokerConnect(fd, dest, msg, sizeof msg);
  if (err == 0) {
    RememberRouted(fd, dest);
    return 0;
  }
  char where[80];
  Complain("connect to %s through %s failed: %s", wire::FormatAddr(dest, where, sizeof where),
           GetSettings().network, msg);
  errno = err;
  return -1;
}

// Common front of connect and sendto(MSG_FASTOPEN): returns 1 when the caller must do the real
// call, else 0/-1 as the final result.
int MaybeRoute(int fd, const sockaddr* sa, socklen_t len, int* result) {
  wire::Addr dest;
  Route route;
  char msg[512] = {};
  int err = Decide(fd, sa, len, &dest, &route, msg, sizeof msg);
  if (err != 0) {
    Complain("connect refused: %s", msg);
    errno = err;
    *result = -1;
    return 0;
  }
  switch (route) {
    case Route::kDirect:
      return 1;
    case Route::kRefuse: {
      char where[80];
      Complain(
          "connect to %s refused: loopback destinations are refused under %s "
          "(network_service.loopback: refuse)",
          wire::FormatAddr(dest, where, sizeof where), GetSettings().network);
      errno = ECONNREFUSED;
      *result = -1;
      return 0;
    }
    case Route::kOverlay:
      *result = RoutedConnect(fd, dest);
      return 0;
  }
  return 1;
}

}  // namespace

}  // namespace via::shim

using namespace via::shim;
namespace wire = via::wire;

VIA_EXPORT int connect(int fd, const sockaddr* addr, socklen_t len) {
  int result = 0;
  if (MaybeRoute(fd, addr, len, &result) == 0) return result;
  return Real().connect(fd, addr, len);
}

VIA_EXPORT ssize_t sendto(int fd, const void* buf, size_t n, int flags, const sockaddr* addr,
                          socklen_t len) {
  if ((flags & MSG_FASTOPEN) != 0 && addr != nullptr) {
    // TCP Fast Open would send the SYN (with data) straight to the destination: connect through
    // the overlay instead, then send normally.
    int result = 0;
    if (MaybeRoute(fd, addr, len, &result) == 0) {
      if (result != 0) return -1;
      return Real().sendto(fd, buf, n, flags & ~MSG_FASTOPEN, nullptr, 0);
    }
  }
  return Real().sendto(fd, buf, n, flags, addr, len);
}

VIA_EXPORT int getpeername(int fd, sockaddr* addr, socklen_t* len) noexcept {
  wire::Addr dest;
  if (addr != nullptr && len != nullptr && LookupRouted(fd, &dest)) {
    sockaddr_storage ss;
    socklen_t actual = wire::AddrToSockaddr(dest, &ss);
    std::memcpy(addr, &ss, *len < actual ? *len : actual);
    *len = actual;
    return 0;
  }
  return Real().getpeername(fd, addr, len);
}
