#include "overlays/socks5/socks5_handshake.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/wire.h"

namespace via::overlays {

// ---- Socks5Handshake ---------------------------------------------------------------------------

Socks5Handshake::Socks5Handshake(Target target, std::string username, std::string password,
                                 uint8_t command, bool pipeline)
    : command_(command) {
  client_.Start(target.name.empty() ? nullptr : target.name.c_str(), target.addr, target.port,
                username.data(), username.size(), password.data(), password.size(), command,
                pipeline);
  if (Status invalid = Validate(target, username, password); !invalid.ok()) {
    client_.SetInvalid(invalid.code(), invalid.message().c_str());
  }
}

Status Socks5Handshake::Validate(const Target& target, const std::string& username,
                                 const std::string& password) {
  if (target.name.empty() && target.addr.family != 4 && target.addr.family != 6) {
    return Status::Invalid("SOCKS5: no destination (neither a name nor an IPv4/IPv6 address)");
  }
  if (target.name.size() > socks5::kMaxField) {
    return Status::Invalid("SOCKS5 cannot carry a host name of " +
                           std::to_string(target.name.size()) +
                           " bytes (at most 255): " + target.name.substr(0, 64) + "...");
  }
  if (username.size() > socks5::kMaxField || password.size() > socks5::kMaxField) {
    return Status::Invalid(
        "SOCKS5 username and password are at most 255 bytes each (RFC 1929); got " +
        std::to_string(username.size()) + " and " + std::to_string(password.size()));
  }
  return Status::Ok();
}

Status Socks5Handshake::Feed(const uint8_t* data, size_t n) {
  if (failed_) return Status::Error(EPROTO, "SOCKS5 handshake fed after it finished");
  if (int err = client_.Feed(data, n); err != 0) {
    failed_ = true;
    return Status::Error(err, client_.error());
  }
  if (!client_.Done()) return Status::Ok();
  // BND.ADDR/BND.PORT: where the proxy connected from (CONNECT: nothing to check), or the answer
  // of Tor's RESOLVE (an address) / RESOLVE_PTR (a name).
  size_t name_len = 0;
  const char* name = client_.BoundName(&name_len);
  bound_name_.assign(name, name_len);
  bound_addr_ = client_.BoundAddr();
  if (command_ == kCmdResolve && bound_addr_.family == 0) {
    failed_ = true;
    return Status::Error(
        EPROTO, std::string("Tor's RESOLVE reply for ") + client_.target() + " carries no address");
  }
  if (command_ == kCmdResolvePtr && bound_name_.empty()) {
    failed_ = true;
    return Status::Error(EPROTO, std::string("Tor's RESOLVE_PTR reply for ") + client_.target() +
                                     " carries no name");
  }
  return Status::Ok();
}

// ---- isolation credentials ---------------------------------------------------------------------

Result<std::string> RandomIsolationCredential(RandomFill fill) {
  if (fill == nullptr)
    fill = [](void* buf, size_t n, unsigned flags) { return getrandom(buf, n, flags); };
  char hex[17];
  if (int err = socks5::IsolationCredential(hex, fill); err != 0) {
    return Status::Error(
        EIO, std::string("socks5: failed to generate isolation credential: ") + std::strerror(err));
  }
  return std::string(hex);
}

}  // namespace via::overlays
