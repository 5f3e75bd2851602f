// The overlay of `kind: network.socks5` entries: a SOCKS5 proxy (Tor, microsocks, danted...).
// Connects run SOCKS5 CONNECT on the program's own socket, in the broker or, when the config
// allows it, in the program (program_socks5()); with remote_resolve, names are resolved by Tor.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "overlays/overlay.h"

namespace via::overlays {

class Socks5Overlay : public Overlay {
 public:
  // Resolves the proxy host (numeric first, then /etc/hosts and the system resolver; "[::1]" is
  // accepted as well as "::1"). Fails with EHOSTUNREACH naming the overlay and the host.
  static Result<std::unique_ptr<Socks5Overlay>> Create(const config::Overlay& overlay);
  // The entry's settings for `via status`: " host:port isolate_streams=... handshake=...".
  static std::string Summary(const config::Overlay& overlay, const config::NetworkService& service);

  const std::string& id() const override { return id_; }
  const std::vector<Endpoint>& endpoints() const override { return endpoints_; }
  const char* endpoint_role() const override { return "proxy"; }
  // With isolate_streams, every handshake authenticates with a fresh random credential (as
  // username and password, replacing the configured pair); fails with EIO when none can be
  // drawn. EINVAL for a target SOCKS5 cannot carry (see Socks5Handshake::Validate). A refusal is
  // worded with the proxy's reply code and the hop it points at (Tor's exit, for Tor).
  Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) override;
  int connect_timeout_ms() const override { return settings_.connect_timeout_ms; }
  // remote_resolve: true — Tor's RESOLVE (0xF0) for a name, RESOLVE_PTR (0xF1) for an address,
  // with the same credentials policy as connects (isolate_streams).
  bool remote_resolve() const { return settings_.remote_resolve; }
  // With remote_resolve, every name but those only the overlay reaches (.onion, .i2p, .exit: an
  // exit cannot resolve them, so they keep fake addresses), and every address.
  bool ResolvesRemotely(const Target& target) const override;
  Result<std::unique_ptr<ResolveHandshake>> NewResolveHandshake(const Target& target) override;
  std::optional<ProgramSocks5> program_socks5(const Requester& who) const override;
  // A new epoch: every credential of isolation destination, process, program and session changes
  // (connection's are fresh anyway; none's are the configured pair: only Tor's control port can
  // renew those circuits, which `via newnym` does).
  Status NewIdentity() override;
  void AppendStatus(std::ostream& out) const override;

 private:
  Socks5Overlay() = default;
  // A handshake for `command` with the credentials isolation gives `target`.
  Result<std::unique_ptr<ResolveHandshake>> MakeHandshake(const Target& target,
                                                          uint8_t command) const;
  // The credential of isolation process, program or session for `who`: "via.<p|g|s><epoch>."
  // and 16 hex digits of SHA-256(salt, epoch, key), so the proxy learns nothing of the key.
  std::string KeyedCredential(const Requester& who) const;
  // isolation destination: the prefix DestinationCredential extends, "via.d<epoch>.<salt>".
  std::string DestinationPrefix() const;

  std::string id_;
  config::Socks5Settings settings_;
  std::vector<Endpoint> endpoints_;
  std::string salt_;        // 8 random bytes in hex, per overlay object
  uint64_t epoch_ = 0;      // `via newnym` count
  int64_t renewed_ms_ = 0;  // when (realtime), for `via status`
};

}  // namespace via::overlays
