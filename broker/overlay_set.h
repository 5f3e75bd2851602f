// OverlaySet: the overlays of one config generation (the config, its overlay objects, their
// connect counters), built at start and again on each reload. Clients, connects and listeners
// hold an OverlayState by shared_ptr, so a reload never pulls one from under them.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"
#include "loop/event_loop.h"
#include "overlays/overlay.h"

namespace via::broker {

struct OverlayState {
  std::shared_ptr<const config::Config> config;  // keeps `overlay` alive across a reload
  const config::Overlay* overlay = nullptr;
  std::unique_ptr<overlays::Overlay> instance;  // null if it could not be created
  Status error;                                 // why not
  uint64_t ok = 0, failed = 0;                  // connects
  bool none = false;  // the network "none" (config::kNoNetwork): its instance refuses everything
};

class OverlaySet {
 public:
  using Map = std::map<std::string, std::shared_ptr<OverlayState>>;

  // No overlays yet (Build makes them). `generation` counts successful reloads from 1.
  OverlaySet(std::shared_ptr<const config::Config> config, uint64_t generation)
      : config_(std::move(config)), generation_(generation) {}

  // Creates the overlays of the config (resolving proxy hosts: call before the loop runs or on
  // reload). Overlays of `previous` that keep state (Overlay::keeps_state) are kept when their
  // entry is still there with the same kind. *loop must outlive the overlays.
  void Build(EventLoop* loop, const std::shared_ptr<spdlog::logger>& log,
             const OverlaySet* previous);

  // Resolves a network reference: "direct" gives *out = nullptr; "none" and an overlay give its
  // state.
  // Unknown → ENOENT; an overlay that could not be created → why.
  Status Select(const std::string& ref, std::shared_ptr<OverlayState>* out, std::string* id) const;

  // Built-in routes learned from running overlays (config::BuiltinRoutes has those the config
  // alone gives): *.<MagicDNS suffix> to the one Tailscale overlay once its node told the
  // suffix, unless `*.ts.net` covers it or network_service.default_routes is false.
  std::vector<config::Route> LearnedRoutes() const;
  // "tor (socks5 127.0.0.1:9050), ..." or "none", for the log.
  std::string Summary() const;
  // Stops every overlay (all are told first, so that their waits overlap), then destroys them.
  // Clients may still share an OverlayState; its instance is then null, which they check.
  void StopAll();

  const config::Config& config() const { return *config_; }
  const std::shared_ptr<const config::Config>& config_ptr() const { return config_; }
  uint64_t generation() const { return generation_; }
  const Map& all() const { return overlays_; }

 private:
  std::shared_ptr<const config::Config> config_;
  uint64_t generation_ = 1;
  Map overlays_;  // by id
  std::shared_ptr<OverlayState> no_network_;  // "none": no entry configures it
};

}  // namespace via::broker
