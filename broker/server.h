// Server: the broker's listening socket, its clients (shims and the CLI), sessions, and the
// connect operations in flight. Everything runs on one EventLoop thread.
#pragma once

#include <spdlog/logger.h>
#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/broker.h"
#include "broker/event_loop.h"
#include "broker/fake_address_pool.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "config/config.h"
#include "overlays/driver.h"

namespace via::broker {

class Server {
 public:
  // *loop and *log must outlive the Server.
  Server(const config::Config& config, const BrokerOptions& options, EventLoop* loop,
         std::shared_ptr<spdlog::logger> log);
  ~Server();

  // Creates the drivers and the pool, and starts listening.
  Status Start();

 private:
  struct Client;
  struct ConnectOp;
  struct Session {
    std::string token;
    std::string network;  // overlay id or "direct"
    uint64_t owner = 0;   // client id of `via run`
    int64_t started_ms = 0;
  };
  struct OverlayState {
    const config::Overlay* overlay = nullptr;
    std::unique_ptr<overlays::Driver> driver;
    Status error;  // why the driver could not be created
    uint64_t ok = 0, failed = 0;
  };

  void OnAccept();
  void OnClientEvent(uint64_t client_id, uint32_t events);
  void CloseClient(uint64_t client_id);
  void Handle(Client& c, const uint8_t* data, size_t n, std::vector<UniqueFd>& fds);
  void Reply(Client& c, wire::Writer& w);
  void ReplyError(Client& c, uint16_t type, uint32_t id, int err, const std::string& msg);

  void HandleHello(Client& c, const wire::Message& m);
  void HandleConnect(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);
  void HandleResolve(Client& c, const wire::Message& m);
  void HandleReverse(Client& c, const wire::Message& m);
  void HandleOpenSession(Client& c, const wire::Message& m);
  void HandleStatus(Client& c, const wire::Message& m);

  // Resolves a network reference; "" or "direct" gives nullptr with ok status.
  Status SelectNetwork(const std::string& ref, OverlayState** out, std::string* id);

  void StartConnect(std::unique_ptr<ConnectOp> op);
  void OnOpEvent(uint64_t op_id);
  void Pump(ConnectOp& op);
  void FinishOp(uint64_t op_id, int err, const std::string& msg);

  void UpdateIdle();
  std::string PeerText(const Client& c) const;

  const config::Config& config_;
  BrokerOptions options_;
  EventLoop* loop_;
  std::shared_ptr<spdlog::logger> log_;
  UniqueFd listen_fd_;
  std::unique_ptr<FakeAddressPool> pool_;
  std::map<std::string, OverlayState> overlays_;  // by id
  std::unordered_map<uint64_t, std::unique_ptr<Client>> clients_;
  std::unordered_map<uint64_t, std::unique_ptr<ConnectOp>> ops_;
  std::unordered_map<std::string, Session> sessions_;
  uint64_t next_client_ = 1;
  uint64_t next_op_ = 1;
  uint64_t idle_timer_ = 0;
  int idle_timeout_s_ = 30;
  int64_t started_ms_ = 0;
};

}  // namespace via::broker
