// Internal to config/: the helpers the parts of the loader share (positions and messages, the
// strict field reader for registry entries, the state of one load) and the parts' entry points.
// Not for use outside config/; the public API is config/config.h.
#pragma once

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"

namespace via::config::detail {

constexpr size_t kMaxFileBytes = 1 << 20;
constexpr size_t kMaxCredentialBytes = 255;  // RFC 1929: one length byte each
constexpr size_t kMaxStringBytes = 4096;
constexpr int kMaxConnectTimeoutMs = 10 * 60 * 1000;
constexpr int kMaxIdleTimeoutS = 24 * 60 * 60;
constexpr const char* kCommonEntryKeys[] = {"name", "kind", "meta", "lifecycle", "description"};
constexpr const char* kServiceKeys[] = {"state_dir",       "fake_ipv4", "fake_ipv6",
                                        "default_network", "loopback",  "idle_timeout",
                                        "unrouted_exec",   "listen",    "handshake"};

SourcePos PosOf(const std::string& file, const YAML::Node& n);
Status ErrorAt(const SourcePos& pos, const std::string& problem);
// A value quoted for a message, with control characters made visible.
std::string Quote(std::string_view s);
std::string Join(const std::vector<std::string>& items, const char* sep = ", ");
bool HasControlChar(std::string_view s);
// Levenshtein distance, for "did you mean" hints on misspelt keys.
size_t EditDistance(std::string_view a, std::string_view b);
// "; did you mean KEY?" for the closest of `known`, or "".
std::string Suggestion(const std::string& key, const std::vector<std::string>& known);
// A decimal integer with no sign, spaces, exponent or radix prefix.
bool ParseDecimal(const std::string& s, long long* out);
std::string DirName(const std::string& path);
// `path` joined to `base` when relative, lexically normalised, without a trailing slash.
std::string Resolve(const std::string& base, const std::string& path);

// The keys of a mapping with their value nodes, in order; duplicates and non-scalar keys are
// errors (yaml-cpp keeps both copies of a repeated key and node[] silently returns the first).
struct Field {
  std::string key;
  YAML::Node key_node;
  YAML::Node value;
};

Status Fields(const std::string& file, const YAML::Node& map, const std::string& context,
              std::vector<Field>* out);

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

// ---- the parts -------------------------------------------------------------------------------

// config/document.cc
// Parses one registry file: its entries, and a top-level network_service if it has one.
Status ParseDocument(std::string_view text, const std::string& file, const std::string& base_dir,
                     Loader* ld);
// Reads only `network_service:` from a Wippy `.wippy.yaml`; its other keys are Wippy's own.
Status ParseWippyYaml(std::string_view text, const std::string& file, Loader* ld);

// config/parse_socks5.cc, parse_i2p.cc, parse_tailscale.cc: one network.* kind each.
Status ParseSocks5(const EntryReader& r, Socks5Settings* s);
Status ParseI2p(const EntryReader& r, I2pSettings* s);
// `base_dir` resolves a relative state_dir (the directory of the file the entry is in).
Status ParseTailscale(const EntryReader& r, const std::string& base_dir, TailscaleSettings* s);
// Refuses two network.tailscale entries in one state directory (once everything is loaded).
Status CheckTailscaleStateDirs(const Config& cfg);

// config/parse_service.cc: every top-level `network_service:` key of `root`.
Status ParseServiceKey(const std::string& file, const YAML::Node& root, const std::string& base_dir,
                       Loader* ld);

// config/parse_rules.cc
// Whether a security.policy entry concerns network.select (else it is Wippy's business only).
bool IsNetworkSelectPolicy(const YAML::Node& entry);
// A via.program entry, or a security.policy entry about network.select.
Status ParseRuleEntry(const std::string& file, const YAML::Node& name, const std::string& id,
                      const std::string& k, const YAML::Node& e, Loader* ld);

}  // namespace via::config::detail
