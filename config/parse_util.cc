// Helpers shared by the parts of the config loader (config/parse_util.h).
#include "config/parse_util.h"

#include <limits.h>

#include <cstdio>
#include <filesystem>

namespace via::config::detail {

namespace {

constexpr int kMaxConnectTimeoutMs = 10 * 60 * 1000;
constexpr const char* kCommonEntryKeys[] = {"name", "kind", "meta", "lifecycle", "description"};

}  // namespace

SourcePos PosOf(const std::string& file, const YAML::Node& n) {
  YAML::Mark m = n.Mark();
  if (m.is_null()) return SourcePos{file, 1, 1};
  return SourcePos{file, m.line + 1, m.column + 1};
}

Status ErrorAt(const SourcePos& pos, const std::string& problem) {
  return Status::Invalid(pos.ToString() + ": " + problem);
}

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

std::string Join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

bool HasControlChar(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

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

std::string Resolve(const std::string& base, const std::string& path) {
  std::filesystem::path p(path);
  if (p.is_relative()) p = std::filesystem::path(base) / p;
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

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

Status InitEntry(const YAML::Node& name, EntryReader* r) {
  if (Status st = r->Init(); !st.ok()) return st;
  if (name.Scalar().find_first_of(": \t") != std::string::npos) {
    return ErrorAt(PosOf(r->file(), name), r->Prefix() + "name: must not contain ':' or spaces");
  }
  return Status::Ok();
}

Status EntryReader::CheckKnown(std::initializer_list<const char*> allowed) const {
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

Status EntryReader::String(const std::string& field, std::string* out, size_t max_len) const {
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

Status EntryReader::Bool(const std::string& field, bool* out) const {
  const Field* f = Get(field);
  if (f == nullptr || f->value.IsNull()) return Status::Ok();
  bool b = false;
  if (!f->value.IsScalar() || !YAML::convert<bool>::decode(f->value, b)) {
    return Error(field, "must be true or false, not " + Shown(*f));
  }
  *out = b;
  return Status::Ok();
}

Status EntryReader::HostPort(std::string* host, int* port) const {
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

Status EntryReader::Duration(const std::string& field, int* out_ms) const {
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

Status EntryReader::StringMap(const std::string& field,
                              std::vector<std::pair<std::string, std::string>>* out,
                              std::vector<SourcePos>* key_pos,
                              std::vector<SourcePos>* value_pos) const {
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

}  // namespace via::config::detail
