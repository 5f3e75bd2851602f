// What an overlay may use besides its config entry: the broker's loop, its settings and its log.
#pragma once

#include <spdlog/logger.h>

#include <memory>

#include "config/config.h"
#include "loop/event_loop.h"

namespace via::overlays {

// *loop and *service must outlive the overlay. Without a loop (unit tests) only the connect side
// of an overlay may be used: readiness, listen and status need it.
struct OverlayContext {
  EventLoop* loop = nullptr;
  const config::NetworkService* service = nullptr;  // defaults when null (CreateOverlay)
  std::shared_ptr<spdlog::logger> log;              // a logger without sinks when null
};

}  // namespace via::overlays
