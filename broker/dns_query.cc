// Server::HandleDnsQuery: DNS queries a program sent itself (a raw UDP socket, dig, c-ares),
// handed over by the shim instead of reaching any resolver. Answered from the fake-address
// table (broker/dns_message.h); the shim delivers the answer on the program's socket.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <utility>

#include "broker/dns_message.h"
#include "broker/server.h"

namespace via::broker {

void Server::HandleDnsQuery(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kDnsQuery | wire::kReplyBit;
  wire::Field f;
  if (!m.Find(wire::kTagDnsPacket, &f)) {
    return ReplyError(c, reply, m.id(), EINVAL, "DNS_QUERY needs DNS_PACKET");
  }
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "DNS_QUERY is answered only under an overlay (this connection is direct)");
  }
  DnsPolicy policy;
  policy.lookup = [this](const std::string& name) {
    FakeAddressPool::Pair p = pool_->Lookup(name);
    return std::make_pair(p.v4, p.v6);
  };
  policy.reverse = [this](const wire::Addr& a) { return pool_->Reverse(a); };
  policy.refuse = c.overlay == no_network_;
  std::string summary;
  std::optional<std::string> answer = AnswerDnsQuery(f.str(), policy, &summary);
  if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
    log_->info("dns query via {}: {} ({}){}", c.overlay->overlay->id, summary, PeerText(c),
               SuppressedText(suppressed));
  }
  uint8_t buf[kMaxDnsPacket + 1024];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  if (answer) w.PutBytes(wire::kTagDnsPacket, answer->data(), answer->size());
  w.PutString(wire::kTagMessage, summary.substr(0, 512));
  Reply(c, w);
}

}  // namespace via::broker

namespace via::broker {

bool Server::StartRemoteResolve(Client& c, const wire::Message& m, const overlays::Target& target,
                                uint8_t family) {
  std::shared_ptr<OverlayState> overlay = c.overlay;
  if (overlay == nullptr || !overlay->instance || !overlay->instance->ResolvesRemotely(target)) {
    return false;
  }
  const uint16_t reply = m.type() | wire::kReplyBit;
  const std::string what = target.ToString();
  auto fail = [&](int err, const std::string& msg) {
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log_->warn("remote resolve of {} via {} failed: {} ({}){}", what, overlay->overlay->id, msg,
                 PeerText(c), SuppressedText(suppressed));
    }
    ReplyError(c, reply, m.id(), err, what + " via " + overlay->overlay->id + ": " + msg);
    return true;
  };
  overlays::Target asked = target;
  asked.who = c.who;
  auto hs = overlay->instance->NewResolveHandshake(asked);
  if (!hs.ok()) return fail(hs.status().code(), hs.status().message());
  const auto& endpoints = overlay->instance->endpoints();
  if (endpoints.empty()) return fail(EHOSTUNREACH, "the overlay has no endpoint");
  // A socket of the broker's own, in the family of the first endpoint (IPv6 reaches both).
  UniqueFd fd(socket(endpoints[0].addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return fail(errno, std::string("socket: ") + std::strerror(errno));
  uint64_t op_id = next_op_++;
  PendingConnect& p = ops_[op_id];
  p.client = c.id;
  p.request_id = m.id();
  p.overlay = overlay;
  p.target = target;
  p.resolve = true;
  p.family = family;
  p.handshake = hs->get();
  p.op = std::make_unique<overlays::ConnectOp>(loop_, overlay->instance.get(), std::move(fd),
                                               std::move(*hs));
  c.ops.push_back(op_id);
  p.op->Start([this, op_id](int err, const std::string& msg) { OnConnectDone(op_id, err, msg); });
  return true;
}

void Server::RemoteResolveDone(PendingConnect& p, Client& c, int err, const std::string& msg) {
  const std::string& id = p.overlay->overlay->id;
  const bool reverse = p.target.name.empty();
  const uint16_t reply = (reverse ? wire::kReverse : wire::kResolve) | wire::kReplyBit;
  const std::string what = p.target.ToString();
  if (err != 0) {
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log_->warn("remote resolve of {} via {} failed: {} ({}){}", what, id, msg, PeerText(c),
                 SuppressedText(suppressed));
    }
    // A name the exit cannot resolve is "no such name" for the program (EAI_NONAME).
    return ReplyError(c, reply, p.request_id, reverse ? ENOENT : err,
                      what + " via " + id + ": " + msg);
  }
  uint8_t buf[512];
  wire::Writer w(buf, sizeof buf, reply, p.request_id);
  w.PutU32(wire::kTagErrno, 0);
  if (reverse) {
    std::string name = p.handshake->ResolvedName();
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log_->info("remote resolve of {} via {}: {} ({}){}", what, id, name, PeerText(c),
                 SuppressedText(suppressed));
    }
    w.PutString(wire::kTagName, name);
  } else {
    wire::Addr a = p.handshake->ResolvedAddr();
    char text[80];
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log_->info("remote resolve of {} via {}: {} ({}){}", p.target.name, id,
                 wire::FormatAddr(a, text, sizeof text), PeerText(c), SuppressedText(suppressed));
    }
    a.port = 0;
    // RESOLVE gives one address; a request for the other family gets none.
    if (p.family == 0 || p.family == a.family) w.PutAddr(wire::kTagAddr, a);
  }
  Reply(c, w);
}

}  // namespace via::broker

namespace via::broker {

namespace {

constexpr size_t kMaxRespondersPerClient = 64;

}  // namespace

void Server::HandleDnsSocket(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kDnsSocket | wire::kReplyBit;
  wire::Field f;
  wire::Addr peer;
  if (!m.Find(wire::kTagAddr, &f) || !f.addr(&peer) || peer.port == 0) {
    return ReplyError(c, reply, m.id(), EINVAL, "DNS_SOCKET needs the ADDR of a bound socket");
  }
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "DNS_SOCKET is answered only under an overlay (this connection is direct)");
  }
  // The program's socket receives on loopback; a wildcard or mapped address is reached there.
  wire::Addr target = wire::Unmapped(peer);
  static const uint8_t kZero[16] = {};
  if (std::memcmp(target.bytes, kZero, target.addr_len()) == 0) {
    target.bytes[0] = target.family == 4 ? 127 : 0;
    target.bytes[target.addr_len() - 1] = 1;
  }
  if (!wire::IsLoopback(target)) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "DNS_SOCKET: the program's socket must be bound to loopback or the "
                      "wildcard address");
  }
  // At most kMaxRespondersPerClient per client: the oldest goes first.
  size_t mine = 0;
  int oldest = -1;
  uint64_t oldest_seq = UINT64_MAX;
  for (const auto& [fd, r] : dns_responders_) {
    if (r.client != c.id) continue;
    ++mine;
    if (r.seq < oldest_seq) {
      oldest_seq = r.seq;
      oldest = fd;
    }
  }
  if (mine >= kMaxRespondersPerClient && oldest >= 0) {
    loop_->Unwatch(oldest);
    dns_responders_.erase(oldest);
  }
  const int family = target.family == 4 ? AF_INET : AF_INET6;
  UniqueFd fd(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return ReplyError(c, reply, m.id(), errno, std::string("socket: ") + strerror(errno));
  wire::Addr local = target;
  local.port = 0;
  sockaddr_storage ss;
  socklen_t len = wire::AddrToSockaddr(local, &ss);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return ReplyError(c, reply, m.id(), errno, std::string("bind: ") + strerror(errno));
  }
  // Connected to the program's socket: the kernel delivers nothing else to the responder.
  len = wire::AddrToSockaddr(target, &ss);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return ReplyError(c, reply, m.id(), errno, std::string("connect: ") + strerror(errno));
  }
  len = sizeof ss;
  wire::Addr bound;
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
      !wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, &bound)) {
    return ReplyError(c, reply, m.id(), EIO, "getsockname of the DNS responder failed");
  }
  const int raw = fd.get();
  if (Status s = loop_->Watch(raw, EPOLLIN, [this, raw](uint32_t) { OnDnsResponder(raw); });
      !s.ok()) {
    return ReplyError(c, reply, m.id(), s.code(), s.message());
  }
  dns_responders_[raw] =
      DnsResponder{std::move(fd), c.id, c.overlay->overlay->id, PeerText(c), next_responder_++};
  uint8_t buf[128];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutAddr(wire::kTagAddr, bound);
  Reply(c, w);
}

void Server::OnDnsResponder(int fd) {
  auto it = dns_responders_.find(fd);
  if (it == dns_responders_.end()) return;
  DnsPolicy policy;
  policy.lookup = [this](const std::string& name) {
    FakeAddressPool::Pair p = pool_->Lookup(name);
    return std::make_pair(p.v4, p.v6);
  };
  policy.reverse = [this](const wire::Addr& a) { return pool_->Reverse(a); };
  policy.refuse = it->second.overlay == config::kNoNetwork;
  for (int i = 0; i < 16; ++i) {  // a few datagrams per wakeup; the loop comes back for more
    uint8_t query[kMaxDnsPacket + 1];
    ssize_t n = recv(fd, query, sizeof query, 0);
    if (n < 0) {
      // ECONNREFUSED: the program's socket is gone (closed); nothing more will come.
      if (errno == ECONNREFUSED) {
        loop_->Unwatch(fd);
        dns_responders_.erase(it);
      }
      return;
    }
    std::string summary;
    std::optional<std::string> answer = AnswerDnsQuery(
        std::string_view(reinterpret_cast<const char*>(query), size_t(n)), policy, &summary);
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log_->info("dns query via {}: {} ({}){}", it->second.overlay, summary, it->second.peer,
                 SuppressedText(suppressed));
    }
    if (answer) (void)!send(fd, answer->data(), answer->size(), MSG_DONTWAIT);
  }
}

void Server::CloseDnsResponders(uint64_t client_id) {
  for (auto it = dns_responders_.begin(); it != dns_responders_.end();) {
    if (it->second.client == client_id) {
      loop_->Unwatch(it->first);
      it = dns_responders_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace via::broker
