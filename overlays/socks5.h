// SOCKS5 (RFC 1928) CONNECT with RFC 1929 username/password, as a pure state machine, and the
// driver for `kind: network.socks5` entries.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "overlays/driver.h"
#include "overlays/handshake.h"

namespace via::overlays {

class Socks5Handshake : public Handshake {
 public:
  // No credentials (both empty): offers method 0x00 only. Otherwise offers 0x02 only.
  Socks5Handshake(Target target, std::string username, std::string password);

  std::string_view Output() const override { return std::string_view(out_).substr(out_pos_); }
  void Consumed(size_t n) override;
  size_t WantRead() const override;
  Status Feed(const uint8_t* data, size_t n) override;
  bool Done() const override { return state_ == State::kDone; }

  // The errno for a SOCKS5 reply code, and its RFC 1928 meaning.
  static int ReplyErrno(uint8_t code);
  static const char* ReplyText(uint8_t code);

 private:
  enum class State { kMethod, kAuth, kReplyHead, kReplyTail, kDone, kFailed };
  void QueueConnect();
  Status Fail(int code, const std::string& message);

  Target target_;
  std::string username_;
  std::string password_;
  State state_ = State::kMethod;
  std::string out_;
  size_t out_pos_ = 0;
  uint8_t in_[262];  // longest piece we read at once: 5 + 255 + 2
  size_t in_len_ = 0;
  size_t want_ = 2;
};

class Socks5Driver : public Driver {
 public:
  // Resolves the proxy host; fails with EHOSTUNREACH naming the overlay and host.
  static Result<std::unique_ptr<Driver>> Create(const config::Overlay& overlay);

  const std::string& id() const override { return id_; }
  const std::vector<Endpoint>& endpoints() const override { return endpoints_; }
  Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) override;
  int connect_timeout_ms() const override { return settings_.connect_timeout_ms; }

 private:
  std::string id_;
  config::Socks5Settings settings_;
  std::vector<Endpoint> endpoints_;
};

// 8 random bytes as 16 lowercase hex characters (Wippy's isolation credential).
Result<std::string> RandomIsolationCredential();

}  // namespace via::overlays
