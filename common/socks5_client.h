// The client side of SOCKS5 (RFC 1928) CONNECT with RFC 1929 username/password and Tor's
// RESOLVE/RESOLVE_PTR, as a pure state machine with fixed buffers: no I/O, no clock, no heap, libc
// only. Two drivers move its bytes: the broker's ConnectOp (through overlays::Socks5Handshake) and
// the shim, which runs SOCKS5 CONNECT itself on the program's socket when the broker said so
// (docs/architecture.md, "The connect path"). One implementation, so both speak the same bytes and
// report the same errors.
//
// Sequence: greeting -> method reply (2 bytes) -> [RFC 1929 request -> status (2 bytes)] ->
// request -> reply head (5 bytes: VER REP RSV ATYP and the first address byte) -> reply tail (the
// rest of BND.ADDR and BND.PORT, its length given by ATYP). WantRead() never asks for a byte past
// the reply: those belong to the program.
//
// Pipelined (Start's `pipeline`): the greeting offers exactly one method, so its answer is known
// in advance, and greeting, [RFC 1929 request] and request go out as one output (one write): one
// round trip to the proxy instead of two or three. The replies are then read in the same order.
// Not every proxy takes it: microsocks 1.0.3 parses one message per recv() and drops the rest,
// answering the greeting only (docs/configuration.md, `pipeline`). Tor answers greeting and
// credentials with the RFC 1929 status alone (no method reply), which is accepted.
#pragma once

#include <sys/types.h>

#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "common/wire.h"

namespace via::socks5 {

constexpr uint8_t kCmdConnect = 0x01;
constexpr uint8_t kCmdResolve = 0xf0;     // Tor: a name -> one address
constexpr uint8_t kCmdResolvePtr = 0xf1;  // Tor: an address -> a name
constexpr uint8_t kAtypIpv4 = 1;
constexpr uint8_t kAtypDomain = 3;
constexpr uint8_t kAtypIpv6 = 4;
constexpr size_t kMaxField = 255;  // one length byte (domain names, RFC 1929 fields)

// The errno for a reply code (0x01..0x08 and Tor's 0xf0..0xf7 as in docs/configuration.md, EPROTO
// for any other), the code's meaning, and which hop failed, in words.
inline int ReplyCodeToErrno(uint8_t code) {
  switch (code) {
    case 0x01:
      return ECONNREFUSED;
    case 0x02:
      return EACCES;
    case 0x03:
      return ENETUNREACH;
    case 0x04:
      return EHOSTUNREACH;
    case 0x05:
      return ECONNREFUSED;
    case 0x06:
      return ETIMEDOUT;
    case 0x07:
      return EOPNOTSUPP;
    case 0x08:
      return EAFNOSUPPORT;
    // Tor's extended errors (SocksPort ExtendedErrors, proposal 304): onion services.
    case 0xf0:  // descriptor not found
    case 0xf1:  // descriptor invalid
    case 0xf2:  // introduction failed
      return EHOSTUNREACH;
    case 0xf3:  // rendezvous failed
      return ENETUNREACH;
    case 0xf4:  // client authorization missing
    case 0xf5:  // client authorization wrong
      return EACCES;
    case 0xf6:  // not a valid onion address
      return EINVAL;
    case 0xf7:  // introduction timed out
      return ETIMEDOUT;
    default:
      return EPROTO;
  }
}

inline const char* ReplyCodeText(uint8_t code) {
  switch (code) {
    case 0x01:
      return "general SOCKS server failure";
    case 0x02:
      return "connection not allowed by ruleset";
    case 0x03:
      return "network unreachable";
    case 0x04:
      return "host unreachable";
    case 0x05:
      return "connection refused";
    case 0x06:
      return "TTL expired";
    case 0x07:
      return "command not supported";
    case 0x08:
      return "address type not supported";
    case 0xf0:
      return "Tor: onion service descriptor not found";
    case 0xf1:
      return "Tor: onion service descriptor is invalid";
    case 0xf2:
      return "Tor: onion service introduction failed";
    case 0xf3:
      return "Tor: onion service rendezvous failed";
    case 0xf4:
      return "Tor: onion service client authorization missing";
    case 0xf5:
      return "Tor: onion service client authorization wrong";
    case 0xf6:
      return "Tor: invalid onion service address";
    case 0xf7:
      return "Tor: onion service introduction timed out";
    default:
      return "unassigned reply code";
  }
}

inline const char* ReplyCodeHop(uint8_t code) {
  switch (code) {
    case 0x01:
      return "at the proxy or beyond it (for Tor: no circuit could carry the stream, or the "
             "exit could not connect and did not say why)";
    case 0x02:
      return "at the proxy or its exit: its rules forbid this destination (for Tor: exit "
             "policy, or a private address)";
    case 0x03:
    case 0x04:
      return "beyond the proxy: its exit could not resolve or reach the destination";
    case 0x05:
      return "at the destination: it refused the connection (reported by the exit)";
    case 0x06:
      return "beyond the proxy: the exit or the destination did not answer in time";
    case 0x07:
    case 0x08:
      return "at the proxy: it does not support this request";
    case 0xf0:
    case 0xf1:
      return "at the onion service directories (HSDirs): no usable descriptor";
    case 0xf2:
    case 0xf7:
      return "at the onion service's introduction point (is the service running?)";
    case 0xf3:
      return "at the rendezvous point";
    case 0xf4:
    case 0xf5:
      return "at the onion service: client authorization";
    case 0xf6:
      return "before any hop: the .onion address is malformed";
    default:
      return "at the proxy (an unknown reply code)";
  }
}

// Wippy's isolation credential: 8 random bytes as 16 lowercase hex characters and a NUL, into
// `out`. `fill` has getrandom(2)'s signature and contract. Returns 0, or the errno of the failed
// fill (EIO when it returned 0).
inline int IsolationCredential(char out[17], ssize_t (*fill)(void*, size_t, unsigned)) {
  uint8_t b[8];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t r = fill(b + got, sizeof b - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r < 0 ? errno : EIO;
    got += size_t(r);
  }
  static const char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < sizeof b; ++i) {
    out[2 * i] = kDigits[b[i] >> 4];
    out[2 * i + 1] = kDigits[b[i] & 0xf];
  }
  out[16] = 0;
  return 0;
}

// How a target is named in messages and in destination isolation: "name:port", or the address
// (IPv4-mapped shown as IPv4) with its port: "192.0.2.1:80", "[2001:db8::1]:443".
inline void FormatTarget(const char* name, size_t name_len, const wire::Addr& addr, uint16_t port,
                         char* out, size_t cap) {
  if (name_len > 0) {
    std::snprintf(out, cap, "%.*s:%u", int(name_len), name, unsigned(port));
  } else {
    wire::Addr a = wire::Unmapped(addr);
    a.port = port;
    wire::FormatAddr(a, out, cap);
  }
}

// The credential of `isolation: destination` (used as username and password): `prefix` (from the
// broker: it changes with `via newnym`), '.', and 16 hex digits of FNV-1a 64 of `target`
// (FormatTarget), so connections to one host:port share it and others do not. The shim and
// the broker compute the same. Into `out`; returns its length (0 when it does not fit).
inline size_t DestinationCredential(const char* prefix, size_t prefix_len, const char* target,
                                    char* out, size_t cap) {
  if (prefix_len + 18 > cap) return 0;
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char* p = target; *p != 0; ++p) {
    h ^= uint8_t(*p);
    h *= 0x100000001b3ull;
  }
  std::memcpy(out, prefix, prefix_len);
  out[prefix_len] = '.';
  static const char kDigits[] = "0123456789abcdef";
  for (int i = 0; i < 16; ++i) out[prefix_len + 1 + size_t(i)] = kDigits[(h >> (60 - 4 * i)) & 0xf];
  out[prefix_len + 17] = 0;
  return prefix_len + 17;
}

class Client {
 public:
  // One request for `name` (1..255 bytes; null or empty: connect to `addr`, family 4 or 6) and
  // `port`. Without credentials (both empty) the greeting offers method 0x00 only; otherwise 0x02
  // only (a proxy that picks 0x00 anyway is accepted, unless pipelined: it has taken the
  // credentials for the request). Names go as ATYP 3, IPv4 and IPv4-mapped
  // IPv6 addresses as ATYP 1, other IPv6 addresses as ATYP 4. Lengths past 255 are the caller's
  // to refuse (SetInvalid); they are never sent. `pipeline`: everything goes in the first output
  // (see above).
  void Start(const char* name, const wire::Addr& addr, uint16_t port, const char* user,
             size_t user_len, const char* pass, size_t pass_len, uint8_t command = kCmdConnect,
             bool pipeline = false) {
    *this = Client();
    command_ = command;
    pipeline_ = pipeline;
    addr_ = wire::Unmapped(addr);
    port_ = port;
    name_len_ = name == nullptr ? 0 : std::strlen(name);
    if (name_len_ > kMaxField) name_len_ = kMaxField;
    if (name_len_ > 0) std::memcpy(name_, name, name_len_);
    if (user_len > kMaxField) user_len = kMaxField;
    if (pass_len > kMaxField) pass_len = kMaxField;
    user_len_ = user_len;
    pass_len_ = pass_len;
    if (user_len > 0) std::memcpy(user_, user, user_len);
    if (pass_len > 0) std::memcpy(pass_, pass, pass_len);
    FormatTarget(name_, name_len_, addr_, port, target_, sizeof target_);
    out_[0] = 5;
    out_[1] = 1;
    out_[2] = uses_auth() ? kMethodUserPass : kMethodNone;
    out_len_ = 3;
    if (pipeline_) {
      if (uses_auth()) out_len_ += PutAuth(out_ + out_len_);
      out_len_ += PutRequest(out_ + out_len_);
    }
  }

  // The request cannot be carried (checked by the caller, before any output is taken): the proxy
  // gets the greeting only, and the first Feed() fails with `err` and `message`.
  void SetInvalid(int err, const char* message) {
    invalid_ = err;
    std::snprintf(invalid_msg_, sizeof invalid_msg_, "%s", message);
    out_len_ = 3;  // a pipelined request or credential is never sent
    pipeline_ = false;
  }

  // Greeting only (after Start, before any output is taken): the machine is Done() once the
  // proxy has taken the method (and the credentials); no request is sent. The broker greets a
  // strict session's spare proxy socket ahead of time this way (PROXY_SOCKET).
  void SetGreetOnly() {
    greet_only_ = true;
    out_len_ = 3;
    pipeline_ = false;
  }
  // The proxy was greeted already on this connection (SetGreetOnly, with the same credentials):
  // after Start, before any output is taken, the request is all there is to send.
  void SkipGreeting() {
    pipeline_ = false;
    if (invalid_ != 0) {
      Fail(invalid_, "%s", invalid_msg_);
      return;
    }
    QueueRequest();
  }

  // Whether the proxy has answered the greeting (a pipelined proxy that stalls after it may not
  // take pipelined requests).
  bool greeted() const { return state_ != State::kMethod; }
  // What to add to a timeout's message: a pipelined handshake whose proxy answered the greeting
  // and then nothing is the mark of a proxy that dropped the rest of the write. A slow CONNECT
  // (a Tor circuit, a far target) looks the same on the wire, hence "may".
  const char* StallHint() const {
    if (!pipeline_ || !greeted() || state_ == State::kDone || state_ == State::kFailed) return "";
    return " (it answered the greeting but not the request sent with it: a proxy that does not "
           "take pipelined requests, such as microsocks 1.0.3, needs `pipeline: false`)";
  }

  // Whether the CONNECT request has been written in full and only the proxy's replies are left
  // to read (optimistic data: the program's bytes may follow now). Pipelined, that is once the
  // first output is taken; stepwise, once the request that follows the method (and credentials)
  // reply is.
  bool RequestSent() const {
    if (out_pos_ < out_len_ || state_ == State::kDone || state_ == State::kFailed) return false;
    return state_ == State::kReplyHead || (pipeline_ && invalid_ == 0);
  }

  const uint8_t* output() const { return out_ + out_pos_; }
  size_t output_len() const { return out_len_ - out_pos_; }
  void Consumed(size_t n) { out_pos_ = out_pos_ + n > out_len_ ? out_len_ : out_pos_ + n; }

  size_t WantRead() const {
    if (out_pos_ < out_len_ || state_ == State::kDone || state_ == State::kFailed) return 0;
    return want_ - in_len_;
  }

  // Takes n <= WantRead() bytes. Returns 0, or an errno with error() saying why; the machine is
  // then finished.
  int Feed(const uint8_t* data, size_t n) {
    if (state_ == State::kDone || state_ == State::kFailed) {
      return Fail(EPROTO, "SOCKS5 handshake fed after it finished");
    }
    if (n > WantRead()) {
      return Fail(EPROTO, "SOCKS5 handshake fed %zu bytes, asked for %zu", n, WantRead());
    }
    if (n == 0) return 0;
    std::memcpy(in_ + in_len_, data, n);
    in_len_ += n;
    if (in_len_ < want_) return 0;  // a partial read: wait for the rest
    switch (state_) {
      case State::kMethod:
        return OnMethodReply();
      case State::kAuth:
        return OnAuthReply();
      case State::kReplyHead:
        return OnReplyHead();
      case State::kReplyTail:
        state_ = State::kDone;
        want_ = 0;
        return 0;
      case State::kDone:
      case State::kFailed:
        break;
    }
    return Fail(EPROTO, "SOCKS5 handshake in an impossible state");
  }

  bool Done() const { return state_ == State::kDone; }
  const char* error() const { return error_; }
  // "example.test:80", "1.2.3.4:80", "[::1]:80".
  const char* target() const { return target_; }
  // The proxy's refusal, when it answered the request with a reply code other than 0; else 0.
  uint8_t reply_code() const { return reply_code_; }

  // After Done(): the reply's BND.ADDR as an address (ATYP 1 or 4; family 0 otherwise) or a name
  // (ATYP 3; empty otherwise, else `name_len` bytes at the returned pointer).
  wire::Addr BoundAddr() const {
    wire::Addr a;
    if (bound_atyp_ != kAtypIpv4 && bound_atyp_ != kAtypIpv6) return a;
    a.family = bound_atyp_ == kAtypIpv4 ? 4 : 6;
    a.bytes[0] = bound_first_;
    std::memcpy(a.bytes + 1, in_, a.addr_len() - 1);
    return a;
  }
  const char* BoundName(size_t* len) const {
    *len = bound_atyp_ == kAtypDomain && Done() ? bound_first_ : 0;
    return reinterpret_cast<const char*>(in_);
  }

 private:
  enum class State { kMethod, kAuth, kReplyHead, kReplyTail, kDone, kFailed };
  static constexpr uint8_t kMethodNone = 0x00;
  static constexpr uint8_t kMethodUserPass = 0x02;
  static constexpr uint8_t kMethodNoAcceptable = 0xff;

  bool uses_auth() const { return user_len_ > 0 || pass_len_ > 0; }

  int Fail(int err, const char* fmt, ...) __attribute__((format(printf, 3, 4))) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(error_, sizeof error_, fmt, ap);
    va_end(ap);
    state_ = State::kFailed;
    out_len_ = out_pos_ = 0;
    return err;
  }

  // Replaces the (fully consumed) output with out_[0..len) and waits for `want` bytes in `next`.
  void Send(size_t len, State next, size_t want) {
    out_len_ = len;
    out_pos_ = 0;
    state_ = next;
    want_ = want;
    in_len_ = 0;
  }

  static const char* MethodText(uint8_t m) {
    return m == kMethodNone ? "0x00 no authentication" : "0x02 username/password";
  }

  int OnMethodReply() {
    if (pipeline_ && uses_auth() && in_[0] == 1) {
      // Tor (0.4.9) parses a pipelined greeting and RFC 1929 request in one go and sends the
      // status of the latter only: its method reply is overwritten before it is sent. Version
      // 0x01 can be nothing else here (a method reply is 0x05).
      return OnAuthReply();
    }
    if (in_[0] != 5) {
      return Fail(EPROTO,
                  "SOCKS5 proxy answered the greeting with version 0x%02x, not 0x05 (is it a "
                  "SOCKS5 proxy?)",
                  in_[0]);
    }
    const uint8_t offered = uses_auth() ? kMethodUserPass : kMethodNone;
    const uint8_t chosen = in_[1];
    // kMethodNone is fine even when we offered credentials: the proxy just doesn't want them.
    if (chosen != kMethodNone && chosen != offered) {
      if (chosen == kMethodNoAcceptable) {
        return Fail(EACCES,
                    "SOCKS5 proxy accepts none of the offered authentication methods (offered %s)",
                    MethodText(offered));
      }
      return Fail(EACCES,
                  "SOCKS5 proxy accepts none of the offered authentication methods (offered %s; "
                  "it chose 0x%02x, which was not offered)",
                  MethodText(offered), chosen);
    }
    if (invalid_ != 0) return Fail(invalid_, "%s", invalid_msg_);
    if (pipeline_) {
      // Everything was sent already: read the answers in order.
      if (chosen != offered) {
        // The RFC 1929 request went after the greeting; the proxy takes it for the request.
        return Fail(EPROTO,
                    "SOCKS5 proxy chose 0x00 no authentication although only username/password "
                    "was offered, so the pipelined credentials reached it as a request (set "
                    "`pipeline: false` for this proxy)");
      }
      if (chosen == kMethodUserPass) {
        Send(0, State::kAuth, 2);
      } else {
        Send(0, State::kReplyHead, 5);
      }
      return 0;
    }
    if (chosen == kMethodNone) return AfterGreeting();
    Send(PutAuth(out_), State::kAuth, 2);
    return 0;
  }

  // The method (and credentials) accepted: the request, or the end for SetGreetOnly.
  int AfterGreeting() {
    if (!greet_only_) return QueueRequest();
    Send(0, State::kDone, 0);
    return 0;
  }

  // The RFC 1929 request at `p`; returns its length.
  size_t PutAuth(uint8_t* p) const {
    size_t n = 0;
    p[n++] = 1;  // RFC 1929 sub-negotiation version
    p[n++] = uint8_t(user_len_);
    std::memcpy(p + n, user_, user_len_);
    n += user_len_;
    p[n++] = uint8_t(pass_len_);
    std::memcpy(p + n, pass_, pass_len_);
    n += pass_len_;
    return n;
  }

  int OnAuthReply() {
    if (in_[0] != 1) {
      return Fail(EPROTO, "SOCKS5 proxy answered username/password with version 0x%02x, not 0x01",
                  in_[0]);
    }
    if (in_[1] != 0) {
      return Fail(EACCES, "SOCKS5 proxy rejected username/password (status 0x%02x)", in_[1]);
    }
    if (pipeline_) {
      Send(0, State::kReplyHead, 5);
      return 0;
    }
    return AfterGreeting();
  }

  int QueueRequest() {
    Send(PutRequest(out_), State::kReplyHead, 5);
    return 0;
  }

  // The request at `p`; returns its length.
  size_t PutRequest(uint8_t* p) const {
    size_t n = 0;
    p[n++] = 5;
    p[n++] = command_;
    p[n++] = 0;
    if (name_len_ > 0) {
      p[n++] = kAtypDomain;
      p[n++] = uint8_t(name_len_);
      std::memcpy(p + n, name_, name_len_);
      n += name_len_;
    } else if (addr_.family == 4) {
      p[n++] = kAtypIpv4;
      std::memcpy(p + n, addr_.bytes, 4);
      n += 4;
    } else {
      p[n++] = kAtypIpv6;
      std::memcpy(p + n, addr_.bytes, 16);
      n += 16;
    }
    p[n++] = uint8_t(port_ >> 8);
    p[n++] = uint8_t(port_ & 0xff);
    return n;
  }

  int OnReplyHead() {
    if (in_[0] != 5) {
      return Fail(EPROTO, "SOCKS5 proxy replied to CONNECT with version 0x%02x, not 0x05", in_[0]);
    }
    if (in_[1] != 0) {
      reply_code_ = in_[1];
      return Fail(ReplyCodeToErrno(in_[1]), "SOCKS5 proxy replied 0x%02x (%s) for %s; failed %s",
                  in_[1], ReplyCodeText(in_[1]), target_, ReplyCodeHop(in_[1]));
    }
    if (in_[2] != 0) {
      return Fail(EPROTO, "SOCKS5 proxy reply has reserved byte 0x%02x, not 0x00", in_[2]);
    }
    // The head holds the first byte of BND.ADDR; the tail is the rest plus the 2-byte port.
    size_t rest;
    switch (in_[3]) {
      case kAtypIpv4:
        rest = 4 - 1 + 2;
        break;
      case kAtypIpv6:
        rest = 16 - 1 + 2;
        break;
      case kAtypDomain:
        if (in_[4] == 0) return Fail(EPROTO, "SOCKS5 proxy reply has an empty bound domain name");
        rest = size_t(in_[4]) + 2;
        break;
      default:
        return Fail(EPROTO, "SOCKS5 proxy reply has unknown address type 0x%02x", in_[3]);
    }
    bound_atyp_ = in_[3];
    bound_first_ = in_[4];
    state_ = State::kReplyTail;
    want_ = rest;
    in_len_ = 0;
    return 0;
  }

  State state_ = State::kMethod;
  uint8_t command_ = kCmdConnect;
  wire::Addr addr_;
  uint16_t port_ = 0;
  char name_[kMaxField] = {};
  size_t name_len_ = 0;
  char user_[kMaxField] = {}, pass_[kMaxField] = {};
  size_t user_len_ = 0, pass_len_ = 0;
  int invalid_ = 0;
  char invalid_msg_[256] = {};
  char target_[kMaxField + 8] = {};
  // The longest output is a pipelined one: the greeting (3 bytes), the RFC 1929 request (3 + 255
  // + 255) and a request for a name (7 + 255).
  uint8_t out_[3 + (3 + 2 * kMaxField) + (7 + kMaxField)] = {};
  size_t out_len_ = 0, out_pos_ = 0;
  // The piece being read; its longest is the reply tail of a domain: 255 + 2 bytes.
  uint8_t in_[5 + kMaxField + 2] = {};
  size_t in_len_ = 0;
  size_t want_ = 2;  // size of the piece being read
  uint8_t bound_atyp_ = 0, bound_first_ = 0;
  uint8_t reply_code_ = 0;
  bool pipeline_ = false;
  bool greet_only_ = false;
  char error_[160 + 2 * kMaxField] = {};
};

}  // namespace via::socks5
