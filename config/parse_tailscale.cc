// `kind: network.tailscale` entries, and where each keeps its node.
#include <limits.h>

#include <cstdio>

#include "config/parse_util.h"

namespace via::config {
namespace detail {

Status ParseTailscale(const EntryReader& r, const std::string& base_dir, TailscaleSettings* s) {
  if (Status st = r.CheckKnown({"hostname", "auth_key", "auth_key_env", "state_dir", "control_url",
                                "ephemeral", "localapi_socket", "helper", "connect_timeout"});
      !st.ok()) {
    return st;
  }
  for (auto [field, out] : {std::pair{"hostname", &s->hostname},
                            {"auth_key", &s->auth_key},
                            {"auth_key_env", &s->auth_key_env},
                            {"state_dir", &s->state_dir},
                            {"control_url", &s->control_url},
                            {"localapi_socket", &s->localapi_socket},
                            {"helper", &s->helper}}) {
    if (Status st = r.String(field, out); !st.ok()) return st;
  }
  if (!s->state_dir.empty()) {
    s->state_dir = Resolve(base_dir, s->state_dir);
    s->state_dir_pos = r.FieldPos("state_dir");
  }
  if (Status st = r.Bool("ephemeral", &s->ephemeral); !st.ok()) return st;
  if (Status st = r.Duration("connect_timeout", &s->connect_timeout_ms); !st.ok()) return st;
  // An entry attached to a running tailscaled uses that daemon's login: no key of its own.
  if (s->auth_key.empty() && s->auth_key_env.empty() && s->localapi_socket.empty()) {
    return r.Error("auth_key", "network: tailscale auth_key or auth_key_env is required");
  }
  return Status::Ok();
}

// Two network.tailscale entries in one state directory would be one node: the same node key
// registered on both control servers (or a node's state overwritten by another's). Refused,
// whether the directories are given or derived.
Status CheckTailscaleStateDirs(const Config& cfg) {
  std::vector<std::pair<const Overlay*, std::string>> seen;
  for (const Overlay& o : cfg.overlays) {
    if (o.kind != OverlayKind::kTailscale) continue;
    std::string dir = TailscaleStateDir(o, cfg.service);
    if (o.tailscale.state_dir.empty() && !dir.empty() && TailscaleDirName(o.id).size() > NAME_MAX) {
      return ErrorAt(o.pos, "entry " + o.id + " (" + o.kind_name +
                                "): state_dir: the default directory name (from the entry's "
                                "namespace and name) is longer than " +
                                std::to_string(NAME_MAX) + " bytes: set state_dir");
    }
    if (!dir.empty()) dir = Resolve("/", dir);
    for (const auto& [other, other_dir] : seen) {
      if (other_dir != dir) continue;
      const TailscaleSettings& s = o.tailscale;
      SourcePos pos = s.state_dir_pos.file.empty() ? o.pos : s.state_dir_pos;
      std::string shared =
          dir.empty() ? "tsnet's default directory (network_service.state_dir is \"\")" : dir;
      return ErrorAt(pos, "entry " + o.id + " (" + o.kind_name + "): state_dir: " + shared +
                              " is also the state directory of entry " + other->id + " (" +
                              other->pos.ToString() +
                              "); two nodes in one directory would register one node key "
                              "twice: give each entry its own state_dir");
    }
    seen.emplace_back(&o, dir);
  }
  return Status::Ok();
}

}  // namespace detail

std::string TailscaleDirName(std::string_view id) {
  std::string out;
  for (size_t i = 0; i < id.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(id[i]);
    bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '_' || c == '-' || c == ':' || (c == '.' && i > 0);
    if (keep) {
      out += char(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

std::string TailscaleStateDir(const Overlay& overlay, const NetworkService& service) {
  if (!overlay.tailscale.state_dir.empty()) return overlay.tailscale.state_dir;
  if (service.state_dir.empty()) return "";
  return service.state_dir + "/tailscale/" + TailscaleDirName(overlay.id);
}

}  // namespace via::config
