// The overlay of `kind: network.i2p` entries: an I2P router's SAM v3 bridge, with SAM sessions
// kept open on the event loop.
//
//  - A connect is HELLO + STREAM CONNECT on the program's own socket, which after
//    `STREAM STATUS RESULT=OK` is the byte stream to the destination (no relay).
//  - The outbound session (TRANSIENT destination) is created when the first program selects the
//    overlay (`via run` opening its session, or a HELLO) and reused by every STREAM CONNECT; a
//    connect that arrives while it is being created waits for it (bounded by connect_timeout). If
//    the router drops it (the control socket closes), the next connect creates a new one.
//  - Each listener (a program's listen() on a port) has a session of its own, with a destination
//    that is persistent (keys under <state_dir>/i2p/<ns>.<name>/listen-<port>.keys) or ephemeral,
//    and one STREAM ACCEPT pending at a time. Destroying the listener closes its control socket,
//    so the router deletes the destination.
#pragma once

#include <spdlog/logger.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "loop/event_loop.h"
#include "overlays/i2p/sam_session.h"
#include "overlays/overlay.h"
#include "overlays/overlay_context.h"
#include "overlays/ready_waiters.h"

namespace via::overlays {

// The directory that holds an I2P entry's listener keys, below <state_dir>/i2p/: "ns.name" (as
// it has always been) when both are plain words ([A-Za-z0-9_-]), else the entry's full name as
// one escaped path component (config::TailscaleDirName): never "." or "..", never a '/', and
// never one directory for two entries (a.b + c and a + b.c differ).
std::string I2pKeyDirName(const config::Overlay& overlay);

class I2pOverlay : public Overlay {
 public:
  // Resolves the SAM host (numeric first, then /etc/hosts and the system resolver). Fails with
  // EHOSTUNREACH naming the overlay and the host.
  static Result<std::unique_ptr<I2pOverlay>> Create(const config::Overlay& overlay,
                                                    const OverlayContext& context = {});
  ~I2pOverlay() override = default;

  const std::string& id() const override { return overlay_.id; }
  const std::vector<Endpoint>& endpoints() const override { return endpoints_; }
  const char* endpoint_role() const override { return "SAM bridge"; }
  // HELLO + STREAM CONNECT through the current outbound session. Only .i2p names can be reached
  // (ENETUNREACH otherwise: SAM has no outproxy); ENETUNREACH when no session is up. Failures
  // quote the SAM reply: `SAM STREAM CONNECT failed: "STREAM STATUS RESULT=CANT_REACH_PEER"`.
  Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) override;
  int connect_timeout_ms() const override { return overlay_.i2p.connect_timeout_ms; }
  // A program may wait for a session (SamSession::kCreateTimeoutMs) and then for its connect.
  int64_t wait_bound_ms() const override;

  void Start() override;
  uint64_t WhenReady(std::function<void(const Status&)> done) override;
  void CancelWait(uint64_t wait) override;
  bool keeps_state() const override { return true; }
  Result<std::unique_ptr<InboundListener>> Listen(uint16_t port, const std::string& owner,
                                                  InboundListener::Events events) override;
  void AppendStatus(std::ostream& out) const override;

  // The session STREAM CONNECT uses; "" while none is up. Set when the outbound session is
  // created or lost (and by tests).
  void set_session(std::string id) { session_ = std::move(id); }
  const std::string& session() const { return session_; }

  // Where a persistent listener keeps its keys.
  std::string KeyPath(uint16_t port) const;
  // A fresh SAM session ID: <session_name>-<what><broker pid>-<n>.
  std::string NewSessionId(const std::string& what);
  EventLoop* loop() const { return loop_; }
  const std::shared_ptr<spdlog::logger>& log() const { return log_; }
  const config::I2pSettings& settings() const { return overlay_.i2p; }
  const std::string& state_dir() const { return service_->state_dir; }
  std::map<uint16_t, int>& listening_ports() { return ports_; }

 private:
  I2pOverlay(const config::Overlay& overlay, const OverlayContext& context);
  void CreateOutbound();
  void OnOutboundCreated(const Status& s);
  void OnOutboundLost(const Status& s);

  const config::Overlay overlay_;  // copied: the caller's entry may go first
  const config::NetworkService* service_;
  EventLoop* loop_;
  std::shared_ptr<spdlog::logger> log_;
  std::vector<Endpoint> endpoints_;
  std::string session_;
  std::unique_ptr<SamSession> outbound_;
  Status last_error_;
  int64_t created_ms_ = 0;
  int64_t failed_ms_ = 0;  // when creating the session last failed
  ReadyWaiters waiters_;
  uint64_t next_session_ = 1;
  std::map<uint16_t, int> ports_;  // ports with a live listener (refcount)
};

}  // namespace via::overlays
