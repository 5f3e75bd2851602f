// StatusService: `via status` (STATUS): the text that says what the broker runs — its config,
// the overlays and their connect counts, sessions, each overlay's own lines, listeners,
// clients, descriptors and refusals, and one line per program with its network and why.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "broker/connect_service.h"
#include "broker/context.h"
#include "broker/listener_service.h"
#include "common/wire.h"

namespace via::broker {

class StatusService : public Service {
 public:
  // *connects and *listeners must outlive the service.
  StatusService(BrokerContext* ctx, const ConnectService* connects,
                const ListenerService* listeners);

  void HandleStatus(Client& c, const wire::Message& m);
  // The whole text.
  std::string Render() const;

 private:
  void AppendOverlays(std::ostream& out) const;
  void AppendSessions(std::ostream& out) const;
  void AppendListeners(std::ostream& out) const;
  // The lines about descriptors, refused clients and backpressure.
  void AppendLoad(std::ostream& out) const;
  // One line per program (not per thread), with its network and why: what policy decided.
  void AppendPrograms(std::ostream& out) const;

  const ConnectService* connects_;
  const ListenerService* listeners_;
  int64_t started_ms_ = 0;
};

}  // namespace via::broker
