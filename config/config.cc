// Loads the Wippy registry format (docs/configuration.md) with yaml-cpp.
//
// yaml-cpp reports problems by throwing; every exception is caught in this file and becomes a
// Status carrying file:line:col, so nothing escapes to the caller. Validation is strict on
// purpose: an unknown field in a network.* entry is an error, because a typo such as
// `isolate_stream:` would otherwise silently weaken a privacy setting.
#include "config/config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <sstream>
#include <utility>

namespace via::config {

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
constexpr size_t kMaxCredentialBytes = 255;  // RFC 1929: one length byte each
constexpr size_t kMaxStringBytes = 4096;
constexpr int kMaxConnectTimeoutMs = 10 * 60 * 1000;
constexpr int kMaxIdleTimeoutS = 24 * 60 * 60;
constexpr const char* kCommonEntryKeys[] = {"name", "kind", "meta", "lifecycle", "description"};
constexpr const char* kServiceKeys[] = {"state_dir",       "fake_ipv4", "fake_ipv6",
                                        "default_network", "loopback",  "idle_timeout",
                                        "unrouted_exec",   "listen",    "handshake"};

// ---- small helpers ---------------------------------------------------------------------------

SourcePos PosOf(const std::string& file, const YAML::Node& n) {
  YAML::Mark m = n.Mark();
  if (m.is_null()) return SourcePos{file, 1, 1};
  return SourcePos{file, m.line + 1, m.column + 1};
}

Status ErrorAt(const SourcePos& pos, const std::string& problem) {
  return Status::Invalid(pos.ToString() + ": " + problem);
}

// A value quoted for a message, with control characters made visible.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s.substr(0, 80)) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  if (s.size() > 80) out += "...";
  return out + "\"";
}

std::string Join(const std::vector<std::string>& items, const char* sep = ", ") {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

bool HasControlChar(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// Levenshtein distance, for "did you mean" hints on misspelt keys.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string Suggestion(const std::string& key, const std::vector<std::string>& known) {
  const std::string* best = nullptr;
  size_t best_d = 3;  // only close matches
  for (const std::string& k : known) {
    size_t d = EditDistance(key, k);
    if (d < best_d) {
      best_d = d;
      best = &k;
    }
  }
  return best == nullptr ? "" : "; did you mean " + *best + "?";
}

// A decimal integer with no sign, spaces, exponent or radix prefix.
bool ParseDecimal(const std::string& s, long long* out) {
  if (s.empty() || s.size() > 18) return false;
  long long v = 0;
  size_t i = (s[0] == '-') ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = s[0] == '-' ? -v : v;
  return true;
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
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

// `path` joined to `base` when relative, lexically normalised, without a trailing slash.
std::string Resolve(const std::string& base, const std::string& path) {
  std::filesystem::path p(path);
  if (p.is_relative()) p = std::filesystem::path(base) / p;
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
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

// The keys of a mapping with their value nodes, in order; duplicates and non-scalar keys are
// errors (yaml-cpp keeps both copies of a repeated key and node[] silently returns the first).
struct Field {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};

Status Fields(const std::string& file, const YAML::Node& map, const std::string& context,
              std::vector<Field>* out) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (!it->first.IsScalar()) {
      return ErrorAt(PosOf(file, it->first), context + "keys must be plain names");
    }
    std::string key = it->first.Scalar();
    for (const Field& f : *out) {
      if (f.key == key) {
        return ErrorAt(PosOf(file, it->first), context + key + ": given twice (first at " +
                                                   PosOf(file, f.key_node).ToString() + ")");
      }
    }
    out->push_back(Field{key, it->first, it->second});
  }
  return Status::Ok();
}

// ---- network.* entries -----------------------------------------------------------------------

// Reads one network.* entry's fields; every error names the entry, its kind and the field.
class EntryReader {
 public:
  EntryReader(const std::string& file, const YAML::Node& node, std::string id, std::string kind)
      : file_(file), node_(node), id_(std::move(id)), kind_(std::move(kind)) {}

  Status Init() { return Fields(file_, node_, Prefix(), &fields_); }

  std::string Prefix() const { return "entry " + id_ + " (" + kind_ + "): "; }

  // An error at the field's value, or at the entry when the field is absent.
  Status Error(const std::string& field, const std::string& problem) const {
    const Field* f = Get(field);
    SourcePos pos = f == nullptr ? PosOf(file_, node_) : ValuePos(*f);
    return ErrorAt(pos, Prefix() + field + ": " + problem);
  }

  // Rejects keys other than the common entry keys and `allowed`.
  Status CheckKnown(std::initializer_list<const char*> allowed) const {
    std::vector<std::string> known(allowed.begin(), allowed.end());
    for (const Field& f : fields_) {
      bool ok = std::find(known.begin(), known.end(), f.key) != known.end() ||
                std::any_of(std::begin(kCommonEntryKeys), std::end(kCommonEntryKeys),
                            [&](const char* k) { return f.key == k; });
      if (!ok) {
        return ErrorAt(PosOf(file_, f.key_node), Prefix() + f.key + ": unknown field (known: " +
                                                     Join(known) + Suggestion(f.key, known) + ")");
      }
    }
    return Status::Ok();
  }

  // A string field; absent or null leaves `out` unchanged.
  Status String(const std::string& field, std::string* out,
                size_t max_len = kMaxStringBytes) const {
    const Field* f = Get(field);
    if (f == nullptr || f->value.IsNull()) return Status::Ok();
    if (!f->value.IsScalar()) return Error(field, "must be a string, not a " + TypeName(*f));
    const std::string& s = f->value.Scalar();
    if (s.size() > max_len) {
      return Error(field, "too long (" + std::to_string(s.size()) + " bytes, at most " +
                              std::to_string(max_len) +
                              (max_len == kMaxCredentialBytes ? " as in RFC 1929)" : ")"));
    }
    if (HasControlChar(s)) return Error(field, "must not contain control characters");
    *out = s;
    return Status::Ok();
  }

  Status Bool(const std::string& field, bool* out) const {
    const Field* f = Get(field);
    if (f == nullptr || f->value.IsNull()) return Status::Ok();
    bool b = false;
    if (!f->value.IsScalar() || !YAML::convert<bool>::decode(f->value, b)) {
      return Error(field, "must be true or false, not " + Shown(*f));
    }
    *out = b;
    return Status::Ok();
  }

  // host + port, with Wippy's messages ("network: host is required", "network: invalid port").
  Status HostPort(std::string* host, int* port) const {
    if (Status st = String("host", host, 255); !st.ok()) return st;
    if (host->empty()) return Error("host", "network: host is required");
    const Field* f = Get("port");
    if (f == nullptr || f->value.IsNull()) {
      return Error("port", "network: invalid port (port is required)");
    }
    long long p = 0;
    if (!f->value.IsScalar() || !ParseDecimal(f->value.Scalar(), &p)) {
      return Error("port", "network: invalid port (" + Shown(*f) + " is not a number)");
    }
    if (p < 1 || p > 65535) {
      return Error("port", "network: invalid port (" + f->value.Scalar() + " is not in 1..65535)");
    }
    *port = int(p);
    return Status::Ok();
  }

  // A duration: a number of seconds ("15", "1.5"), or a number with a unit: "500ms", "15s",
  // "2m". Must be more than 0 and at most 10 minutes.
  Status Duration(const std::string& field, int* out_ms) const {
    const Field* f = Get(field);
    if (f == nullptr || f->value.IsNull()) return Status::Ok();
    const char* kHint = " is not a duration (use seconds, or e.g. 500ms, 15s, 2m)";
    if (!f->value.IsScalar()) return Error(field, Shown(*f) + kHint);
    const std::string& s = f->value.Scalar();
    size_t digits = 0, dots = 0, i = 0;
    for (; i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.'); ++i) {
      (s[i] == '.' ? dots : digits)++;
    }
    std::string number = s.substr(0, i), unit = s.substr(i);
    double scale = unit.empty() || unit == "s" ? 1000 : unit == "ms" ? 1 : unit == "m" ? 60000 : 0;
    if (digits == 0 || dots > 1 || scale == 0) return Error(field, Quote(s) + kHint);
    double ms = std::strtod(number.c_str(), nullptr) * scale;
    if (ms < 1 || ms > kMaxConnectTimeoutMs) {
      return Error(field, s + " is out of range (more than 0, at most 10m)");
    }
    *out_ms = int(ms + 0.5);
    return Status::Ok();
  }

  bool Has(const std::string& field) const {
    const Field* f = Get(field);
    return f != nullptr && !f->value.IsNull();
  }

  // A mapping of scalar keys to scalar values (numbers and booleans are kept as written), in
  // file order; absent or null leaves `out` unchanged.
  Status StringMap(const std::string& field, std::vector<std::pair<std::string, std::string>>* out,
                   std::vector<SourcePos>* key_pos, std::vector<SourcePos>* value_pos) const {
    const Field* f = Get(field);
    if (f == nullptr || f->value.IsNull()) return Status::Ok();
    if (!f->value.IsMap()) return Error(field, "must be a mapping, not " + Shown(*f));
    std::vector<Field> items;
    if (Status st = Fields(file_, f->value, Prefix() + field + ".", &items); !st.ok()) return st;
    out->clear();
    for (const Field& item : items) {
      SourcePos pos = PosOf(file_, item.value.IsNull() ? item.key_node : item.value);
      if (!item.value.IsScalar()) {
        return ErrorAt(pos, Prefix() + field + "." + item.key + ": must be a single value");
      }
      if (HasControlChar(item.value.Scalar())) {
        return ErrorAt(pos,
                       Prefix() + field + "." + item.key + ": must not contain control characters");
      }
      out->emplace_back(item.key, item.value.Scalar());
      key_pos->push_back(PosOf(file_, item.key_node));
      value_pos->push_back(pos);
    }
    return Status::Ok();
  }

  SourcePos pos() const { return PosOf(file_, node_); }
  // Where `field`'s value is, or the entry's position when the field is absent.
  SourcePos FieldPos(const std::string& field) const {
    const Field* f = Get(field);
    return f == nullptr ? pos() : ValuePos(*f);
  }
  const std::string& file() const { return file_; }
  // The value of `field`, or nullptr when absent.
  const YAML::Node* Value(const std::string& field) const {
    const Field* f = Get(field);
    return f == nullptr ? nullptr : &f->value;
  }
  // An error at `node` (a value nested inside a field).
  Status ErrorIn(const YAML::Node& node, const std::string& path,
                 const std::string& problem) const {
    return ErrorAt(PosOf(file_, node), Prefix() + path + ": " + problem);
  }

 private:
  const Field* Get(const std::string& field) const {
    for (const Field& f : fields_) {
      if (f.key == field) return &f;
    }
    return nullptr;
  }

  // yaml-cpp gives a null value (`port:`) the mark of the next token; the key's is clearer.
  SourcePos ValuePos(const Field& f) const {
    return PosOf(file_, f.value.IsNull() ? f.key_node : f.value);
  }

  static std::string TypeName(const Field& f) {
    return f.value.IsMap() ? "mapping" : f.value.IsSequence() ? "list" : "value";
  }
  static std::string Shown(const Field& f) {
    return f.value.IsScalar() ? Quote(f.value.Scalar()) : "a " + TypeName(f);
  }

  const std::string& file_;
  YAML::Node node_;
  std::string id_;
  std::string kind_;
  std::vector<Field> fields_;
};

Status ParseSocks5(const EntryReader& r, Socks5Settings* s) {
  if (Status st = r.CheckKnown({"host", "port", "username", "password", "isolate_streams",
                                "connect_timeout", "remote_resolve"});
      !st.ok()) {
    return st;
  }
  if (Status st = r.HostPort(&s->host, &s->port); !st.ok()) return st;
  if (Status st = r.String("username", &s->username, kMaxCredentialBytes); !st.ok()) return st;
  if (Status st = r.String("password", &s->password, kMaxCredentialBytes); !st.ok()) return st;
  if (Status st = r.Bool("isolate_streams", &s->isolate_streams); !st.ok()) return st;
  if (Status st = r.Bool("remote_resolve", &s->remote_resolve); !st.ok()) return st;
  return r.Duration("connect_timeout", &s->connect_timeout_ms);
}

// `base_dir` resolves a relative state_dir (the directory of the file the entry is in).
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

// SAM splits command lines at spaces and `=`; a character that could end a token or start a
// quoted value must not appear in an option, or one option could smuggle in another.
bool SamTokenChar(char c, bool value) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
  if (c == '.' || c == '_' || c == '-') return true;
  return value && std::strchr(",:/+~@", c) != nullptr;
}

Status ParseI2p(const EntryReader& r, I2pSettings* s) {
  if (Status st = r.CheckKnown(
          {"host", "port", "session_name", "destination", "options", "connect_timeout"});
      !st.ok()) {
    return st;
  }
  if (Status st = r.HostPort(&s->host, &s->port); !st.ok()) return st;
  std::string name;
  if (Status st = r.String("session_name", &name, 64); !st.ok()) return st;
  if (r.Has("session_name")) {
    if (name.empty()) return r.Error("session_name", "must not be empty");
    for (char c : name) {
      if (!SamTokenChar(c, false)) {
        return r.Error("session_name", Quote(name) +
                                           " may hold only letters, digits, '.', '_' and '-' "
                                           "(it becomes part of SAM session IDs)");
      }
    }
    s->session_name = name;
  }
  std::string dest;
  if (Status st = r.String("destination", &dest); !st.ok()) return st;
  if (dest == "ephemeral") {
    s->destination = I2pDestination::kEphemeral;
  } else if (dest.empty() || dest == "persistent") {
    s->destination = I2pDestination::kPersistent;
  } else {
    return r.Error("destination", "must be persistent or ephemeral, not " + Quote(dest));
  }
  std::vector<SourcePos> key_pos, value_pos;
  if (Status st = r.StringMap("options", &s->options, &key_pos, &value_pos); !st.ok()) return st;
  for (size_t i = 0; i < s->options.size(); ++i) {
    const auto& [key, value] = s->options[i];
    const std::string where = r.Prefix() + "options." + key + ": ";
    for (char c : key) {
      if (!SamTokenChar(c, false)) {
        return ErrorAt(key_pos[i],
                       where + "the key may hold only letters, digits, '.', '_' and '-'");
      }
    }
    std::string upper;
    for (char c : key) upper += char(std::toupper(static_cast<unsigned char>(c)));
    if (upper == "STYLE" || upper == "ID" || upper == "DESTINATION") {
      return ErrorAt(key_pos[i], where + "set by via itself (use session_name and destination)");
    }
    if (value.empty()) return ErrorAt(value_pos[i], where + "must not be empty");
    for (char c : value) {
      if (!SamTokenChar(c, true)) {
        return ErrorAt(value_pos[i], where + Quote(value) +
                                         " may hold only letters, digits and . _ - , : / + ~ @");
      }
    }
  }
  return r.Duration("connect_timeout", &s->connect_timeout_ms);
}

// ---- via.program and security.policy -------------------------------------------------------

// A group name: non-empty, no spaces, no control characters.
Status GroupList(const EntryReader& r, const std::string& field, const YAML::Node& v,
                 std::vector<std::string>* out) {
  auto one = [&](const YAML::Node& n) -> Status {
    if (!n.IsScalar() || n.Scalar().empty()) {
      return r.ErrorIn(n, field, "each group must be a non-empty name");
    }
    const std::string& g = n.Scalar();
    if (g.find_first_of(" \t") != std::string::npos || HasControlChar(g)) {
      return r.ErrorIn(n, field, "group " + Quote(g) + " must not contain spaces");
    }
    out->push_back(g);
    return Status::Ok();
  };
  if (v.IsNull()) return Status::Ok();
  if (v.IsScalar()) return one(v);
  if (!v.IsSequence()) return r.ErrorIn(v, field, "must be a list of group names");
  for (const YAML::Node& n : v) {
    if (Status st = one(n); !st.ok()) return st;
  }
  return Status::Ok();
}

// "~/x" -> "$HOME/x".
std::string ExpandHome(const std::string& s) {
  if (s.rfind("~/", 0) != 0) return s;
  const char* home = std::getenv("HOME");
  if (home == nullptr || home[0] != '/') return s;
  std::string h = home;
  while (h.size() > 1 && h.back() == '/') h.pop_back();
  return h + s.substr(1);
}

// A string or a list of strings (Wippy writes `actions: "network.select"`).
Status StringOrList(const EntryReader& r, const std::string& path, const YAML::Node& v,
                    std::vector<std::string>* out, std::vector<std::string>* positions) {
  auto one = [&](const YAML::Node& n) -> Status {
    if (!n.IsScalar() || n.Scalar().empty()) {
      return r.ErrorIn(n, path, "each item must be a non-empty string");
    }
    if (HasControlChar(n.Scalar())) {
      return r.ErrorIn(n, path, "must not contain control characters");
    }
    out->push_back(n.Scalar());
    if (positions != nullptr) positions->push_back(PosOf(r.file(), n).ToString());
    return Status::Ok();
  };
  if (v.IsScalar()) return one(v);
  if (!v.IsSequence() || v.size() == 0) {
    return r.ErrorIn(v, path, "must be a string or a non-empty list of strings");
  }
  for (const YAML::Node& n : v) {
    if (Status st = one(n); !st.ok()) return st;
  }
  return Status::Ok();
}

Status ParseProgram(const EntryReader& r, ProgramRule* rule) {
  if (Status st = r.CheckKnown({"match", "network", "groups"}); !st.ok()) return st;
  const YAML::Node* match = r.Value("match");
  if (match == nullptr || match->IsNull()) {
    return r.Error("match", "required: a mapping with exe (a path or glob) and/or argv (a list)");
  }
  if (!match->IsMap()) {
    return r.ErrorIn(*match, "match", "must be a mapping with exe and/or argv");
  }
  std::vector<Field> mf;
  if (Status st = Fields(r.file(), *match, r.Prefix() + "match.", &mf); !st.ok()) return st;
  for (const Field& f : mf) {
    if (f.key == "exe") {
      if (!f.value.IsScalar() || f.value.Scalar().empty()) {
        return r.ErrorIn(f.value.IsNull() ? f.key_node : f.value, "match.exe",
                         "must be a path, a glob or a program name");
      }
      const std::string& e = f.value.Scalar();
      if (HasControlChar(e))
        return r.ErrorIn(f.value, "match.exe", "must not contain control characters");
      if (e == "~" || (e[0] == '~' && e.rfind("~/", 0) != 0)) {
        return r.ErrorIn(f.value, "match.exe", Quote(e) + ": only ~/ (your home) is expanded");
      }
      if (e.find('/') != std::string::npos && e[0] != '/' && e.rfind("~/", 0) != 0) {
        return r.ErrorIn(f.value, "match.exe",
                         Quote(e) +
                             " is relative; write an absolute path, ~/..., or a bare "
                             "program name (matched against the executable's base name)");
      }
      rule->exe = ExpandHome(e);
    } else if (f.key == "argv") {
      if (!f.value.IsSequence() || f.value.size() == 0) {
        return r.ErrorIn(f.value.IsNull() ? f.key_node : f.value, "match.argv",
                         "must be a non-empty list of globs (argv[0], argv[1], ...)");
      }
      for (const YAML::Node& n : f.value) {
        if (!n.IsScalar()) return r.ErrorIn(n, "match.argv", "each item must be a string (a glob)");
        if (HasControlChar(n.Scalar())) {
          return r.ErrorIn(n, "match.argv", "must not contain control characters");
        }
        rule->argv.push_back(ExpandHome(n.Scalar()));
      }
    } else {
      std::vector<std::string> known{"exe", "argv"};
      return r.ErrorIn(f.key_node, "match." + f.key,
                       "unknown field (known: exe, argv" + Suggestion(f.key, known) + ")");
    }
  }
  if (rule->exe.empty() && rule->argv.empty()) {
    return r.ErrorIn(*match, "match", "needs exe and/or argv");
  }
  if (Status st = r.String("network", &rule->network); !st.ok()) return st;
  if (const YAML::Node* n = r.Value("network"); n != nullptr && !n->IsNull()) {
    if (rule->network.empty())
      return r.Error("network", "must name an overlay (ns:name) or direct");
    rule->network_pos = PosOf(r.file(), *n).ToString();
  }
  if (const YAML::Node* g = r.Value("groups"); g != nullptr) {
    if (Status st = GroupList(r, "groups", *g, &rule->groups); !st.ok()) return st;
  }
  if (rule->network.empty() && rule->groups.empty()) {
    return r.Error("network",
                   "a program rule needs network and/or groups (it does nothing otherwise)");
  }
  return Status::Ok();
}

// Whether a security.policy entry concerns network.select (else it is Wippy's business only).
bool IsNetworkSelectPolicy(const YAML::Node& entry) {
  YAML::Node policy = entry["policy"];
  if (!policy || !policy.IsMap()) return false;
  for (auto it = policy.begin(); it != policy.end(); ++it) {
    if (!it->first.IsScalar()) continue;
    const std::string key = it->first.Scalar();
    // A misspelt `actions` key would silently disable a deny: treat close spellings as ours.
    if (key != "actions" && EditDistance(key, "actions") > 2) continue;
    const YAML::Node v = it->second;  // a copy: it->second lives in a temporary
    std::vector<YAML::Node> items;
    if (v.IsScalar()) items.push_back(v);
    if (v.IsSequence()) {
      for (const YAML::Node& n : v) items.push_back(n);
    }
    for (const YAML::Node& n : items) {
      if (n.IsScalar() && fnmatch(n.Scalar().c_str(), "network.select", 0) == 0) return true;
    }
  }
  return false;
}

Status ParsePolicy(const EntryReader& r, SecurityPolicy* p) {
  if (Status st = r.CheckKnown({"policy", "groups"}); !st.ok()) return st;
  const YAML::Node& policy = *r.Value("policy");
  std::vector<Field> pf;
  if (Status st = Fields(r.file(), policy, r.Prefix() + "policy.", &pf); !st.ok()) return st;
  bool have_resources = false, have_effect = false;
  const std::vector<std::string> known{"actions", "resources", "effect"};
  for (const Field& f : pf) {
    const std::string path = "policy." + f.key;
    const YAML::Node& at = f.value.IsNull() ? f.key_node : f.value;
    if (f.key == "actions") {
      if (Status st = StringOrList(r, path, f.value, &p->actions, nullptr); !st.ok()) return st;
    } else if (f.key == "resources") {
      if (f.value.IsNull()) return r.ErrorIn(at, path, "must be \"*\", an overlay id, or a list");
      if (Status st = StringOrList(r, path, f.value, &p->resources, &p->resource_pos); !st.ok()) {
        return st;
      }
      have_resources = true;
    } else if (f.key == "effect") {
      std::string e = f.value.IsScalar() ? f.value.Scalar() : "";
      if (e != "allow" && e != "deny") {
        return r.ErrorIn(at, path,
                         "must be allow or deny, not " +
                             (f.value.IsScalar() ? Quote(e) : std::string("a list")));
      }
      p->effect = e == "allow" ? PolicyEffect::kAllow : PolicyEffect::kDeny;
      have_effect = true;
    } else if (f.key == "conditions") {
      return r.ErrorIn(f.key_node, path,
                       "via cannot evaluate conditions, so a network.select policy must not "
                       "have them (split it into policies without conditions)");
    } else {
      return r.ErrorIn(f.key_node, path,
                       "unknown field (known: " + Join(known) + Suggestion(f.key, known) + ")");
    }
  }
  if (p->actions.empty()) return r.ErrorIn(policy, "policy.actions", "required");
  if (!have_resources) {
    return r.ErrorIn(policy, "policy.resources", "required: \"*\", an overlay id, or a list");
  }
  if (!have_effect) return r.ErrorIn(policy, "policy.effect", "required: allow or deny");
  if (const YAML::Node* g = r.Value("groups"); g != nullptr) {
    if (Status st = GroupList(r, "groups", *g, &p->groups); !st.ok()) return st;
  }
  return Status::Ok();
}

// ---- network_service -------------------------------------------------------------------------

// Checks a fake-address pool: "a.b.c.d/n" (n in 8..24) or "x::/n" (n in 48..112), host bits
// zero, and not a loopback, multicast or otherwise reserved range. Returns the problem, or "".
std::string PoolProblem(const std::string& cidr, int family) {
  const bool v4 = family == AF_INET;
  const int lo = v4 ? 8 : 48, hi = v4 ? 24 : 112;
  const std::string expected = std::string(v4 ? "an IPv4" : "an IPv6") +
                               " network with a prefix between /" + std::to_string(lo) + " and /" +
                               std::to_string(hi);
  auto slash = cidr.find('/');
  long long prefix = -1;
  unsigned char b[16] = {};
  if (slash == std::string::npos || !ParseDecimal(cidr.substr(slash + 1), &prefix) ||
      inet_pton(family, cidr.substr(0, slash).c_str(), b) != 1) {
    return Quote(cidr) + " is not " + expected;
  }
  if (prefix < lo || prefix > hi) return Quote(cidr) + " is not " + expected;
  const int bytes = v4 ? 4 : 16;
  for (int bit = int(prefix); bit < bytes * 8; ++bit) {
    if (b[bit / 8] & (0x80 >> (bit % 8))) {
      for (int z = int(prefix); z < bytes * 8; ++z) b[z / 8] &= uint8_t(~(0x80 >> (z % 8)));
      char text[INET6_ADDRSTRLEN];
      inet_ntop(family, b, text, sizeof text);
      return Quote(cidr) + " has host bits set (did you mean " + text + "/" +
             std::to_string(prefix) + "?)";
    }
  }
  if (v4) {
    if (b[0] == 127) return Quote(cidr) + " is a loopback range";
    if (b[0] >= 224 && b[0] <= 239) return Quote(cidr) + " is a multicast range";
    if (b[0] == 0 || b[0] >= 240) return Quote(cidr) + " is a reserved range";
  } else {
    static const unsigned char kZero[12] = {};
    if (b[0] == 0xff) return Quote(cidr) + " is a multicast range";
    if (std::memcmp(b, kZero, 12) == 0) {
      return Quote(cidr) + " is a loopback or reserved range (it holds ::1 or ::)";
    }
    if (std::memcmp(b, kZero, 10) == 0 && b[10] == 0xff && b[11] == 0xff) {
      return Quote(cidr) + " is the IPv4-mapped range";
    }
  }
  return "";
}

// Reads a `network_service:` mapping found in `file`; relative paths are joined to `base_dir`.
Status ParseService(const std::string& file, const YAML::Node& node, const std::string& base_dir,
                    NetworkService* svc, bool* state_dir_set) {
  if (node.IsNull()) return Status::Ok();
  if (!node.IsMap()) return ErrorAt(PosOf(file, node), "network_service: must be a mapping");
  std::vector<Field> fields;
  if (Status st = Fields(file, node, "network_service.", &fields); !st.ok()) return st;
  std::vector<std::string> known(std::begin(kServiceKeys), std::end(kServiceKeys));
  for (const Field& f : fields) {
    if (std::find(known.begin(), known.end(), f.key) == known.end()) {
      return ErrorAt(PosOf(file, f.key_node), "network_service." + f.key +
                                                  ": unknown setting (known: " + Join(known) +
                                                  Suggestion(f.key, known) + ")");
    }
    SourcePos pos = PosOf(file, f.value.IsNull() ? f.key_node : f.value);
    std::string where = "network_service." + f.key + ": ";
    if (f.value.IsNull()) continue;  // `key:` with no value keeps the default
    if (!f.value.IsScalar()) return ErrorAt(pos, where + "must be a single value");
    const std::string& s = f.value.Scalar();
    if (HasControlChar(s)) return ErrorAt(pos, where + "must not contain control characters");
    if (f.key == "state_dir") {
      // Wippy: an explicit "" means no base directory (each driver uses its own default).
      svc->state_dir = s.empty() ? "" : Resolve(base_dir, s);
      *state_dir_set = true;
    } else if (f.key == "default_network") {
      svc->default_network = s;
      svc->default_network_pos = pos;
    } else if (f.key == "fake_ipv4" || f.key == "fake_ipv6") {
      std::string problem = PoolProblem(s, f.key == "fake_ipv4" ? AF_INET : AF_INET6);
      if (!problem.empty()) return ErrorAt(pos, where + problem);
      (f.key == "fake_ipv4" ? svc->fake_ipv4 : svc->fake_ipv6) = s;
    } else if (f.key == "loopback") {
      if (s == "direct") {
        svc->loopback = LoopbackPolicy::kDirect;
      } else if (s == "overlay") {
        svc->loopback = LoopbackPolicy::kOverlay;
      } else if (s == "refuse") {
        svc->loopback = LoopbackPolicy::kRefuse;
      } else {
        return ErrorAt(pos, where + "must be direct, overlay or refuse, not " + Quote(s));
      }
    } else if (f.key == "listen") {
      if (s == "overlay") {
        svc->listen = ListenPolicy::kOverlay;
      } else if (s == "local") {
        svc->listen = ListenPolicy::kLocal;
      } else if (s == "refuse") {
        svc->listen = ListenPolicy::kRefuse;
      } else {
        return ErrorAt(pos, where + "must be overlay, local or refuse, not " + Quote(s));
      }
    } else if (f.key == "handshake") {
      if (s != "program" && s != "broker") {
        return ErrorAt(pos, where + "must be program or broker, not " + Quote(s));
      }
      svc->handshake_in_program = s == "program";
    } else if (f.key == "unrouted_exec") {
      if (s != "refuse" && s != "allow") {
        return ErrorAt(pos, where + "must be refuse or allow, not " + Quote(s));
      }
      svc->unrouted_exec_allowed = s == "allow";
    } else if (f.key == "idle_timeout") {
      long long n = -1;
      if (!ParseDecimal(s, &n) || n < 0 || n > kMaxIdleTimeoutS) {
        return ErrorAt(pos, where + "must be a whole number of seconds from 0 to " +
                                std::to_string(kMaxIdleTimeoutS) + ", not " + Quote(s));
      }
      svc->idle_timeout_s = int(n);
    }
  }
  return Status::Ok();
}

// ---- documents -------------------------------------------------------------------------------

// State shared by every file of one load.
struct Loader {
  Config cfg;
  SourcePos service_pos;  // where network_service was found (file empty: not yet)
  bool state_dir_set = false;
  std::string base_dir;  // of the document being parsed: resolves relative paths in entries
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the text of every file read

  void AddText(std::string_view text) {
    for (unsigned char c : text) {
      hash ^= c;
      hash *= 1099511628211ull;
    }
    hash ^= 0xff;  // file boundary
    hash *= 1099511628211ull;
  }
};

Status SyntaxError(const std::string& file, const YAML::Exception& e) {
  if (e.mark.is_null()) return Status::Invalid(file + ": YAML syntax error: " + e.msg);
  return ErrorAt(SourcePos{file, e.mark.line + 1, e.mark.column + 1},
                 "YAML syntax error: " + e.msg);
}

// Records where each document starts; ignores everything else.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// Parses `text` as YAML into `*root` (null for an empty document).
//
// YAML::LoadAll is not used: in yaml-cpp up to 0.8 it loops forever, allocating, on a stray
// token it cannot place (a lone "," is enough; jbeder/yaml-cpp#1040, fixed by #1319). Instead a
// bounded pass counts documents, and treats a "next document" that starts where the previous
// one did (the parser made no progress) as the syntax error it is.
Status LoadYaml(std::string_view text, const std::string& file, YAML::Node* root) {
  const std::string input(text);
  try {
    std::istringstream in(input);
    YAML::Parser parser(in);
    DocumentStarts docs;
    while (docs.starts.size() < 3 && parser.HandleNextDocument(docs)) {
    }
    for (size_t i = 1; i < docs.starts.size(); ++i) {
      const YAML::Mark& m = docs.starts[i];
      if (m.pos != docs.starts[i - 1].pos) continue;
      char c = m.pos >= 0 && size_t(m.pos) < input.size() ? input[size_t(m.pos)] : '?';
      return ErrorAt(SourcePos{file, m.line + 1, m.column + 1},
                     "YAML syntax error: unexpected " + Quote(std::string(1, c)));
    }
    if (docs.starts.size() > 1) {
      const YAML::Mark& m = docs.starts[1];
      return ErrorAt(SourcePos{file, m.line + 1, m.column + 1},
                     "only one YAML document per file is supported");
    }
    *root = YAML::Load(input);
  } catch (const YAML::Exception& e) {
    return SyntaxError(file, e);
  }
  if (root->IsDefined() && !root->IsNull() && !root->IsMap()) {
    return ErrorAt(PosOf(file, *root), "expected a mapping with version, namespace and entries");
  }
  return Status::Ok();
}

Status ParseServiceKey(const std::string& file, const YAML::Node& root, const std::string& base_dir,
                       Loader* ld) {
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!it->first.IsScalar() || it->first.Scalar() != "network_service") continue;
    if (!ld->service_pos.file.empty()) {
      return ErrorAt(PosOf(file, it->first),
                     "network_service: given twice (first at " + ld->service_pos.ToString() + ")");
    }
    ld->service_pos = PosOf(file, it->first);
    if (Status st = ParseService(file, it->second, base_dir, &ld->cfg.service, &ld->state_dir_set);
        !st.ok()) {
      return st;
    }
  }
  return Status::Ok();
}

// A via.program entry, or a security.policy entry about network.select.
Status ParseRuleEntry(const std::string& file, const YAML::Node& name, const std::string& id,
                      const std::string& k, const YAML::Node& e, Loader* ld) {
  EntryReader r(file, e, id, k);
  if (Status st = r.Init(); !st.ok()) return st;
  if (name.Scalar().find_first_of(": \t") != std::string::npos) {
    return ErrorAt(PosOf(file, name), r.Prefix() + "name: must not contain ':' or spaces");
  }
  SourcePos pos = r.pos();
  auto duplicate = [&](const std::string& other_id, const std::string& other_where) -> Status {
    if (other_id != id) return Status::Ok();
    return ErrorAt(PosOf(file, name), r.Prefix() + "name: duplicate entry " + id +
                                          " (first defined at " + other_where + ")");
  };
  for (const ProgramRule& o : ld->cfg.programs) {
    if (Status st =
            duplicate(o.id, o.file + ":" + std::to_string(o.line) + ":" + std::to_string(o.column));
        !st.ok()) {
      return st;
    }
  }
  for (const SecurityPolicy& o : ld->cfg.policies) {
    if (Status st =
            duplicate(o.id, o.file + ":" + std::to_string(o.line) + ":" + std::to_string(o.column));
        !st.ok()) {
      return st;
    }
  }
  if (k == "via.program") {
    ProgramRule rule;
    rule.id = id;
    rule.file = pos.file;
    rule.line = pos.line;
    rule.column = pos.column;
    if (Status st = ParseProgram(r, &rule); !st.ok()) return st;
    ld->cfg.programs.push_back(std::move(rule));
  } else {
    SecurityPolicy p;
    p.id = id;
    p.file = pos.file;
    p.line = pos.line;
    p.column = pos.column;
    if (Status st = ParsePolicy(r, &p); !st.ok()) return st;
    ld->cfg.policies.push_back(std::move(p));
  }
  return Status::Ok();
}

Status ParseEntry(const std::string& file, const std::string& ns, const YAML::Node& e, Loader* ld) {
  if (!e.IsMap()) return ErrorAt(PosOf(file, e), "entries: each entry must be a mapping");
  YAML::Node name = e["name"], kind = e["kind"];
  if (!name || name.IsNull() || !name.IsScalar() || name.Scalar().empty()) {
    return ErrorAt(PosOf(file, name && !name.IsNull() ? name : e),
                   "entry: name: required (a non-empty string)");
  }
  std::string id = ns + ":" + name.Scalar();
  if (!kind || kind.IsNull() || !kind.IsScalar() || kind.Scalar().empty()) {
    return ErrorAt(PosOf(file, kind && !kind.IsNull() ? kind : e),
                   "entry " + id + ": kind: required (a non-empty string)");
  }
  const std::string k = kind.Scalar();
  if (k == "via.program" || (k == "security.policy" && IsNetworkSelectPolicy(e))) {
    return ParseRuleEntry(file, name, id, k, e, ld);
  }
  if (k.rfind("via.", 0) == 0) {
    return ErrorAt(PosOf(file, kind), "entry " + id + " (" + k + "): kind: unsupported via kind: " +
                                          k + " (supported: via.program)");
  }
  if (k.rfind("network.", 0) != 0) {
    ++ld->cfg.skipped_entries;  // process.host, http.service, ...: not via's business
    return Status::Ok();
  }
  EntryReader r(file, e, id, k);
  if (Status st = r.Init(); !st.ok()) return st;
  if (name.Scalar().find_first_of(": \t") != std::string::npos) {
    return ErrorAt(PosOf(file, name), r.Prefix() + "name: must not contain ':' or spaces");
  }
  Overlay o;
  o.id = id;
  o.name = name.Scalar();
  o.ns = ns;
  o.kind_name = k;
  o.pos = r.pos();
  Status st;
  if (k == "network.socks5") {
    o.kind = OverlayKind::kSocks5;
    st = ParseSocks5(r, &o.socks5);
  } else if (k == "network.tailscale") {
    o.kind = OverlayKind::kTailscale;
    st = ParseTailscale(r, ld->base_dir, &o.tailscale);
  } else if (k == "network.i2p") {
    o.kind = OverlayKind::kI2p;
    st = ParseI2p(r, &o.i2p);
  } else {
    return ErrorAt(PosOf(file, kind), r.Prefix() + "kind: unsupported network kind: " + k +
                                          " (supported: network.socks5, network.tailscale, "
                                          "network.i2p)");
  }
  if (!st.ok()) return st;
  for (const Overlay& other : ld->cfg.overlays) {
    if (other.id == id) {
      return ErrorAt(PosOf(file, name), r.Prefix() + "name: duplicate overlay " + id +
                                            " (first defined at " + other.pos.ToString() + ")");
    }
  }
  ld->cfg.overlays.push_back(std::move(o));
  return Status::Ok();
}

// Parses one registry file: its entries, and a top-level network_service if it has one.
Status ParseDocument(std::string_view text, const std::string& file, const std::string& base_dir,
                     Loader* ld) {
  YAML::Node root;
  if (Status st = LoadYaml(text, file, &root); !st.ok()) return st;
  try {
    if (!root.IsDefined() || root.IsNull()) return Status::Ok();
    std::vector<Field> top;
    if (Status st = Fields(file, root, "", &top); !st.ok()) return st;
    if (Status st = ParseServiceKey(file, root, base_dir, ld); !st.ok()) return st;
    YAML::Node version = root["version"];
    if (version && !version.IsNull() && !version.IsScalar()) {
      return ErrorAt(PosOf(file, version), "version: must be a string such as \"1.0\"");
    }
    YAML::Node entries = root["entries"];
    if (!entries || entries.IsNull()) return Status::Ok();
    if (!entries.IsSequence()) return ErrorAt(PosOf(file, entries), "entries: must be a list");
    ld->base_dir = base_dir;
    if (entries.size() == 0) return Status::Ok();
    YAML::Node nsn = root["namespace"];
    if (!nsn || nsn.IsNull() || !nsn.IsScalar() || nsn.Scalar().empty()) {
      return ErrorAt(PosOf(file, nsn && !nsn.IsNull() ? nsn : root),
                     "namespace: required (a non-empty string) when the file has entries");
    }
    const std::string ns = nsn.Scalar();
    if (ns.find_first_of(": \t") != std::string::npos || HasControlChar(ns)) {
      return ErrorAt(PosOf(file, nsn), "namespace: must not contain ':' or spaces");
    }
    for (const YAML::Node& e : entries) {
      if (Status st = ParseEntry(file, ns, e, ld); !st.ok()) return st;
    }
  } catch (const YAML::Exception& e) {
    return SyntaxError(file, e);
  } catch (const std::exception& e) {
    return Status::Invalid(file + ": " + e.what());
  }
  return Status::Ok();
}

// Reads only `network_service:` from a Wippy `.wippy.yaml`; its other keys are Wippy's own.
Status ParseWippyYaml(std::string_view text, const std::string& file, Loader* ld) {
  YAML::Node root;
  if (Status st = LoadYaml(text, file, &root); !st.ok()) return st;
  try {
    if (!root.IsDefined() || root.IsNull()) return Status::Ok();
    return ParseServiceKey(file, root, DirName(file), ld);
  } catch (const YAML::Exception& e) {
    return SyntaxError(file, e);
  } catch (const std::exception& e) {
    return Status::Invalid(file + ": " + e.what());
  }
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

// Checks that span files, once everything is loaded.
Status Finish(const std::string& config_dir, Loader* ld) {
  NetworkService& svc = ld->cfg.service;
  if (!ld->state_dir_set) svc.state_dir = Resolve(config_dir, ".wippy/net");
  if (!svc.default_network.empty() && svc.default_network != "direct") {
    const Overlay* o = ld->cfg.Find(svc.default_network);
    if (o == nullptr) {
      std::vector<std::string> known;
      for (const Overlay& ov : ld->cfg.overlays) known.push_back(ov.id);
      return ErrorAt(svc.default_network_pos, "network_service.default_network: unknown overlay " +
                                                  Quote(svc.default_network) + " (known: " +
                                                  (known.empty() ? "none" : Join(known)) + ")");
    }
    svc.default_network = o->id;  // a bare unique name becomes "ns:name"
  }
  auto known_overlays = [&] {
    std::vector<std::string> known;
    for (const Overlay& ov : ld->cfg.overlays) known.push_back(ov.id);
    return known.empty() ? std::string("none") : Join(known);
  };
  auto pos_of = [](const std::string& where) { return where; };
  for (ProgramRule& rule : ld->cfg.programs) {
    if (rule.network.empty() || rule.network == "direct") continue;
    const Overlay* o = ld->cfg.Find(rule.network);
    if (o == nullptr) {
      return Status::Invalid(pos_of(rule.network_pos) + ": entry " + rule.id +
                             " (via.program): network: unknown overlay " + Quote(rule.network) +
                             " (known: " + known_overlays() + "; or direct)");
    }
    rule.network = o->id;
  }
  for (SecurityPolicy& p : ld->cfg.policies) {
    for (size_t i = 0; i < p.resources.size(); ++i) {
      std::string& res = p.resources[i];
      if (res == "*" || res == "direct" || res.find_first_of("*?[") != std::string::npos) continue;
      const Overlay* o = ld->cfg.Find(res);
      if (o == nullptr) {
        return Status::Invalid(p.resource_pos[i] + ": entry " + p.id +
                               " (security.policy): policy.resources: unknown overlay " +
                               Quote(res) + " (known: " + known_overlays() +
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
