// Server: the broker's listening socket, its client connections (shims and the CLI), request
// dispatch per docs/protocol.md, the overlays, sessions, the fake-address pool, and the
// connect operations in flight. Everything runs on one EventLoop thread.
#pragma once

#include <spdlog/logger.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/broker.h"
#include "broker/client_limits.h"
#include "broker/fake_address_pool.h"
#include "broker/selector.h"
#include "broker/session_table.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "config/config.h"
#include "loop/event_loop.h"
#include "overlays/connect_op.h"
#include "overlays/handshake.h"
#include "overlays/inbound_listener.h"
#include "overlays/overlay.h"

namespace via::broker {

class Server {
 public:
  // *loop must outlive the Server.
  Server(std::shared_ptr<const config::Config> config, const BrokerOptions& options,
         EventLoop* loop, std::shared_ptr<spdlog::logger> log);
  // Closes every client (cancelling their connects) and removes the socket file if it is ours.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Creates the overlays and the pool, and starts listening. Fails if the socket's directory is
  // not private, or another broker answers on the socket.
  Status Start();

  // Re-reads the configuration from options.config_path. A config that does not load is
  // rejected (logged, returned) and the running one stays. Otherwise new overlays are built and
  // swapped in; connects in flight finish on the old ones, and every client's network is
  // selected again (under the new rules and policies) at its next request. `why` is for the log.
  Status Reload(const std::string& why);

 private:
  struct OverlayState {
    std::shared_ptr<const config::Config> config;  // keeps `overlay` alive across a reload
    const config::Overlay* overlay = nullptr;
    std::unique_ptr<overlays::Overlay> instance;  // null if it could not be created
    Status error;                                 // why not
    uint64_t ok = 0, failed = 0;                  // connects
  };
  struct Client {
    uint64_t id = 0;
    UniqueFd fd;
    pid_t pid = 0;
    bool greeted = false;
    Status hello_error;                     // repeated for every later request until the next HELLO
    std::shared_ptr<OverlayState> overlay;  // nullptr = direct
    std::string network;                    // effective network: overlay id or "direct"
    std::string origin;                     // why (Selection::origin)
    std::string session;                    // token of a known session presented in HELLO
    bool control = false;                   // a CLI control connection (kFlagControl)
    size_t sessions_opened = 0;             // OPEN_SESSIONs granted (kMaxSessionsPerClient)
    bool has_claim = false;                 // HELLO named a network
    std::string claim;                      // ... this one
    std::string token;                      // HELLO SESSION
    uint64_t generation = 0;                // config generation the selection was made under
    bool close_when_idle = false;           // a reload flipped it between direct and an overlay
    std::string shim_plan;                  // what the last HELLO reply let the shim do itself
    Outbox outbox;                          // replies waiting for EPOLLOUT
    bool paused = false;                    // not reading requests (client_limits.h)
    uint32_t events = 0;                    // what the loop watches for (UpdateInterest)
    std::vector<uint64_t> ops;                // connect operations in flight
    pid_t act_for = 0;  // STRICT_PROCESS: selections are made for this process (0: the peer)
    uint64_t act_for_start = 0;  // ... with this start time
  };
  struct PendingConnect {
    uint64_t client = 0;
    uint32_t request_id = 0;
    std::shared_ptr<OverlayState> overlay;
    overlays::Target target;
    std::unique_ptr<overlays::ConnectOp> op;
    // A remote resolve (Tor's RESOLVE/RESOLVE_PTR on a socket of the broker's own) instead of
    // a program's connect: dns_query.cc. `handshake` is owned by `op`.
    bool resolve = false;
    uint8_t family = 0;  // RESOLVE's FAMILY
    const overlays::ResolveHandshake* handshake = nullptr;
    UniqueFd waiting_fd;  // the program's socket while the overlay gets ready
    int domain = 0;       // its family (SO_DOMAIN), already asked
    uint64_t wait = 0;    // Overlay::WhenReady wait id
  };
  // An inbound listener (docs/protocol.md "LISTEN"): the program's listening fd was replaced by
  // the peer of `sock`; accepted streams are sent over `sock` (ACCEPTED with SCM_RIGHTS).
  struct ListenerEntry {
    uint64_t client = 0;  // who asked; the reply waits for the overlay to be ready
    uint32_t request_id = 0;
    bool replied = false;
    std::shared_ptr<OverlayState> overlay;  // kept alive across a reload
    UniqueFd sock;                          // the broker's end of the socketpair
    wire::Addr bound;                       // what the program bound (its family and port)
    std::string owner;                      // "pid 123 /usr/bin/python3"
    std::unique_ptr<overlays::InboundListener> listener;
    uint64_t accepted = 0;
  };

  Status CheckSocketDir() const;
  Status Listen();
  std::string OverlaySummary() const;

  void OnAccept();
  // Out of descriptors (or at the client cap): the head of the backlog is refused (closed at
  // once, through the reserve descriptor when none is left) and the listening socket is not
  // polled for a moment, so that a full backlog costs no CPU.
  void RefusePending(int accept_errno);
  void PauseAccepting();
  // What the loop watches for on a client: its requests unless paused, EPOLLOUT while replies
  // wait. Pauses or resumes reading per the client's queue and connects in flight.
  void UpdateInterest(Client& c);
  // Rate limit for log lines a client can trigger repeatedly; *suppressed as LogLimiter.
  enum class Noisy {
    kAccept,
    kRefused,
    kMalformed,
    kConnectFailed,
    kDns,
    kSession,
    kOther,
    kCount
  };
  bool LogAllowed(Noisy kind, uint64_t* suppressed = nullptr);
  void OnClientEvent(uint64_t client_id, uint32_t events);
  // Reads every queued datagram; false if the client was closed meanwhile.
  bool ReadRequests(uint64_t client_id);
  void CloseClient(uint64_t client_id);
  void Handle(Client& c, const uint8_t* data, size_t n, std::vector<UniqueFd>& fds);
  void Reply(Client& c, const wire::Writer& w);
  void ReplyError(Client& c, uint16_t type, uint32_t id, int err, const std::string& msg);
  void ReplyOk(Client& c, uint16_t type, uint32_t id);

  void HandleHello(Client& c, const wire::Message& m);
  // The SOCKS5 fields of a HELLO reply that let the shim run CONNECT itself (kFlagShimSocks5),
  // put into *w when given; returns them as a key ("" when the shim must hand sockets over), so
  // a reload can tell whether what a shim holds is still right.
  std::string ShimPlan(const Client& c, wire::Writer* w) const;
  // HELLO's WAIT_MS: how long a request of `c` that waits on its overlay may take.
  uint32_t OverlayWaitMs(const Client& c) const;
  void HandleReport(Client& c, const wire::Message& m);
  void HandleConnect(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);
  void HandleResolve(Client& c, const wire::Message& m);
  void HandleReverse(Client& c, const wire::Message& m);
  void HandleDnsQuery(Client& c, const wire::Message& m);  // dns_query.cc
  // RESOLVE/REVERSE through the overlay (remote_resolve); false if it does not apply.
  bool StartRemoteResolve(Client& c, const wire::Message& m, const overlays::Target& target,
                          uint8_t family);
  void RemoteResolveDone(PendingConnect& p, Client& c, int err, const std::string& msg);
  void HandleDnsSocket(Client& c, const wire::Message& m);  // dns_query.cc
  void OnDnsResponder(int fd);
  void CloseDnsResponders(uint64_t client_id);
  void HandleOpenSession(Client& c, const wire::Message& m);
  void HandleStatus(Client& c, const wire::Message& m);
  // The lines of `via status` about descriptors, refused clients and backpressure.
  void AppendLoadStatus(std::ostream& out) const;
  void HandleShutdown(Client& c, const wire::Message& m);
  void HandleSessionChild(Client& c, const wire::Message& m);
  void HandleReload(Client& c, const wire::Message& m);
  void HandleSessionDetach(Client& c, const wire::Message& m);
  // STRICT_PROCESS (broker/strict_process.cc).
  void HandleStrictProcess(Client& c, const wire::Message& m);
  // The process tree a selection for `c` is made for: the peer's, or its STRICT_PROCESS's
  // while that process lives (a pooled connection outlives it; a reload then selects for the
  // peer, the session's opener, never for a dead or reused pid).
  static std::vector<ProcessInfo> SelectionChain(const Client& c);
  // Ends detached sessions whose heirs are all gone; re-arms itself while any remain.
  void PruneDetached();

  // Selects the client's network from its HELLO (kept in the Client) under the current config.
  void ApplyHello(Client& c);
  // The selector's view of the sessions.
  SelectRequest MakeRequest(std::vector<ProcessInfo> chain) const;
  // Builds the overlays of `cfg` (resolving proxy hosts: call before the loop runs or on reload).
  // Overlays of `previous` that keep state (Overlay::keeps_state) are kept when their entry is
  // still there with the same kind.
  std::map<std::string, std::shared_ptr<OverlayState>> BuildOverlays(
      const std::shared_ptr<const config::Config>& cfg,
      const std::map<std::string, std::shared_ptr<OverlayState>>& previous);
  void HandleListen(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);

  // Creates the handshake and the ConnectOp of a pending connect whose overlay is ready.
  void StartConnectOp(uint64_t op_id, const Status& ready);
  void OnListenerReady(uint64_t id, const Status& s);
  void OnListenerAccepted(uint64_t id, overlays::AcceptedStream stream);
  // Destroys a listener (its overlay side goes down) after the current handlers have run.
  // With `drain`, the overlay side stays until accepted streams are done (InboundListener::Drain).
  void CloseListener(uint64_t id, const std::string& why, bool drain = true);

  // Resolves a network reference: "direct" gives *out = nullptr; an overlay gives its state.
  // Unknown → ENOENT; an overlay that could not be created → why.
  Status SelectNetwork(const std::string& ref, std::shared_ptr<OverlayState>* out, std::string* id);
  // The destination of a CONNECT request, with fake addresses mapped back to names.
  Status ParseTarget(const wire::Message& m, overlays::Target* target);
  void OnConnectDone(uint64_t op_id, int err, const std::string& msg);
  // Counts, logs and replies a CONNECT that failed before or during its ConnectOp.
  void ConnectFailed(Client& c, uint32_t request_id, OverlayState* overlay,
                     const std::string& target, int err, const std::string& msg);

  void UpdateIdle();
  std::string PeerText(const Client& c) const;  // "pid 123 /usr/bin/curl"

  std::shared_ptr<const config::Config> config_;
  uint64_t generation_ = 1;  // bumped by every successful reload
  BrokerOptions options_;
  EventLoop* loop_;
  std::shared_ptr<spdlog::logger> log_;
  UniqueFd listen_fd_;
  // Client connections and their limits (client_limits.h).
  UniqueFd reserve_fd_;         // /dev/null, given up to refuse a client past EMFILE
  ClientCaps caps_;             // from RLIMIT_NOFILE at start
  uint64_t nofile_limit_ = 0;   // RLIMIT_NOFILE's soft limit at start
  bool accept_paused_ = false;  // the listening socket is not polled (backoff)
  uint64_t accept_timer_ = 0;
  int64_t accept_backoff_ms_ = 0;
  uint64_t refused_fd_limit_ = 0;     // clients refused at the descriptor limit (EMFILE/ENFILE)
  uint64_t refused_cap_ = 0;          // ... at the client cap
  uint64_t refused_pid_cap_ = 0;      // ... at the per-process cap
  uint64_t refused_other_uid_ = 0;    // ... from another uid
  uint64_t backpressure_events_ = 0;  // clients paused for not reading their replies
  std::unordered_map<pid_t, size_t> clients_per_pid_;
  LogLimiter log_limits_[size_t(Noisy::kCount)];
  struct stat socket_stat_ {};  // to unlink only our own socket file at exit
  bool bound_ = false;
  std::unique_ptr<FakeAddressPool> pool_;
  std::map<std::string, std::shared_ptr<OverlayState>> overlays_;  // by id
  std::unordered_map<uint64_t, std::unique_ptr<Client>> clients_;
  std::unordered_map<uint64_t, PendingConnect> ops_;
  SessionTable sessions_;
  // DNS responders (DNS_SOCKET): one loopback UDP socket per program DNS socket, connected to
  // it, answering its queries; closed with the client connection that asked for it.
  struct DnsResponder {
    UniqueFd fd;
    uint64_t client = 0;
    std::string overlay;  // for the log
    std::string peer;     // PeerText of the client, for the log
    uint64_t seq = 0;     // creation order
  };
  uint64_t next_responder_ = 1;
  std::map<int, DnsResponder> dns_responders_;  // by fd
  std::map<uint64_t, ListenerEntry> listeners_;
  // Listeners the program closed whose overlay side still serves accepted streams.
  std::map<uint64_t, std::unique_ptr<overlays::InboundListener>> draining_;
  uint64_t next_listener_ = 1;
  std::vector<uint8_t> recv_buf_;                // one datagram (plus a byte to detect oversize)
  std::set<std::string> logged_network_errors_;  // HELLO failures are logged once per pid+text
  uint64_t next_client_ = 1;
  uint64_t next_op_ = 1;
  uint64_t idle_timer_ = 0;
  uint64_t prune_timer_ = 0;
  int idle_timeout_s_ = 30;
  int64_t started_ms_ = 0;
};

}  // namespace via::broker
