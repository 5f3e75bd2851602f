// Client: one client connection as the services see it: its transport (ClientConn) and what its
// HELLO selected (the network, the session, the shim's plan). Owned by the Server; services
// keep client ids, never pointers, across loop turns (ClientSink::FindClient).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/client_conn.h"
#include "broker/overlay_set.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace via::broker {

struct Client {
  Client(uint64_t client_id, UniqueFd fd, pid_t peer_pid)
      : id(client_id), conn(std::move(fd), peer_pid) {}
  pid_t pid() const { return conn.pid(); }

  uint64_t id = 0;
  ClientConn conn;
  bool greeted = false;
  Status hello_error;                     // repeated for every later request until the next HELLO
  std::shared_ptr<OverlayState> overlay;  // nullptr = direct
  std::string network;                    // effective network: overlay id or "direct"
  std::string origin;                     // why (Selection::origin)
  std::string session;                    // token of a known session presented in HELLO
  overlays::Requester who;                // the process, for SOCKS5 isolation (at HELLO)
  bool foreign = false;  // another uid, admitted by lineage (peer_lineage.h): shim requests only
  bool control = false;                   // a CLI control connection (kFlagControl)
  size_t sessions_opened = 0;             // OPEN_SESSIONs granted (kMaxSessionsPerClient)
  bool has_claim = false;                 // HELLO named a network
  std::string claim;                      // ... this one
  std::string token;                      // HELLO SESSION
  uint64_t generation = 0;                // config generation the selection was made under
  bool close_when_idle = false;           // a reload flipped it between direct and an overlay
  std::string shim_plan;                  // what the last HELLO reply let the shim do itself
  std::vector<uint64_t> ops;              // connect operations in flight (ConnectService)
  // The routes in force for this client (its session's, the config's, the built-ins), set at
  // HELLO; empty when none apply (a control connection, the network none, a failed HELLO).
  std::shared_ptr<const std::vector<config::Route>> routes;
  pid_t act_for = 0;            // STRICT_PROCESS: selections are made for this process (0: the peer)
  uint64_t act_for_start = 0;  // ... with this start time
};

using ClientMap = std::unordered_map<uint64_t, std::unique_ptr<Client>>;

// The executable of `pid` (/proc/PID/exe), or "?".
std::string ExePath(pid_t pid);
// "pid 123 /usr/bin/curl" (reads /proc: for log lines, not per request).
std::string PeerText(const Client& c);

}  // namespace via::broker
