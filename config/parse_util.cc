// Helpers shared by the parts of the config loader (config/parse_util.h).
#include "config/parse_util.h"

#include <limits.h>

#include <cstdio>
#include <filesystem>

namespace via::config::detail {

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

}  // namespace via::config::detail
