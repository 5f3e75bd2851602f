// Server: the broker's wiring. It owns the listening socket, the client connections (Client,
// its transport in client_conn.h), the shared tables (the overlay set of the current config
// generation, the fake-address pool, the sessions) and the services that answer requests
// (sessions, connects, names, listeners, status), and dispatches each request through one table
// (message type → handler, whether it carries descriptors). It also does what belongs to no
// service: start-up, the clients' backpressure, reload and shutdown. Accepting clients is the
// ClientAcceptor's. Everything runs on one EventLoop thread.
#pragma once

#include <spdlog/logger.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/broker.h"
#include "broker/client.h"
#include "broker/client_acceptor.h"
#include "broker/connect_service.h"
#include "broker/context.h"
#include "broker/fake_address_pool.h"
#include "broker/listener_service.h"
#include "broker/name_service.h"
#include "broker/overlay_set.h"
#include "broker/session_service.h"
#include "broker/session_table.h"
#include "broker/status_service.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "config/config.h"
#include "loop/event_loop.h"

namespace via::broker {

class Server : public ClientSink {
 public:
  // *loop must outlive the Server.
  Server(std::shared_ptr<const config::Config> cfg, const BrokerOptions& options, EventLoop* loop,
         std::shared_ptr<spdlog::logger> log);
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
  // One entry of the dispatch table: a request type, whether it may carry descriptors (those
  // sent with any other request are closed unread), and its handler.
  struct Route {
    uint16_t type;
    bool takes_fds;
    void (*handle)(Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);
  };
  static const Route* FindRoute(uint16_t type);

  // The soft RLIMIT_NOFILE raised as far as allowed, and the client caps derived from it.
  void SetDescriptorBudget();
  Status Listen();
  // A connection the acceptor admitted becomes a client, watched on the loop.
  Status AddClient(UniqueFd fd, pid_t pid, bool foreign);
  // What the loop watches for on a client: its requests unless paused, EPOLLOUT while replies
  // wait. Pauses or resumes reading per the client's queue and connects in flight.
  void UpdateInterest(Client& c);
  void OnClientEvent(uint64_t client_id, uint32_t events);
  // Reads the client's queued requests (kReadsPerEvent); false if it was closed meanwhile.
  bool ReadRequests(uint64_t client_id);
  // Parses one request and hands it to its route, after the checks every request passes.
  void Handle(Client& c, const uint8_t* data, size_t n, std::vector<UniqueFd>& fds);
  // Answers the request with an error instead of its handler (too many connects in flight, not
  // greeted, HELLO failed) and returns true; false: the request goes on.
  bool RefusedBeforeHandler(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);

  // ClientSink
  Client* FindClient(uint64_t id) override;
  const ClientMap& clients() const override { return clients_; }
  void Reply(Client& c, const wire::Writer& w, UniqueFd fd = UniqueFd()) override;
  void CloseClient(uint64_t client_id) override;
  void UpdateIdle() override;

  void HandleReload(Client& c, const wire::Message& m);
  void HandleNewnym(Client& c, const wire::Message& m);
  // Closes (once idle) the links of the clients of `only` whose SOCKS5 plan no longer matches
  // what a HELLO would give them now (after `via newnym`), so that they greet again. How many.
  size_t CloseStalePlans(const OverlayState* only);
  void HandleShutdown(Client& c, const wire::Message& m);
  // After a reload: selects every client's network again, and closes the links whose shims
  // must greet again (flipped between direct and an overlay, or a changed SOCKS5 plan).
  void ReselectClients();

  bool LogAllowed(Noisy kind, uint64_t* suppressed = nullptr) {
    return ctx_.LogAllowed(kind, suppressed);
  }
  const config::Config& config() const { return overlays_->config(); }

  BrokerOptions options_;
  EventLoop* loop_;
  std::shared_ptr<spdlog::logger> log_;
  BrokerContext ctx_;
  ClientAcceptor acceptor_{
      &ctx_, [this](UniqueFd fd, pid_t pid, bool foreign) {
        return AddClient(std::move(fd), pid, foreign);
      }};
  struct stat socket_stat_ {};  // to unlink only our own socket file at exit
  bool bound_ = false;
  std::unique_ptr<FakeAddressPool> pool_;
  std::unique_ptr<OverlaySet> overlays_;  // the current generation
  ClientMap clients_;
  SessionTable sessions_;
  // The services, after the tables they use (destroyed before them).
  SessionService sessions_svc_{&ctx_};
  ConnectService connects_{&ctx_};
  NameService names_{&ctx_, &connects_};
  ListenerService listeners_{&ctx_};
  StatusService status_{&ctx_, &connects_, &listeners_};
  std::vector<uint8_t> recv_buf_;  // one datagram (plus a byte to detect oversize)
  uint64_t next_client_ = 1;
  uint64_t idle_timer_ = 0;
  int idle_timeout_s_ = 30;
};

}  // namespace via::broker
