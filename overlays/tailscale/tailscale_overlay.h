// The overlay of `kind: network.tailscale` entries: one via-tsnet helper process per entry
// (docs/tailscale.md), supervised on the event loop.
//
// A Tailscale node is a userspace network stack (tsnet, Go) that the broker cannot link, so each
// entry gets a helper process (tsnet/). The helper serves the broker's connects as a loopback
// SOCKS5 endpoint guarded by a per-run secret: a connect is a SOCKS5 CONNECT with that secret
// on the program's socket, and the helper dials through the node and relays. The endpoint exists
// only while the helper reports the node Running.
//
//  - Start() (the first program selecting the overlay) spawns the helper with fd 3 = a
//  SOCK_SEQPACKET control channel and sends CONFIG
//    (mode node|attach, hostname, state dir, control URL, auth key, ephemeral, the SOCKS secret).
//    The auth key travels on this channel only: never argv, never the environment.
//  - The helper reports STATUS (state, error, health, auth URL, tailnet IPs, MagicDNS name, its
//    loopback SOCKS5 address) on every change. Connects wait (WhenReady) until the state is
//    Running; NeedsLogin with an error fails them at once; otherwise they time out after
//    connect_timeout with the node's last state and error. They never go anywhere else.
//  - Listen(port) asks the helper to listen on the node's tailnet addresses, that port only
//    (LISTEN, deferred until Running); the helper answers LISTENING/LISTEN_FAILED and hands
//    over each accepted connection as ACCEPTED with an fd (a socketpair end it relays for).
//  - The helper dying is logged and it is restarted after a back-off (1 s doubling to 30 s);
//    waiting connects fail, listeners die (their programs see accept() fail).
//  - Stop() (the broker stops) closes the channel and sends SIGTERM: the helper logs out an
//    ephemeral node, stops the node and exits. The destructor waits for it only until it exits
//    (a pidfd), at most kStopBoundMs after Stop(), then SIGKILLs it: an ephemeral node is gone
//    when the broker exits, and a prompt helper lets `via stop` return at once.
//  - Every helper process is reaped as soon as it exits (its pidfd is watched on the loop); one
//    given up on (its channel closed) gets SIGTERM, and SIGKILL kStopBoundMs later.
#pragma once

#include <spdlog/logger.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "config/config.h"
#include "loop/event_loop.h"
#include "overlays/overlay.h"
#include "overlays/overlay_context.h"
#include "overlays/ready_waiters.h"
#include "overlays/tailscale/helper_message.h"

namespace via::overlays {

class TailscaleListener;

class TailscaleOverlay : public Overlay {
 public:
  // Resolves the auth key (auth_key, or the broker's environment variable auth_key_env) and
  // mints the SOCKS5 secret. Fails with EINVAL naming the overlay when auth_key_env is unset.
  static Result<std::unique_ptr<TailscaleOverlay>> Create(const config::Overlay& overlay,
                                                          const OverlayContext& context = {});
  ~TailscaleOverlay() override;

  const std::string& id() const override { return overlay_.id; }
  // Empty while the node is not Running.
  const std::vector<Endpoint>& endpoints() const override { return endpoints_; }
  const char* endpoint_role() const override { return "Tailscale helper"; }
  // SOCKS5 CONNECT with user "via" and the secret; names go as names (the helper resolves them
  // from the tailnet's netmap). ENETUNREACH when the node is not Running. The helper's refusals
  // are worded for a tailnet ("no node of that name in the tailnet", "not a tailnet address").
  Result<std::unique_ptr<Handshake>> NewHandshake(const Target& target) override;
  int connect_timeout_ms() const override { return overlay_.tailscale.connect_timeout_ms; }
  bool keeps_state() const override { return true; }

  // How long a helper has to exit after SIGTERM before it is killed.
  static constexpr int kStopBoundMs = 10000;

  void Start() override;
  void Stop() override;
  uint64_t WhenReady(std::function<void(const Status&)> done) override;
  void CancelWait(uint64_t wait) override;
  Result<std::unique_ptr<InboundListener>> Listen(uint16_t port, const std::string& owner,
                                                  InboundListener::Events events) override;
  void AppendStatus(std::ostream& out) const override;

  // The node's state directory: config::TailscaleStateDir (state_dir, else
  // <network_service.state_dir>/tailscale/<ns:name escaped>, else "": tsnet's own default).
  std::string StateDir() const;
  // The helper binary: `helper`, else $VIA_TSNET, else via-tsnet next to the running via binary,
  // else <prefix>/lib/via/via-tsnet.
  std::string HelperPath() const;

  const config::TailscaleSettings& settings() const { return overlay_.tailscale; }
  const std::string& auth_key() const { return auth_key_; }
  const std::string& secret() const { return secret_; }
  bool attached() const { return !overlay_.tailscale.localapi_socket.empty(); }
  // The hostname the node registers ("wippy" when unset, as in Wippy).
  // The MagicDNS suffix of the tailnet, from the node's own name once it runs.
  std::string NameSuffix() const override;
  std::string hostname() const;
  // The helper's SOCKS5 address from its STATUS (socks=127.0.0.1:port); false for text that is
  // not a numeric loopback host:port. Public for tests.
  bool SetEndpoint(const std::string& host_port);
  void ClearEndpoint() { endpoints_.clear(); }

 private:
  friend class TailscaleListener;
  TailscaleOverlay(const config::Overlay& overlay, const OverlayContext& context);

  void Spawn();
  // flock() on <dir>/via-tsnet.lock, held from the first spawn to the overlay's end (and by its
  // helpers): one node per state directory, whatever config or path names it. EBUSY if taken.
  Status LockStateDir(const std::string& dir);
  void OnControl();
  void OnHelperGone(const std::string& why);
  void OnStatus(const HelperMessage& m);
  Status NotReadyStatus() const;
  // Who dials, in messages: "tailscale node <hostname> of <id>", "tailscaled at <socket> for <id>".
  std::string NodeText() const;
  // The node needs a login that control refused (bad or expired key): waiting cannot help.
  bool LoginRefused() const;
  void Send(const std::string& verb,
            const std::vector<std::pair<std::string, std::string>>& fields);
  void SendListen(uint16_t port);
  void OnListenReply(const HelperMessage& m);
  // Child processes: watched (pidfd) from Spawn until reaped.
  void Track(pid_t pid);
  void OnChildExit(pid_t pid);
  void PollChild(pid_t pid);
  void Untrack(pid_t pid);
  // SIGTERM now, SIGKILL after kStopBoundMs unless it exited; does not wait.
  void Retire(pid_t pid);
  // Blocks until every child has exited, SIGKILLs what is left at `deadline_ms` (NowMs()).
  void WaitChildren(int64_t deadline_ms);

  const config::Overlay overlay_;  // copied: the caller's entry may go first
  const config::NetworkService* service_;
  EventLoop* loop_;
  std::shared_ptr<spdlog::logger> log_;
  std::string auth_key_;
  std::string secret_;  // the helper's SOCKS5 password, per run
  std::vector<Endpoint> endpoints_;

  UniqueFd ctl_;
  UniqueFd lock_;   // see LockStateDir
  pid_t pid_ = -1;  // the current helper
  struct Child {
    UniqueFd pidfd;           // readable once it exited; empty without pidfd_open (then polled)
    uint64_t poll_timer = 0;  // without a pidfd
    uint64_t kill_timer = 0;  // SIGKILL, once retired
    bool retired = false;     // SIGTERM sent
  };
  std::map<pid_t, Child> children_;  // spawned and not yet reaped
  int64_t stop_deadline_ms_ = 0;     // set by Stop()
  std::string log_path_;
  int restarts_ = 0;
  int backoff_ms_ = 1000;
  uint64_t restart_timer_ = 0;
  bool stopping_ = false;
  bool started_ = false;  // Start() ran: the helper runs or is being restarted

  // From the helper's last STATUS.
  std::string state_ = "Idle";  // until a program selects the overlay
  std::string error_;
  std::string health_;
  std::string auth_url_;
  std::string ips_;
  std::string name_;

  ReadyWaiters waiters_;
  // A port the node listens on, shared by every listen() of programs on that port (e.g. one
  // socket for 0.0.0.0 and one for ::): accepted connections go to them in turn.
  struct Port {
    std::vector<TailscaleListener*> listeners;  // not owned (the Server owns them)
    bool sent = false;                          // LISTEN went to the current helper
    std::string address;                        // from LISTENING; "" until then
    size_t next = 0;                            // round robin
  };
  std::map<uint16_t, Port> ports_;
};

// One port the node listens on for a program. Destroying it stops the node's listener.
class TailscaleListener : public InboundListener {
 public:
  TailscaleListener(TailscaleOverlay* rt, uint16_t port, Events events)
      : rt_(rt), port_(port), events_(std::move(events)) {}
  ~TailscaleListener() override;
  std::string address() const override { return address_; }

 private:
  friend class TailscaleOverlay;
  TailscaleOverlay* rt_;
  uint16_t port_;
  Events events_;
  std::string address_;
  bool ready_ = false;  // ready() was called
};

}  // namespace via::overlays
