#include "broker/listener_service.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace via::broker {

void ListenerService::HandleListen(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
  const uint16_t reply = wire::kListen | wire::kReplyBit;
  if (fds.size() != 1) {
    return ReplyError(c, reply, m.id(), fds.empty() ? EBADF : EINVAL,
                      "LISTEN must carry exactly one socket (the broker's end of a socketpair)");
  }
  int type = 0, domain = 0;
  socklen_t len = sizeof type;
  getsockopt(fds[0].get(), SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof domain;
  getsockopt(fds[0].get(), SOL_SOCKET, SO_DOMAIN, &domain, &len);
  if (type != SOCK_SEQPACKET || domain != AF_UNIX) {
    return ReplyError(c, reply, m.id(), EPROTOTYPE,
                      "LISTEN's socket must be an AF_UNIX SOCK_SEQPACKET socket");
  }
  wire::Field f;
  wire::Addr bound;
  if (!m.Find(wire::kTagAddr, &f) || !f.addr(&bound)) {
    return ReplyError(c, reply, m.id(), EINVAL, "LISTEN needs a well-formed ADDR");
  }
  const std::string where = AddrText(bound, true);
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "the connection's network is direct: listen without the broker");
  }
  if (AnswerByPolicy(c, m, where)) return;
  const std::string owner = PeerText(c);
  uint64_t lid = next_listener_++;
  Entry& e = listeners_[lid];
  e.client = c.id;
  e.request_id = m.id();
  e.overlay = c.overlay;
  e.sock = std::move(fds[0]);
  // Never block the loop on a program that does not accept: a full socket drops the stream.
  fcntl(e.sock.get(), F_SETFL, fcntl(e.sock.get(), F_GETFL) | O_NONBLOCK);
  e.bound = bound;
  e.owner = owner;
  overlays::InboundListener::Events ev;
  ev.ready = [this, lid](const Status& s) { OnListenerReady(lid, s); };
  ev.accepted = [this, lid](overlays::AcceptedStream a) { OnListenerAccepted(lid, std::move(a)); };
  ev.failed = [this, lid](const Status& s) { CloseListener(lid, s.message(), false); };
  Result<std::unique_ptr<overlays::InboundListener>> l =
      c.overlay->instance->Listen(bound.port, owner, std::move(ev));
  if (!l.ok()) {
    listeners_.erase(lid);
    return ListenFailed(c, m, where, owner, l.status());
  }
  auto it = listeners_.find(lid);
  if (it == listeners_.end()) return;  // failed at once and was closed
  it->second.listener = std::move(*l);
  // The program closing its listening socket (or exiting) hangs up the socketpair.
  loop()->Watch(it->second.sock.get(), EPOLLRDHUP,
                [this, lid](uint32_t) { CloseListener(lid, "closed by the program"); });
  clients().UpdateIdle();
}

bool ListenerService::AnswerByPolicy(Client& c, const wire::Message& m, const std::string& where) {
  const uint16_t reply = wire::kListen | wire::kReplyBit;
  const std::string& id = c.overlay->overlay->id;
  if (c.overlay->none) {  // not even network_service.listen: local
    ReplyError(c, reply, m.id(), ENETUNREACH,
               "listen on " + where + " refused: no network (network none)");
    return true;
  }
  switch (config().service.listen) {
    case config::ListenPolicy::kLocal: {
      if (uint64_t suppressed = 0; LogAllowed(Noisy::kOther, &suppressed)) {
        log()->info(
            "listen on {} under {} stays on the host's interfaces (network_service.listen: "
            "local) ({}){}",
            where, id, PeerText(c), SuppressedText(suppressed));
      }
      uint8_t buf[64];
      wire::Writer w(buf, sizeof buf, reply, m.id());
      w.PutU32(wire::kTagErrno, 0);
      w.PutU32(wire::kTagFlags, wire::kFlagListenLocal);
      Reply(c, w);
      return true;
    }
    case config::ListenPolicy::kRefuse: {
      std::string msg = "network_service.listen is refuse under " + id +
                        " (use overlay or local to allow listening)";
      if (uint64_t suppressed = 0; LogAllowed(Noisy::kOther, &suppressed)) {
        log()->warn("listen on {} refused: {} ({}){}", where, msg, PeerText(c),
                    SuppressedText(suppressed));
      }
      ReplyError(c, reply, m.id(), EOPNOTSUPP, msg);
      return true;
    }
    case config::ListenPolicy::kOverlay:
      break;
  }
  return false;
}

void ListenerService::ListenFailed(Client& c, const wire::Message& m, const std::string& where,
                                   const std::string& owner, const Status& s) {
  const std::string& id = c.overlay->overlay->id;
  std::string msg = s.code() == ENOTSUP
                        ? id + " (" + c.overlay->overlay->kind_name +
                              ") cannot carry inbound connections; set "
                              "network_service.listen: local to listen on the host's own "
                              "interfaces instead"
                        : id + ": " + s.message();
  int err = s.code() == ENOTSUP ? EOPNOTSUPP : s.code();
  if (uint64_t suppressed = 0; LogAllowed(Noisy::kOther, &suppressed)) {
    log()->warn("listen on {} failed: {} ({}){}", where, msg, owner, SuppressedText(suppressed));
  }
  ReplyError(c, wire::kListen | wire::kReplyBit, m.id(), err, msg);
}

void ListenerService::OnListenerReady(uint64_t id, const Status& s) {
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return;
  Entry& e = it->second;
  if (e.replied) return;
  e.replied = true;
  const uint16_t reply = wire::kListen | wire::kReplyBit;
  Client* requester = clients().FindClient(e.client);
  const std::string where = AddrText(e.bound, true);
  const std::string& oid = e.overlay->overlay->id;
  if (!s.ok()) {
    std::string msg = oid + ": " + s.message();
    log()->warn("listen on {} failed: {} ({})", where, msg, e.owner);
    if (requester != nullptr) ReplyError(*requester, reply, e.request_id, s.code(), msg);
    return CloseListener(id, "");
  }
  // `listener` is unset while Listen() has not returned yet.
  std::string address = e.listener ? e.listener->address() : "";
  if (requester == nullptr) return CloseListener(id, "the requester went away");
  uint8_t buf[512];
  wire::Writer w(buf, sizeof buf, reply, e.request_id);
  w.PutU32(wire::kTagErrno, 0);
  if (!address.empty()) w.PutString(wire::kTagListenAddress, address);
  Reply(*requester, w);
}

void ListenerService::OnListenerAccepted(uint64_t id, overlays::AcceptedStream stream) {
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return;
  Entry& e = it->second;
  // The peer gets a fake address (getnameinfo maps it back to its overlay name), in the family of
  // the program's listening socket.
  FakeAddressPool::Pair pair = pool()->Lookup(stream.peer_name);
  wire::Addr peer = e.bound.family == 4 ? pair.v4 : pair.v6;
  peer.port = 0;
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kAccepted, uint32_t(e.accepted + 1));
  w.PutU32(wire::kTagErrno, 0);
  w.PutAddr(wire::kTagAddr, peer);
  w.PutString(wire::kTagPeerName, stream.peer_name);
  ssize_t r = wire::SendDatagram(e.sock.get(), w.data(), w.size(), stream.fd.get());
  if (r < 0) {
    log()->warn("listener {} of {}: cannot hand over a connection from {}: {}",
                AddrText(e.bound, true), e.owner, stream.peer_name, std::strerror(errno));
    return;
  }
  e.accepted++;
  log()->info("listener {} via {}: accepted a connection from {} ({})", AddrText(e.bound, true),
              e.overlay->overlay->id, stream.peer_name, e.owner);
}

void ListenerService::CloseListener(uint64_t id, const std::string& why, bool drain) {
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return;
  if (it->second.sock) loop()->Unwatch(it->second.sock.get());
  if (!why.empty()) {
    log()->info("listener {} via {} ({}): {}", AddrText(it->second.bound, true),
                it->second.overlay->overlay->id, it->second.owner, why);
  }
  // Destroyed after the current handlers: this may run inside the listener's own callback.
  auto entry = std::make_shared<Entry>(std::move(it->second));
  listeners_.erase(it);
  if (entry->listener && drain) {
    // Accepted streams may still need the overlay side (e.g. a session of the listener's own).
    overlays::InboundListener* l = entry->listener.get();
    draining_[id] = std::move(entry->listener);
    l->Drain([this, id] {
      loop()->Post([this, id] {
        draining_.erase(id);
        clients().UpdateIdle();
      });
    });
  }
  loop()->Post([entry] {});
  clients().UpdateIdle();
}

void ListenerService::CloseAll() {
  listeners_.clear();
  draining_.clear();
}

}  // namespace via::broker
