// StatusService: `via status` (STATUS). What the broker runs is gathered once per request into
// a StatusData — its config, the overlays and their connect counts, sessions, each overlay's own
// lines, listeners, clients, descriptors and refusals, one entry per program with its network
// and why — and rendered as the text `via status` prints or, with kFlagStatusJson, as JSON
// (docs/json.md).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "broker/client_limits.h"
#include "broker/connect_service.h"
#include "broker/context.h"
#include "broker/listener_service.h"
#include "common/wire.h"

namespace via::broker {

struct StatusData {
  struct Overlay {
    std::string id, kind;
    std::string settings;  // overlays::EntrySummary: " 127.0.0.1:9050 isolate_streams=on ..."
    bool available = false;
    std::string error;  // why not available
    uint64_t connects_ok = 0, connects_failed = 0;
    std::vector<std::string> lines;  // the overlay's own (Overlay::AppendStatus), without '\n'
  };
  struct Session {
    std::string token_prefix;  // the first 8 characters: a token is a credential
    std::string network;
    size_t clients = 0;  // connections that presented it in HELLO
    bool detached = false;
    size_t heirs = 0;
    bool strict = false, audit = false;                     // via run --strict [--audit]
    std::vector<std::pair<std::string, uint64_t>> refused;  // by kind (only with audit)
  };
  struct Listener {
    std::string overlay, bound;
    std::string address;  // where it is reachable on the overlay; "" while not ready
    uint64_t accepted = 0;
    std::string owner;
  };
  struct Program {
    pid_t pid = 0;
    std::string exe, network;
    std::string origin;    // why this network
    bool refused = false;  // its HELLO failed:
    std::string error;     // ... why
  };

  pid_t pid = 0;
  std::string config, fingerprint, socket;
  size_t program_rules = 0, policies = 0;
  int64_t uptime_s = 0;
  std::vector<Overlay> overlays;
  std::vector<Session> sessions;
  std::vector<Listener> listeners;
  size_t listeners_draining = 0;
  size_t clients = 0, connects_in_flight = 0;
  int open_descriptors = -1;
  uint64_t descriptor_limit = 0;
  ClientCaps caps;
  LoadCounters load;
  size_t paused_clients = 0;
  uint64_t log_lines_suppressed = 0;
  std::vector<Program> programs;  // one per program (not per thread), by their text; at most 200
  size_t fake_names = 0;
  std::string fake_ipv4, fake_ipv6;
};

// The text of `via status`.
std::string RenderStatusText(const StatusData& d);
// One JSON object (docs/json.md, "via status --json").
std::string RenderStatusJson(const StatusData& d);

class StatusService : public Service {
 public:
  // *connects and *listeners must outlive the service.
  StatusService(BrokerContext* ctx, const ConnectService* connects,
                const ListenerService* listeners);

  void HandleStatus(Client& c, const wire::Message& m);
  StatusData Collect() const;

 private:
  void CollectOverlays(StatusData* d) const;
  void CollectSessions(StatusData* d) const;
  void CollectListeners(StatusData* d) const;
  void CollectLoad(StatusData* d) const;
  void CollectPrograms(StatusData* d) const;

  const ConnectService* connects_;
  const ListenerService* listeners_;
  int64_t started_ms_ = 0;
};

}  // namespace via::broker
