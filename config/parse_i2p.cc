// `kind: network.i2p` entries.
#include <cctype>
#include <cstring>

#include "config/parse_util.h"

namespace via::config::detail {

namespace {

// SAM splits command lines at spaces and `=`; a character that could end a token or start a
// quoted value must not appear in an option, or one option could smuggle in another.
bool SamTokenChar(char c, bool value) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
  if (c == '.' || c == '_' || c == '-') return true;
  return value && std::strchr(",:/+~@", c) != nullptr;
}

}  // namespace

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

}  // namespace via::config::detail
