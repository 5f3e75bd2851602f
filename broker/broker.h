// The broker daemon: one epoll loop serving shims and the CLI on a Unix SOCK_SEQPACKET socket.
#pragma once

#include <string>

#include "common/status.h"
#include "config/config.h"

namespace via::broker {

struct BrokerOptions {
  std::string config_path;  // what was loaded (for reload and status)
  std::string socket_path;  // where to listen
  std::string log_path;     // "" = stderr only
  bool foreground = true;   // false: also log to log_path only
  bool stay = false;        // true: never exit when idle (explicit `via broker`)
  int idle_timeout_s = -1;  // -1: take config's network_service.idle_timeout_s
};

// Runs until SIGTERM/SIGINT, a SHUTDOWN request, or (unless stay) idle timeout with no sessions
// and no clients. Returns the process exit status. `ready_fd`, if >= 0, gets one byte written
// and is closed once the socket is listening (used by `via run` to wait for a daemonized broker).
int RunBroker(const config::Config& config, const BrokerOptions& options, int ready_fd = -1);

}  // namespace via::broker
