#include "broker/overlay_set.h"

#include <cctype>
#include <cerrno>

#include "overlays/factory.h"

namespace via::broker {

namespace {

// The entry the network "none" stands for (no config has one).
const config::Overlay& NoNetworkEntry() {
  static const config::Overlay entry = [] {
    config::Overlay e;
    e.id = e.name = std::string(config::kNoNetwork);
    e.kind_name = "none";
    return e;
  }();
  return entry;
}

}  // namespace

void OverlaySet::Build(EventLoop* loop, const std::shared_ptr<spdlog::logger>& log,
                       const OverlaySet* previous) {
  overlays_.clear();
  no_network_ = std::make_shared<OverlayState>();
  no_network_->config = config_;
  no_network_->overlay = &NoNetworkEntry();
  no_network_->instance = overlays::NewNoNetwork();
  no_network_->none = true;
  for (const config::Overlay& o : config_->overlays) {
    // An overlay that keeps state on its far side (a session, a node) is kept across a reload
    // when its entry is still there with the same kind: rebuilding would drop listeners and
    // restart the node. Changes to such an entry take effect after a restart (logged).
    if (previous != nullptr) {
      if (auto it = previous->overlays_.find(o.id);
          it != previous->overlays_.end() && it->second->instance &&
          it->second->instance->keeps_state() && it->second->overlay->kind == o.kind) {
        log->info("reload: {} keeps its running {} (changes to its entry apply after a restart)",
                  o.id, o.kind_name);
        overlays_[o.id] = it->second;
        continue;
      }
    }
    auto st = std::make_shared<OverlayState>();
    st->config = config_;
    st->overlay = &o;
    auto instance = overlays::CreateOverlay(o, {loop, &config_->service, log});
    if (instance.ok()) {
      st->instance = std::move(*instance);
    } else {
      st->error = instance.status();
      log->warn("overlay {} is unavailable: {}", o.id, st->error.message());
    }
    overlays_[o.id] = std::move(st);
  }
}

Status OverlaySet::Select(const std::string& ref, std::shared_ptr<OverlayState>* out,
                          std::string* id) const {
  out->reset();
  if (ref == config::kDirectNetwork) {
    *id = "direct";
    return Status::Ok();
  }
  if (ref == config::kNoNetwork) {
    *id = "none";
    *out = no_network_;
    return Status::Ok();
  }
  const config::Overlay* o = config_->Find(ref);
  if (o == nullptr) return Status::Error(ENOENT, "unknown overlay \"" + ref + "\"");
  auto it = overlays_.find(o->id);
  if (it == overlays_.end()) return Status::Error(ENOENT, "unknown overlay \"" + ref + "\"");
  const std::shared_ptr<OverlayState>& st = it->second;
  *id = o->id;
  if (!st->instance) {
    return Status::Error(st->error.code() != 0 ? st->error.code() : ENETUNREACH,
                         st->error.message());
  }
  *out = st;
  return Status::Ok();
}

std::vector<config::Route> OverlaySet::LearnedRoutes() const {
  std::vector<config::Route> out;
  if (!config_->service.default_routes) return out;
  const config::Overlay* ts = nullptr;
  int count = 0;
  for (const config::Overlay& o : config_->overlays) {
    if (o.kind == config::OverlayKind::kTailscale) {
      ts = &o;
      ++count;
    }
  }
  if (count != 1) return out;
  auto it = overlays_.find(ts->id);
  if (it == overlays_.end() || !it->second->instance) return out;
  std::string suffix = it->second->instance->NameSuffix();
  for (char& ch : suffix) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (suffix.empty() || suffix == "ts.net" ||
      (suffix.size() > 7 && suffix.compare(suffix.size() - 7, 7, ".ts.net") == 0) ||
      !config::NameGlobProblem(suffix).empty() ||
      suffix.find_first_of("*?[]!") != std::string::npos) {
    return out;
  }
  config::Route r;
  r.id = "built-in";
  r.name = "*." + suffix;
  r.network = ts->id;
  r.why = "the tailnet's MagicDNS suffix to " + ts->id + ", from its node";
  out.push_back(std::move(r));
  return out;
}

std::string OverlaySet::Summary() const {
  std::string out;
  for (const auto& [id, st] : overlays_) {
    out += out.empty() ? "" : ", ";
    out += id + " (" + st->overlay->kind_name;
    if (st->instance) {
      for (const auto& e : st->instance->endpoints()) out += " " + e.text;
    } else {
      out += " unavailable";
    }
    out += ")";
  }
  return out.empty() ? "none" : out;
}

void OverlaySet::StopAll() {
  for (auto& [id, st] : overlays_) {
    if (st->instance) st->instance->Stop();
  }
  for (auto& [id, st] : overlays_) st->instance.reset();
}

}  // namespace via::broker
