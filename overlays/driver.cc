#include "overlays/driver.h"

#include <cerrno>
#include <string>

#include "common/wire.h"
#include "overlays/i2p.h"
#include "overlays/socks5.h"
#include "overlays/tailscale.h"

namespace via::overlays {

std::string Target::ToString() const {
  if (!name.empty()) return name + ":" + std::to_string(port);
  wire::Addr a = addr;
  a.port = port;
  char buf[80];
  return wire::FormatAddr(a, buf, sizeof buf);
}

Result<std::unique_ptr<Driver>> CreateDriver(const config::Overlay& overlay) {
  switch (overlay.kind) {
    case config::OverlayKind::kSocks5:
      return Socks5Driver::Create(overlay);
    case config::OverlayKind::kI2p: {
      auto d = I2pDriver::Create(overlay);
      if (!d.ok()) return d.status();
      return std::unique_ptr<Driver>(std::move(*d));
    }
    case config::OverlayKind::kTailscale: {
      auto d = TailscaleDriver::Create(overlay);
      if (!d.ok()) return d.status();
      return std::unique_ptr<Driver>(std::move(*d));
    }
  }
  std::string kind = overlay.kind_name;
  if (kind.empty()) {
    kind = overlay.kind == config::OverlayKind::kTailscale ? "network.tailscale" : "network.i2p";
  }
  return Status::Error(ENOTSUP, "overlay " + overlay.id + ": kind " + kind +
                                    " is not supported by this build of via yet");
}

}  // namespace via::overlays
