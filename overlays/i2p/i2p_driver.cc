#include "overlays/i2p/i2p_driver.h"

#include <netdb.h>

#include <cerrno>
#include <cstring>

#include "common/wire.h"
#include "overlays/i2p/sam.h"

namespace via::overlays {

Result<std::unique_ptr<I2pDriver>> I2pDriver::Create(const config::Overlay& overlay) {
  std::unique_ptr<I2pDriver> d(new I2pDriver());
  d->id_ = overlay.id;
  d->overlay_ = &overlay;
  d->settings_ = overlay.i2p;
  auto endpoints = ResolveEndpoints(overlay.id, "SAM host", overlay.i2p.host, overlay.i2p.port);
  if (!endpoints.ok()) return endpoints.status();
  d->endpoints_ = std::move(*endpoints);
  return d;
}

Result<std::unique_ptr<Handshake>> I2pDriver::NewHandshake(const Target& target) {
  if (target.name.empty() || !sam::IsI2pName(target.name)) {
    return Status::Error(ENETUNREACH, "I2P reaches only .i2p names (" + target.ToString() +
                                          " is not one; SAM has no outproxy)");
  }
  if (session_.empty()) return Status::Error(ENETUNREACH, "no SAM session is up");
  // The port is dropped, as Wippy does: i2pd's SAM has no TO_PORT.
  return sam::NewConnectHandshake(session_, target.name);
}

}  // namespace via::overlays
