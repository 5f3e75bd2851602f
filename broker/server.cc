#include "broker/server.h"

#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "broker/peer_lineage.h"
#include "broker/socket_file.h"

namespace via::broker {

namespace {

constexpr int kReadsPerEvent = 1;  // epoll is level-triggered: a second read would mostly
                                   // find EAGAIN (a shim has one request in flight per link)

}  // namespace

Server::Server(std::shared_ptr<const config::Config> cfg, const BrokerOptions& options,
               EventLoop* loop, std::shared_ptr<spdlog::logger> log)
    : options_(options),
      loop_(loop),
      log_(std::move(log)),
      overlays_(std::make_unique<OverlaySet>(std::move(cfg), 1)),
      recv_buf_(wire::kMaxMessage + 1) {
  idle_timeout_s_ =
      options.idle_timeout_s >= 0 ? options.idle_timeout_s : config().service.idle_timeout_s;
  ctx_.loop = loop_;
  ctx_.log = log_;
  ctx_.options = &options_;
  ctx_.overlays = overlays_.get();
  ctx_.sessions = &sessions_;
  ctx_.clients = this;
}

Server::~Server() {
  // Stop answering first, so that a client closed below (`via stop` waits for that) never finds
  // the old socket again and a new broker can take its place at once.
  acceptor_.Stop();
  if (bound_) RemoveSocketFileIfOurs(options_.socket_path, socket_stat_);
  listeners_.CloseAll();
  // Overlays go down before the clients are closed: `via stop` returns when its connection
  // closes, and by then what they hold on their far side (a node, sessions) is gone.
  overlays_->StopAll();
  while (!clients_.empty()) CloseClient(clients_.begin()->first);
  if (idle_timer_ != 0) loop_->CancelTimer(idle_timer_);
}

// ---- start-up ---------------------------------------------------------------------------------

Status Server::Start() {
  auto pool = FakeAddressPool::Create(config().service.fake_ipv4, config().service.fake_ipv6);
  if (!pool.ok()) return pool.status().WithContext("network_service");
  pool_ = std::make_unique<FakeAddressPool>(std::move(*pool));
  ctx_.pool = pool_.get();

  // Overlays resolve their proxy hosts here, before the loop runs: never on the loop thread.
  overlays_->Build(loop_, log_, nullptr);
  if (Status s = CheckSocketDir(options_.socket_path); !s.ok()) return s;
  SetDescriptorBudget();
  if (Status s = Listen(); !s.ok()) return s;
  // Only now, as the one broker of this socket: the name table of the brokers before it, so
  // that an address a program still holds keeps its name (docs/architecture.md, "Names").
  MarkExecHello(options_.socket_path, config());
  size_t restored = 0;
  if (Status s = pool_->OpenJournal(options_.socket_path + ".names", &restored); !s.ok()) {
    return s.WithContext("network_service fake addresses");
  }
  log_->info("broker pid {} listening on {} (config {}); overlays: {}", getpid(),
             options_.socket_path, config().source, overlays_->Summary());
  log_->info("fake-address table {}: {} name(s) kept from earlier brokers", pool_->table_id(),
             restored);
  log_->info(
      "descriptor limit {}: up to {} client connections, {} per process, {} connects in flight",
      ctx_.nofile_limit, ctx_.caps.total, ctx_.caps.per_pid, ctx_.caps.ops);
  if (!config().programs.empty() || !config().policies.empty()) {
    log_->info("{} program rule(s), {} network.select policy entr(y/ies)", config().programs.size(),
               config().policies.size());
  }
  UpdateIdle();
  return Status::Ok();
}

void Server::SetDescriptorBudget() {
  // The soft descriptor limit is raised to the hard one (at most 65536): the broker holds a
  // descriptor per client connection and per connect in flight, and uses epoll, not select.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max && rl.rlim_cur < 65536) {
    rlimit raised = rl;
    raised.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
  }
  ctx_.nofile_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? uint64_t(rl.rlim_cur) : 1024;
  if (ctx_.nofile_limit > (uint64_t(1) << 20)) ctx_.nofile_limit = uint64_t(1) << 20;
  ctx_.caps = ClientCaps::ForDescriptorLimit(ctx_.nofile_limit);
}

Status Server::Listen() {
  auto fd = BindSocketFile(options_.socket_path, &bound_, &socket_stat_);
  if (!fd.ok()) return fd.status();
  if (Status s = acceptor_.Start(std::move(*fd)); !s.ok()) return s;
  // Not fatal: without it, only processes that change user lose the broker (and fail closed).
  auto abstract = ListenAbstract(options_.socket_path);
  if (!abstract.ok()) {
    log_->warn("{}: processes of a session that change user cannot reach this broker",
               abstract.status().message());
    return Status::Ok();
  }
  return acceptor_.Start(std::move(*abstract), /*lineage=*/true);
}

// ---- clients ----------------------------------------------------------------------------------

Status Server::AddClient(UniqueFd fd, pid_t pid, bool foreign) {
  const uint64_t id = next_client_++;
  Status s = loop_->Watch(fd.get(), ClientConn::kRequestEvents,
                          [this, id](uint32_t ev) { OnClientEvent(id, ev); });
  if (!s.ok()) return s;
  auto c = std::make_unique<Client>(id, std::move(fd), pid);
  c->foreign = foreign;
  clients_[id] = std::move(c);
  return Status::Ok();
}

void Server::UpdateInterest(Client& c) {
  if (c.conn.UpdatePaused(c.ops.size())) {
    ++ctx_.load.backpressure_events;
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kOther, &suppressed)) {
      log_->info(
          "not reading requests from {} for now: {} replies ({} bytes) it has not read, {} "
          "connects in flight{}",
          PeerText(c), c.conn.outbox().size(), c.conn.outbox().bytes(), c.ops.size(),
          SuppressedText(suppressed));
    }
  }
  const uint32_t want = c.conn.WantedEvents();
  if (want != c.conn.events() && loop_->Modify(c.conn.fd(), want).ok()) c.conn.set_events(want);
}

void Server::OnClientEvent(uint64_t client_id, uint32_t events) {
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return;
  Client& c = *it->second;
  if (events & EPOLLOUT) {
    if (!c.conn.Flush()) return CloseClient(client_id);
    UpdateInterest(c);
    if (c.close_when_idle && c.ops.empty() && c.conn.outbox().empty()) {
      return CloseClient(client_id);
    }
  }
  if (c.conn.paused()) {
    // Its requests wait in the socket until it reads its replies; a hang-up still closes it.
    if (events & (EPOLLHUP | EPOLLERR)) CloseClient(client_id);
    return;
  }
  // A hang-up or error shows up as end-of-file or an error from recvmsg, after the queued
  // requests have been read.
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ReadRequests(client_id);
}

bool Server::ReadRequests(uint64_t client_id) {
  for (int round = 0; round < kReadsPerEvent; ++round) {
    auto it = clients_.find(client_id);
    if (it == clients_.end()) return false;
    Client& c = *it->second;
    size_t n = 0;
    std::vector<UniqueFd> fds;
    std::string why;
    switch (c.conn.Receive(recv_buf_, &n, &fds, &why)) {
      case ClientConn::Received::kAgain:
        return true;
      case ClientConn::Received::kClosed:
        CloseClient(client_id);
        return false;
      case ClientConn::Received::kTruncated: {
        uint64_t suppressed = 0;
        if (LogAllowed(Noisy::kMalformed, &suppressed)) {
          log_->warn("closing connection from {}: {}{}", PeerText(c), why,
                     SuppressedText(suppressed));
        }
        ReplyError(c, wire::kReplyBit, 0, EPROTO, why);
        CloseClient(client_id);
        return false;
      }
      case ClientConn::Received::kMessage:
        break;
    }
    Handle(c, recv_buf_.data(), n, fds);
    auto again = clients_.find(client_id);
    if (again == clients_.end()) return false;
    UpdateInterest(*again->second);
    if (again->second->conn.paused()) break;
  }
  return clients_.count(client_id) != 0;
}

Client* Server::FindClient(uint64_t id) {
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : it->second.get();
}

void Server::CloseClient(uint64_t client_id) {
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return;
  std::unique_ptr<Client> c = std::move(it->second);
  clients_.erase(it);
  acceptor_.Closed(c->pid());
  connects_.CancelClient(*c);
  names_.CloseResponders(client_id);
  for (const SessionTable::Session& s : sessions_.EndOwnedBy(client_id)) {
    log_->info("session {} ({}) ended", s.token.substr(0, 8), s.network);
  }
  loop_->Unwatch(c->conn.fd());
  UpdateIdle();
}

void Server::UpdateIdle() {
  if (!clients_.empty() || sessions_.size() != 0 || !listeners_.empty() || options_.stay) {
    if (idle_timer_ != 0) loop_->CancelTimer(idle_timer_);
    idle_timer_ = 0;
    return;
  }
  if (idle_timer_ != 0) return;
  idle_timer_ = loop_->AddTimer(int64_t(idle_timeout_s_) * 1000, [this] {
    idle_timer_ = 0;
    log_->info("no sessions or clients for {}s: exiting", idle_timeout_s_);
    loop_->Quit();
  });
}

// ---- replies ----------------------------------------------------------------------------------

void Server::Reply(Client& c, const wire::Writer& w, UniqueFd fd) {
  if (!w.ok()) {
    // Answered all the same (an error with the request's type and id), so that the shim fails
    // the call at once instead of waiting for its deadline.
    const uint16_t type = w.size() >= wire::kHeaderSize ? wire::GetLE16(w.data() + 4) : 0;
    const uint32_t id = w.size() >= wire::kHeaderSize ? wire::GetLE32(w.data() + 8) : 0;
    log_->error("a reply to {} (type 0x{:04x}) did not fit in a message", PeerText(c), type);
    if (type != 0) ReplyError(c, type, id, EMSGSIZE, "the broker's reply did not fit in a message");
    return;
  }
  // Queued: a request already read is always answered. Past the bound, UpdateInterest stops
  // reading this client's requests until it has read its replies. A connect that finished may
  // let a paused client's requests be read again.
  if (c.conn.Send(w.data(), w.size(), std::move(fd)) || c.conn.paused()) UpdateInterest(c);
}

// ---- requests ---------------------------------------------------------------------------------

const Server::Route* Server::FindRoute(uint16_t type) {
  // Lambdas rather than member pointers: the handlers live in different services.
  static const Route kRoutes[] = {
      {wire::kHello, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.sessions_svc_.HandleHello(c, m);
       }},
      {wire::kConnect, true,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
         s.connects_.HandleConnect(c, m, fds);
       }},
      {wire::kResolve, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.names_.HandleResolve(c, m);
       }},
      {wire::kReverse, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.names_.HandleReverse(c, m);
       }},
      {wire::kOpenSession, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.sessions_svc_.HandleOpenSession(c, m);
       }},
      {wire::kStatus, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.status_.HandleStatus(c, m);
       }},
      {wire::kShutdown, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.HandleShutdown(c, m);
       }},
      {wire::kDnsQuery, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.names_.HandleDnsQuery(c, m);
       }},
      {wire::kDnsSocket, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.names_.HandleDnsSocket(c, m);
       }},
      {wire::kSessionChild, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.sessions_svc_.HandleSessionChild(c, m);
       }},
      {wire::kReload, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.HandleReload(c, m);
       }},
      {wire::kSessionDetach, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.sessions_svc_.HandleSessionDetach(c, m);
       }},
      {wire::kNewnym, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.HandleNewnym(c, m);
       }},
      {wire::kStrictProcess, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.sessions_svc_.HandleStrictProcess(c, m);
       }},
      {wire::kListen, true,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
         s.listeners_.HandleListen(c, m, fds);
       }},
      {wire::kProxySocket, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.connects_.HandleProxySocket(c, m);
       }},
      {wire::kReport, false,
       [](Server& s, Client& c, const wire::Message& m, std::vector<UniqueFd>&) {
         s.connects_.HandleReport(c, m);
       }},
  };
  for (const Route& r : kRoutes) {
    if (r.type == type) return &r;
  }
  return nullptr;
}

void Server::Handle(Client& c, const uint8_t* data, size_t n, std::vector<UniqueFd>& fds) {
  wire::Message m;
  wire::ParseError pe = m.Parse(data, n);
  if (pe != wire::ParseError::kOk) {
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kMalformed, &suppressed)) {
      log_->warn("closing connection from {}: malformed message: {}{}", PeerText(c),
                 wire::ParseErrorText(pe), SuppressedText(suppressed));
    }
    ReplyError(c, wire::kReplyBit, 0, EPROTO, wire::ParseErrorText(pe));
    CloseClient(c.id);
    return;
  }
  const Route* route = FindRoute(m.type());
  if (route == nullptr || !route->takes_fds) fds.clear();
  if (RefusedBeforeHandler(c, m, fds)) return;
  if (route == nullptr) {
    return ReplyError(c, m.type() | wire::kReplyBit, m.id(), EPROTO,
                      "unknown message type " + std::to_string(m.type()));
  }
  route->handle(*this, c, m, fds);
}

bool Server::RefusedBeforeHandler(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
  const uint16_t type = m.type();
  const uint16_t reply = type | wire::kReplyBit;
  if (type == wire::kConnect && connects_.in_flight() >= ctx_.caps.ops) {
    // Each connect in flight holds a descriptor: past the budget, an answer at once (the
    // program's socket is given back first).
    fds.clear();
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log_->warn("CONNECT from {} refused: {} connects in flight (the limit){}", PeerText(c),
                 connects_.in_flight(), SuppressedText(suppressed));
    }
    ReplyError(c, reply, m.id(), EAGAIN,
               "the via broker has " + std::to_string(connects_.in_flight()) +
                   " connects in flight, its limit for descriptor limit " +
                   std::to_string(ctx_.nofile_limit) + "; try again");
    return true;
  }
  if (c.foreign && !ForeignPeerMay(type)) {
    ReplyError(c, reply, m.id(), EPERM,
               "message type " + std::to_string(type) +
                   " is for the broker's own user; this process changed user inside a session "
                   "(it may route its connections, not control the broker)");
    return true;
  }
  if (type == wire::kHello) return false;
  if (!c.greeted) {
    ReplyError(c, reply, m.id(), EPROTO, "HELLO must be the first message on a connection");
    return true;
  }
  // After a reload, the network is selected again under the new rules and policies.
  if (c.generation != overlays_->generation()) sessions_svc_.ApplyHello(c);
  if (!c.hello_error.ok()) {
    ReplyError(c, reply, m.id(), c.hello_error.code(), c.hello_error.message());
    return true;
  }
  return false;
}

void Server::HandleReload(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kReload | wire::kReplyBit;
  Status s = Reload("requested by " + PeerText(c));
  uint8_t buf[8192];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, uint32_t(s.code()));
  if (!s.ok()) w.PutString(wire::kTagMessage, std::string_view(s.message()).substr(0, 6000));
  w.PutString(wire::kTagFingerprint, config().fingerprint);
  Reply(c, w);
}

Status Server::Reload(const std::string& why) {
  auto loaded = config::LoadConfig(options_.config_path);
  if (!loaded.ok()) {
    log_->error("reload ({}) rejected, still running the previous configuration: {}", why,
                loaded.status().message());
    return loaded.status();
  }
  auto cfg = std::make_shared<const config::Config>(std::move(*loaded));
  if (cfg->service.fake_ipv4 != config().service.fake_ipv4 ||
      cfg->service.fake_ipv6 != config().service.fake_ipv6) {
    log_->warn(
        "reload: the fake-address pools changed; they apply after a restart (names handed "
        "out must keep working)");
  }
  // Overlays resolve proxy host names; the loop is blocked for that (a config uses addresses
  // or names from /etc/hosts in practice).
  auto next = std::make_unique<OverlaySet>(std::move(cfg), overlays_->generation() + 1);
  next->Build(loop_, log_, overlays_.get());
  overlays_ = std::move(next);
  ctx_.overlays = overlays_.get();
  MarkExecHello(options_.socket_path, config());
  sessions_svc_.ForgetLoggedErrors();
  ReselectClients();
  log_->info(
      "reloaded {} ({}): fingerprint {}; overlays: {}; {} program rule(s), {} "
      "network.select policy entr(y/ies); connects in flight finish as they started",
      config().source, why, config().fingerprint, overlays_->Summary(), config().programs.size(),
      config().policies.size());
  return Status::Ok();
}

// `via newnym` (docs/protocol.md, "NEWNYM"): each selected overlay starts a new identity
// (Overlay::NewIdentity: for SOCKS5, a new epoch in every isolation credential); shims holding
// credentials of the old one greet again. Tor's SIGNAL NEWNYM goes to its control port from the
// CLI, not from here: the broker's loop never waits on it.
void Server::HandleNewnym(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kNewnym | wire::kReplyBit;
  wire::Field f;
  std::string only;
  if (m.Find(wire::kTagNetwork, &f) && f.len > 0) {
    const config::Overlay* o = config().Find(f.str());
    if (o == nullptr) {
      return ReplyError(c, reply, m.id(), ENOENT,
                        "NEWNYM: unknown overlay \"" + std::string(f.str()) + "\"");
    }
    only = o->id;
  }
  std::string text;
  uint32_t renewed = 0;
  for (const auto& [id, st] : overlays_->all()) {
    if (!only.empty() && id != only) continue;
    if (!st->instance) {
      text += id + ": unavailable (" + st->error.message() + ")\n";
      continue;
    }
    if (Status s = st->instance->NewIdentity(); !s.ok()) {
      if (!only.empty() || s.code() != ENOTSUP) text += id + ": " + s.message() + "\n";
      continue;
    }
    ++renewed;
    const size_t closed = CloseStalePlans(st.get());
    text += id + ": new identity for later connections (" + std::to_string(closed) +
            " program link(s) told to greet again)\n";
    log_->info("newnym: {} starts a new identity (requested by {}); {} program link(s) greet "
               "again",
               id, PeerText(c), closed);
  }
  uint8_t buf[8192];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutU32(wire::kTagCount, renewed);
  w.PutString(wire::kTagMessage, std::string_view(text).substr(0, 6000));
  Reply(c, w);
}

size_t Server::CloseStalePlans(const OverlayState* only) {
  std::vector<uint64_t> stale;
  size_t count = 0;
  for (auto& [id, cl] : clients_) {
    if (!cl->greeted || cl->control || cl->overlay.get() != only) continue;
    if (cl->shim_plan == sessions_svc_.ShimPlan(*cl, nullptr)) continue;
    ++count;
    if (cl->ops.empty()) {
      stale.push_back(id);
    } else {
      cl->close_when_idle = true;
    }
  }
  for (uint64_t id : stale) CloseClient(id);
  return count;
}

namespace {

// What a client's shim was told about routes (HELLO flag bit 10 and the routes' globs and
// ranges): a reload that changes it must make the shim greet again, like a flip to direct.
std::string RoutesKey(const Client& c) {
  std::string key;
  if (c.routes == nullptr) return key;
  for (const config::Route& r : *c.routes) key += r.MatchText() + "=" + r.network + "\n";
  return key;
}

}  // namespace

void Server::ReselectClients() {
  // Every client's network is selected again now. A shim whose network is direct never asks the
  // broker again, and one routed through an overlay would keep sending CONNECTs: where the
  // reload flips a client between the two, its link is closed (once no connect is in flight),
  // and the shim's next call opens a new one and greets again. Programs' own connections are
  // untouched.
  std::vector<uint64_t> flipped;
  for (auto& [id, cl] : clients_) {
    if (!cl->greeted || cl->control) continue;
    bool was_direct = cl->hello_error.ok() && cl->overlay == nullptr;
    const std::string was_routes = RoutesKey(*cl);
    sessions_svc_.ApplyHello(*cl);
    bool now_direct = cl->hello_error.ok() && cl->overlay == nullptr;
    // A shim that runs SOCKS5 itself holds the proxy and credentials it was given: when those
    // change (or go away), it must greet again too.
    if (was_direct == now_direct && cl->shim_plan == sessions_svc_.ShimPlan(*cl, nullptr) &&
        RoutesKey(*cl) == was_routes) {
      continue;
    }
    if (cl->ops.empty()) {
      flipped.push_back(id);
    } else {
      cl->close_when_idle = true;
    }
  }
  for (uint64_t id : flipped) {
    log_->info("reload: closing the link of {} (now {}), so that it greets again",
               PeerText(*clients_[id]), clients_[id]->network);
    CloseClient(id);
  }
}

void Server::HandleShutdown(Client& c, const wire::Message& m) {
  ReplyOk(c, wire::kShutdown | wire::kReplyBit, m.id());
  log_->info("shutdown requested by {}", PeerText(c));
  loop_->Quit();
}

}  // namespace via::broker
