// A few lines of Tor's control protocol (control-spec.txt): authenticate as the port offers it
// and send one SIGNAL. Blocking, with a deadline: for the command line only.
#pragma once

#include <string>

#include "common/status.h"

namespace via::tools {

// Connects to Tor's control port at host:port, authenticates (no authentication, the cookie
// file PROTOCOLINFO names, or `password` for HASHEDPASSWORD) and sends SIGNAL `signal`. Returns
// Tor's reply line ("250 OK"), or an error naming the step, what Tor said and what to do.
Result<std::string> TorControlSignal(const std::string& host, int port, const std::string& password,
                                     const std::string& signal, int timeout_ms = 10000);

}  // namespace via::tools
