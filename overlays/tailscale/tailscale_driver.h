// The driver for `kind: network.tailscale` entries, and the message format of the control channel
// between the broker and its via-tsnet helper (docs/tailscale.md).
//
// A Tailscale node is a userspace network stack (tsnet, Go) that the broker cannot link, so each
// entry gets a helper process (overlays/tsnet/, supervised by broker/tailscale_runtime). The
// helper serves the broker's connects as a loopback SOCKS5 endpoint guarded by a per-run secret;
// this driver is the broker's side of that: endpoint + SOCKS5 handshake with the secret. The
// endpoint exists only while the helper reports the node Running.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "overlays/driver.h"

namespace via::overlays {

// One control message: a verb line, then "key=value" lines, in one SOCK_SEQPACKET datagram.
struct HelperMessage {
  std::string verb;
  std::map<std::string, std::string> fields;

  const std::string& Get(const std::string& key) const;  // "" when absent
};

// Strict parse: a non-empty verb of [A-Z_] and lines of key=value with a non-empty key of
// [a-z_0-9]; EPROTO with a message otherwise.
Result<HelperMessage> ParseHelperMessage(std::string_view data);
// Newlines in values become spaces (a value can never start a new field).
std::string FormatHelperMessage(std::string_view verb,
                                const std::vector<std::pair<std::string, std::string>>& fields);

class TailscaleDriver : public Driver {
 public:
  // Resolves the auth key (auth_key, or the broker's environment variable auth_key_env) and
  // mints the SOCKS5 secret. Fails with EINVAL naming the overlay when auth_key_env is unset.
  static Result<std::unique_ptr<TailscaleDriver>> Create(const config::Overlay& overlay);

  const std::string& id() const override { return id_; }
  // Empty while the node is not Running.
  const std::vector<Endpoint>& endpoints() const override { return endpoints_; }
  // SOCKS5 CONNECT with user "via" and the secret; names go as names (the helper resolves them
  // from the tailnet's netmap). ENETUNREACH when the node is not Running.
  Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) override;
  int connect_timeout_ms() const override { return settings_.connect_timeout_ms; }

  const config::TailscaleSettings& settings() const { return settings_; }
  const std::string& auth_key() const { return auth_key_; }
  const std::string& secret() const { return secret_; }
  bool attached() const { return !settings_.localapi_socket.empty(); }
  // The hostname the node registers ("wippy" when unset, as in Wippy).
  std::string hostname() const;

  // Set by the broker's TailscaleRuntime from the helper's STATUS (socks=127.0.0.1:port);
  // false for text that is not a numeric loopback host:port.
  bool SetEndpoint(const std::string& host_port);
  void ClearEndpoint() { endpoints_.clear(); }

 private:
  TailscaleDriver() = default;

  std::string id_;
  config::TailscaleSettings settings_;
  std::string auth_key_;
  std::string secret_;
  std::vector<Endpoint> endpoints_;
};

}  // namespace via::overlays
