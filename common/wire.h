// The shim <-> broker wire format (docs/protocol.md is the normative description).
//
// Transport: an AF_UNIX SOCK_SEQPACKET socket; one message per datagram. A message is a 16-byte
// header followed by a body of TLV fields. Everything here is header-only, allocation-free and
// exception-free so that the shim (built with -fno-exceptions, no libstdc++ runtime) can use it.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace via::wire {

constexpr uint32_t kMagic = 0x31414956;  // "VIA1" as little-endian bytes
constexpr uint16_t kVersion = 1;
constexpr size_t kHeaderSize = 16;
constexpr size_t kMaxMessage = 65536;    // header + body
constexpr size_t kMaxFieldSize = 65535;  // a TLV length is a u16
constexpr uint16_t kReplyBit = 0x8000;   // reply type = request type | kReplyBit

// Message types (requests). Replies use type | kReplyBit.
enum Type : uint16_t {
  kHello = 1,        // first message on a connection: who am I, which network
  kConnect = 2,      // connect the attached socket (SCM_RIGHTS) to a destination
  kResolve = 3,      // name -> fake addresses
  kReverse = 4,      // fake address -> name
  kOpenSession = 5,  // `via run` opens a session; reply carries its token
  kStatus = 6,       // human-readable status text
  kShutdown = 7,     // ask the broker to exit
  // 0x10-0x1F: Tor/DNS (issue 3).
  kDnsQuery = 0x10,   // a DNS query a program sent itself: answered from the fake-address table
  kDnsSocket = 0x11,  // a loopback UDP responder answering DNS queries from one program socket
  // 0x40-0x4F: program rules, policy, reload (docs/protocol.md).
  kSessionChild = 0x40,   // `via run` names the command it started for its session
  kReload = 0x41,         // re-read the configuration (as SIGHUP does); reply says how it went
  kSessionDetach = 0x42,  // `via run` exits: its children (PID...) carry the session on
  kNewnym = 0x43,         // `via newnym`: new credentials for later connects (NETWORK: one overlay)
  // `via run --strict` asks for a process of its session (PID): the connection's next HELLO
  // selects the network for that process, program rules included (broker/strict_process.cc).
  kStrictProcess = 0x44,
  // The shim of a process in a strict session (HELLO's kFlagStrict) whose network lets it speak
  // SOCKS5 itself: a TCP socket of the broker's network namespace, of FAMILY, connecting to ADDR
  // (one of HELLO's PROXY endpoints, IPv4-mapped on an IPv6 socket) and attached to the reply,
  // whose FLAGS carry kFlagInProgress while the connect goes on. The shim puts it on the
  // program's descriptor and runs its handshake on it: no seccomp notification per connect.
  kProxySocket = 0x45,
  // The shim ran a SOCKS5 CONNECT itself (kFlagShimSocks5): ADDR (as the program gave it) or
  // NAME and PORT, ERRNO, MESSAGE; or only COUNT, a number of successes. A success gets no reply
  // (counted, and logged at debug level); a failure gets one (ERRNO 0) once it is logged.
  kReport = 0x08,
};

// Field tags.
enum Tag : uint16_t {
  kTagNetwork = 1,   // string "ns:name" or "direct"
  kTagSession = 2,   // string, session token (hex)
  kTagAddr = 3,      // Addr, see EncodeAddr
  kTagName = 4,      // string, host name
  kTagPort = 5,      // u16
  kTagFamily = 6,    // u8: 0 = any, 4, 6
  kTagErrno = 7,     // u32, 0 = success
  kTagMessage = 8,   // string, human-readable error or info
  kTagFlags = 9,     // u32
  kTagPid = 10,      // u32 (informational; the broker trusts SO_PEERCRED)
  kTagText = 11,     // string, multi-line text (status)
  kTagVersion = 12,  // u16, protocol version (HELLO)
  // 0x10-0x1F: Tor/DNS (issue 3).
  kTagDnsPacket = 0x10,  // bytes, one DNS message (DNS_QUERY request and reply)
  // u32 (RESOLVE reply): the broker will not give these addresses to another name for at least
  // this many milliseconds, so the shim may answer repeat lookups of the name from its own cache
  // for that long. Absent or 0: do not cache.
  kTagHoldMs = 0x50,
  // 0x40-0x4F: program rules, policy, reload.
  kTagExe = 0x40,          // string, the executable a session's command will run (OPEN_SESSION)
  kTagArgv = 0x41,         // string, one per argument, in order (OPEN_SESSION)
  kTagFingerprint = 0x42,  // string, fingerprint of the config the broker runs (HELLO, RELOAD)
  kTagOrigin = 0x43,       // string, why the effective network is what it is (HELLO, OPEN_SESSION)
  // 0x60-0x6F: HELLO reply with kFlagShimSocks5: how the shim runs SOCKS5 itself.
  kTagProxy = 0x60,      // Addr, repeated: the proxy's endpoints, in order of preference
  kTagUsername = 0x61,   // string: RFC 1929 username (absent: no credentials)
  kTagPassword = 0x62,   // string: RFC 1929 password
  kTagTimeoutMs = 0x63,  // u32: the overlay's connect_timeout, proxy connect + handshake
  kTagFakeNet = 0x64,    // Addr, one per family: a fake-address range, the port its prefix length
  kTagCount = 0x65,      // u32 (REPORT): this many successful connects, not reported one by one
  // string (REPORT with COUNT, on a connection of a strict session): COUNT attempts of this kind
  // ("UDP send", "io_uring_setup"...) were refused by the namespace (`via run --strict --audit`)
  kTagRefused = 0x66,
  // 0x70-0x7F: limits. u32 (HELLO reply): the longest the broker may take to answer a request
  // on this connection that waits on the overlay (CONNECT, LISTEN, RESOLVE, REVERSE, DNS_QUERY),
  // beyond the few seconds any request may take; the shim's deadline for those requests.
  kTagWaitMs = 0x70,
  // 0x80-0x8F: status. String (STATUS reply to a request with kFlagStatusJson): the status as
  // one JSON document (docs/json.md), instead of TEXT.
  kTagJson = 0x80,
  // 0x90-0x9F: routes by destination (docs/configuration.md, "Routes by destination").
  // string (OPEN_SESSION, repeated): a `via run --route` spec, in order.
  kTagRoute = 0x90,
  // Addr (HELLO reply with kFlagRoutes, repeated): a route's range, the port its prefix length.
  kTagRouteNet = 0x91,
  // string (HELLO reply with kFlagRoutes, repeated): a route's name glob.
  kTagRouteName = 0x92,
};

// Reply flags (kTagFlags in a HELLO reply).
constexpr uint32_t kFlagDirect = 1u << 0;          // effective network is direct
constexpr uint32_t kFlagLoopbackRoute = 1u << 1;   // route loopback destinations via the overlay
constexpr uint32_t kFlagLoopbackRefuse = 1u << 2;  // refuse loopback destinations
// The overlay is a SOCKS5 proxy the shim may speak to itself: CONNECT on the program's socket,
// with the kTagProxy/Username/Password/TimeoutMs/FakeNet fields of the same reply. A connect to a
// fake address whose name the shim does not know still goes to the broker (CONNECT).
constexpr uint32_t kFlagShimSocks5 = 1u << 3;
constexpr uint32_t kFlagIsolate = 1u << 4;  // with kFlagShimSocks5: a fresh credential per connect
// With kFlagShimSocks5: USERNAME is a prefix; each connect's credential (username and password)
// is DestinationCredential(prefix, its target) (common/socks5_client.h): isolation: destination.
constexpr uint32_t kFlagIsolateDestination = 1u << 8;
// With kFlagShimSocks5: the broker logs every connect (debug level), so report each success with
// its destination; otherwise successes are reported as counts, in batches.
constexpr uint32_t kFlagReportEach = 1u << 5;
// network_service.unrouted_exec is "allow": the exec guard lets binaries the shim cannot cover
// run (unrouted). The shim learns it from the broker only, never from its environment.
constexpr uint32_t kFlagUnroutedExecAllow = 1u << 7;
// With kFlagShimSocks5: the proxy takes pipelined requests (`pipeline: true`): send the greeting,
// credentials and CONNECT request in one write.
constexpr uint32_t kFlagPipeline = 1u << 9;
// With kFlagShimSocks5: the proxy takes the program's data before its CONNECT reply
// (`optimistic_data: true`): the shim's connect returns once the request is written, and the
// first read on the socket strips the replies (shim/optimistic.h).
constexpr uint32_t kFlagOptimistic = 1u << 10;
// Routes exist for this process (HELLO reply): even when the network is direct, names go to the
// broker (RESOLVE) and connects to the fake ranges (FAKE_NET) or a route's range (ROUTE_NET) go
// to the broker (CONNECT), which applies the routes.
constexpr uint32_t kFlagRoutes = 1u << 16;
// RESOLVE reply: the name's route is direct (or, for a direct process, no route matched): resolve
// it with the system resolver. CONNECT reply: connect the socket directly, yourself.
constexpr uint32_t kFlagRouteDirect = 1u << 11;
// RESOLVE reply: the name takes a route other than the process's own network (or one decided by
// port at connect): its fake addresses go to the broker (CONNECT), never to the shim's SOCKS5.
constexpr uint32_t kFlagRouted = 1u << 13;
// HELLO reply: the connection's session runs in strict mode (`via run --strict`): the process
// is in a network namespace with only `lo`, so the shim gets its proxy sockets from the broker
// (PROXY_SOCKET) and leaves every other call to the kernel and the session's seccomp filter.
constexpr uint32_t kFlagStrict = 1u << 17;
// PROXY_SOCKET reply: the attached socket's connect is still in progress (EINPROGRESS).
constexpr uint32_t kFlagInProgress = 1u << 18;
// PROXY_SOCKET request: greet the proxy on the socket first (the method, and the credentials of
// HELLO's plan), where the plan has the same credentials for every connect; its reply: the socket
// was greeted, so that the CONNECT request is all the shim sends.
constexpr uint32_t kFlagGreeted = 1u << 19;
// Request flags (kTagFlags), bits 20-23.
constexpr uint32_t kFlagSessionExplicit = 1u << 20;  // OPEN_SESSION: --network/--direct was given
constexpr uint32_t kFlagControl = 1u << 21;  // HELLO: a CLI control connection, no network needed
constexpr uint32_t kFlagStatusJson = 1u << 22;  // STATUS: answer with JSON (kTagJson), not TEXT
// SESSION_CHILD: the command runs in strict mode (`via run --strict`), and with --audit.
constexpr uint32_t kFlagSessionStrict = 1u << 24;
constexpr uint32_t kFlagSessionAudit = 1u << 25;
// HELLO: sent by the shim of a process about to exec in place (only when the broker asked for it
// with the `<socket>.exec-hello` marker): the broker records the process's groups and replies;
// nothing else may follow on the connection.
constexpr uint32_t kFlagExecHello = 1u << 23;
// Its reply: the process has groups (from a rule, a session or a record); without it, neither
// the process nor a fork of it needs to greet again before an exec.
constexpr uint32_t kFlagHasGroups = 1u << 6;

// ---- inbound listeners (docs/protocol.md "LISTEN"; types, tags 0x20-0x2F, flag bits 12-15) ----
// LISTEN: the shim asks the broker to serve a listen() through the overlay; the request carries
// the broker's end of a SOCK_SEQPACKET socketpair whose other end replaces the program's socket.
constexpr uint16_t kListen = 0x20;
// ACCEPTED: broker -> shim on that socketpair (never a reply): one accepted stream, attached.
constexpr uint16_t kAccepted = 0x21;
constexpr uint16_t kTagListenAddress = 0x20;  // string: the overlay address, "<b32>.b32.i2p:8080"
constexpr uint16_t kTagPeerName = 0x21;       // string: the peer's overlay name ("<b32>.b32.i2p")
// Tag 0x22 is reserved (BACKLOG in docs/protocol.md: listen()'s backlog); nothing sends it.
// LISTEN reply flag: listen on the host's real interfaces (network_service.listen: local).
constexpr uint32_t kFlagListenLocal = 1u << 12;
// Abstract-namespace prefix of the shim's end of a listener socketpair (see hook_listen.cc).
constexpr char kListenerPrefix[] = "via-listen/";

// An IPv4 or IPv6 endpoint, port in host order.
struct Addr {
  uint8_t family = 0;  // 4 or 6
  uint16_t port = 0;
  uint8_t bytes[16] = {};

  bool operator==(const Addr& o) const {
    return family == o.family && port == o.port &&
           std::memcmp(bytes, o.bytes, family == 4 ? 4 : 16) == 0;
  }
  size_t addr_len() const { return family == 4 ? 4 : 16; }
};

// sockaddr -> Addr. Returns false for anything but AF_INET/AF_INET6 of sufficient length: 16
// bytes for IPv4, 24 for IPv6 (SIN6_LEN_RFC2133, a sockaddr_in6 without sin6_scope_id, which the
// kernel accepts). This reads the sockaddr's own family; to judge what a call will do, use
// KernelDestination (common/kernel_sockaddr.h), which reads it as the kernel does.
inline bool AddrFromSockaddr(const sockaddr* sa, socklen_t len, Addr* out) {
  if (sa == nullptr || len < (socklen_t)sizeof(sa_family_t)) return false;
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(sockaddr_in)) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    *out = Addr{};
    out->family = 4;
    out->port = ntohs(in->sin_port);
    std::memcpy(out->bytes, &in->sin_addr, 4);
    return true;
  }
  if (sa->sa_family == AF_INET6 && len >= socklen_t(offsetof(sockaddr_in6, sin6_scope_id))) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    *out = Addr{};
    out->family = 6;
    out->port = ntohs(in6->sin6_port);
    std::memcpy(out->bytes, &in6->sin6_addr, 16);
    return true;
  }
  return false;
}

// Addr -> sockaddr_in / sockaddr_in6; returns the length used.
inline socklen_t AddrToSockaddr(const Addr& a, sockaddr_storage* out) {
  std::memset(out, 0, sizeof(*out));
  if (a.family == 4) {
    auto* in = reinterpret_cast<sockaddr_in*>(out);
    in->sin_family = AF_INET;
    in->sin_port = htons(a.port);
    std::memcpy(&in->sin_addr, a.bytes, 4);
    return sizeof(sockaddr_in);
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(out);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(a.port);
  std::memcpy(&in6->sin6_addr, a.bytes, 16);
  return sizeof(sockaddr_in6);
}

// If `a` is an IPv4-mapped IPv6 address (::ffff:a.b.c.d), returns the IPv4 form; else `a`.
inline Addr Unmapped(const Addr& a) {
  static const uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (a.family != 6 || std::memcmp(a.bytes, kPrefix, 12) != 0) return a;
  Addr v4;
  v4.family = 4;
  v4.port = a.port;
  std::memcpy(v4.bytes, a.bytes + 12, 4);
  return v4;
}

// Writes the IPv4-mapped IPv6 address (::ffff:a.b.c.d) of the 4 bytes at `v4` into `out` (all
// 16 bytes): how an IPv6 socket that is not IPV6_V6ONLY names an IPv4 peer.
inline void MapIpv4(const void* v4, uint8_t out[16]) {
  std::memset(out, 0, 10);
  out[10] = out[11] = 0xff;
  std::memcpy(out + 12, v4, 4);
}

// `a` as an IPv6 socket sees it: an IPv4 address as its IPv4-mapped form (port kept), anything
// else unchanged. The inverse of Unmapped.
inline Addr Mapped(const Addr& a) {
  if (a.family != 4) return a;
  Addr m;
  m.family = 6;
  m.port = a.port;
  MapIpv4(a.bytes, m.bytes);
  return m;
}

// True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
// Whether `addr` (v4-mapped read as IPv4) lies in the network `net`, whose port field holds the
// prefix length (as HELLO's FAKE_NET fields carry the fake-address ranges).
inline bool InPrefix(const Addr& net, const Addr& addr) {
  Addr a = Unmapped(addr);
  if (net.family != a.family) return false;
  int bits = net.port;
  int full = bits / 8, rest = bits % 8;
  if (size_t(full) > a.addr_len() || std::memcmp(a.bytes, net.bytes, size_t(full)) != 0) {
    return false;
  }
  if (rest == 0) return true;
  uint8_t mask = uint8_t(0xff << (8 - rest));
  return (a.bytes[full] & mask) == (net.bytes[full] & mask);
}

inline bool IsLoopback(const Addr& addr) {
  Addr a = Unmapped(addr);
  if (a.family == 4) return a.bytes[0] == 127;
  static const uint8_t kLoop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return std::memcmp(a.bytes, kLoop6, 16) == 0;
}

// Formats "1.2.3.4:80" or "[::1]:80" into buf (at least 64 bytes). Returns buf.
inline const char* FormatAddr(const Addr& a, char* buf, size_t cap) {
  char host[INET6_ADDRSTRLEN] = "?";
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, host, sizeof(host));
  if (a.family == 4) {
    snprintf(buf, cap, "%s:%u", host, (unsigned)a.port);
  } else {
    snprintf(buf, cap, "[%s]:%u", host, (unsigned)a.port);
  }
  return buf;
}

// Sends one datagram on `sock`, with descriptor `pass_fd` attached (SCM_RIGHTS) when >= 0, and
// `flags` besides MSG_NOSIGNAL. Retries on EINTR; returns what sendmsg returns (errno set on -1).
inline ssize_t SendDatagram(int sock, const void* data, size_t n, int pass_fd, int flags = 0) {
  iovec iov{const_cast<void*>(data), n};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  ssize_t sent;
  do {
    sent = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
  } while (sent < 0 && errno == EINTR);
  return sent;
}

// Receives one datagram on `sock` into buf[0..cap) with recvmsg(`flags`), and the descriptors
// attached to it (SCM_RIGHTS, room for N): their numbers go to fds[0..*nfds), every one owned by
// the caller from then on, whatever it makes of the message. *msg_flags gets the message's
// flags (MSG_TRUNC, MSG_CTRUNC). No retry on EINTR: returns what recvmsg returns (errno set on
// -1; *nfds is then 0).
template <size_t N>
inline ssize_t ReceiveDatagram(int sock, void* buf, size_t cap, int flags, int (&fds)[N],
                               size_t* nfds, int* msg_flags) {
  iovec iov{buf, cap};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * N)];
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  *nfds = 0;
  ssize_t n = recvmsg(sock, &mh, flags);
  *msg_flags = n < 0 ? 0 : mh.msg_flags;
  if (n < 0) return n;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm != nullptr; cm = CMSG_NXTHDR(&mh, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    // The kernel fits no more than the control buffer holds: N in all.
    for (size_t i = 0; i < count && *nfds < N; ++i) {
      std::memcpy(&fds[(*nfds)++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
    }
  }
  return n;
}

// ---- encoding -------------------------------------------------------------------------------

inline void PutLE16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
inline void PutLE32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}
inline uint16_t GetLE16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline uint32_t GetLE32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

// Builds one message into a caller-provided buffer. If a field does not fit, ok() turns false
// and every later Put is ignored.
class Writer {
 public:
  Writer(uint8_t* buf, size_t cap, uint16_t type, uint32_t id) : buf_(buf), cap_(cap) {
    if (cap_ < kHeaderSize) {
      ok_ = false;
      return;
    }
    PutLE32(buf_, kMagic);
    PutLE16(buf_ + 4, type);
    PutLE16(buf_ + 6, 0);
    PutLE32(buf_ + 8, id);
    PutLE32(buf_ + 12, 0);
    len_ = kHeaderSize;
  }

  void PutBytes(uint16_t tag, const void* data, size_t n) {
    if (!ok_ || n > kMaxFieldSize || len_ + 4 + n > cap_ || len_ + 4 + n > kMaxMessage) {
      ok_ = false;
      return;
    }
    PutLE16(buf_ + len_, tag);
    PutLE16(buf_ + len_ + 2, uint16_t(n));
    if (n) std::memcpy(buf_ + len_ + 4, data, n);
    len_ += 4 + n;
    PutLE32(buf_ + 12, uint32_t(len_ - kHeaderSize));
  }
  void PutString(uint16_t tag, std::string_view s) { PutBytes(tag, s.data(), s.size()); }
  void PutU32(uint16_t tag, uint32_t v) {
    uint8_t b[4];
    PutLE32(b, v);
    PutBytes(tag, b, 4);
  }
  void PutU16(uint16_t tag, uint16_t v) {
    uint8_t b[2];
    PutLE16(b, v);
    PutBytes(tag, b, 2);
  }
  void PutU8(uint16_t tag, uint8_t v) { PutBytes(tag, &v, 1); }
  // Addr: u8 family (4|6), u8 zero, u16 port (big-endian), then 4 or 16 address bytes.
  void PutAddr(uint16_t tag, const Addr& a) {
    uint8_t b[20];
    b[0] = a.family;
    b[1] = 0;
    b[2] = uint8_t(a.port >> 8);
    b[3] = uint8_t(a.port);
    std::memcpy(b + 4, a.bytes, a.addr_len());
    PutBytes(tag, b, 4 + a.addr_len());
  }

  bool ok() const { return ok_; }
  const uint8_t* data() const { return buf_; }
  size_t size() const { return len_; }

 private:
  uint8_t* buf_;
  size_t cap_;
  size_t len_ = 0;
  bool ok_ = true;
};

// Why a datagram was rejected.
enum class ParseError {
  kOk = 0,
  kTruncatedHeader,  // fewer than 16 bytes
  kBadMagic,         // not "VIA1"
  kLengthMismatch,   // header body length != datagram size - 16
  kTooLarge,         // over kMaxMessage
  kTruncatedField,   // a TLV runs past the end of the body
};

inline const char* ParseErrorText(ParseError e) {
  switch (e) {
    case ParseError::kOk:
      return "ok";
    case ParseError::kTruncatedHeader:
      return "truncated header (message shorter than 16 bytes)";
    case ParseError::kBadMagic:
      return "bad magic (not a via protocol message)";
    case ParseError::kLengthMismatch:
      return "body length in header does not match message size";
    case ParseError::kTooLarge:
      return "message larger than 65536 bytes";
    case ParseError::kTruncatedField:
      return "field runs past the end of the message";
  }
  return "unknown parse error";
}

struct Field {
  uint16_t tag = 0;
  const uint8_t* data = nullptr;
  uint16_t len = 0;

  std::string_view str() const {
    return std::string_view(reinterpret_cast<const char*>(data), len);
  }
  bool u32(uint32_t* v) const {
    if (len != 4) return false;
    *v = GetLE32(data);
    return true;
  }
  bool u16(uint16_t* v) const {
    if (len != 2) return false;
    *v = GetLE16(data);
    return true;
  }
  bool u8(uint8_t* v) const {
    if (len != 1) return false;
    *v = data[0];
    return true;
  }
  bool addr(Addr* a) const {
    if (len < 4) return false;
    uint8_t fam = data[0];
    size_t want = fam == 4 ? 8 : fam == 6 ? 20 : 0;
    if (want == 0 || len != want || data[1] != 0) return false;
    *a = Addr{};
    a->family = fam;
    a->port = uint16_t((data[2] << 8) | data[3]);
    std::memcpy(a->bytes, data + 4, fam == 4 ? 4 : 16);
    return true;
  }
};

// A validated view of one message. Parse() checks framing and every TLV boundary up front, so
// iteration afterwards cannot read out of bounds. The view does not own the bytes.
class Message {
 public:
  ParseError Parse(const uint8_t* buf, size_t n) {
    if (n > kMaxMessage) return ParseError::kTooLarge;
    if (n < kHeaderSize) return ParseError::kTruncatedHeader;
    if (GetLE32(buf) != kMagic) return ParseError::kBadMagic;
    uint32_t body = GetLE32(buf + 12);
    if (body != n - kHeaderSize) return ParseError::kLengthMismatch;
    size_t off = kHeaderSize;
    while (off < n) {
      if (n - off < 4) return ParseError::kTruncatedField;
      uint16_t flen = GetLE16(buf + off + 2);
      if (n - off - 4 < flen) return ParseError::kTruncatedField;
      off += 4 + flen;
    }
    buf_ = buf;
    len_ = n;
    return ParseError::kOk;
  }

  uint16_t type() const { return GetLE16(buf_ + 4); }
  uint32_t id() const { return GetLE32(buf_ + 8); }

  // Calls fn(const Field&) for every field, in order.
  template <typename Fn>
  void ForEach(Fn fn) const {
    size_t off = kHeaderSize;
    while (off + 4 <= len_) {
      Field f;
      f.tag = GetLE16(buf_ + off);
      f.len = GetLE16(buf_ + off + 2);
      f.data = buf_ + off + 4;
      fn(f);
      off += 4 + f.len;
    }
  }
  // The first field with `tag`, or false.
  bool Find(uint16_t tag, Field* out) const {
    bool found = false;
    ForEach([&](const Field& f) {
      if (!found && f.tag == tag) {
        *out = f;
        found = true;
      }
    });
    return found;
  }

 private:
  const uint8_t* buf_ = nullptr;
  size_t len_ = 0;
};

}  // namespace via::wire
