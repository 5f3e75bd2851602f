// What the broker's services share: the interface they answer clients through (ClientSink,
// implemented by the Server, which owns the connections) and the context holding the shared
// tables (the overlay set of the current generation, the fake-address pool, the sessions) and
// counters. A service gets a BrokerContext* and never the Server, so that services and the
// Server do not include each other.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "broker/broker.h"
#include "broker/client.h"
#include "broker/client_limits.h"
#include "broker/fake_address_pool.h"
#include "broker/overlay_set.h"
#include "broker/session_table.h"
#include "common/wire.h"
#include "loop/event_loop.h"

namespace via::broker {

class ClientSink {
 public:
  // The client with `id`, or nullptr if it is gone (a connect finishing after its client).
  virtual Client* FindClient(uint64_t id) = 0;
  virtual const ClientMap& clients() const = 0;
  // Sends `w` to the client, queued if it does not read (docs/protocol.md, "Limits"). A writer
  // that overflowed is answered as an EMSGSIZE error of the request's type and id.
  // `fd`, when valid, goes with it (SCM_RIGHTS) and is closed once sent.
  virtual void Reply(Client& c, const wire::Writer& w, UniqueFd fd = UniqueFd()) = 0;
  // Closes the connection: its connects are cancelled, its sessions and DNS responders end.
  virtual void CloseClient(uint64_t id) = 0;
  // Something that keeps the broker from exiting when idle (a session, a listener) came or went.
  virtual void UpdateIdle() = 0;

  // An error reply (ERRNO, MESSAGE cut to kMaxMessageText) and a bare success.
  void ReplyError(Client& c, uint16_t type, uint32_t id, int err, const std::string& msg);
  void ReplyOk(Client& c, uint16_t type, uint32_t id);

 protected:
  ~ClientSink() = default;
};

constexpr size_t kMaxMessageText = 3000;  // MESSAGE fields are cut to this

// An address for the log and for messages: "1.2.3.4:80", or without the port "1.2.3.4".
std::string AddrText(const wire::Addr& a, bool with_port);

// Counted for `via status`: clients refused at accept, and backpressure.
struct LoadCounters {
  uint64_t refused_fd_limit = 0;     // clients refused at the descriptor limit (EMFILE/ENFILE)
  uint64_t refused_cap = 0;          // ... at the client cap
  uint64_t refused_pid_cap = 0;      // ... at the per-process cap
  uint64_t refused_other_uid = 0;    // ... from another uid
  uint64_t backpressure_events = 0;  // clients paused for not reading their replies
};

// The pointers are set by the Server before the loop runs and outlive every service; `overlays`
// changes with each reload (services read it per request, and hold an OverlayState by
// shared_ptr when they need it longer).
struct BrokerContext {
  EventLoop* loop = nullptr;
  std::shared_ptr<spdlog::logger> log;
  const BrokerOptions* options = nullptr;
  const OverlaySet* overlays = nullptr;
  FakeAddressPool* pool = nullptr;
  SessionTable* sessions = nullptr;
  ClientSink* clients = nullptr;
  NoisyLog noisy;
  LoadCounters load;
  ClientCaps caps;            // from RLIMIT_NOFILE at start
  uint64_t nofile_limit = 0;  // RLIMIT_NOFILE's soft limit at start

  const config::Config& config() const { return overlays->config(); }
  // Rate limit for log lines a client can trigger repeatedly; *suppressed as LogLimiter.
  bool LogAllowed(Noisy kind, uint64_t* suppressed = nullptr);
};

// The base of every service: the context, and short names for what services use most.
class Service {
 protected:
  // *ctx must outlive the service; its pointers may be set after this constructor runs.
  explicit Service(BrokerContext* ctx) : ctx_(ctx) {}
  ~Service() = default;

  const config::Config& config() const { return ctx_->config(); }
  spdlog::logger* log() const { return ctx_->log.get(); }
  EventLoop* loop() const { return ctx_->loop; }
  FakeAddressPool* pool() const { return ctx_->pool; }
  SessionTable& sessions() const { return *ctx_->sessions; }
  ClientSink& clients() const { return *ctx_->clients; }
  bool LogAllowed(Noisy kind, uint64_t* suppressed = nullptr) const {
    return ctx_->LogAllowed(kind, suppressed);
  }
  void Reply(Client& c, const wire::Writer& w, UniqueFd fd = UniqueFd()) const {
    ctx_->clients->Reply(c, w, std::move(fd));
  }
  void ReplyError(Client& c, uint16_t type, uint32_t id, int err, const std::string& msg) const {
    ctx_->clients->ReplyError(c, type, id, err, msg);
  }
  void ReplyOk(Client& c, uint16_t type, uint32_t id) const { ctx_->clients->ReplyOk(c, type, id); }

  BrokerContext* ctx_;
};

}  // namespace via::broker
