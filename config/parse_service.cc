// `network_service:` settings (a top-level key of any config file, or in .wippy.yaml).
#include <arpa/inet.h>

#include <cstring>

#include "config/parse_util.h"

namespace via::config::detail {

namespace {

constexpr int kMaxIdleTimeoutS = 24 * 60 * 60;
constexpr const char* kServiceKeys[] = {
    "state_dir",     "fake_ipv4", "fake_ipv6", "default_network", "loopback",      "idle_timeout",
    "unrouted_exec", "listen",    "handshake", "strict",          "default_routes"};

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

// `s` as the value of the first of `choices` it names; else "must be a, b or c, not s".
template <typename T>
Status OneOf(const SourcePos& pos, const std::string& where, const std::string& s,
             std::initializer_list<std::pair<const char*, T>> choices, T* out) {
  std::string names;
  size_t i = 0;
  for (const auto& [name, value] : choices) {
    if (s == name) {
      *out = value;
      return Status::Ok();
    }
    if (i > 0) names += i + 1 == choices.size() ? " or " : ", ";
    names += name;
    ++i;
  }
  return ErrorAt(pos, where + "must be " + names + ", not " + Quote(s));
}

// One setting, `key: s` (a single value without control characters) at `pos`.
Status ApplySetting(const std::string& key, const std::string& s, const SourcePos& pos,
                    const std::string& base_dir, NetworkService* svc, bool* state_dir_set) {
  const std::string where = "network_service." + key + ": ";
  if (key == "state_dir") {
    // Wippy: an explicit "" means no base directory (each overlay uses its own default).
    svc->state_dir = s.empty() ? "" : Resolve(base_dir, s);
    *state_dir_set = true;
  } else if (key == "default_network") {
    svc->default_network = s;
    svc->default_network_pos = pos;
  } else if (key == "fake_ipv4" || key == "fake_ipv6") {
    std::string problem = PoolProblem(s, key == "fake_ipv4" ? AF_INET : AF_INET6);
    if (!problem.empty()) return ErrorAt(pos, where + problem);
    (key == "fake_ipv4" ? svc->fake_ipv4 : svc->fake_ipv6) = s;
  } else if (key == "loopback") {
    return OneOf(pos, where, s,
                 {{"direct", LoopbackPolicy::kDirect},
                  {"overlay", LoopbackPolicy::kOverlay},
                  {"refuse", LoopbackPolicy::kRefuse}},
                 &svc->loopback);
  } else if (key == "listen") {
    return OneOf(pos, where, s,
                 {{"overlay", ListenPolicy::kOverlay},
                  {"local", ListenPolicy::kLocal},
                  {"refuse", ListenPolicy::kRefuse}},
                 &svc->listen);
  } else if (key == "handshake") {
    return OneOf(pos, where, s, {{"program", true}, {"broker", false}}, &svc->handshake_in_program);
  } else if (key == "default_routes") {
    return OneOf(pos, where, s, {{"true", true}, {"false", false}}, &svc->default_routes);
  } else if (key == "strict") {
    return OneOf(pos, where, s, {{"false", false}, {"true", true}}, &svc->strict);
  } else if (key == "unrouted_exec") {
    int v = 0;
    Status st = OneOf(pos, where, s, {{"refuse", 0}, {"allow", 1}, {"strict", 2}}, &v);
    svc->unrouted_exec_allowed = v == 1;
    svc->unrouted_exec_strict = v == 2;
    return st;
  } else if (key == "idle_timeout") {
    long long n = -1;
    if (!ParseDecimal(s, &n) || n < 0 || n > kMaxIdleTimeoutS) {
      return ErrorAt(pos, where + "must be a whole number of seconds from 0 to " +
                              std::to_string(kMaxIdleTimeoutS) + ", not " + Quote(s));
    }
    svc->idle_timeout_s = int(n);
  }
  return Status::Ok();
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
    if (Status st = ApplySetting(f.key, s, pos, base_dir, svc, state_dir_set); !st.ok()) {
      return st;
    }
  }
  return Status::Ok();
}

}  // namespace

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

}  // namespace via::config::detail
