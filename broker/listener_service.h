// ListenerService: inbound listeners (docs/protocol.md "LISTEN"). A program's listening socket
// is replaced by the peer of a socketpair whose other end the broker holds; the overlay accepts
// streams on its side (Overlay::Listen) and each is handed to the program over the socketpair
// (ACCEPTED with SCM_RIGHTS). network_service.listen decides whether a listen goes to the
// overlay, stays on the host (local) or is refused.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "broker/context.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "overlays/inbound_listener.h"

namespace via::broker {

class ListenerService : public Service {
 public:
  // An inbound listener: the program's listening fd was replaced by the peer of `sock`.
  struct Entry {
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

  explicit ListenerService(BrokerContext* ctx) : Service(ctx) {}
  ListenerService(const ListenerService&) = delete;
  ListenerService& operator=(const ListenerService&) = delete;

  // `fds` holds what the request carried: LISTEN needs exactly the broker's end of a socketpair.
  void HandleListen(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds);
  // Destroys every listener and what still drains (the broker stops).
  void CloseAll();

  // For the idle timer and status: listeners open, and those closed but still serving streams.
  bool empty() const { return listeners_.empty() && draining_.empty(); }
  const std::map<uint64_t, Entry>& listeners() const { return listeners_; }
  size_t draining() const { return draining_.size(); }

 private:
  // Answers LISTEN at once when network_service.listen is local or refuse; false for overlay.
  bool AnswerByPolicy(Client& c, const wire::Message& m, const std::string& where);
  // The reply to a listen the overlay cannot carry.
  void ListenFailed(Client& c, const wire::Message& m, const std::string& where,
                    const std::string& owner, const Status& s);
  void OnListenerReady(uint64_t id, const Status& s);
  void OnListenerAccepted(uint64_t id, overlays::AcceptedStream stream);
  // Destroys a listener (its overlay side goes down) after the current handlers have run.
  // With `drain`, the overlay side stays until accepted streams are done (InboundListener::Drain).
  void CloseListener(uint64_t id, const std::string& why, bool drain = true);

  std::map<uint64_t, Entry> listeners_;
  // Listeners the program closed whose overlay side still serves accepted streams.
  std::map<uint64_t, std::unique_ptr<overlays::InboundListener>> draining_;
  uint64_t next_listener_ = 1;
};

}  // namespace via::broker
