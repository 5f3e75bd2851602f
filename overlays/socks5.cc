#include "overlays/socks5.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace via::overlays {

namespace {

std::string Hex(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", b);
  return buf;
}

}  // namespace

std::string Target::ToString() const {
  if (!name.empty()) return name + ":" + std::to_string(port);
  wire::Addr a = addr;
  a.port = port;
  char buf[80];
  return wire::FormatAddr(a, buf, sizeof buf);
}

Socks5Handshake::Socks5Handshake(Target target, std::string username, std::string password)
    : target_(std::move(target)), username_(std::move(username)), password_(std::move(password)) {
  bool auth = !username_.empty() || !password_.empty();
  out_ = {5, 1, static_cast<char>(auth ? 2 : 0)};
}

void Socks5Handshake::Consumed(size_t n) {
  out_pos_ += n;
  if (out_pos_ >= out_.size()) {
    out_.clear();
    out_pos_ = 0;
  }
}

size_t Socks5Handshake::WantRead() const {
  if (!Output().empty() || state_ == State::kDone || state_ == State::kFailed) return 0;
  return want_ - in_len_;
}

Status Socks5Handshake::Fail(int code, const std::string& message) {
  state_ = State::kFailed;
  return Status::Error(code, message);
}

void Socks5Handshake::QueueConnect() {
  out_.assign({5, 1, 0});
  wire::Addr a = wire::Unmapped(target_.addr);
  if (!target_.name.empty()) {
    out_.push_back(3);
    out_.push_back(static_cast<char>(target_.name.size()));
    out_ += target_.name;
  } else if (a.family == 4) {
    out_.push_back(1);
    out_.append(reinterpret_cast<const char*>(a.bytes), 4);
  } else {
    out_.push_back(4);
    out_.append(reinterpret_cast<const char*>(a.bytes), 16);
  }
  out_.push_back(static_cast<char>(target_.port >> 8));
  out_.push_back(static_cast<char>(target_.port & 0xff));
  out_pos_ = 0;
  state_ = State::kReplyHead;
  want_ = 5;
  in_len_ = 0;
}

Status Socks5Handshake::Feed(const uint8_t* data, size_t n) {
  if (state_ == State::kDone || state_ == State::kFailed || n > want_ - in_len_) {
    return Fail(EPROTO, "SOCKS5 handshake fed more bytes than it asked for");
  }
  std::memcpy(in_ + in_len_, data, n);
  in_len_ += n;
  if (in_len_ < want_) return Status::Ok();
  const std::string target = target_.ToString();
  switch (state_) {
    case State::kMethod: {
      if (in_[0] != 5) {
        return Fail(EPROTO, "SOCKS5 proxy answered the greeting with version " + Hex(in_[0]) +
                                " (not a SOCKS5 server?)");
      }
      bool auth = !username_.empty() || !password_.empty();
      if (in_[1] == 0xff || (in_[1] != 0 && !(auth && in_[1] == 2))) {
        return Fail(EACCES,
                    "SOCKS5 proxy accepts none of the offered authentication methods "
                    "(it chose " +
                        Hex(in_[1]) + ", we offered " +
                        (auth ? "0x02 username/password" : "0x00 no authentication") + ")");
      }
      if (in_[1] == 2) {
        out_.assign({1, static_cast<char>(username_.size())});
        out_ += username_;
        out_.push_back(static_cast<char>(password_.size()));
        out_ += password_;
        out_pos_ = 0;
        state_ = State::kAuth;
        want_ = 2;
        in_len_ = 0;
        return Status::Ok();
      }
      QueueConnect();
      return Status::Ok();
    }
    case State::kAuth:
      if (in_[0] != 1) {
        return Fail(EPROTO, "SOCKS5 proxy answered username/password with version " + Hex(in_[0]));
      }
      if (in_[1] != 0) {
        return Fail(EACCES, "SOCKS5 proxy rejected username/password (status " + Hex(in_[1]) + ")");
      }
      QueueConnect();
      return Status::Ok();
    case State::kReplyHead: {
      if (in_[0] != 5) {
        return Fail(EPROTO, "SOCKS5 proxy replied to CONNECT with version " + Hex(in_[0]));
      }
      if (in_[1] != 0) {
        return Fail(ReplyErrno(in_[1]), "SOCKS5 proxy replied " + Hex(in_[1]) + " (" +
                                            ReplyText(in_[1]) + ") for " + target);
      }
      if (in_[2] != 0) return Fail(EPROTO, "SOCKS5 reply has a non-zero reserved byte");
      size_t rest;
      switch (in_[3]) {
        case 1:
          rest = 3 + 2;
          break;
        case 4:
          rest = 15 + 2;
          break;
        case 3:
          if (in_[4] == 0) return Fail(EPROTO, "SOCKS5 reply has an empty bound domain name");
          rest = in_[4] + 2u;
          break;
        default:
          return Fail(EPROTO, "SOCKS5 reply has unknown address type " + Hex(in_[3]));
      }
      state_ = State::kReplyTail;
      want_ = rest;
      in_len_ = 0;
      return Status::Ok();
    }
    case State::kReplyTail:
      state_ = State::kDone;
      want_ = 0;
      in_len_ = 0;
      return Status::Ok();
    default:
      return Fail(EPROTO, "SOCKS5 handshake in an impossible state");
  }
}

int Socks5Handshake::ReplyErrno(uint8_t code) {
  switch (code) {
    case 1:
      return ECONNREFUSED;
    case 2:
      return EACCES;
    case 3:
      return ENETUNREACH;
    case 4:
      return EHOSTUNREACH;
    case 5:
      return ECONNREFUSED;
    case 6:
      return ETIMEDOUT;
    case 7:
      return EOPNOTSUPP;
    case 8:
      return EAFNOSUPPORT;
    default:
      return EPROTO;
  }
}

const char* Socks5Handshake::ReplyText(uint8_t code) {
  switch (code) {
    case 1:
      return "general SOCKS server failure";
    case 2:
      return "connection not allowed by ruleset";
    case 3:
      return "network unreachable";
    case 4:
      return "host unreachable";
    case 5:
      return "connection refused";
    case 6:
      return "TTL expired";
    case 7:
      return "command not supported";
    case 8:
      return "address type not supported";
    default:
      return "unassigned reply code";
  }
}

Result<std::string> RandomIsolationCredential() {
  uint8_t b[8];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t r = getrandom(b + got, sizeof b - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("socks5: failed to generate isolation credential");
    }
    got += static_cast<size_t>(r);
  }
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", b[i]);
  return std::string(hex, 16);
}

Result<std::unique_ptr<Driver>> Socks5Driver::Create(const config::Overlay& overlay) {
  auto d = std::unique_ptr<Socks5Driver>(new Socks5Driver());
  d->id_ = overlay.id;
  d->settings_ = overlay.socks5;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(overlay.socks5.port);
  int rc = getaddrinfo(overlay.socks5.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return Status::Error(EHOSTUNREACH, "overlay " + overlay.id + ": cannot resolve proxy host \"" +
                                           overlay.socks5.host + "\": " + gai_strerror(rc));
  }
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    Endpoint e;
    std::memcpy(&e.addr, ai->ai_addr, ai->ai_addrlen);
    e.len = ai->ai_addrlen;
    wire::Addr a;
    char buf[80];
    if (wire::AddrFromSockaddr(ai->ai_addr, ai->ai_addrlen, &a))
      e.text = wire::FormatAddr(a, buf, sizeof buf);
    d->endpoints_.push_back(e);
  }
  freeaddrinfo(res);
  return std::unique_ptr<Driver>(std::move(d));
}

Result<std::unique_ptr<Handshake>> Socks5Driver::NewHandshake(const Target& target) {
  if (settings_.isolate_streams) {
    auto cred = RandomIsolationCredential();
    if (!cred.ok()) return cred.status();
    return std::unique_ptr<Handshake>(new Socks5Handshake(target, *cred, *cred));
  }
  return std::unique_ptr<Handshake>(
      new Socks5Handshake(target, settings_.username, settings_.password));
}

Result<std::unique_ptr<Driver>> CreateDriver(const config::Overlay& overlay) {
  switch (overlay.kind) {
    case config::OverlayKind::kSocks5:
      return Socks5Driver::Create(overlay);
    case config::OverlayKind::kTailscale:
    case config::OverlayKind::kI2p:
      break;
  }
  return Status::Error(ENOTSUP, "overlay " + overlay.id + ": kind " + overlay.kind_name +
                                    " is not supported by this build of via yet");
}

}  // namespace via::overlays
