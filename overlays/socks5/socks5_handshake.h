// SOCKS5 (RFC 1928) CONNECT with RFC 1929 username/password, and Tor's RESOLVE extensions, as a
// pure state machine; and the isolation credential of `isolate_streams`.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/socks5_client.h"
#include "overlays/handshake.h"

namespace via::overlays {

// One SOCKS5 CONNECT. The sequence is: greeting -> method reply (2 bytes) -> [RFC 1929 request
// -> status (2 bytes)] -> CONNECT request -> reply head (5 bytes: VER REP RSV ATYP and the first
// address byte) -> reply tail (rest of BND.ADDR and BND.PORT, its length given by ATYP).
// WantRead() never asks for a byte past the reply: those belong to the program.
class Socks5Handshake : public ResolveHandshake {
 public:
  // Inputs that Validate() rejects do not desynchronize the stream: nothing but the greeting is
  // ever sent, and the first Feed() returns Validate()'s error.
  // `command`: kCmdConnect, or Tor's extensions kCmdResolve (a name -> one address, read with
  // bound_addr()) and kCmdResolvePtr (an address -> a name, bound_name()); see
  // https://spec.torproject.org/socks-extensions. The port of a RESOLVE request is ignored.
  // The protocol itself is socks5::Client (common/socks5_client.h), shared with the shim.
  static constexpr uint8_t kCmdConnect = socks5::kCmdConnect;
  static constexpr uint8_t kCmdResolve = socks5::kCmdResolve;
  static constexpr uint8_t kCmdResolvePtr = socks5::kCmdResolvePtr;
  // `pipeline`: greeting, credentials and request in one write (socks5::Client::Start).
  Socks5Handshake(Target target, std::string username, std::string password,
                  uint8_t command = kCmdConnect, bool pipeline = false);

  // After Done(): the reply's BND.ADDR as an address (ATYP 1 or 4; family 0 otherwise) or a
  // name (ATYP 3; empty otherwise).
  const wire::Addr& bound_addr() const { return bound_addr_; }
  const std::string& bound_name() const { return bound_name_; }
  // For RESOLVE and RESOLVE_PTR, the bound address or name is the answer.
  wire::Addr ResolvedAddr() const override { return bound_addr_; }
  std::string ResolvedName() const override { return bound_name_; }
  // After a failed Feed(): the proxy's CONNECT reply code (0x01..0xff), or 0 when it failed
  // otherwise. Lets a user of SOCKS5 word a refusal in its own terms (a Tailscale helper is no
  // Tor exit).
  uint8_t reply_code() const { return client_.reply_code(); }
  // Greeting only: done once the proxy has taken the method and the credentials, no request
  // sent (a strict session's spare proxy socket, greeted ahead of the shim's request).
  void SetGreetOnly() { client_.SetGreetOnly(); }

  // Whether SOCKS5 can carry this request: a name of 1..255 bytes or an address of family 4 or
  // 6, and credentials of at most 255 bytes each. EINVAL with a message otherwise.
  static Status Validate(const Target& target, const std::string& username,
                         const std::string& password);

  std::string_view Output() const override {
    return {reinterpret_cast<const char*>(client_.output()), client_.output_len()};
  }
  void Consumed(size_t n) override { client_.Consumed(n); }
  size_t WantRead() const override { return client_.WantRead(); }
  Status Feed(const uint8_t* data, size_t n) override;
  bool Done() const override { return client_.Done() && !failed_; }
  std::string_view StallHint() const override { return client_.StallHint(); }

  // The errno for a CONNECT reply code (0x01..0x08 and Tor's 0xf0..0xf7 as in
  // docs/configuration.md, EPROTO for any other), and the code's meaning in words.
  static int ReplyCodeToErrno(uint8_t code) { return socks5::ReplyCodeToErrno(code); }
  static const char* ReplyCodeText(uint8_t code) { return socks5::ReplyCodeText(code); }
  // Which hop failed, in words, for the log ("at the destination: it refused the connection").
  static const char* ReplyCodeHop(uint8_t code) { return socks5::ReplyCodeHop(code); }

 private:
  uint8_t command_ = kCmdConnect;
  bool failed_ = false;
  socks5::Client client_;
  wire::Addr bound_addr_;
  std::string bound_name_;
};

// Fills a buffer with random bytes; getrandom(2)'s signature and contract.
using RandomFill = ssize_t (*)(void* buf, size_t n, unsigned flags);

// Wippy's isolation credential: 8 random bytes as 16 lowercase hex characters. `fill` defaults to
// getrandom(2); tests pass a failing one. Failure: EIO, "socks5: failed to generate isolation
// credential: <cause>".
Result<std::string> RandomIsolationCredential(RandomFill fill = nullptr);

}  // namespace via::overlays
