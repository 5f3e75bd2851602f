// One registry file: the YAML document (syntax errors with file:line:col), its top-level keys
// and the entries loop, which hands each entry to the parse of its kind.
//
// yaml-cpp reports problems by throwing; every exception is caught here and becomes a Status
// carrying file:line:col, so nothing escapes to the caller.
#include <yaml-cpp/eventhandler.h>

#include <exception>
#include <sstream>

#include "config/parse_util.h"

namespace via::config::detail {

namespace {

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
  if (k == "via.program" || k == "via.route" ||
      (k == "security.policy" && IsNetworkSelectPolicy(e))) {
    return ParseRuleEntry(file, name, id, k, e, ld);
  }
  if (k.rfind("via.", 0) == 0) {
    return ErrorAt(PosOf(file, kind), "entry " + id + " (" + k + "): kind: unsupported via kind: " +
                                          k + " (supported: via.program, via.route)");
  }
  if (k.rfind("network.", 0) != 0) {
    ++ld->cfg.skipped_entries;  // process.host, http.service, ...: not via's business
    return Status::Ok();
  }
  EntryReader r(file, e, id, k);
  if (Status st = InitEntry(name, &r); !st.ok()) return st;
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

}  // namespace

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

}  // namespace via::config::detail
