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

constexpr size_t kMaxCredentialBytes = 255;  // RFC 1929: one length byte each
constexpr size_t kMaxStringBytes = 4096;

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
    return ErrorAt(FieldPos(field), Prefix() + field + ": " + problem);
  }

  // Rejects keys other than the common entry keys and `allowed`.
  Status CheckKnown(std::initializer_list<const char*> allowed) const;

  // A string field; absent or null leaves `out` unchanged.
  Status String(const std::string& field, std::string* out, size_t max_len = kMaxStringBytes) const;

  Status Bool(const std::string& field, bool* out) const;

  // host + port, with Wippy's messages ("network: host is required", "network: invalid port").
  Status HostPort(std::string* host, int* port) const;

  // A duration: a number of seconds ("15", "1.5"), or a number with a unit: "500ms", "15s",
  // "2m". Must be more than 0 and at most 10 minutes.
  Status Duration(const std::string& field, int* out_ms) const;

  bool Has(const std::string& field) const {
    const Field* f = Get(field);
    return f != nullptr && !f->value.IsNull();
  }

  // A mapping of scalar keys to scalar values (numbers and booleans are kept as written), in
  // file order; absent or null leaves `out` unchanged.
  Status StringMap(const std::string& field, std::vector<std::pair<std::string, std::string>>* out,
                   std::vector<SourcePos>* key_pos, std::vector<SourcePos>* value_pos) const;

  SourcePos pos() const { return PosOf(file_, node_); }
  // Where `field`'s value is, or the entry's position when the field is absent.
  SourcePos FieldPos(const std::string& field) const {
    const Field* f = Get(field);
    return f == nullptr ? pos() : ValuePos(*f);
  }
  const std::string& file() const { return file_; }
  const std::string& id() const { return id_; }
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

// Reads an entry's fields (`r.Init()`) and checks its name, the `name` node of the entry.
Status InitEntry(const YAML::Node& name, EntryReader* r);

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
