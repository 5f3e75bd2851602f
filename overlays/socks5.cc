#include "overlays/socks5.h"

#include <netdb.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/wire.h"

namespace via::overlays {

namespace {

constexpr uint8_t kVersion = 5;
constexpr uint8_t kAuthVersion = 1;  // RFC 1929 sub-negotiation
constexpr uint8_t kMethodNone = 0x00;
constexpr uint8_t kMethodUserPass = 0x02;
constexpr uint8_t kMethodNoAcceptable = 0xff;
constexpr uint8_t kAtypIpv4 = 1;
constexpr uint8_t kAtypDomain = 3;
constexpr uint8_t kAtypIpv6 = 4;
constexpr size_t kReplyHeadSize = 5;  // VER REP RSV ATYP + first byte of BND.ADDR
constexpr size_t kMaxField = 255;     // one length byte (domain names, RFC 1929 fields)

std::string Hex(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", b);
  return buf;
}

std::string MethodText(uint8_t m) {
  return Hex(m) + (m == kMethodNone ? " no authentication" : " username/password");
}

}  // namespace

// ---- Socks5Handshake ---------------------------------------------------------------------------

Socks5Handshake::Socks5Handshake(Target target, std::string username, std::string password,
                                 uint8_t command)
    : target_(std::move(target)),
      username_(std::move(username)),
      password_(std::move(password)),
      command_(command) {
  invalid_ = Validate(target_, username_, password_);
  out_ = {char(kVersion), 1, char(uses_auth() ? kMethodUserPass : kMethodNone)};
}

Status Socks5Handshake::Validate(const Target& target, const std::string& username,
                                 const std::string& password) {
  if (target.name.empty() && target.addr.family != 4 && target.addr.family != 6) {
    return Status::Invalid("SOCKS5: no destination (neither a name nor an IPv4/IPv6 address)");
  }
  if (target.name.size() > kMaxField) {
    return Status::Invalid("SOCKS5 cannot carry a host name of " +
                           std::to_string(target.name.size()) +
                           " bytes (at most 255): " + target.name.substr(0, 64) + "...");
  }
  if (username.size() > kMaxField || password.size() > kMaxField) {
    return Status::Invalid(
        "SOCKS5 username and password are at most 255 bytes each (RFC 1929); got " +
        std::to_string(username.size()) + " and " + std::to_string(password.size()));
  }
  return Status::Ok();
}

void Socks5Handshake::Consumed(size_t n) { out_pos_ = std::min(out_.size(), out_pos_ + n); }

size_t Socks5Handshake::WantRead() const {
  if (out_pos_ < out_.size() || state_ == State::kDone || state_ == State::kFailed) return 0;
  return want_ - in_len_;
}

Status Socks5Handshake::Fail(int code, std::string message) {
  state_ = State::kFailed;
  out_.clear();
  out_pos_ = 0;
  return Status::Error(code, std::move(message));
}

void Socks5Handshake::Send(std::string bytes, State next, size_t want) {
  out_ = std::move(bytes);
  out_pos_ = 0;
  state_ = next;
  want_ = want;
  in_len_ = 0;
}

Status Socks5Handshake::Feed(const uint8_t* data, size_t n) {
  if (state_ == State::kDone || state_ == State::kFailed) {
    return Status::Error(EPROTO, "SOCKS5 handshake fed after it finished");
  }
  if (n > WantRead()) {
    return Fail(EPROTO, "SOCKS5 handshake fed " + std::to_string(n) + " bytes, asked for " +
                            std::to_string(WantRead()));
  }
  if (n == 0) return Status::Ok();
  std::memcpy(in_ + in_len_, data, n);
  in_len_ += n;
  if (in_len_ < want_) return Status::Ok();  // a partial read: wait for the rest
  switch (state_) {
    case State::kMethod:
      return OnMethodReply();
    case State::kAuth:
      return OnAuthReply();
    case State::kReplyHead:
      return OnReplyHead();
    case State::kReplyTail:
      // BND.ADDR/BND.PORT: where the proxy connected from (CONNECT: nothing to check), or the
      // answer of Tor's RESOLVE (an address) / RESOLVE_PTR (a name).
      KeepBound();
      if (command_ == kCmdResolve && bound_addr_.family == 0) {
        return Fail(EPROTO,
                    "Tor's RESOLVE reply for " + target_.ToString() + " carries no address");
      }
      if (command_ == kCmdResolvePtr && bound_name_.empty()) {
        return Fail(EPROTO,
                    "Tor's RESOLVE_PTR reply for " + target_.ToString() + " carries no name");
      }
      state_ = State::kDone;
      want_ = in_len_ = 0;
      return Status::Ok();
    case State::kDone:
    case State::kFailed:
      break;
  }
  return Fail(EPROTO, "SOCKS5 handshake in an impossible state");
}

Status Socks5Handshake::OnMethodReply() {
  if (in_[0] != kVersion) {
    return Fail(EPROTO, "SOCKS5 proxy answered the greeting with version " + Hex(in_[0]) +
                            ", not 0x05 (is it a SOCKS5 proxy?)");
  }
  const uint8_t offered = uses_auth() ? kMethodUserPass : kMethodNone;
  const uint8_t chosen = in_[1];
  // kMethodNone is fine even when we offered credentials: the proxy just doesn't want them.
  if (chosen != kMethodNone && chosen != offered) {
    std::string why = chosen == kMethodNoAcceptable
                          ? ""
                          : "; it chose " + Hex(chosen) + ", which was not offered";
    return Fail(EACCES,
                "SOCKS5 proxy accepts none of the offered authentication methods (offered " +
                    MethodText(offered) + why + ")");
  }
  if (!invalid_.ok()) return Fail(invalid_.code(), invalid_.message());
  if (chosen == kMethodNone) {
    QueueConnect();
    return Status::Ok();
  }
  std::string req;
  req += char(kAuthVersion);
  req += char(username_.size());
  req += username_;
  req += char(password_.size());
  req += password_;
  Send(std::move(req), State::kAuth, 2);
  return Status::Ok();
}

Status Socks5Handshake::OnAuthReply() {
  if (in_[0] != kAuthVersion) {
    return Fail(EPROTO, "SOCKS5 proxy answered username/password with version " + Hex(in_[0]) +
                            ", not 0x01");
  }
  if (in_[1] != 0) {
    return Fail(EACCES, "SOCKS5 proxy rejected username/password (status " + Hex(in_[1]) + ")");
  }
  QueueConnect();
  return Status::Ok();
}

void Socks5Handshake::KeepBound() {
  if (bound_atyp_ == kAtypIpv4 || bound_atyp_ == kAtypIpv6) {
    bound_addr_ = wire::Addr{};
    bound_addr_.family = bound_atyp_ == kAtypIpv4 ? 4 : 6;
    bound_addr_.bytes[0] = bound_first_;
    std::memcpy(bound_addr_.bytes + 1, in_, bound_addr_.addr_len() - 1);
  } else if (bound_atyp_ == kAtypDomain) {
    bound_name_.assign(reinterpret_cast<const char*>(in_), bound_first_);
  }
}

void Socks5Handshake::QueueConnect() {
  std::string req = {char(kVersion), char(command_), 0};
  const wire::Addr a = wire::Unmapped(target_.addr);
  if (!target_.name.empty()) {
    req += char(kAtypDomain);
    req += char(target_.name.size());
    req += target_.name;
  } else if (a.family == 4) {
    req += char(kAtypIpv4);
    req.append(reinterpret_cast<const char*>(a.bytes), 4);
  } else {
    req += char(kAtypIpv6);
    req.append(reinterpret_cast<const char*>(a.bytes), 16);
  }
  req += char(target_.port >> 8);
  req += char(target_.port & 0xff);
  Send(std::move(req), State::kReplyHead, kReplyHeadSize);
}

Status Socks5Handshake::OnReplyHead() {
  if (in_[0] != kVersion) {
    return Fail(EPROTO,
                "SOCKS5 proxy replied to CONNECT with version " + Hex(in_[0]) + ", not 0x05");
  }
  if (in_[1] != 0) {
    return Fail(ReplyCodeToErrno(in_[1]),
                "SOCKS5 proxy replied " + Hex(in_[1]) + " (" + ReplyCodeText(in_[1]) + ") for " +
                    target_.ToString() + "; failed " + ReplyCodeHop(in_[1]));
  }
  if (in_[2] != 0) {
    return Fail(EPROTO, "SOCKS5 proxy reply has reserved byte " + Hex(in_[2]) + ", not 0x00");
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
      return Fail(EPROTO, "SOCKS5 proxy reply has unknown address type " + Hex(in_[3]));
  }
  bound_atyp_ = in_[3];
  bound_first_ = in_[4];
  state_ = State::kReplyTail;
  want_ = rest;
  in_len_ = 0;
  return Status::Ok();
}

int Socks5Handshake::ReplyCodeToErrno(uint8_t code) {
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

const char* Socks5Handshake::ReplyCodeHop(uint8_t code) {
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

const char* Socks5Handshake::ReplyCodeText(uint8_t code) {
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
    // Tor's extended errors (SocksPort ExtendedErrors), all about onion services.
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

// ---- isolation credentials ---------------------------------------------------------------------

Result<std::string> RandomIsolationCredential(RandomFill fill) {
  if (fill == nullptr)
    fill = [](void* buf, size_t n, unsigned flags) { return getrandom(buf, n, flags); };
  uint8_t b[8];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t r = fill(b + got, sizeof b - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int err = r < 0 ? errno : EIO;
      return Status::Error(EIO, std::string("socks5: failed to generate isolation credential: ") +
                                    std::strerror(err));
    }
    got += size_t(r);
  }
  static const char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (uint8_t v : b) {
    hex += kDigits[v >> 4];
    hex += kDigits[v & 0xf];
  }
  return hex;
}

// ---- Socks5Driver ------------------------------------------------------------------------------

Result<std::unique_ptr<Driver>> Socks5Driver::Create(const config::Overlay& overlay) {
  std::unique_ptr<Socks5Driver> d(new Socks5Driver());
  d->id_ = overlay.id;
  d->settings_ = overlay.socks5;
  auto endpoints =
      ResolveEndpoints(overlay.id, "proxy host", overlay.socks5.host, overlay.socks5.port);
  if (!endpoints.ok()) return endpoints.status();
  d->endpoints_ = std::move(*endpoints);
  return std::unique_ptr<Driver>(std::move(d));
}

Result<std::unique_ptr<Handshake>> Socks5Driver::NewResolveHandshake(const Target& target) {
  if (!settings_.remote_resolve) return Driver::NewResolveHandshake(target);
  return MakeHandshake(
      target, target.name.empty() ? Socks5Handshake::kCmdResolvePtr : Socks5Handshake::kCmdResolve);
}

wire::Addr Socks5Driver::ResolvedAddr(const Handshake& hs) const {
  return static_cast<const Socks5Handshake&>(hs).bound_addr();
}

std::string Socks5Driver::ResolvedName(const Handshake& hs) const {
  return static_cast<const Socks5Handshake&>(hs).bound_name();
}

Result<std::unique_ptr<Handshake>> Socks5Driver::NewHandshake(const Target& target) {
  return MakeHandshake(target, Socks5Handshake::kCmdConnect);
}

Result<std::unique_ptr<Handshake>> Socks5Driver::MakeHandshake(const Target& target,
                                                               uint8_t command) const {
  std::string username = settings_.username;
  std::string password = settings_.password;
  if (settings_.isolate_streams) {
    Result<std::string> cred = RandomIsolationCredential();
    if (!cred.ok()) return cred.status();
    username = password = *cred;
  }
  if (Status st = Socks5Handshake::Validate(target, username, password); !st.ok()) return st;
  return std::unique_ptr<Handshake>(
      new Socks5Handshake(target, std::move(username), std::move(password), command));
}

}  // namespace via::overlays
