#include "broker/connect_service.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

#include "overlays/socks5/socks5_handshake.h"

namespace via::broker {

namespace {

// Whether the program's socket is something the broker can connect through a TCP overlay; its
// family goes to *domain (the ConnectOp needs it too). SO_TYPE as well as SO_PROTOCOL: a raw
// socket can have protocol IPPROTO_TCP.
Status CheckTcpSocket(int fd, int* domain) {
  int type = 0, protocol = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    if (errno == ENOTSOCK)
      return Status::Error(ENOTSOCK, "the attached descriptor is not a socket");
    return Status::FromErrno("getsockopt(SO_TYPE) on the attached socket");
  }
  len = sizeof *domain;
  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, domain, &len);
  len = sizeof protocol;
  getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len);
  if (type != SOCK_STREAM || (*domain != AF_INET && *domain != AF_INET6) ||
      protocol != IPPROTO_TCP) {
    return Status::Error(EPROTOTYPE, "the attached socket is not a TCP socket");
  }
  return Status::Ok();
}

}  // namespace

// PROXY_SOCKET: the shim of a process in a strict session cannot reach the proxy from its
// namespace, so the broker starts the TCP connect to one of the endpoints HELLO gave it and
// hands the socket over; the shim runs its own handshake on it (docs/protocol.md). Only to the
// proxy, only where HELLO let the shim speak SOCKS5, and only for a strict session's process:
// anything else gets no socket of the broker's namespace.
void ConnectService::HandleProxySocket(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kProxySocket | wire::kReplyBit;
  const SessionTable::Session* s = c.session.empty() ? nullptr : sessions().Find(c.session);
  if (s == nullptr || !s->strict || c.shim_plan.empty() || c.overlay == nullptr ||
      !c.overlay->instance) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "PROXY_SOCKET: only a strict session's process whose network lets it speak "
                      "SOCKS5 itself may ask for one");
  }
  wire::Field f;
  wire::Addr to;
  uint8_t family = 0;
  if (!m.Find(wire::kTagAddr, &f) || !f.addr(&to) || !m.Find(wire::kTagFamily, &f) ||
      !f.u8(&family) || (family != 4 && family != 6) || (family == 4 && to.family != 4)) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "PROXY_SOCKET: needs ADDR and FAMILY (4 or 6, the address's or 6 for an "
                      "IPv4-mapped one)");
  }
  const wire::Addr want = wire::Unmapped(to);
  const auto& eps = c.overlay->instance->endpoints();
  const bool known = std::any_of(eps.begin(), eps.end(), [&](const overlays::Endpoint& e) {
    wire::Addr a;
    return wire::AddrFromSockaddr(reinterpret_cast<const sockaddr*>(&e.addr), e.len, &a) &&
           a == want;
  });
  if (!known) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "PROXY_SOCKET: the address is not one of the overlay's proxy endpoints");
  }
  UniqueFd fd(
      socket(family == 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    const int err = errno;
    return ReplyError(c, reply, m.id(), err, std::string("PROXY_SOCKET: socket: ") + strerror(err));
  }
  uint32_t asked = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&asked);
  const auto plan = c.overlay->instance->program_socks5(c.who);
  if ((asked & wire::kFlagGreeted) != 0 && plan && !plan->isolate_streams &&
      plan->destination_prefix.empty()) {
    return StartGreeting(c, m.id(), std::move(fd), family == 6 ? AF_INET6 : AF_INET, plan->username,
                         plan->password);
  }
  sockaddr_storage ss;
  const socklen_t len = wire::AddrToSockaddr(to, &ss);
  uint32_t flags = 0;
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    const int err = errno;
    if (err != EINPROGRESS && err != EINTR) {
      // The shim words it as its own connect's failure ("cannot connect to proxy ...").
      return ReplyError(c, reply, m.id(), err, strerror(err));
    }
    flags |= wire::kFlagInProgress;
  }
  if (log()->should_log(spdlog::level::debug)) {  // PeerText reads /proc: not per connect
    char ep[80];
    log()->debug("proxy socket to {} for a strict session's program ({})",
                 wire::FormatAddr(to, ep, sizeof ep), PeerText(c));
  }
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutU32(wire::kTagFlags, flags);
  Reply(c, w, std::move(fd));
}

// The greeting runs as a CONNECT's handshake would (ConnectOp, on a duplicate), stopping once the
// proxy has taken the method and the credentials; the reply waits for it.
void ConnectService::StartGreeting(Client& c, uint32_t request_id, UniqueFd fd, int domain,
                                   const std::string& username, const std::string& password) {
  UniqueFd dup(fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!dup) {
    const int err = errno;
    return ReplyError(c, wire::kProxySocket | wire::kReplyBit, request_id, err,
                      std::string("PROXY_SOCKET: dup: ") + strerror(err));
  }
  overlays::Target greeting;  // no request is sent: an address only to be valid
  greeting.addr.family = 4;
  auto hs = std::make_unique<overlays::Socks5Handshake>(greeting, username, password);
  hs->SetGreetOnly();
  uint64_t op_id = next_op_++;
  PendingConnect& p = ops_[op_id];
  p.client = c.id;
  p.request_id = request_id;
  p.overlay = c.overlay;
  p.target = greeting;
  p.greeted = std::move(fd);
  c.ops.push_back(op_id);
  p.op = std::make_unique<overlays::ConnectOp>(loop(), c.overlay->instance.get(), std::move(dup),
                                               std::move(hs));
  p.op->set_domain(domain);
  // May finish (and erase `p`) before it returns.
  p.op->Start([this, op_id](int err, const std::string& msg) { OnConnectDone(op_id, err, msg); });
}

void ConnectService::GreetingDone(Client& c, PendingConnect& p, int err, const std::string& msg) {
  const uint16_t reply = wire::kProxySocket | wire::kReplyBit;
  if (err != 0) return ReplyError(c, reply, p.request_id, err, "PROXY_SOCKET: " + msg);
  if (log()->should_log(spdlog::level::debug)) {  // PeerText reads /proc: not per connect
    log()->debug("proxy socket greeted for a strict session's program ({})", PeerText(c));
  }
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, reply, p.request_id);
  w.PutU32(wire::kTagErrno, 0);
  w.PutU32(wire::kTagFlags, wire::kFlagGreeted);
  Reply(c, w, std::move(p.greeted));
}

// REPORT COUNT REFUSED: a strict session's supervisor counts what its namespace refused.
void ConnectService::CountRefused(Client& c, const wire::Message& m, std::string_view kind,
                                  uint32_t count) {
  const uint16_t reply = wire::kReport | wire::kReplyBit;
  SessionTable::Session* s = c.session.empty() ? nullptr : sessions().FindMutable(c.session);
  if (s == nullptr || !s->strict) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "REPORT REFUSED: the connection's session is not a strict one");
  }
  const bool printable =
      std::all_of(kind.begin(), kind.end(), [](char ch) { return ch >= 0x20 && ch < 0x7f; });
  if (kind.empty() || kind.size() > 64 || !printable) {
    return ReplyError(c, reply, m.id(), EINVAL, "REPORT: REFUSED must be 1-64 printable bytes");
  }
  auto it = s->refused.find(std::string(kind));
  if (it == s->refused.end()) {
    if (s->refused.size() >= SessionTable::Session::kMaxRefusedKinds) return;  // counted enough
    it = s->refused.emplace(std::string(kind), 0).first;
  }
  it->second += count;
}

// The shim connected (or failed to connect) a socket through a SOCKS5 overlay itself: the same
// count and log line as a CONNECT the broker ran. A success gets no reply.
void ConnectService::HandleReport(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kReport | wire::kReplyBit;
  wire::Field f;
  uint32_t err = 0;
  if (m.Find(wire::kTagErrno, &f) && !f.u32(&err)) {
    return ReplyError(c, reply, m.id(), EINVAL, "REPORT: malformed ERRNO field");
  }
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "REPORT on a connection whose network is direct: nothing was routed");
  }
  uint32_t count = 0;
  if (m.Find(wire::kTagCount, &f)) {
    if (!f.u32(&count) || count > (1u << 20) || err != 0) {
      return ReplyError(c, reply, m.id(), EINVAL,
                        "REPORT: COUNT must be a u32 of at most 1048576, without an ERRNO");
    }
    if (m.Find(wire::kTagRefused, &f)) return CountRefused(c, m, f.str(), count);
    c.overlay->ok += count;
    return;
  }
  // The destination as CONNECT names it (ADDR, or NAME and PORT).
  overlays::Target parsed;
  const std::string target = ParseTarget(m, &parsed).ok() ? parsed.ToString() : "?";
  if (err == 0) {
    c.overlay->ok++;
    if (log()->should_log(spdlog::level::debug)) {
      log()->debug("connect {} via {} ok, by the program ({})", target, c.overlay->overlay->id,
                   PeerText(c));
    }
    return;
  }
  c.overlay->failed++;
  std::string msg = m.Find(wire::kTagMessage, &f) ? std::string(f.str().substr(0, 2000)) : "";
  uint64_t suppressed = 0;
  if (LogAllowed(Noisy::kConnectFailed, &suppressed)) {
    log()->warn("connect {} via {} failed: {} ({}){}", target, c.overlay->overlay->id, msg,
                PeerText(c), SuppressedText(suppressed));
  }
  ReplyOk(c, reply, m.id());
}

Status ConnectService::ParseTarget(const wire::Message& m, overlays::Target* target) {
  wire::Field f;
  if (m.Find(wire::kTagAddr, &f)) {
    wire::Addr dest;
    if (!f.addr(&dest)) return Status::Invalid("CONNECT: malformed ADDR field");
    target->port = dest.port;
    if (!pool()->Contains(dest)) {
      target->addr = wire::Unmapped(dest);
      return Status::Ok();
    }
    std::optional<std::string> name = pool()->Reverse(dest);  // also marks the name used
    if (!name) {
      return Status::Error(EHOSTUNREACH,
                           "unknown fake address " + AddrText(wire::Unmapped(dest), false) +
                               " (the name was resolved by a broker that has since restarted?)");
    }
    target->name = std::move(*name);
    return Status::Ok();
  }
  if (!m.Find(wire::kTagName, &f)) return Status::Invalid("CONNECT needs ADDR, or NAME and PORT");
  auto name = NormalizeName(f.str());
  if (!name.ok()) return name.status();
  wire::Field pf;
  uint16_t port = 0;
  if (!m.Find(wire::kTagPort, &pf) || !pf.u16(&port)) {
    return Status::Invalid("CONNECT by NAME needs a PORT field");
  }
  target->name = std::move(*name);
  target->port = port;
  return Status::Ok();
}

void ConnectService::HandleConnect(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
  const uint16_t reply = wire::kConnect | wire::kReplyBit;
  if (fds.empty()) return ReplyError(c, reply, m.id(), EBADF, "CONNECT carries no socket");
  if (fds.size() > 1) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "CONNECT must carry exactly one socket, not " + std::to_string(fds.size()));
  }
  if (c.overlay == nullptr && c.routes == nullptr) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "the connection's network is direct: connect without the broker");
  }
  overlays::Target target;
  if (Status s = ParseTarget(m, &target); !s.ok()) {
    // A target that cannot be named is still a failed connect worth a log line.
    wire::Field f;
    wire::Addr a;
    std::string what = m.Find(wire::kTagAddr, &f) && f.addr(&a) ? AddrText(a, true) : "?";
    if (c.overlay == nullptr)
      return ReplyError(c, reply, m.id(), s.code(), what + ": " + s.message());
    return ConnectFailed(c, m.id(), c.overlay.get(), what, s.code(), s.message());
  }
  std::shared_ptr<OverlayState> overlay = c.overlay;
  if (c.routes != nullptr) {
    RouteDecision d = DecideRoute(c, target);
    if (d.err != 0) return ReplyError(c, reply, m.id(), d.err, d.message);
    if (d.direct) {
      // The shim connects the socket itself (its own descriptor; the broker's copy closes).
      if (log()->should_log(spdlog::level::debug)) {
        log()->debug("connect {} direct ({}) ({})", target.ToString(), d.message, PeerText(c));
      }
      uint8_t buf[64];
      wire::Writer w(buf, sizeof buf, reply, m.id());
      w.PutU32(wire::kTagErrno, 0);
      w.PutU32(wire::kTagFlags, wire::kFlagRouteDirect);
      return Reply(c, w);
    }
    overlay = std::move(d.overlay);
  }
  int domain = 0;
  if (Status s = CheckTcpSocket(fds[0].get(), &domain); !s.ok()) {
    return ConnectFailed(c, m.id(), overlay.get(), target.ToString(), s.code(), s.message());
  }
  uint64_t op_id = next_op_++;
  PendingConnect& p = ops_[op_id];
  p.client = c.id;
  p.request_id = m.id();
  p.overlay = overlay;
  p.target = std::move(target);
  p.target.who = c.who;
  p.waiting_fd = std::move(fds[0]);
  p.domain = domain;
  c.ops.push_back(op_id);
  if (!overlay->instance) return OnConnectDone(op_id, EHOSTUNREACH, overlay->error.message());
  if (overlay != c.overlay) overlay->instance->Start();  // chosen by a route: may not run yet
  // An overlay may need state of its own before a connect (a session, a node): wait for it.
  uint64_t wait = overlay->instance->WhenReady(
      [this, op_id](const Status& ready) { StartConnectOp(op_id, ready); });
  if (auto it = ops_.find(op_id); it != ops_.end() && !it->second.op) it->second.wait = wait;
}

ConnectService::RouteDecision ConnectService::DecideRoute(const Client& c,
                                                          const overlays::Target& target) const {
  RouteDecision d;
  const std::string what = target.ToString();
  const config::Route* r = nullptr;
  std::vector<config::Route> learned;  // a suffix learned since this client's HELLO
  if (!target.name.empty()) {
    r = config::FindNameRoute(*c.routes, target.name, target.port);
    if (r == nullptr) {
      learned = ctx_->overlays->LearnedRoutes();
      r = config::FindNameRoute(learned, target.name, target.port);
    }
  } else {
    r = config::FindAddrRoute(*c.routes, target.addr.family, target.addr.bytes, target.port);
  }
  if (r == nullptr && target.name.empty() && wire::IsLoopback(target.addr) &&
      config().service.loopback != config::LoopbackPolicy::kOverlay && c.overlay != nullptr) {
    // A route's range covered it (the shim asked), but no route took this port: loopback then
    // goes as network_service.loopback says, as it would have without routes.
    if (config().service.loopback == config::LoopbackPolicy::kRefuse) {
      d.err = ECONNREFUSED;
      d.message = what + ": loopback destinations are refused (network_service.loopback)";
    } else {
      d.direct = true;
      d.message = "loopback (network_service.loopback: direct)";
    }
    return d;
  }
  if (r == nullptr) {
    if (c.overlay != nullptr) {
      d.overlay = c.overlay;
    } else if (target.name.empty()) {
      d.direct = true;
      d.message = "no route matches; the process's network is direct";
    } else {
      // A fake address given out for a route with a port, connected on another port (or a name
      // sent as it is): the name would need the system resolver, which the broker never runs
      // on its loop.
      d.err = EINVAL;
      d.message = what +
                  ": no route matches it, and the connection's network is direct: connect "
                  "without the broker (a name route with a port gives the name a fake address "
                  "that only that port can use)";
    }
    return d;
  }
  const std::string by = "route " + r->id + " (" + r->where() + ")";
  if (r->network == config::kBlockNetwork) {
    d.err = ENETUNREACH;
    d.message = what + " is blocked by " + by;
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kConnectFailed, &suppressed)) {
      log()->warn("connect {} blocked by {} ({}){}", what, by, PeerText(c),
                  SuppressedText(suppressed));
    }
    return d;
  }
  if (r->network == config::kDirectNetwork) {
    if (!target.name.empty()) {
      d.err = EHOSTUNREACH;  // the parser refuses a name route to direct with a port
      d.message = what + ": " + by + " is direct, but the name has a fake address";
      return d;
    }
    d.direct = true;
    d.message = by;
    return d;
  }
  std::string id;
  if (Status s = ctx_->overlays->Select(r->network, &d.overlay, &id); !s.ok() || !d.overlay) {
    d.err = s.ok() ? EHOSTUNREACH : s.code();
    d.message = what + ": " + by + ": " + (s.ok() ? "no such overlay" : s.message());
  }
  return d;
}

void ConnectService::StartConnectOp(uint64_t op_id, const Status& ready) {
  auto it = ops_.find(op_id);
  if (it == ops_.end() || it->second.op) return;
  PendingConnect& p = it->second;
  p.wait = 0;
  if (!ready.ok()) return OnConnectDone(op_id, ready.code(), ready.message());
  auto hs = p.overlay->instance->NewHandshake(p.target);
  if (!hs.ok()) return OnConnectDone(op_id, hs.status().code(), hs.status().message());
  p.op = std::make_unique<overlays::ConnectOp>(loop(), p.overlay->instance.get(),
                                               std::move(p.waiting_fd), std::move(*hs));
  p.op->set_domain(p.domain);
  // May finish (and erase `p`) before it returns.
  p.op->Start([this, op_id](int err, const std::string& msg) { OnConnectDone(op_id, err, msg); });
}

void ConnectService::OnConnectDone(uint64_t op_id, int err, const std::string& msg) {
  auto it = ops_.find(op_id);
  if (it == ops_.end()) return;
  PendingConnect p = std::move(it->second);  // destroyed on return; the op has finished
  ops_.erase(it);
  Client* found = clients().FindClient(p.client);
  if (found == nullptr) return;
  Client& c = *found;
  std::erase(c.ops, op_id);
  if (p.resolve) return RemoteResolveDone(p, c, err, msg);
  if (p.greeted) return GreetingDone(c, p, err, msg);
  if (err != 0) {
    return ConnectFailed(c, p.request_id, p.overlay.get(), p.target.ToString(), err, msg);
  }
  p.overlay->ok++;
  if (log()->should_log(spdlog::level::debug)) {  // PeerText reads /proc: not per connect
    log()->debug("connect {} via {} ok ({})", p.target.ToString(), p.overlay->overlay->id,
                 PeerText(c));
  }
  ReplyOk(c, wire::kConnect | wire::kReplyBit, p.request_id);
  if (c.close_when_idle && c.ops.empty() && c.conn.outbox().empty()) clients().CloseClient(c.id);
}

void ConnectService::ConnectFailed(Client& c, uint32_t request_id, OverlayState* overlay,
                                   const std::string& target, int err, const std::string& msg) {
  overlay->failed++;
  const std::string& id = overlay->overlay->id;
  uint64_t suppressed = 0;
  if (LogAllowed(Noisy::kConnectFailed, &suppressed)) {
    log()->warn("connect {} via {} failed: {} ({}){}", target, id, msg, PeerText(c),
                SuppressedText(suppressed));
  }
  ReplyError(c, wire::kConnect | wire::kReplyBit, request_id, err,
             target + " via " + id + ": " + msg);
}

bool ConnectService::StartRemoteResolve(Client& c, const wire::Message& m,
                                        const overlays::Target& target, uint8_t family) {
  std::shared_ptr<OverlayState> overlay = c.overlay;
  if (overlay == nullptr || !overlay->instance || !overlay->instance->ResolvesRemotely(target)) {
    return false;
  }
  const uint16_t reply = m.type() | wire::kReplyBit;
  const std::string what = target.ToString();
  auto fail = [&](int err, const std::string& msg) {
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log()->warn("remote resolve of {} via {} failed: {} ({}){}", what, overlay->overlay->id, msg,
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
  p.op = std::make_unique<overlays::ConnectOp>(loop(), overlay->instance.get(), std::move(fd),
                                               std::move(*hs));
  c.ops.push_back(op_id);
  p.op->Start([this, op_id](int err, const std::string& msg) { OnConnectDone(op_id, err, msg); });
  return true;
}

void ConnectService::RemoteResolveDone(PendingConnect& p, Client& c, int err,
                                       const std::string& msg) {
  const std::string& id = p.overlay->overlay->id;
  const bool reverse = p.target.name.empty();
  const uint16_t reply = (reverse ? wire::kReverse : wire::kResolve) | wire::kReplyBit;
  const std::string what = p.target.ToString();
  if (err != 0) {
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log()->warn("remote resolve of {} via {} failed: {} ({}){}", what, id, msg, PeerText(c),
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
      log()->info("remote resolve of {} via {}: {} ({}){}", what, id, name, PeerText(c),
                  SuppressedText(suppressed));
    }
    w.PutString(wire::kTagName, name);
  } else {
    wire::Addr a = p.handshake->ResolvedAddr();
    char text[80];
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kDns, &suppressed)) {
      log()->info("remote resolve of {} via {}: {} ({}){}", p.target.name, id,
                  wire::FormatAddr(a, text, sizeof text), PeerText(c), SuppressedText(suppressed));
    }
    a.port = 0;
    // RESOLVE gives one address; a request for the other family gets none.
    if (p.family == 0 || p.family == a.family) w.PutAddr(wire::kTagAddr, a);
  }
  Reply(c, w);
}

void ConnectService::CancelClient(Client& c) {
  // Destroying a ConnectOp cancels it: flags restored, duplicate closed, no reply.
  for (uint64_t op : c.ops) {
    auto p = ops_.find(op);
    if (p == ops_.end()) continue;
    if (p->second.wait != 0 && p->second.overlay->instance) {
      p->second.overlay->instance->CancelWait(p->second.wait);
    }
    ops_.erase(p);
  }
  c.ops.clear();
}

}  // namespace via::broker
