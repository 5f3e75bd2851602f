// Loads the Wippy registry format (docs/configuration.md) with yaml-cpp. yaml-cpp throws; every
// exception is caught here and becomes a Status with file:line:col.
#include <arpa/inet.h>
#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "config/config.h"

namespace via::config {

std::string SourcePos::ToString() const {
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

const Overlay* Config::Find(std::string_view ref) const {
  if (ref.find(':') != std::string_view::npos) {
    for (const Overlay& o : overlays) {
      if (o.id == ref) return &o;
    }
    return nullptr;
  }
  const Overlay* found = nullptr;
  for (const Overlay& o : overlays) {
    if (o.name == ref) {
      if (found != nullptr) return nullptr;  // ambiguous
      found = &o;
    }
  }
  return found;
}

namespace {

SourcePos PosOf(const std::string& file, const YAML::Node& n) {
  YAML::Mark m = n.Mark();
  return SourcePos{file, m.line + 1, m.column + 1};
}

std::string DirName(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string Absolute(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) != nullptr) return buf;
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (::getcwd(cwd, sizeof cwd) == nullptr) return path;
  return std::string(cwd) + "/" + path;
}

bool Exists(const std::string& p, bool* is_dir = nullptr) {
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) return false;
  if (is_dir != nullptr) *is_dir = S_ISDIR(st.st_mode);
  return true;
}

// Reads one entry's fields with positions for error messages.
class EntryReader {
 public:
  EntryReader(const std::string& file, const YAML::Node& node, std::string id, std::string kind)
      : file_(file), node_(node), id_(std::move(id)), kind_(std::move(kind)) {}

  Status Error(const YAML::Node& at, const std::string& field, const std::string& problem) const {
    return Status::Invalid(PosOf(file_, at).ToString() + ": entry " + id_ + " (" + kind_ +
                           "): " + field + ": " + problem);
  }
  Status Missing(const std::string& field, const std::string& problem) const {
    return Error(node_, field, problem);
  }

  // Rejects keys not in `allowed` (plus the common entry keys).
  Status CheckKnown(std::initializer_list<const char*> allowed) const {
    static const char* const kCommon[] = {"name", "kind", "meta", "lifecycle", "description"};
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      std::string key = it->first.Scalar();
      bool ok =
          std::any_of(std::begin(kCommon), std::end(kCommon),
                      [&](const char* k) { return key == k; }) ||
          std::any_of(allowed.begin(), allowed.end(), [&](const char* k) { return key == k; });
      if (!ok) return Error(it->first, key, "unknown field (see docs/configuration.md)");
    }
    return Status::Ok();
  }

  Status String(const char* field, std::string* out, size_t max_len = 4096) const {
    YAML::Node v = node_[field];
    if (!v) return Status::Ok();
    if (!v.IsScalar()) return Error(v, field, "must be a string");
    *out = v.Scalar();
    if (out->size() > max_len) {
      return Error(v, field,
                   "too long (" + std::to_string(out->size()) + " bytes, at most " +
                       std::to_string(max_len) + ")");
    }
    return Status::Ok();
  }

  Status Bool(const char* field, bool* out) const {
    YAML::Node v = node_[field];
    if (!v) return Status::Ok();
    bool b;
    if (!v.IsScalar() || !YAML::convert<bool>::decode(v, b)) {
      return Error(v, field,
                   "must be true or false, not \"" + (v.IsScalar() ? v.Scalar() : "") + "\"");
    }
    *out = b;
    return Status::Ok();
  }

  // host + port as Wippy validates them.
  Status HostPort(std::string* host, int* port) const {
    if (Status s = String("host", host); !s.ok()) return s;
    if (host->empty()) return Missing("host", "network: host is required");
    YAML::Node v = node_["port"];
    if (!v) return Missing("port", "network: invalid port (port is required)");
    long p = 0;
    if (!ParseInt(v, &p)) {
      return Error(v, "port", "network: invalid port (\"" + v.Scalar() + "\" is not a number)");
    }
    if (p < 1 || p > 65535) {
      return Error(v, "port",
                   "network: invalid port (" + std::to_string(p) + " is not in 1..65535)");
    }
    *port = static_cast<int>(p);
    return Status::Ok();
  }

  // A duration: a number of seconds, or "<n>ms", "<n>s", "<n>m".
  Status Duration(const char* field, int* out_ms) const {
    YAML::Node v = node_[field];
    if (!v) return Status::Ok();
    std::string s = v.IsScalar() ? v.Scalar() : "";
    double value = 0;
    std::string unit;
    {
      std::istringstream in(s);
      in >> value;
      if (in.fail())
        return Error(v, field, "not a duration: \"" + s + "\" (use e.g. 15s or 500ms)");
      std::getline(in, unit);
    }
    double ms;
    if (unit.empty() || unit == "s") {
      ms = value * 1000;
    } else if (unit == "ms") {
      ms = value;
    } else if (unit == "m") {
      ms = value * 60000;
    } else {
      return Error(v, field, "not a duration: \"" + s + "\" (use e.g. 15s or 500ms)");
    }
    if (ms < 1 || ms > 600000) return Error(v, field, "must be between 1ms and 10m, not " + s);
    *out_ms = static_cast<int>(ms);
    return Status::Ok();
  }

  static bool ParseInt(const YAML::Node& v, long* out) {
    if (!v.IsScalar()) return false;
    const std::string& s = v.Scalar();
    if (s.empty()) return false;
    char* end = nullptr;
    errno = 0;
    long x = std::strtol(s.c_str(), &end, 10);
    if (*end != 0 || errno != 0) return false;
    *out = x;
    return true;
  }

 private:
  const std::string& file_;
  YAML::Node node_;
  std::string id_;
  std::string kind_;
};

Status ParseSocks5(const EntryReader& r, Socks5Settings* s) {
  if (Status st = r.CheckKnown(
          {"host", "port", "username", "password", "isolate_streams", "connect_timeout"});
      !st.ok())
    return st;
  if (Status st = r.HostPort(&s->host, &s->port); !st.ok()) return st;
  if (Status st = r.String("username", &s->username, 255); !st.ok()) return st;
  if (Status st = r.String("password", &s->password, 255); !st.ok()) return st;
  if (Status st = r.Bool("isolate_streams", &s->isolate_streams); !st.ok()) return st;
  return r.Duration("connect_timeout", &s->connect_timeout_ms);
}

Status ParseTailscale(const EntryReader& r, TailscaleSettings* s) {
  if (Status st = r.CheckKnown(
          {"hostname", "auth_key", "auth_key_env", "state_dir", "control_url", "ephemeral"});
      !st.ok())
    return st;
  for (auto [field, out] : {std::pair{"hostname", &s->hostname},
                            {"auth_key", &s->auth_key},
                            {"auth_key_env", &s->auth_key_env},
                            {"state_dir", &s->state_dir},
                            {"control_url", &s->control_url}}) {
    if (Status st = r.String(field, out); !st.ok()) return st;
  }
  if (Status st = r.Bool("ephemeral", &s->ephemeral); !st.ok()) return st;
  if (s->auth_key.empty() && s->auth_key_env.empty()) {
    return r.Missing("auth_key", "network: tailscale auth_key or auth_key_env is required");
  }
  return Status::Ok();
}

Status ParseI2p(const EntryReader& r, I2pSettings* s) {
  if (Status st = r.CheckKnown({"host", "port", "session_name"}); !st.ok()) return st;
  if (Status st = r.HostPort(&s->host, &s->port); !st.ok()) return st;
  return r.String("session_name", &s->session_name);
}

// Parses "a.b.c.d/n" or "x::/n"; checks the family's prefix bounds and reserved ranges.
Status CheckPool(const std::string& where, const std::string& cidr, int family) {
  auto slash = cidr.find('/');
  std::string addr = cidr.substr(0, slash);
  int prefix = -1;
  if (slash != std::string::npos) {
    char* end = nullptr;
    prefix = static_cast<int>(std::strtol(cidr.c_str() + slash + 1, &end, 10));
    if (*end != 0 || end == cidr.c_str() + slash + 1) prefix = -1;
  }
  unsigned char b[16];
  if (family == 4) {
    if (inet_pton(AF_INET, addr.c_str(), b) != 1 || prefix < 8 || prefix > 24) {
      return Status::Invalid(where + ": \"" + cidr +
                             "\" is not an IPv4 network with a prefix between /8 and /24");
    }
    if (b[0] == 127 || b[0] >= 224 || b[0] == 0) {
      return Status::Invalid(
          where + ": \"" + cidr +
          "\" is loopback, multicast or otherwise special; use e.g. 198.18.0.0/15");
    }
  } else {
    if (inet_pton(AF_INET6, addr.c_str(), b) != 1 || prefix < 48 || prefix > 112) {
      return Status::Invalid(where + ": \"" + cidr +
                             "\" is not an IPv6 network with a prefix between /48 and /112");
    }
    static const unsigned char kZero[15] = {};
    if (b[0] == 0xff || std::memcmp(b, kZero, 15) == 0) {
      return Status::Invalid(
          where + ": \"" + cidr +
          "\" is loopback, multicast or otherwise special; use e.g. fd76:6961:ff00::/64");
    }
  }
  return Status::Ok();
}

struct ServiceSeen {
  bool found = false;
};

Status ParseService(const std::string& file, const YAML::Node& ns, NetworkService* svc) {
  if (!ns.IsMap()) {
    return Status::Invalid(PosOf(file, ns).ToString() + ": network_service: must be a mapping");
  }
  std::string base = DirName(Absolute(file));
  for (auto it = ns.begin(); it != ns.end(); ++it) {
    std::string key = it->first.Scalar();
    const YAML::Node& v = it->second;
    std::string where = PosOf(file, v).ToString() + ": network_service." + key;
    if (!v.IsScalar()) return Status::Invalid(where + ": must be a single value");
    const std::string& s = v.Scalar();
    if (key == "state_dir") {
      svc->state_dir = s.empty() ? "" : (s[0] == '/' ? s : base + "/" + s);
    } else if (key == "default_network") {
      svc->default_network = s;
      svc->default_network_pos = PosOf(file, v);
    } else if (key == "fake_ipv4") {
      if (Status st = CheckPool(where, s, 4); !st.ok()) return st;
      svc->fake_ipv4 = s;
    } else if (key == "fake_ipv6") {
      if (Status st = CheckPool(where, s, 6); !st.ok()) return st;
      svc->fake_ipv6 = s;
    } else if (key == "loopback") {
      if (s == "direct") {
        svc->loopback = LoopbackPolicy::kDirect;
      } else if (s == "overlay") {
        svc->loopback = LoopbackPolicy::kOverlay;
      } else if (s == "refuse") {
        svc->loopback = LoopbackPolicy::kRefuse;
      } else {
        return Status::Invalid(where + ": must be direct, overlay or refuse, not \"" + s + "\"");
      }
    } else if (key == "idle_timeout") {
      long n = 0;
      if (!EntryReader::ParseInt(v, &n) || n < 0 || n > 86400) {
        return Status::Invalid(where + ": must be a number of seconds (0..86400), not \"" + s +
                               "\"");
      }
      svc->idle_timeout_s = static_cast<int>(n);
    } else {
      return Status::Invalid(PosOf(file, it->first).ToString() + ": network_service." + key +
                             ": unknown setting (known: state_dir, default_network, fake_ipv4, "
                             "fake_ipv6, loopback, idle_timeout)");
    }
  }
  return Status::Ok();
}

// Parses one YAML document into `cfg`. `service_seen` tells whether network_service was found.
Status ParseDocument(std::string_view text, const std::string& file, Config* cfg,
                     bool* service_seen) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return Status::Invalid(file + ":" + std::to_string(e.mark.line + 1) + ":" +
                           std::to_string(e.mark.column + 1) + ": YAML syntax error: " + e.msg);
  }
  try {
    if (!root || root.IsNull()) return Status::Ok();
    if (!root.IsMap()) {
      return Status::Invalid(PosOf(file, root).ToString() +
                             ": expected a mapping with version, namespace and entries");
    }
    if (YAML::Node ns = root["network_service"]) {
      if (Status st = ParseService(file, ns, &cfg->service); !st.ok()) return st;
      *service_seen = true;
    }
    YAML::Node entries = root["entries"];
    if (!entries) return Status::Ok();
    if (!entries.IsSequence()) {
      return Status::Invalid(PosOf(file, entries).ToString() + ": entries: must be a list");
    }
    YAML::Node nsn = root["namespace"];
    if (!nsn || !nsn.IsScalar() || nsn.Scalar().empty()) {
      return Status::Invalid(PosOf(file, nsn ? nsn : root).ToString() +
                             ": namespace: required when the file has entries");
    }
    std::string ns = nsn.Scalar();
    for (const YAML::Node& e : entries) {
      if (!e.IsMap())
        return Status::Invalid(PosOf(file, e).ToString() + ": entry: must be a mapping");
      YAML::Node name = e["name"], kind = e["kind"];
      if (!name || !name.IsScalar() || name.Scalar().empty()) {
        return Status::Invalid(PosOf(file, e).ToString() + ": entry: name: required");
      }
      std::string id = ns + ":" + name.Scalar();
      if (!kind || !kind.IsScalar() || kind.Scalar().empty()) {
        return Status::Invalid(PosOf(file, e).ToString() + ": entry " + id + ": kind: required");
      }
      std::string k = kind.Scalar();
      if (k.rfind("network.", 0) != 0) {
        ++cfg->skipped_entries;
        continue;
      }
      EntryReader r(file, e, id, k);
      Overlay o;
      o.id = id;
      o.name = name.Scalar();
      o.ns = ns;
      o.kind_name = k;
      o.pos = PosOf(file, e);
      Status st;
      if (k == "network.socks5") {
        o.kind = OverlayKind::kSocks5;
        st = ParseSocks5(r, &o.socks5);
      } else if (k == "network.tailscale") {
        o.kind = OverlayKind::kTailscale;
        st = ParseTailscale(r, &o.tailscale);
      } else if (k == "network.i2p") {
        o.kind = OverlayKind::kI2p;
        st = ParseI2p(r, &o.i2p);
      } else {
        return r.Error(kind, "kind",
                       "unsupported network kind: " + k +
                           " (known: network.socks5, network.tailscale, network.i2p)");
      }
      if (!st.ok()) return st;
      for (const Overlay& other : cfg->overlays) {
        if (other.id == id) {
          return Status::Invalid(o.pos.ToString() + ": entry " + id +
                                 ": duplicate name (first at " + other.pos.ToString() + ")");
        }
      }
      cfg->overlays.push_back(std::move(o));
    }
  } catch (const YAML::Exception& e) {
    return Status::Invalid(file + ":" + std::to_string(e.mark.line + 1) + ":" +
                           std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  return Status::Ok();
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::FromErrno(path + ": cannot read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// FNV-1a over the text of the files read, so that a changed config gets a broker of its own.
void AddToFingerprint(uint64_t* h, std::string_view text) {
  for (unsigned char c : text) {
    *h ^= c;
    *h *= 1099511628211ull;
  }
}

std::string HexFingerprint(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Cross-entry checks once everything is loaded.
Status Finish(Config* cfg, const std::string& base_dir) {
  NetworkService& svc = cfg->service;
  if (svc.state_dir.empty()) svc.state_dir = base_dir + "/.wippy/net";
  if (!svc.default_network.empty() && svc.default_network != "direct" &&
      cfg->Find(svc.default_network) == nullptr) {
    std::string known;
    for (const Overlay& o : cfg->overlays) known += (known.empty() ? "" : ", ") + o.id;
    return Status::Invalid(svc.default_network_pos.ToString() +
                           ": network_service.default_network: unknown overlay \"" +
                           svc.default_network + "\" (known: " + (known.empty() ? "none" : known) +
                           ")");
  }
  return Status::Ok();
}

}  // namespace

Result<Config> ParseConfigText(std::string_view text, const std::string& filename,
                               const std::string& base_dir) {
  Config cfg;
  cfg.source = filename;
  cfg.files.push_back(filename);
  bool seen = false;
  if (Status st = ParseDocument(text, filename, &cfg, &seen); !st.ok()) return st;
  if (Status st = Finish(&cfg, base_dir); !st.ok()) return st;
  uint64_t h = 1469598103934665603ull;
  AddToFingerprint(&h, text);
  cfg.fingerprint = HexFingerprint(h);
  return cfg;
}

Result<Config> LoadConfig(const std::string& path) {
  bool is_dir = false;
  if (!Exists(path, &is_dir)) {
    return Status::Error(ENOENT, path + ": cannot read: " + std::strerror(ENOENT));
  }
  Config cfg;
  cfg.source = Absolute(path);
  std::vector<std::string> files;
  std::string dir = is_dir ? cfg.source : DirName(cfg.source);
  if (is_dir) {
    DIR* d = ::opendir(cfg.source.c_str());
    if (d == nullptr) return Status::FromErrno(path + ": cannot read");
    while (dirent* de = ::readdir(d)) {
      std::string n = de->d_name;
      if (n.empty() || n[0] == '.' || n.size() < 6 || n.compare(n.size() - 5, 5, ".yaml") != 0) {
        continue;
      }
      files.push_back(cfg.source + "/" + n);
    }
    ::closedir(d);
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(cfg.source);
  }
  bool seen = false;
  uint64_t h = 1469598103934665603ull;
  for (const std::string& f : files) {
    auto text = ReadFile(f);
    if (!text.ok()) return text.status();
    AddToFingerprint(&h, *text);
    cfg.files.push_back(f);
    if (Status st = ParseDocument(*text, f, &cfg, &seen); !st.ok()) return st;
  }
  if (!seen) {
    for (const std::string& candidate : {dir + "/.wippy.yaml", DirName(dir) + "/.wippy.yaml"}) {
      if (!Exists(candidate)) continue;
      auto text = ReadFile(candidate);
      if (!text.ok()) return text.status();
      AddToFingerprint(&h, *text);
      cfg.files.push_back(candidate);
      if (Status st = ParseDocument(*text, candidate, &cfg, &seen); !st.ok()) return st;
      break;
    }
  }
  if (Status st = Finish(&cfg, dir); !st.ok()) return st;
  cfg.fingerprint = HexFingerprint(h);
  return cfg;
}

Result<std::string> FindConfig() {
  std::vector<std::string> looked;
  auto try_path = [&](const std::string& p) {
    looked.push_back(p);
    return Exists(p);
  };
  if (const char* env = std::getenv("VIA_CONFIG"); env != nullptr && env[0] != 0) {
    if (try_path(env)) return Absolute(env);
  }
  for (const char* local : {"./_index.yaml", "./via.yaml"}) {
    if (try_path(local)) return Absolute(local);
  }
  std::string xdg;
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x != nullptr && x[0] == '/') {
    xdg = std::string(x) + "/via";
  } else if (const char* home = std::getenv("HOME"); home != nullptr && home[0] == '/') {
    xdg = std::string(home) + "/.config/via";
  }
  if (!xdg.empty() && try_path(xdg)) return Absolute(xdg);
  if (try_path("/etc/via")) return std::string("/etc/via");
  std::string list;
  for (const std::string& l : looked) list += (list.empty() ? "" : ", ") + l;
  return Status::Error(ENOENT, "no configuration found (looked at " + list +
                                   "); pass one with -c FILE or set VIA_CONFIG");
}

}  // namespace via::config
