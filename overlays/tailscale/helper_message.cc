#include "overlays/tailscale/helper_message.h"

#include <cerrno>

namespace via::overlays {

const std::string& HelperMessage::Get(const std::string& key) const {
  static const std::string kEmpty;
  auto it = fields.find(key);
  return it == fields.end() ? kEmpty : it->second;
}

Result<HelperMessage> ParseHelperMessage(std::string_view data) {
  HelperMessage m;
  size_t nl = data.find('\n');
  std::string_view verb = data.substr(0, nl);
  if (verb.empty()) return Status::Error(EPROTO, "helper message without a verb");
  for (char ch : verb) {
    if (!((ch >= 'A' && ch <= 'Z') || ch == '_')) {
      return Status::Error(EPROTO, "helper message with a malformed verb");
    }
  }
  m.verb = std::string(verb);
  while (nl != std::string_view::npos) {
    data = data.substr(nl + 1);
    nl = data.find('\n');
    std::string_view line = data.substr(0, nl);
    size_t eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return Status::Error(EPROTO, "helper message " + m.verb + ": a line is not key=value");
    }
    std::string_view key = line.substr(0, eq);
    for (char ch : key) {
      if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) {
        return Status::Error(EPROTO, "helper message " + m.verb + ": malformed key");
      }
    }
    m.fields[std::string(key)] = std::string(line.substr(eq + 1));
  }
  return m;
}

std::string FormatHelperMessage(std::string_view verb,
                                const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out(verb);
  for (const auto& [k, v] : fields) {
    out += "\n" + k + "=";
    for (char ch : v) out += (ch == '\n' || ch == '\r') ? ' ' : ch;
  }
  return out;
}

}  // namespace via::overlays
