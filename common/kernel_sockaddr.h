// How Linux reads the destination of connect, sendto and sendmsg on an inet socket: the shim
// judges exactly the address the kernel will use, or refuses the call (docs/architecture.md,
// "One decision for every destination").
//
// The rules follow the kernel's own checks (Linux 6.x): net/socket.c (move_addr_to_kernel,
// __copy_msghdr), net/ipv4/af_inet.c (inet_stream_connect, inet_dgram_connect), tcp_ipv4.c
// (tcp_v4_connect), net/ipv6/tcp_ipv6.c (tcp_v6_connect), net/ipv4/tcp.c
// (tcp_sendmsg_fastopen), net/ipv4/udp.c (udp_sendmsg), net/ipv6/udp.c (udpv6_sendmsg),
// net/ipv4/datagram.c and net/ipv6/datagram.c (ip4_datagram_connect, ip6_datagram_connect,
// ip6_datagram_connect_v6_only), net/ipv4/raw.c, net/ipv6/raw.c, net/ipv4/ping.c,
// net/ipv6/ping.c. Where the kernel rejects an address these functions reject it too (with the
// kernel's errno); where they accept one they return the address the kernel will use. Being
// stricter than the kernel is allowed (the caller refuses), never laxer.
//
// Header-only, allocation-free and exception-free (the shim uses it).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "common/wire.h"

namespace via::wire {

// What a socket is, as the kernel sees it (getsockopt SO_DOMAIN, SO_TYPE, SO_PROTOCOL).
enum class SockKind : uint8_t {
  kLocal,        // AF_UNIX, AF_NETLINK, AF_ALG, AF_KEY: nothing it sends leaves the host
  kStream,       // AF_INET/AF_INET6 SOCK_STREAM, TCP or MPTCP
  kUdp,          // AF_INET/AF_INET6 SOCK_DGRAM, UDP or UDP-Lite
  kPing,         // AF_INET SOCK_DGRAM IPPROTO_ICMP, AF_INET6 SOCK_DGRAM IPPROTO_ICMPV6
  kRaw,          // AF_INET SOCK_RAW IPPROTO_ICMP, AF_INET6 SOCK_RAW IPPROTO_ICMPV6
  kRawOpaque,    // any other SOCK_RAW: the program writes a transport header (ports the address
                 // does not show) or the IP header itself (IPPROTO_RAW, IP_HDRINCL/IPV6_HDRINCL)
  kOtherInet,    // AF_INET/AF_INET6 of another kind (SCTP, L2TP, SMC, DCCP...): not judged
  kOtherFamily,  // AF_PACKET, AF_VSOCK, AF_TIPC, AF_RDS, AF_BLUETOOTH...: not judged
};

constexpr int kProtoMptcp = 262;  // IPPROTO_MPTCP (not in every libc's headers)
constexpr int kProtoRaw = 255;    // IPPROTO_RAW: header included
constexpr int kSockTypeMask = 0xf;
constexpr int kSockPacket = 10;  // SOCK_PACKET: socket(AF_INET, SOCK_PACKET) is an AF_PACKET socket

// `type` with or without SOCK_NONBLOCK/SOCK_CLOEXEC; `protocol` as SO_PROTOCOL reports it, or
// as given to socket() (0: the type's default protocol).
inline SockKind ClassifySocket(int domain, int type, int protocol) {
  if (domain == AF_UNIX || domain == AF_NETLINK || domain == AF_ALG || domain == AF_KEY) {
    return SockKind::kLocal;
  }
  if (domain != AF_INET && domain != AF_INET6) return SockKind::kOtherFamily;
  type &= kSockTypeMask;
  if (type == kSockPacket) return SockKind::kOtherFamily;  // the kernel makes it AF_PACKET
  switch (type) {
    case SOCK_STREAM:
      if (protocol == 0 || protocol == IPPROTO_TCP || protocol == kProtoMptcp) {
        return SockKind::kStream;
      }
      return SockKind::kOtherInet;
    case SOCK_DGRAM:
      if (protocol == 0 || protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE) {
        return SockKind::kUdp;
      }
      if ((domain == AF_INET && protocol == IPPROTO_ICMP) ||
          (domain == AF_INET6 && protocol == IPPROTO_ICMPV6)) {
        return SockKind::kPing;
      }
      return SockKind::kOtherInet;
    case SOCK_RAW:
      if ((domain == AF_INET && protocol == IPPROTO_ICMP) ||
          (domain == AF_INET6 && protocol == IPPROTO_ICMPV6)) {
        return SockKind::kRaw;
      }
      return SockKind::kRawOpaque;
    default:
      return SockKind::kOtherInet;
  }
}

// The call that carries the address: the kernel takes its length differently in each.
enum class AddrCall : uint8_t {
  kConnect,  // connect(2): length 0..128, else EINVAL
  kSendto,   // sendto(2): a null address is none; length 0..128, else EINVAL
  kSendmsg,  // sendmsg(2)/sendmmsg(2): null or length 0 is none; over 128 truncated to 128
};

struct KernelDest {
  enum Kind : uint8_t {
    kNone,    // no destination: the socket's peer (a send), a disconnect (connect AF_UNSPEC), or
              // an address the kernel ignores (a TCP send without MSG_FASTOPEN)
    kAddr,    // `addr`, as the kernel will use it
    kReject,  // the kernel refuses the call with `err` before using any address
  };
  Kind kind = kNone;
  int err = 0;
  // kAddr: IPv4 when the kernel reads an IPv4 address (an AF_INET sockaddr, on either family
  // of socket where accepted, or AF_UNSPEC read as IPv4); IPv6 from AF_INET6, v4-mapped
  // addresses included (the kernel then goes to IPv4: wire::Unmapped gives that address).
  Addr addr;
  // The length the kernel takes (kSendmsg: truncated to 128); 0 without an address.
  socklen_t len = 0;
};

namespace kernel_detail {

inline KernelDest Reject(int err) {
  KernelDest d;
  d.kind = KernelDest::kReject;
  d.err = err;
  return d;
}

// An IPv4 address as the IPv4 paths read it: at least sizeof(sockaddr_in), family AF_INET (or
// AF_UNSPEC where `unspec_ok`), else `bad_family`.
inline KernelDest V4(const sockaddr* sa, long len, bool unspec_ok, int bad_family) {
  if (len < long(sizeof(sockaddr_in))) return Reject(EINVAL);
  sockaddr_in in;
  std::memcpy(&in, sa, sizeof in);
  if (in.sin_family != AF_INET && !(unspec_ok && in.sin_family == AF_UNSPEC)) {
    return Reject(bad_family);
  }
  KernelDest d;
  d.kind = KernelDest::kAddr;
  d.addr.family = 4;
  d.addr.port = ntohs(in.sin_port);
  std::memcpy(d.addr.bytes, &in.sin_addr, 4);
  return d;
}

// SIN6_LEN_RFC2133: a sockaddr_in6 without sin6_scope_id, which the kernel accepts.
constexpr long kSin6LenRfc2133 = 24;

// An IPv6 address: at least `min_len` bytes, family AF_INET6 (or AF_UNSPEC where `unspec_ok`).
inline KernelDest V6(const sockaddr* sa, long len, long min_len, bool unspec_ok, int bad_family) {
  if (len < min_len) return Reject(EINVAL);
  uint16_t family;
  std::memcpy(&family, sa, sizeof family);
  if (family != AF_INET6 && !(unspec_ok && family == AF_UNSPEC)) return Reject(bad_family);
  KernelDest d;
  d.kind = KernelDest::kAddr;
  d.addr.family = 6;
  uint16_t port;
  std::memcpy(&port, reinterpret_cast<const uint8_t*>(sa) + offsetof(sockaddr_in6, sin6_port),
              sizeof port);
  d.addr.port = ntohs(port);
  std::memcpy(d.addr.bytes,
              reinterpret_cast<const uint8_t*>(sa) + offsetof(sockaddr_in6, sin6_addr), 16);
  return d;
}

}  // namespace kernel_detail

// The destination the kernel takes from `sa`/`len` in `call` on an inet socket of `domain`
// (AF_INET or AF_INET6) and `kind` (kStream, kUdp, kPing, kRaw or kRawOpaque; anything else is
// rejected with EAFNOSUPPORT: the caller decides about those sockets without an address).
// `fastopen`: flags carry MSG_FASTOPEN (a stream socket then connects as connect() does).
// `len` is the program's value, unchanged; reads stay within min(len, 128) bytes of `sa`.
inline KernelDest KernelDestination(int domain, SockKind kind, AddrCall call, bool fastopen,
                                    const sockaddr* sa, socklen_t ulen) {
  using namespace kernel_detail;
  // The kernel takes the length as an int.
  long len = static_cast<int>(ulen);
  constexpr long kMax = sizeof(sockaddr_storage);
  switch (call) {
    case AddrCall::kConnect:
      if (len < 0 || len > kMax) return Reject(EINVAL);
      if (sa == nullptr) return Reject(len == 0 ? EINVAL : EFAULT);
      break;
    case AddrCall::kSendto:
      if (sa == nullptr) return KernelDest{};
      if (len < 0 || len > kMax) return Reject(EINVAL);
      break;
    case AddrCall::kSendmsg:
      if (sa == nullptr) len = 0;
      if (len < 0) return Reject(EINVAL);
      if (len > kMax) len = kMax;
      if (len == 0) return KernelDest{};
      break;
  }
  if (domain != AF_INET && domain != AF_INET6) return Reject(EAFNOSUPPORT);
  const bool connects = call == AddrCall::kConnect || (fastopen && kind == SockKind::kStream);
  if (kind == SockKind::kStream && !connects) return KernelDest{};  // tcp_sendmsg ignores it
  uint16_t family = 0xffff;
  if (len >= long(sizeof family)) std::memcpy(&family, sa, sizeof family);
  if (connects) {
    // inet_stream_connect / inet_dgram_connect; tcp_sendmsg_fastopen refuses AF_UNSPEC.
    if (len < long(sizeof family)) return Reject(EINVAL);
    if (family == AF_UNSPEC) {
      if (call != AddrCall::kConnect) return Reject(EOPNOTSUPP);
      return KernelDest{};  // a disconnect
    }
  }
  KernelDest d;
  const bool v4 = domain == AF_INET;
  switch (kind) {
    case SockKind::kStream:  // tcp_v4_connect, tcp_v6_connect (also MSG_FASTOPEN)
      d = v4 ? V4(sa, len, false, EAFNOSUPPORT) : V6(sa, len, kSin6LenRfc2133, false, EAFNOSUPPORT);
      break;
    case SockKind::kUdp:
      if (connects) {  // ip4_datagram_connect; ip6_datagram_connect takes AF_INET as IPv4
        d = v4 || family == AF_INET ? V4(sa, len, false, EAFNOSUPPORT)
                                    : V6(sa, len, kSin6LenRfc2133, false, EAFNOSUPPORT);
      } else if (v4) {  // udp_sendmsg: AF_UNSPEC is read as IPv4
        d = V4(sa, len, true, EAFNOSUPPORT);
      } else {  // udpv6_sendmsg
        if (len < long(sizeof family)) return Reject(EINVAL);
        if (family == AF_INET6) {
          d = V6(sa, len, kSin6LenRfc2133, false, EINVAL);
        } else if (family == AF_INET) {
          d = V4(sa, len, false, EAFNOSUPPORT);
        } else if (family == AF_UNSPEC) {
          return KernelDest{};  // as no address: the connected peer
        } else {
          return Reject(EINVAL);
        }
      }
      // udp_sendmsg/udpv6_sendmsg refuse port 0 (a connect to it is accepted).
      if (!connects && d.kind == KernelDest::kAddr && d.addr.port == 0) return Reject(EINVAL);
      break;
    case SockKind::kPing:
      if (connects) {  // ip4_datagram_connect; ip6_datagram_connect_v6_only
        d = v4 ? V4(sa, len, false, EAFNOSUPPORT)
               : V6(sa, len, kSin6LenRfc2133, false, EAFNOSUPPORT);
      } else {  // ping_v4_sendmsg, ping_v6_sendmsg (a whole sockaddr_in6)
        d = v4 ? V4(sa, len, false, EAFNOSUPPORT)
               : V6(sa, len, sizeof(sockaddr_in6), false, EAFNOSUPPORT);
      }
      break;
    case SockKind::kRaw:
    case SockKind::kRawOpaque:
      if (connects) {  // ip4_datagram_connect; ip6_datagram_connect_v6_only
        d = v4 ? V4(sa, len, false, EAFNOSUPPORT)
               : V6(sa, len, kSin6LenRfc2133, false, EAFNOSUPPORT);
      } else if (v4) {  // raw_sendmsg: a zero length is no address; AF_UNSPEC is IPv4
        if (len == 0) return KernelDest{};
        d = V4(sa, len, true, EAFNOSUPPORT);
      } else {  // rawv6_sendmsg: AF_UNSPEC is IPv6
        d = V6(sa, len, kSin6LenRfc2133, true, EAFNOSUPPORT);
      }
      break;
    default:
      return Reject(EAFNOSUPPORT);
  }
  if (d.kind == KernelDest::kAddr) d.len = socklen_t(len);
  return d;
}

}  // namespace via::wire
