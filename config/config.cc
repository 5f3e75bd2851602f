// Loads the Wippy registry format (docs/configuration.md) with yaml-cpp.
//
// This file reads the files of one load and runs the checks that span them; the parts are
// document.cc (one file and its entries), parse_socks5.cc, parse_i2p.cc, parse_tailscale.cc
// (one network.* kind each), parse_service.cc (network_service) and parse_rules.cc (via.program,
// security.policy), with the helpers they share in parse_util.h. Validation is strict on
// purpose: an unknown field in a network.* entry is an error, because a typo such as
// `isolate_stream:` would otherwise silently weaken a privacy setting.
#include "config/config.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "config/parse_util.h"

namespace via::config {

using namespace detail;

std::string SourcePos::ToString() const {
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

const Overlay* Config::Find(std::string_view ref) const {
  if (ref.empty()) return nullptr;
  if (ref.find(':') != std::string_view::npos) {
    for (const Overlay& o : overlays) {
      if (o.id == ref) return &o;
    }
    return nullptr;
  }
  const Overlay* found = nullptr;
  for (const Overlay& o : overlays) {
    if (o.name != ref) continue;
    if (found != nullptr) return nullptr;  // ambiguous: the name exists in two namespaces
    found = &o;
  }
  return found;
}

namespace {

constexpr size_t kMaxFileBytes = 1 << 20;

std::string Absolute(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) != nullptr) return buf;
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

enum class FileType { kMissing, kFile, kDir };

FileType TypeOf(const std::string& path, int* err = nullptr) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (err != nullptr) *err = errno;
    return FileType::kMissing;
  }
  return S_ISDIR(st.st_mode) ? FileType::kDir : FileType::kFile;
}

Result<std::string> ReadFile(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int err = errno;
    return Status::FromErrno(path + ": cannot read", err);
  }
  std::string text;
  char buf[65536];
  Status st;
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      st = Status::FromErrno(path + ": cannot read", err);
      break;
    }
    if (n == 0) break;
    text.append(buf, size_t(n));
    if (text.size() > kMaxFileBytes) {
      st = Status::Error(EFBIG, path + ": cannot read: larger than 1 MiB");
      break;
    }
  }
  ::close(fd);
  if (!st.ok()) return st;
  return text;
}

// The ids of the configured overlays for a message.
std::string KnownOverlays(const Config& cfg) {
  std::vector<std::string> known;
  for (const Overlay& o : cfg.overlays) known.push_back(o.id);
  return known.empty() ? std::string("no overlay is configured") : Join(known);
}

// Checks that span files, once everything is loaded.
Status Finish(const std::string& config_dir, Loader* ld) {
  NetworkService& svc = ld->cfg.service;
  if (!ld->state_dir_set) svc.state_dir = Resolve(config_dir, ".wippy/net");
  if (!svc.default_network.empty() && !IsBuiltinNetwork(svc.default_network)) {
    const Overlay* o = ld->cfg.Find(svc.default_network);
    if (o == nullptr) {
      return ErrorAt(svc.default_network_pos, "network_service.default_network: unknown overlay " +
                                                  Quote(svc.default_network) + " (known: " +
                                                  KnownOverlays(ld->cfg) + "; or direct, none)");
    }
    svc.default_network = o->id;  // a bare unique name becomes "ns:name"
  }
  for (ProgramRule& rule : ld->cfg.programs) {
    if (rule.network.empty() || IsBuiltinNetwork(rule.network)) continue;
    const Overlay* o = ld->cfg.Find(rule.network);
    if (o == nullptr) {
      return Status::Invalid(rule.network_pos + ": entry " + rule.id +
                             " (via.program): network: unknown overlay " + Quote(rule.network) +
                             " (known: " + KnownOverlays(ld->cfg) + "; or direct, none)");
    }
    rule.network = o->id;
  }
  for (Route& route : ld->cfg.routes) {
    if (route.network == kDirectNetwork || route.network == kBlockNetwork) continue;
    const Overlay* o = ld->cfg.Find(route.network);
    if (o == nullptr) {
      return Status::Invalid(route.network_pos + ": entry " + route.id +
                             " (via.route): network: unknown overlay " + Quote(route.network) +
                             " (known: " + KnownOverlays(ld->cfg) + "; or direct, block)");
    }
    route.network = o->id;
  }
  for (SecurityPolicy& p : ld->cfg.policies) {
    for (size_t i = 0; i < p.resources.size(); ++i) {
      std::string& res = p.resources[i];
      if (res == "*" || IsBuiltinNetwork(res) || res.find_first_of("*?[") != std::string::npos)
        continue;
      const Overlay* o = ld->cfg.Find(res);
      if (o == nullptr) {
        return Status::Invalid(p.resource_pos[i] + ": entry " + p.id +
                               " (security.policy): policy.resources: unknown overlay " +
                               Quote(res) + " (known: " + KnownOverlays(ld->cfg) +
                               "; or direct, \"*\", a glob such as app:*)");
      }
      res = o->id;
    }
  }
  if (Status st = CheckTailscaleStateDirs(ld->cfg); !st.ok()) return st;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(ld->hash));
  ld->cfg.fingerprint = buf;
  return Status::Ok();
}

Status ReadInto(const std::string& file, Loader* ld, Result<std::string>* text) {
  *text = ReadFile(file);
  if (!text->ok()) return text->status();
  ld->AddText(**text);
  ld->cfg.files.push_back(file);
  return Status::Ok();
}

Result<std::vector<std::string>> YamlFilesIn(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    int err = errno;
    return Status::FromErrno(dir + ": cannot read", err);
  }
  std::vector<std::string> files;
  while (dirent* de = ::readdir(d)) {
    std::string n = de->d_name;
    if (n.empty() || n[0] == '.' || n.size() <= 5 || n.compare(n.size() - 5, 5, ".yaml") != 0) {
      continue;
    }
    files.push_back(dir + "/" + n);
  }
  ::closedir(d);
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    return Status::Error(ENOENT, dir + ": cannot read: no *.yaml files in this directory");
  }
  return files;
}

}  // namespace

Result<Config> ParseConfigText(std::string_view text, const std::string& filename,
                               const std::string& base_dir) {
  Loader ld;
  ld.cfg.source = filename;
  ld.cfg.files.push_back(filename);
  ld.AddText(text);
  if (Status st = ParseDocument(text, filename, base_dir, &ld); !st.ok()) return st;
  if (Status st = Finish(base_dir, &ld); !st.ok()) return st;
  return std::move(ld.cfg);
}

Result<Config> LoadConfig(const std::string& path) {
  int err = 0;
  FileType type = TypeOf(path, &err);
  if (type == FileType::kMissing) return Status::FromErrno(path + ": cannot read", err);
  Loader ld;
  ld.cfg.source = Absolute(path);
  const std::string dir = type == FileType::kDir ? ld.cfg.source : DirName(ld.cfg.source);
  std::vector<std::string> files{ld.cfg.source};
  if (type == FileType::kDir) {
    auto listed = YamlFilesIn(ld.cfg.source);
    if (!listed.ok()) return listed.status();
    files = std::move(*listed);
  }
  for (const std::string& f : files) {
    Result<std::string> text = std::string();
    if (Status st = ReadInto(f, &ld, &text); !st.ok()) return st;
    if (Status st = ParseDocument(*text, f, DirName(f), &ld); !st.ok()) return st;
  }
  if (ld.service_pos.file.empty()) {
    // Wippy's app settings: .wippy.yaml beside the registry, or one level up.
    for (const std::string& candidate : {dir + "/.wippy.yaml", DirName(dir) + "/.wippy.yaml"}) {
      if (TypeOf(candidate) != FileType::kFile) continue;
      Result<std::string> text = std::string();
      if (Status st = ReadInto(candidate, &ld, &text); !st.ok()) return st;
      if (Status st = ParseWippyYaml(*text, candidate, &ld); !st.ok()) return st;
      break;
    }
  }
  if (Status st = Finish(dir, &ld); !st.ok()) return st;
  return std::move(ld.cfg);
}

Result<std::string> FindConfig() {
  std::vector<std::string> looked;
  auto exists = [&](const std::string& shown, const std::string& p) {
    looked.push_back(shown);
    return TypeOf(p) != FileType::kMissing;
  };
  if (const char* env = std::getenv("VIA_CONFIG"); env != nullptr && env[0] != 0) {
    if (exists("$VIA_CONFIG (" + std::string(env) + ")", env)) return Absolute(env);
    // An explicit choice that is wrong must not quietly fall back to another config.
    return Status::Error(ENOENT, "$VIA_CONFIG names " + std::string(env) +
                                     ", which does not exist; fix or unset VIA_CONFIG");
  }
  for (const char* local : {"./_index.yaml", "./via.yaml"}) {
    if (exists(local, local)) return Absolute(local);
  }
  std::string user_dir;
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x != nullptr && x[0] == '/') {
    user_dir = std::string(x) + "/via/";
  } else if (const char* home = std::getenv("HOME"); home != nullptr && home[0] == '/') {
    user_dir = std::string(home) + "/.config/via/";
  }
  if (!user_dir.empty() && exists(user_dir, user_dir)) return Absolute(user_dir);
  if (exists("/etc/via/", "/etc/via")) return Absolute("/etc/via");
  return Status::Error(ENOENT, "no configuration found (looked at " + Join(looked) +
                                   "); pass one with -c PATH or set VIA_CONFIG");
}

}  // namespace via::config

namespace via::config {

const char* IsolationName(Isolation i) {
  switch (i) {
    case Isolation::kNone:
      return "none";
    case Isolation::kConnection:
      return "connection";
    case Isolation::kDestination:
      return "destination";
    case Isolation::kProcess:
      return "process";
    case Isolation::kProgram:
      return "program";
    case Isolation::kSession:
      return "session";
  }
  return "?";
}

}  // namespace via::config
