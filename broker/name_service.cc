#include "broker/name_service.h"

#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string_view>
#include <utility>

namespace via::broker {

namespace {

constexpr size_t kMaxRespondersPerClient = 64;

}  // namespace

void NameService::HandleResolve(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kResolve | wire::kReplyBit;
  wire::Field f;
  if (!m.Find(wire::kTagName, &f))
    return ReplyError(c, reply, m.id(), EINVAL, "RESOLVE needs NAME");
  auto name = NormalizeName(f.str());
  if (!name.ok()) return ReplyError(c, reply, m.id(), EINVAL, name.status().message());
  uint8_t family = 0;
  if (m.Find(wire::kTagFamily, &f) &&
      (!f.u8(&family) || (family != 0 && family != 4 && family != 6))) {
    return ReplyError(c, reply, m.id(), EINVAL, "RESOLVE: FAMILY must be 0, 4 or 6");
  }
  // Routes first (docs/configuration.md, "Routes by destination"): a name routed elsewhere than
  // the client's own network gets fake addresses whose CONNECT the broker routes (the route is a
  // function of the name, so the fake address keeps it); block fails here; direct (or no route
  // for a direct client) is resolved by the shim with the system resolver.
  uint32_t route_flags = 0;
  if (c.routes != nullptr) {
    const config::Route* r = config::FindLookupRoute(*c.routes, *name);
    // A suffix learned since this client's HELLO (a tailnet's node that came up after it).
    const std::vector<config::Route> learned =
        r == nullptr ? ctx_->overlays->LearnedRoutes() : std::vector<config::Route>{};
    if (r == nullptr) r = config::FindLookupRoute(learned, *name);
    if (r != nullptr && r->port == 0 && r->network == config::kBlockNetwork) {
      log()->info("resolve {} blocked by route {} ({}) ({})", *name, r->id, r->where(),
                  PeerText(c));
      return ReplyError(c, reply, m.id(), ENETUNREACH,
                        *name + " is blocked by route " + r->id + " (" + r->where() + ")");
    }
    const bool direct =
        r != nullptr ? r->port == 0 && r->network == config::kDirectNetwork : c.overlay == nullptr;
    if (direct) {
      uint8_t buf[64];
      wire::Writer w(buf, sizeof buf, reply, m.id());
      w.PutU32(wire::kTagErrno, 0);
      w.PutU32(wire::kTagFlags, wire::kFlagRouteDirect);
      return Reply(c, w);
    }
    if (r != nullptr && (r->port != 0 || r->network != c.network)) {
      route_flags = wire::kFlagRouted;
      // Its overlay gets ready ahead of the connect (an I2P session takes 20 s), as a HELLO that
      // selects it would make it.
      auto it = ctx_->overlays->all().find(r->network);
      if (it != ctx_->overlays->all().end() && it->second->instance) it->second->instance->Start();
    }
  }
  overlays::Target remote;
  remote.name = *name;
  if (route_flags == 0 && remote_->StartRemoteResolve(c, m, remote, family)) return;
  // A pool large enough that a second's worth of new names cannot cycle it promises each answer
  // for kNameHoldMs, and the shim answers repeat lookups from its cache meanwhile (saves a round
  // trip per getaddrinfo). A small pool recycles freely and promises nothing.
  constexpr int64_t kNameHoldMs = 2000;
  constexpr size_t kMinPoolForHold = 65536;
  const int64_t hold = pool()->capacity() >= kMinPoolForHold ? kNameHoldMs : 0;
  auto p = pool()->LookupHeld(*name, hold > 0 ? NowMs() : 0, hold);
  if (!p.ok()) {
    if (p.status().code() != EAGAIN) log()->error("resolve {}: {}", *name, p.status().message());
    return ReplyError(c, reply, m.id(), p.status().code(), p.status().message());
  }
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  if (family != 6) w.PutAddr(wire::kTagAddr, p->v4);
  if (family != 4) w.PutAddr(wire::kTagAddr, p->v6);
  if (hold > 0 && route_flags == 0) w.PutU32(wire::kTagHoldMs, uint32_t(hold));
  if (route_flags != 0) w.PutU32(wire::kTagFlags, route_flags);
  if (log()->should_log(spdlog::level::debug)) {
    log()->debug("resolve {} -> {} hold {} ms ({})", *name, AddrText(p->v4, false), hold,
                 PeerText(c));
  }
  Reply(c, w);
}

void NameService::HandleReverse(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kReverse | wire::kReplyBit;
  wire::Field f;
  wire::Addr a;
  if (!m.Find(wire::kTagAddr, &f) || !f.addr(&a)) {
    return ReplyError(c, reply, m.id(), EINVAL, "REVERSE needs a well-formed ADDR");
  }
  std::optional<std::string> name = pool()->Reverse(a);
  if (!name && !pool()->Contains(a) && !wire::IsLoopback(a)) {  // loopback: the shim answers
    overlays::Target remote;
    remote.addr = wire::Unmapped(a);
    if (remote_->StartRemoteResolve(c, m, remote, 0)) return;
  }
  if (!name) {
    return ReplyError(c, reply, m.id(), ENOENT,
                      AddrText(a, false) + " is not a fake address in use");
  }
  uint8_t buf[512];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagName, *name);
  Reply(c, w);
}

void NameService::HandleDnsQuery(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kDnsQuery | wire::kReplyBit;
  wire::Field f;
  if (!m.Find(wire::kTagDnsPacket, &f)) {
    return ReplyError(c, reply, m.id(), EINVAL, "DNS_QUERY needs DNS_PACKET");
  }
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "DNS_QUERY is answered only under an overlay (this connection is direct)");
  }
  DnsPolicy policy = Policy();
  policy.refuse = c.overlay->none;
  std::string summary;
  std::optional<std::string> answer = AnswerDnsQuery(f.str(), policy, &summary);
  if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
    log()->info("dns query via {}: {} ({}){}", c.overlay->overlay->id, summary, PeerText(c),
                SuppressedText(suppressed));
  }
  uint8_t buf[kMaxDnsPacket + 1024];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  if (answer) w.PutBytes(wire::kTagDnsPacket, answer->data(), answer->size());
  w.PutString(wire::kTagMessage, summary.substr(0, 512));
  Reply(c, w);
}

void NameService::HandleDnsSocket(Client& c, const wire::Message& m) {
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
  EvictOldestResponder(c.id);
  wire::Addr bound;
  Result<UniqueFd> fd = OpenResponderSocket(target, &bound);
  if (!fd.ok()) return ReplyError(c, reply, m.id(), fd.status().code(), fd.status().message());
  const int raw = fd->get();
  if (Status s = loop()->Watch(raw, EPOLLIN, [this, raw](uint32_t) { OnDnsResponder(raw); });
      !s.ok()) {
    return ReplyError(c, reply, m.id(), s.code(), s.message());
  }
  responders_[raw] =
      DnsResponder{std::move(*fd), c.id, c.overlay->overlay->id, PeerText(c), next_responder_++};
  uint8_t buf[128];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutAddr(wire::kTagAddr, bound);
  Reply(c, w);
}

void NameService::EvictOldestResponder(uint64_t client_id) {
  // At most kMaxRespondersPerClient per client: the oldest goes first.
  size_t mine = 0;
  int oldest = -1;
  uint64_t oldest_seq = UINT64_MAX;
  for (const auto& [fd, r] : responders_) {
    if (r.client != client_id) continue;
    ++mine;
    if (r.seq < oldest_seq) {
      oldest_seq = r.seq;
      oldest = fd;
    }
  }
  if (mine >= kMaxRespondersPerClient && oldest >= 0) {
    loop()->Unwatch(oldest);
    responders_.erase(oldest);
  }
}

Result<UniqueFd> NameService::OpenResponderSocket(const wire::Addr& target, wire::Addr* bound) {
  const int family = target.family == 4 ? AF_INET : AF_INET6;
  UniqueFd fd(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Status::Error(errno, std::string("socket: ") + strerror(errno));
  wire::Addr local = target;
  local.port = 0;
  sockaddr_storage ss;
  socklen_t len = wire::AddrToSockaddr(local, &ss);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return Status::Error(errno, std::string("bind: ") + strerror(errno));
  }
  // Connected to the program's socket: the kernel delivers nothing else to the responder.
  len = wire::AddrToSockaddr(target, &ss);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return Status::Error(errno, std::string("connect: ") + strerror(errno));
  }
  len = sizeof ss;
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
      !wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, bound)) {
    return Status::Error(EIO, "getsockname of the DNS responder failed");
  }
  return fd;
}

DnsPolicy NameService::Policy() {
  DnsPolicy policy;
  policy.lookup = [this](const std::string& name) {
    FakeAddressPool::Pair p = pool()->Lookup(name);
    return std::make_pair(p.v4, p.v6);
  };
  policy.reverse = [this](const wire::Addr& a) { return pool()->Reverse(a); };
  return policy;
}

void NameService::OnDnsResponder(int fd) {
  auto it = responders_.find(fd);
  if (it == responders_.end()) return;
  DnsPolicy policy = Policy();
  policy.refuse = it->second.overlay == config::kNoNetwork;
  for (int i = 0; i < 16; ++i) {  // a few datagrams per wakeup; the loop comes back for more
    uint8_t query[kMaxDnsPacket + 1];
    ssize_t n = recv(fd, query, sizeof query, 0);
    if (n < 0) {
      // ECONNREFUSED: the program's socket is gone (closed); nothing more will come.
      if (errno == ECONNREFUSED) {
        loop()->Unwatch(fd);
        responders_.erase(it);
      }
      return;
    }
    std::string summary;
    std::optional<std::string> answer = AnswerDnsQuery(
        std::string_view(reinterpret_cast<const char*>(query), size_t(n)), policy, &summary);
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log()->info("dns query via {}: {} ({}){}", it->second.overlay, summary, it->second.peer,
                  SuppressedText(suppressed));
    }
    if (answer) (void)!send(fd, answer->data(), answer->size(), MSG_DONTWAIT);
  }
}

void NameService::CloseResponders(uint64_t client_id) {
  for (auto it = responders_.begin(); it != responders_.end();) {
    if (it->second.client == client_id) {
      loop()->Unwatch(it->first);
      it = responders_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace via::broker
