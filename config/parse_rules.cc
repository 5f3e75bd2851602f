// `kind: via.program` rules and `security.policy` entries about network.select.
#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "config/parse_util.h"

namespace via::config::detail {

namespace {

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
  if (Status st = r.CheckKnown({"match", "network", "groups", "strict"}); !st.ok()) return st;
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
      return r.Error("network", "must name an overlay (ns:name), direct or none");
    rule->network_pos = PosOf(r.file(), *n).ToString();
  }
  if (const YAML::Node* g = r.Value("groups"); g != nullptr) {
    if (Status st = GroupList(r, "groups", *g, &rule->groups); !st.ok()) return st;
  }
  if (Status st = r.Bool("strict", &rule->strict); !st.ok()) return st;
  if (rule->network.empty() && rule->groups.empty() && !rule->strict) {
    return r.Error("network",
                   "a program rule needs network, groups and/or strict (it does nothing "
                   "otherwise)");
  }
  return Status::Ok();
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

// `kind: via.route`: match {name | cidr, port?}, network (an overlay, direct or block; the
// overlay is checked once every file is loaded).
Status ParseRoute(const EntryReader& r, Route* route) {
  if (Status st = r.CheckKnown({"match", "network"}); !st.ok()) return st;
  const YAML::Node* match = r.Value("match");
  if (match == nullptr || match->IsNull()) {
    return r.Error("match", "required: a mapping with name (a glob) or cidr, and optionally port");
  }
  if (!match->IsMap()) {
    return r.ErrorIn(*match, "match", "must be a mapping with name (a glob) or cidr, and port");
  }
  std::vector<Field> mf;
  if (Status st = Fields(r.file(), *match, r.Prefix() + "match.", &mf); !st.ok()) return st;
  const Field* name = nullptr;
  const Field* cidr = nullptr;
  for (const Field& f : mf) {
    const YAML::Node& at = f.value.IsNull() ? f.key_node : f.value;
    if (f.key == "name") {
      if (cidr != nullptr) {
        return r.ErrorIn(f.key_node, "match.name", "give name or cidr, not both (two routes)");
      }
      name = &f;
      if (!f.value.IsScalar() || f.value.Scalar().empty()) {
        return r.ErrorIn(at, "match.name", "must be a host name glob such as \"*.onion\"");
      }
      std::string g = f.value.Scalar();
      std::transform(g.begin(), g.end(), g.begin(),
                     [](unsigned char ch) { return char(std::tolower(ch)); });
      while (g.size() > 1 && g.back() == '.') g.pop_back();
      if (std::string p = NameGlobProblem(g); !p.empty()) {
        return r.ErrorIn(at, "match.name", Quote(f.value.Scalar()) + " " + p);
      }
      route->name = g;
    } else if (f.key == "cidr") {
      if (name != nullptr) {
        return r.ErrorIn(f.key_node, "match.cidr", "give name or cidr, not both (two routes)");
      }
      cidr = &f;
      if (!f.value.IsScalar() || f.value.Scalar().empty()) {
        return r.ErrorIn(at, "match.cidr", "must be an address range such as \"10.0.0.0/8\"");
      }
      if (std::string p = ParseCidr(f.value.Scalar(), &route->cidr); !p.empty()) {
        return r.ErrorIn(at, "match.cidr", p);
      }
      route->has_cidr = true;
    } else if (f.key == "port") {
      int port = 0;
      if (!f.value.IsScalar() || !YAML::convert<int>::decode(f.value, port) || port < 1 ||
          port > 65535) {
        return r.ErrorIn(at, "match.port", "must be a port number (1-65535)");
      }
      route->port = port;
    } else {
      std::vector<std::string> known{"name", "cidr", "port"};
      return r.ErrorIn(f.key_node, "match." + f.key,
                       "unknown field (known: name, cidr, port" + Suggestion(f.key, known) + ")");
    }
  }
  if (name == nullptr && cidr == nullptr) {
    return r.ErrorIn(*match, "match", "needs name (a glob) or cidr");
  }
  const YAML::Node* n = r.Value("network");
  if (n == nullptr || n->IsNull()) {
    return r.Error("network", "required: an overlay (ns:name), direct or block");
  }
  if (Status st = r.String("network", &route->network); !st.ok()) return st;
  if (route->network.empty() || route->network == kNoNetwork) {
    return r.Error("network", "must name an overlay (ns:name), direct or block");
  }
  route->network_pos = PosOf(r.file(), *n).ToString();
  if (name != nullptr && route->port != 0 && route->network == kDirectNetwork) {
    // A lookup knows no port: the name would get a fake address, which cannot be connected
    // directly without the system resolver at connect time.
    return r.Error("network",
                   "a name route with a port cannot be direct (route the name, or "
                   "its addresses with cidr and port)");
  }
  return Status::Ok();
}

// Where entry `id` is in `list` ("file:line:col"), or "" when it is not there.
template <typename T>
std::string FirstDefinition(const std::vector<T>& list, const std::string& id) {
  for (const T& o : list) {
    if (o.id == id) return o.file + ":" + std::to_string(o.line) + ":" + std::to_string(o.column);
  }
  return "";
}

// A rule or policy read by `parse`, with the entry's id and position, appended to `list`.
template <typename T>
Status ParseInto(const EntryReader& r, Status (*parse)(const EntryReader&, T*),
                 std::vector<T>* list) {
  T item;
  SourcePos pos = r.pos();
  item.id = r.id();
  item.file = pos.file;
  item.line = pos.line;
  item.column = pos.column;
  if (Status st = parse(r, &item); !st.ok()) return st;
  list->push_back(std::move(item));
  return Status::Ok();
}

}  // namespace

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

// A via.program entry, or a security.policy entry about network.select.
Status ParseRuleEntry(const std::string& file, const YAML::Node& name, const std::string& id,
                      const std::string& k, const YAML::Node& e, Loader* ld) {
  EntryReader r(file, e, id, k);
  if (Status st = InitEntry(name, &r); !st.ok()) return st;
  std::string first = FirstDefinition(ld->cfg.programs, id);
  if (first.empty()) first = FirstDefinition(ld->cfg.policies, id);
  if (first.empty()) first = FirstDefinition(ld->cfg.routes, id);
  if (!first.empty()) {
    return ErrorAt(PosOf(file, name), r.Prefix() + "name: duplicate entry " + id +
                                          " (first defined at " + first + ")");
  }
  if (k == "via.program") {
    return ParseInto(r, ParseProgram, &ld->cfg.programs);
  }
  if (k == "via.route") return ParseInto(r, ParseRoute, &ld->cfg.routes);
  return ParseInto(r, ParsePolicy, &ld->cfg.policies);
}

}  // namespace via::config::detail
