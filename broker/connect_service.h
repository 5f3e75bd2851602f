// ConnectService: the connects the broker runs for programs (CONNECT: a handshake on the
// program's own socket, through the client's overlay), the connects the shim ran itself and
// reports (REPORT), and remote resolves (RESOLVE/REVERSE answered by the overlay's far side, on
// a socket of the broker's own). Every one in flight is a ConnectOp on the loop; it may wait for
// its overlay to get ready (Overlay::WhenReady) first.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/context.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "overlays/connect_op.h"
#include "overlays/handshake.h"

namespace via::broker {

class ConnectService : public Service {
 public:
  explicit ConnectService(BrokerContext* ctx) : Service(ctx) {}
  ConnectService(const ConnectService&) = delete;
  ConnectService& operator=(const ConnectService&) = delete;

  // `fds` holds what the request carried: CONNECT needs exactly the program's socket.
  void HandleConnect(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);
  void HandleReport(Client& c, const wire::Message& m);
  // PROXY_SOCKET: a socket connecting to the proxy, for a strict session's shim.
  void HandleProxySocket(Client& c, const wire::Message& m);
  // RESOLVE/REVERSE of `target` through the client's overlay, when the overlay resolves it
  // remotely (Overlay::ResolvesRemotely); false if that does not apply (then the caller
  // answers). `family` is RESOLVE's FAMILY (0 for REVERSE).
  bool StartRemoteResolve(Client& c, const wire::Message& m, const overlays::Target& target,
                          uint8_t family);
  // Cancels the client's operations in flight (a destroyed ConnectOp restores the program's
  // socket and closes its duplicate; no reply is sent).
  void CancelClient(Client& c);
  // Operations in flight over all clients (each holds a descriptor: ClientCaps::ops).
  size_t in_flight() const { return ops_.size(); }

 private:
  // REPORT with COUNT and REFUSED (a strict session's refusals, by kind).
  void CountRefused(Client& c, const wire::Message& m, std::string_view kind, uint32_t count);
  struct PendingConnect {
    uint64_t client = 0;
    uint32_t request_id = 0;
    std::shared_ptr<OverlayState> overlay;
    overlays::Target target;
    std::unique_ptr<overlays::ConnectOp> op;
    // A remote resolve (Tor's RESOLVE/RESOLVE_PTR on a socket of the broker's own) instead of
    // a program's connect. `handshake` is owned by `op`.
    bool resolve = false;
    uint8_t family = 0;  // RESOLVE's FAMILY
    const overlays::ResolveHandshake* handshake = nullptr;
    UniqueFd waiting_fd;  // the program's socket while the overlay gets ready
    int domain = 0;       // its family (SO_DOMAIN), already asked
    uint64_t wait = 0;    // Overlay::WhenReady wait id
    // A PROXY_SOCKET greeting the proxy ahead of the shim's request: the socket to hand over
    // (`op` drives a duplicate of it).
    UniqueFd greeted;
  };
  // PROXY_SOCKET with kFlagGreeted: starts the greeting on `fd` (not connected yet).
  void StartGreeting(Client& c, uint32_t request_id, UniqueFd fd, int domain,
                     const std::string& username, const std::string& password);
  void GreetingDone(Client& c, PendingConnect& p, int err, const std::string& msg);

  // Where a CONNECT of a client with routes goes: the first route that matches the target (a
  // fake address's name, or the address), else the client's own network.
  struct RouteDecision {
    std::shared_ptr<OverlayState> overlay;  // through this overlay
    bool direct = false;                    // or the shim connects it directly
    int err = 0;                            // or refused (block: ENETUNREACH), with `message`
    std::string message;
  };
  RouteDecision DecideRoute(const Client& c, const overlays::Target& target) const;
  // The destination of a CONNECT (or REPORT) request, with fake addresses mapped back to names.
  Status ParseTarget(const wire::Message& m, overlays::Target* target);
  // Creates the handshake and the ConnectOp of a pending connect whose overlay is ready.
  void StartConnectOp(uint64_t op_id, const Status& ready);
  void OnConnectDone(uint64_t op_id, int err, const std::string& msg);
  // Counts, logs and replies a CONNECT that failed before or during its ConnectOp.
  void ConnectFailed(Client& c, uint32_t request_id, OverlayState* overlay,
                     const std::string& target, int err, const std::string& msg);
  void RemoteResolveDone(PendingConnect& p, Client& c, int err, const std::string& msg);

  std::unordered_map<uint64_t, PendingConnect> ops_;
  uint64_t next_op_ = 1;
};

}  // namespace via::broker
