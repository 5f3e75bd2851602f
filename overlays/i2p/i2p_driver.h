// The driver for `kind: network.i2p` entries: an I2P router's SAM v3 bridge.
//
// A connect is HELLO + STREAM CONNECT on the program's own socket, which after
// `STREAM STATUS RESULT=OK` is the byte stream to the destination (no relay). STREAM CONNECT
// names a SAM session that the broker created ahead and keeps (broker/i2p_runtime.h): i2pd takes
// 20 s for SESSION CREATE, so a connect never waits for a session of its own.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "overlays/driver.h"
#include "overlays/handshake.h"

namespace via::overlays {

class I2pDriver : public Driver {
 public:
  // Resolves the SAM host (numeric first, then /etc/hosts and the system resolver). Fails with
  // EHOSTUNREACH naming the overlay and the host.
  static Result<std::unique_ptr<I2pDriver>> Create(const config::Overlay& overlay);

  const std::string& id() const override { return id_; }
  const std::vector<Endpoint>& endpoints() const override { return endpoints_; }
  // HELLO + STREAM CONNECT through the current outbound session. Only .i2p names can be reached
  // (ENETUNREACH otherwise: SAM has no outproxy); ENETUNREACH when no session is up.
  Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) override;
  int connect_timeout_ms() const override { return settings_.connect_timeout_ms; }

  const config::I2pSettings& settings() const { return settings_; }
  const config::Overlay& overlay() const { return *overlay_; }
  // The session STREAM CONNECT uses; "" while none is up. Set by the broker's I2pRuntime.
  void set_session(std::string id) { session_ = std::move(id); }
  const std::string& session() const { return session_; }

 private:
  I2pDriver() = default;

  std::string id_;
  const config::Overlay* overlay_ = nullptr;
  config::I2pSettings settings_;
  std::vector<Endpoint> endpoints_;
  std::string session_;
};

}  // namespace via::overlays
