// Where via keeps its runtime files.
#pragma once

#include <string>

#include "common/status.h"

namespace via {

// The broker's runtime directory, created 0700 if missing: $XDG_RUNTIME_DIR/via if
// XDG_RUNTIME_DIR is set, else /tmp/via-<uid>. Fails if it exists with another owner or with
// group/other permissions.
Result<std::string> RuntimeDir();

// The socket path of the broker serving a config identified by `config_key` (its absolute path
// and a fingerprint of its text): "<RuntimeDir>/broker-<16 hex of FNV-1a(config_key)>.sock".
Result<std::string> BrokerSocketPath(const std::string& config_key);

// The log file beside that socket: same name with ".log".
std::string BrokerLogPath(const std::string& socket_path);

// The directory holding the running `via` executable (from /proc/self/exe).
std::string SelfExeDir();

// The shim library: $VIA_SHIM if set, else <exe dir>/libvia.so (build tree), else
// <exe dir>/../lib/via/libvia.so (installed), else the compile-time install path.
std::string ShimPath();

}  // namespace via
