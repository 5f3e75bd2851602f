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
#include "broker/client.h"
#include "broker/client_limits.h"
#include "broker/context.h"
#include "broker/fake_address_pool.h"
#include "broker/overlay_set.h"
#include "broker/selector.h"
#include "broker/session_service.h"
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

class Server : public ClientSink {
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

  Status Listen();

  void OnAccept();
  // Whether an accepted connection is served: its peer's uid (PeerUidAllowed), then the client
  // caps. kStop: stop accepting for this wake-up (at the client cap, accepting is paused).
  enum class Admission { kAdmit, kNext, kStop };
  Admission Admit(UniqueFd fd);
  Admission CheckClientCaps(int fd, pid_t pid);
  // Out of descriptors (or at the client cap): the head of the backlog is refused (closed at
  // once, through the reserve descriptor when none is left) and the listening socket is not
  // polled for a moment, so that a full backlog costs no CPU.
  void RefusePending(int accept_errno);
  void PauseAccepting();
  // What the loop watches for on a client: its requests unless paused, EPOLLOUT while replies
  // wait. Pauses or resumes reading per the client's queue and connects in flight.
  void UpdateInterest(Client& c);
  void OnClientEvent(uint64_t client_id, uint32_t events);
  // Reads every queued datagram; false if the client was closed meanwhile.
  bool ReadRequests(uint64_t client_id);
  void Handle(Client& c, const uint8_t* data, size_t n, std::vector<UniqueFd>& fds);

  // ClientSink
  Client* FindClient(uint64_t id) override;
  const ClientMap& clients() const override { return clients_; }
  void Reply(Client& c, const wire::Writer& w) override;
  void CloseClient(uint64_t client_id) override;
  void UpdateIdle() override;

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
  void HandleStatus(Client& c, const wire::Message& m);
  // The lines of `via status` about descriptors, refused clients and backpressure.
  void AppendLoadStatus(std::ostream& out) const;
  void HandleShutdown(Client& c, const wire::Message& m);
  void HandleReload(Client& c, const wire::Message& m);

  void HandleListen(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);

  // Creates the handshake and the ConnectOp of a pending connect whose overlay is ready.
  void StartConnectOp(uint64_t op_id, const Status& ready);
  void OnListenerReady(uint64_t id, const Status& s);
  void OnListenerAccepted(uint64_t id, overlays::AcceptedStream stream);
  // Destroys a listener (its overlay side goes down) after the current handlers have run.
  // With `drain`, the overlay side stays until accepted streams are done (InboundListener::Drain).
  void CloseListener(uint64_t id, const std::string& why, bool drain = true);

  // The destination of a CONNECT request, with fake addresses mapped back to names.
  Status ParseTarget(const wire::Message& m, overlays::Target* target);
  void OnConnectDone(uint64_t op_id, int err, const std::string& msg);
  // Counts, logs and replies a CONNECT that failed before or during its ConnectOp.
  void ConnectFailed(Client& c, uint32_t request_id, OverlayState* overlay,
                     const std::string& target, int err, const std::string& msg);

  bool LogAllowed(Noisy kind, uint64_t* suppressed = nullptr) {
    return ctx_.LogAllowed(kind, suppressed);
  }
  const config::Config& config() const { return overlays_->config(); }

  BrokerOptions options_;
  EventLoop* loop_;
  std::shared_ptr<spdlog::logger> log_;
  BrokerContext ctx_;
  UniqueFd listen_fd_;
  // Client connections and their limits (client_limits.h; the caps are in ctx_).
  UniqueFd reserve_fd_;         // /dev/null, given up to refuse a client past EMFILE
  bool accept_paused_ = false;  // the listening socket is not polled (backoff)
  uint64_t accept_timer_ = 0;
  int64_t accept_backoff_ms_ = 0;
  std::unordered_map<pid_t, size_t> clients_per_pid_;
  struct stat socket_stat_ {};  // to unlink only our own socket file at exit
  bool bound_ = false;
  std::unique_ptr<FakeAddressPool> pool_;
  std::unique_ptr<OverlaySet> overlays_;  // the current generation
  ClientMap clients_;
  std::unordered_map<uint64_t, PendingConnect> ops_;
  SessionTable sessions_;
  // The services, after the tables they use (destroyed before them).
  SessionService sessions_svc_{&ctx_};
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
  std::vector<uint8_t> recv_buf_;  // one datagram (plus a byte to detect oversize)
  uint64_t next_client_ = 1;
  uint64_t next_op_ = 1;
  uint64_t idle_timer_ = 0;
  int idle_timeout_s_ = 30;
  int64_t started_ms_ = 0;
};

}  // namespace via::broker
