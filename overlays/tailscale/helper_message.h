// The message format of the control channel between the broker and a Tailscale entry's via-tsnet
// helper (docs/tailscale.md; the helper's side is tsnet/main.go).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace via::overlays {

// One control message: a verb line, then "key=value" lines, in one SOCK_SEQPACKET datagram.
struct HelperMessage {
  std::string verb;
  std::map<std::string, std::string> fields;

  const std::string& Get(const std::string& key) const;  // "" when absent
};

// Strict parse: a non-empty verb of [A-Z_] and lines of key=value with a non-empty key of
// [a-z_0-9]; EPROTO with a message otherwise.
Result<HelperMessage> ParseHelperMessage(std::string_view data);
// Newlines in values become spaces (a value can never start a new field).
std::string FormatHelperMessage(std::string_view verb,
                                const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace via::overlays
