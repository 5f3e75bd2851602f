#include "overlays/factory.h"

#include <spdlog/logger.h>

#include <utility>

#include "overlays/i2p/i2p_overlay.h"
#include "overlays/socks5/socks5_overlay.h"
#include "overlays/tailscale/tailscale_overlay.h"

namespace via::overlays {

namespace {

// Each kind creates its own type (its tests use what only it has, e.g. I2pOverlay::set_session).
template <typename Kind>
Result<std::unique_ptr<Overlay>> AsOverlay(Result<std::unique_ptr<Kind>> created) {
  if (!created.ok()) return created.status();
  return std::unique_ptr<Overlay>(std::move(*created));
}

}  // namespace

Result<std::unique_ptr<Overlay>> CreateOverlay(const config::Overlay& overlay,
                                               const OverlayContext& context) {
  OverlayContext ctx = context;
  if (!ctx.log) ctx.log = std::make_shared<spdlog::logger>("overlay");  // no sinks: silent
  static const config::NetworkService kDefaultService;
  if (ctx.service == nullptr) ctx.service = &kDefaultService;
  switch (overlay.kind) {
    case config::OverlayKind::kSocks5:
      return AsOverlay(Socks5Overlay::Create(overlay));
    case config::OverlayKind::kI2p:
      return AsOverlay(I2pOverlay::Create(overlay, ctx));
    case config::OverlayKind::kTailscale:
      return AsOverlay(TailscaleOverlay::Create(overlay, ctx));
  }
  // Every kind has its case (-Wswitch), and the config makes no other value.
  __builtin_unreachable();
}

std::string EntrySummary(const config::Overlay& overlay, const config::NetworkService& service) {
  if (overlay.kind == config::OverlayKind::kSocks5) return Socks5Overlay::Summary(overlay, service);
  return "";
}

}  // namespace via::overlays
