// Server: the broker's listening socket, its client connections (shims and the CLI), request
// dispatch per docs/protocol.md, the overlays' drivers, sessions, the fake-address pool, and the
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
#include "broker/connect_op.h"
#include "broker/event_loop.h"
#include "broker/fake_address_pool.h"
#include "broker/overlay_runtime.h"
#include "broker/session_table.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "config/config.h"
#include "overlays/driver.h"

namespace via::broker {

class Server {
 public:
  // `config`, *loop and `log` must outlive the Server.
  Server(const config::Config& config, const BrokerOptions& options, EventLoop* loop,
         std::shared_ptr<spdlog::logger> log);
  // Closes every client (cancelling their connects) and removes the socket file if it is ours.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Creates the drivers and the pool, and starts listening. Fails if the socket's directory is
  // not private, or another broker answers on the socket.
  Status Start();

 private:
  struct OverlayState {
    const config::Overlay* overlay = nullptr;
    std::unique_ptr<overlays::Driver> driver;  // null if it could not be created
    Status error;                              // why not
    uint64_t ok = 0, failed = 0;               // connects
    std::unique_ptr<OverlayRuntime> runtime;   // sessions and listeners (I2P); may be null
  };
  struct Client {
    uint64_t id = 0;
    UniqueFd fd;
    pid_t pid = 0;
    bool greeted = false;
    Status hello_error;               // repeated for every later request until the next HELLO
    OverlayState* overlay = nullptr;  // nullptr = direct
    std::string network;              // effective network: overlay id or "direct"
    std::string session;              // token of a known session presented in HELLO
    std::deque<std::vector<uint8_t>> outbox;  // replies waiting for EPOLLOUT
    std::vector<uint64_t> ops;                // connect operations in flight
  };
  struct PendingConnect {
    uint64_t client = 0;
    uint32_t request_id = 0;
    OverlayState* overlay = nullptr;
    overlays::Target target;
    std::unique_ptr<ConnectOp> op;
    UniqueFd waiting_fd;  // the program's socket while the overlay's runtime gets ready
    uint64_t wait = 0;    // OverlayRuntime wait id
  };
  // An inbound listener (docs/protocol.md "LISTEN"): the program's listening fd was replaced by
  // the peer of `sock`; accepted streams are sent over `sock` (ACCEPTED with SCM_RIGHTS).
  struct ListenerEntry {
    uint64_t client = 0;  // who asked; the reply waits for the overlay to be ready
    uint32_t request_id = 0;
    bool replied = false;
    OverlayState* overlay = nullptr;
    UniqueFd sock;      // the broker's end of the socketpair
    wire::Addr bound;   // what the program bound (its family and port)
    std::string owner;  // "pid 123 /usr/bin/python3"
    std::unique_ptr<InboundListener> listener;
    uint64_t accepted = 0;
  };

  Status CheckSocketDir() const;
  Status Listen();
  std::string OverlaySummary() const;

  void OnAccept();
  void OnClientEvent(uint64_t client_id, uint32_t events);
  // Reads every queued datagram; false if the client was closed meanwhile.
  bool ReadRequests(uint64_t client_id);
  void CloseClient(uint64_t client_id);
  void Handle(Client& c, const uint8_t* data, size_t n, std::vector<UniqueFd>& fds);
  void Reply(Client& c, const wire::Writer& w);
  void ReplyError(Client& c, uint16_t type, uint32_t id, int err, const std::string& msg);
  void ReplyOk(Client& c, uint16_t type, uint32_t id);

  void HandleHello(Client& c, const wire::Message& m);
  void HandleConnect(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);
  void HandleResolve(Client& c, const wire::Message& m);
  void HandleReverse(Client& c, const wire::Message& m);
  void HandleOpenSession(Client& c, const wire::Message& m);
  void HandleStatus(Client& c, const wire::Message& m);
  void HandleShutdown(Client& c, const wire::Message& m);
  void HandleListen(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);

  // Creates the handshake and the ConnectOp of a pending connect whose overlay is ready.
  void StartConnectOp(uint64_t op_id, const Status& ready);
  void OnListenerReady(uint64_t id, const Status& s);
  void OnListenerAccepted(uint64_t id, AcceptedStream stream);
  // Destroys a listener (its overlay side goes down) after the current handlers have run.
  // With `drain`, the overlay side stays until accepted streams are done (InboundListener::Drain).
  void CloseListener(uint64_t id, const std::string& why, bool drain = true);

  // Resolves a network reference: "direct" gives *out = nullptr; an overlay gives its state.
  // Unknown → ENOENT; an overlay whose driver failed → that failure.
  Status SelectNetwork(const std::string& ref, OverlayState** out, std::string* id);
  // The destination of a CONNECT request, with fake addresses mapped back to names.
  Status ParseTarget(const wire::Message& m, overlays::Target* target);
  void OnConnectDone(uint64_t op_id, int err, const std::string& msg);
  // Counts, logs and replies a CONNECT that failed before or during its ConnectOp.
  void ConnectFailed(Client& c, uint32_t request_id, OverlayState* overlay,
                     const std::string& target, int err, const std::string& msg);

  void UpdateIdle();
  std::string PeerText(const Client& c) const;  // "pid 123 /usr/bin/curl"

  const config::Config& config_;
  BrokerOptions options_;
  EventLoop* loop_;
  std::shared_ptr<spdlog::logger> log_;
  UniqueFd listen_fd_;
  struct stat socket_stat_ {};  // to unlink only our own socket file at exit
  bool bound_ = false;
  std::unique_ptr<FakeAddressPool> pool_;
  std::map<std::string, OverlayState> overlays_;  // by id
  std::unordered_map<uint64_t, std::unique_ptr<Client>> clients_;
  std::unordered_map<uint64_t, PendingConnect> ops_;
  SessionTable sessions_;
  std::map<uint64_t, ListenerEntry> listeners_;
  // Listeners the program closed whose overlay side still serves accepted streams.
  std::map<uint64_t, std::unique_ptr<InboundListener>> draining_;
  uint64_t next_listener_ = 1;
  std::vector<uint8_t> recv_buf_;                // one datagram (plus a byte to detect oversize)
  std::set<std::string> logged_network_errors_;  // HELLO failures are logged once per network
  uint64_t next_client_ = 1;
  uint64_t next_op_ = 1;
  uint64_t idle_timer_ = 0;
  int idle_timeout_s_ = 30;
  int64_t started_ms_ = 0;
};

}  // namespace via::broker
