#include "broker/server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <sstream>

#include "broker/process_info.h"
#include "broker/selector.h"
#include "broker/socket_file.h"
#include "overlays/factory.h"
#include "overlays/handshake.h"

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
  started_ms_ = NowMs();
}

Server::~Server() {
  // Stop answering first, so that a client closed below (`via stop` waits for that) never finds
  // the old socket again and a new broker can take its place at once.
  if (listen_fd_) loop_->Unwatch(listen_fd_.get());
  listen_fd_.reset();
  if (accept_timer_ != 0) loop_->CancelTimer(accept_timer_);
  accept_timer_ = 0;
  if (bound_) RemoveSocketFileIfOurs(options_.socket_path, socket_stat_);
  listeners_.clear();
  draining_.clear();
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
  // One descriptor kept in reserve: past the descriptor limit it is given up for a moment to
  // accept, answer and close the client at the head of the backlog (RefusePending).
  reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
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

Status Server::Listen() {
  auto fd = BindSocketFile(options_.socket_path, &bound_, &socket_stat_);
  if (!fd.ok()) return fd.status();
  listen_fd_ = std::move(*fd);
  return loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
}

// ---- clients ----------------------------------------------------------------------------------

void Server::OnAccept() {
  // A bounded number per wake-up: the clients already connected get their turn in between.
  for (int round = 0; round < 64 && !accept_paused_; ++round) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        RefusePending(err);
        break;
      }
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kAccept, &suppressed)) {
        log_->warn("accept: {}{}", std::strerror(err), SuppressedText(suppressed));
      }
      PauseAccepting();
      break;
    }
    if (Admit(std::move(fd)) == Admission::kStop) break;
  }
  UpdateIdle();
}

Server::Admission Server::Admit(UniqueFd fd) {
  Result<ucred> cred = PeerCredentials(fd.get());
  if (!cred.ok()) {
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kAccept, &suppressed)) {
      log_->warn("{}; connection closed{}", cred.status().message(), SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  if (!PeerUidAllowed(*cred)) {
    ++ctx_.load.refused_other_uid;
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log_->warn("refused connection from uid {} pid {} (this broker serves uid {} only){}",
                 cred->uid, cred->pid, geteuid(), SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  if (Admission a = CheckClientCaps(fd.get(), cred->pid); a != Admission::kAdmit) return a;
  const uint64_t id = next_client_++;
  Status s = loop_->Watch(fd.get(), ClientConn::kRequestEvents,
                          [this, id](uint32_t ev) { OnClientEvent(id, ev); });
  if (!s.ok()) {
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kAccept, &suppressed)) {
      log_->warn("cannot watch a client: {}{}", s.message(), SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  ++clients_per_pid_[cred->pid];
  clients_[id] = std::make_unique<Client>(id, std::move(fd), cred->pid);
  accept_backoff_ms_ = 0;
  return Admission::kAdmit;
}

Server::Admission Server::CheckClientCaps(int fd, pid_t pid) {
  if (clients_.size() >= ctx_.caps.total) {
    ++ctx_.load.refused_cap;
    std::string why = "the via broker serves at most " + std::to_string(ctx_.caps.total) +
                      " connections (its descriptor limit is " + std::to_string(ctx_.nofile_limit) +
                      "); try again later, or see `via status`";
    SendRefusal(fd, why);
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log_->warn("refused a connection from pid {}: at the client cap ({} connections){}", pid,
                 ctx_.caps.total, SuppressedText(suppressed));
    }
    PauseAccepting();
    return Admission::kStop;
  }
  auto per = clients_per_pid_.find(pid);
  const size_t mine = per == clients_per_pid_.end() ? 0 : per->second;
  if (mine >= ctx_.caps.per_pid) {
    ++ctx_.load.refused_pid_cap;
    SendRefusal(fd, "this process has " + std::to_string(mine) +
                        " connections to the via broker already (at most " +
                        std::to_string(ctx_.caps.per_pid) + " per process)");
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log_->warn("refused a connection from pid {}: it has {} already (the cap per process){}", pid,
                 mine, SuppressedText(suppressed));
    }
    return Admission::kNext;
  }
  return Admission::kAdmit;
}

void Server::RefusePending(int accept_errno) {
  // The classic: give up the reserve descriptor, accept the client at the head of the backlog,
  // answer and close it, take the reserve again. Without it the listening socket would stay
  // readable and the loop spin on EMFILE.
  bool refused = false;
  if (reserve_fd_) {
    reserve_fd_.reset();
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (fd) {
      refused = true;
      SendRefusal(fd.get(), "the via broker is at its descriptor limit (" +
                                std::to_string(ctx_.nofile_limit) +
                                "); try again later, or see `via status`");
    }
    fd.reset();
    reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
  }
  if (refused) ++ctx_.load.refused_fd_limit;
  uint64_t suppressed = 0;
  if (LogAllowed(Noisy::kAccept, &suppressed)) {
    int open_fds = OpenDescriptors();
    log_->warn("accept: {} ({} of {} descriptors open, {} clients): {}{}",
               std::strerror(accept_errno), open_fds, ctx_.nofile_limit, clients_.size(),
               refused ? "refused the next client" : "clients wait in the backlog",
               SuppressedText(suppressed));
  }
  PauseAccepting();
}

void Server::PauseAccepting() {
  if (accept_paused_ || !listen_fd_) return;
  accept_paused_ = true;
  loop_->Modify(listen_fd_.get(), 0);
  accept_backoff_ms_ =
      accept_backoff_ms_ == 0 ? 50 : std::min<int64_t>(accept_backoff_ms_ * 2, 500);
  accept_timer_ = loop_->AddTimer(accept_backoff_ms_, [this] {
    accept_timer_ = 0;
    accept_paused_ = false;
    if (listen_fd_) loop_->Modify(listen_fd_.get(), EPOLLIN);
  });
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
  if (auto per = clients_per_pid_.find(c->pid()); per != clients_per_pid_.end()) {
    if (--per->second == 0) clients_per_pid_.erase(per);
  }
  // Destroying a ConnectOp cancels it: flags restored, duplicate closed, no reply.
  for (uint64_t op : c->ops) {
    auto p = ops_.find(op);
    if (p == ops_.end()) continue;
    if (p->second.wait != 0 && p->second.overlay->instance) {
      p->second.overlay->instance->CancelWait(p->second.wait);
    }
    ops_.erase(p);
  }
  CloseDnsResponders(client_id);
  for (const SessionTable::Session& s : sessions_.EndOwnedBy(client_id)) {
    log_->info("session {} ({}) ended", s.token.substr(0, 8), s.network);
  }
  loop_->Unwatch(c->conn.fd());
  UpdateIdle();
}

void Server::UpdateIdle() {
  if (!clients_.empty() || sessions_.size() != 0 || !listeners_.empty() || !draining_.empty() ||
      options_.stay) {
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

void Server::Reply(Client& c, const wire::Writer& w) {
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
  if (c.conn.Send(w.data(), w.size()) || c.conn.paused()) UpdateInterest(c);
}

// ---- requests ---------------------------------------------------------------------------------

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
  const uint16_t type = m.type();
  const uint16_t reply = type | wire::kReplyBit;
  if (type != wire::kConnect && type != wire::kListen) fds.clear();  // CONNECT/LISTEN only
  if (type == wire::kConnect && ops_.size() >= ctx_.caps.ops) {
    // Each connect in flight holds a descriptor: past the budget, an answer at once.
    fds.clear();
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kRefused, &suppressed)) {
      log_->warn("CONNECT from {} refused: {} connects in flight (the limit){}", PeerText(c),
                 ops_.size(), SuppressedText(suppressed));
    }
    return ReplyError(c, reply, m.id(), EAGAIN,
                      "the via broker has " + std::to_string(ops_.size()) +
                          " connects in flight, its limit for descriptor limit " +
                          std::to_string(ctx_.nofile_limit) + "; try again");
  }
  if (type != wire::kHello) {
    if (!c.greeted) {
      return ReplyError(c, reply, m.id(), EPROTO,
                        "HELLO must be the first message on a connection");
    }
    // After a reload, the network is selected again under the new rules and policies.
    if (c.generation != overlays_->generation()) sessions_svc_.ApplyHello(c);
    if (!c.hello_error.ok()) {
      return ReplyError(c, reply, m.id(), c.hello_error.code(), c.hello_error.message());
    }
  }
  switch (type) {
    case wire::kHello:
      return sessions_svc_.HandleHello(c, m);
    case wire::kConnect:
      return HandleConnect(c, m, fds);
    case wire::kResolve:
      return HandleResolve(c, m);
    case wire::kReverse:
      return HandleReverse(c, m);
    case wire::kOpenSession:
      return sessions_svc_.HandleOpenSession(c, m);
    case wire::kStatus:
      return HandleStatus(c, m);
    case wire::kShutdown:
      return HandleShutdown(c, m);
    case wire::kDnsQuery:
      return HandleDnsQuery(c, m);
    case wire::kDnsSocket:
      return HandleDnsSocket(c, m);
    case wire::kSessionChild:
      return sessions_svc_.HandleSessionChild(c, m);
    case wire::kReload:
      return HandleReload(c, m);
    case wire::kSessionDetach:
      return sessions_svc_.HandleSessionDetach(c, m);
    case wire::kListen:
      return HandleListen(c, m, fds);
    case wire::kReport:
      return HandleReport(c, m);
    default:
      return ReplyError(c, reply, m.id(), EPROTO, "unknown message type " + std::to_string(type));
  }
}

// The shim connected (or failed to connect) a socket through a SOCKS5 overlay itself: the same
// count and log line as a CONNECT the broker ran. A success gets no reply.
void Server::HandleReport(Client& c, const wire::Message& m) {
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
    c.overlay->ok += count;
    return;
  }
  // The destination as CONNECT names it (ADDR, or NAME and PORT).
  overlays::Target parsed;
  const std::string target = ParseTarget(m, &parsed).ok() ? parsed.ToString() : "?";
  if (err == 0) {
    c.overlay->ok++;
    if (log_->should_log(spdlog::level::debug)) {
      log_->debug("connect {} via {} ok, by the program ({})", target, c.overlay->overlay->id,
                  PeerText(c));
    }
    return;
  }
  c.overlay->failed++;
  std::string msg = m.Find(wire::kTagMessage, &f) ? std::string(f.str().substr(0, 2000)) : "";
  uint64_t suppressed = 0;
  if (LogAllowed(Noisy::kConnectFailed, &suppressed)) {
    log_->warn("connect {} via {} failed: {} ({}){}", target, c.overlay->overlay->id, msg,
               PeerText(c), SuppressedText(suppressed));
  }
  ReplyOk(c, reply, m.id());
}

Status Server::ParseTarget(const wire::Message& m, overlays::Target* target) {
  wire::Field f;
  if (m.Find(wire::kTagAddr, &f)) {
    wire::Addr dest;
    if (!f.addr(&dest)) return Status::Invalid("CONNECT: malformed ADDR field");
    target->port = dest.port;
    if (!pool_->Contains(dest)) {
      target->addr = wire::Unmapped(dest);
      return Status::Ok();
    }
    std::optional<std::string> name = pool_->Reverse(dest);  // also marks the name used
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

// Whether the program's socket is something the broker can connect through a TCP overlay; its
// family goes to *domain (the ConnectOp needs it too). SO_TYPE as well as SO_PROTOCOL: a raw
// socket can have protocol IPPROTO_TCP.
static Status CheckTcpSocket(int fd, int* domain) {
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

void Server::HandleConnect(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
  const uint16_t reply = wire::kConnect | wire::kReplyBit;
  if (fds.empty()) return ReplyError(c, reply, m.id(), EBADF, "CONNECT carries no socket");
  if (fds.size() > 1) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "CONNECT must carry exactly one socket, not " + std::to_string(fds.size()));
  }
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "the connection's network is direct: connect without the broker");
  }
  overlays::Target target;
  if (Status s = ParseTarget(m, &target); !s.ok()) {
    // A target that cannot be named is still a failed connect worth a log line.
    wire::Field f;
    wire::Addr a;
    std::string what = m.Find(wire::kTagAddr, &f) && f.addr(&a) ? AddrText(a, true) : "?";
    return ConnectFailed(c, m.id(), c.overlay.get(), what, s.code(), s.message());
  }
  int domain = 0;
  if (Status s = CheckTcpSocket(fds[0].get(), &domain); !s.ok()) {
    return ConnectFailed(c, m.id(), c.overlay.get(), target.ToString(), s.code(), s.message());
  }
  uint64_t op_id = next_op_++;
  PendingConnect& p = ops_[op_id];
  p.client = c.id;
  p.request_id = m.id();
  p.overlay = c.overlay;
  p.target = std::move(target);
  p.waiting_fd = std::move(fds[0]);
  p.domain = domain;
  c.ops.push_back(op_id);
  // An overlay may need state of its own before a connect (a session, a node): wait for it.
  uint64_t wait = c.overlay->instance->WhenReady(
      [this, op_id](const Status& ready) { StartConnectOp(op_id, ready); });
  if (auto it = ops_.find(op_id); it != ops_.end() && !it->second.op) it->second.wait = wait;
}

void Server::StartConnectOp(uint64_t op_id, const Status& ready) {
  auto it = ops_.find(op_id);
  if (it == ops_.end() || it->second.op) return;
  PendingConnect& p = it->second;
  p.wait = 0;
  if (!ready.ok()) return OnConnectDone(op_id, ready.code(), ready.message());
  auto hs = p.overlay->instance->NewHandshake(p.target);
  if (!hs.ok()) return OnConnectDone(op_id, hs.status().code(), hs.status().message());
  p.op = std::make_unique<overlays::ConnectOp>(loop_, p.overlay->instance.get(),
                                               std::move(p.waiting_fd), std::move(*hs));
  p.op->set_domain(p.domain);
  // May finish (and erase `p`) before it returns.
  p.op->Start([this, op_id](int err, const std::string& msg) { OnConnectDone(op_id, err, msg); });
}

void Server::OnConnectDone(uint64_t op_id, int err, const std::string& msg) {
  auto it = ops_.find(op_id);
  if (it == ops_.end()) return;
  PendingConnect p = std::move(it->second);  // destroyed on return; the op has finished
  ops_.erase(it);
  auto cit = clients_.find(p.client);
  if (cit == clients_.end()) return;
  Client& c = *cit->second;
  std::erase(c.ops, op_id);
  if (p.resolve) return RemoteResolveDone(p, c, err, msg);
  if (err != 0) {
    return ConnectFailed(c, p.request_id, p.overlay.get(), p.target.ToString(), err, msg);
  }
  p.overlay->ok++;
  if (log_->should_log(spdlog::level::debug)) {  // PeerText reads /proc: not per connect
    log_->debug("connect {} via {} ok ({})", p.target.ToString(), p.overlay->overlay->id,
                PeerText(c));
  }
  ReplyOk(c, wire::kConnect | wire::kReplyBit, p.request_id);
  if (c.close_when_idle && c.ops.empty() && c.conn.outbox().empty()) CloseClient(c.id);
}

void Server::ConnectFailed(Client& c, uint32_t request_id, OverlayState* overlay,
                           const std::string& target, int err, const std::string& msg) {
  overlay->failed++;
  const std::string& id = overlay->overlay->id;
  uint64_t suppressed = 0;
  if (LogAllowed(Noisy::kConnectFailed, &suppressed)) {
    log_->warn("connect {} via {} failed: {} ({}){}", target, id, msg, PeerText(c),
               SuppressedText(suppressed));
  }
  ReplyError(c, wire::kConnect | wire::kReplyBit, request_id, err,
             target + " via " + id + ": " + msg);
}

void Server::HandleResolve(Client& c, const wire::Message& m) {
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
  overlays::Target remote;
  remote.name = *name;
  if (StartRemoteResolve(c, m, remote, family)) return;
  // A pool large enough that a second's worth of new names cannot cycle it promises each answer
  // for kNameHoldMs, and the shim answers repeat lookups from its cache meanwhile (saves a round
  // trip per getaddrinfo). A small pool recycles freely and promises nothing.
  constexpr int64_t kNameHoldMs = 2000;
  constexpr size_t kMinPoolForHold = 65536;
  const int64_t hold = pool_->capacity() >= kMinPoolForHold ? kNameHoldMs : 0;
  auto p = pool_->LookupHeld(*name, hold > 0 ? NowMs() : 0, hold);
  if (!p.ok()) {
    if (p.status().code() != EAGAIN) log_->error("resolve {}: {}", *name, p.status().message());
    return ReplyError(c, reply, m.id(), p.status().code(), p.status().message());
  }
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  if (family != 6) w.PutAddr(wire::kTagAddr, p->v4);
  if (family != 4) w.PutAddr(wire::kTagAddr, p->v6);
  if (hold > 0) w.PutU32(wire::kTagHoldMs, uint32_t(hold));
  if (log_->should_log(spdlog::level::debug)) {
    log_->debug("resolve {} -> {} hold {} ms ({})", *name, AddrText(p->v4, false), hold,
                PeerText(c));
  }
  Reply(c, w);
}

void Server::HandleReverse(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kReverse | wire::kReplyBit;
  wire::Field f;
  wire::Addr a;
  if (!m.Find(wire::kTagAddr, &f) || !f.addr(&a)) {
    return ReplyError(c, reply, m.id(), EINVAL, "REVERSE needs a well-formed ADDR");
  }
  std::optional<std::string> name = pool_->Reverse(a);
  if (!name && !pool_->Contains(a) && !wire::IsLoopback(a)) {  // loopback: the shim answers
    overlays::Target remote;
    remote.addr = wire::Unmapped(a);
    if (StartRemoteResolve(c, m, remote, 0)) return;
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
  // Every client's network is selected again now. A shim whose network is direct never asks the
  // broker again, and one routed through an overlay would keep sending CONNECTs: where the
  // reload flips a client between the two, its link is closed (once no connect is in flight),
  // and the shim's next call opens a new one and greets again. Programs' own connections are
  // untouched.
  std::vector<uint64_t> flipped;
  for (auto& [id, cl] : clients_) {
    if (!cl->greeted || cl->control) continue;
    bool was_direct = cl->hello_error.ok() && cl->overlay == nullptr;
    sessions_svc_.ApplyHello(*cl);
    bool now_direct = cl->hello_error.ok() && cl->overlay == nullptr;
    // A shim that runs SOCKS5 itself holds the proxy and credentials it was given: when those
    // change (or go away), it must greet again too.
    if (was_direct == now_direct && cl->shim_plan == sessions_svc_.ShimPlan(*cl, nullptr)) continue;
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
  log_->info(
      "reloaded {} ({}): fingerprint {}; overlays: {}; {} program rule(s), {} "
      "network.select policy entr(y/ies); connects in flight finish as they started",
      config().source, why, config().fingerprint, overlays_->Summary(), config().programs.size(),
      config().policies.size());
  return Status::Ok();
}

void Server::HandleStatus(Client& c, const wire::Message& m) {
  std::ostringstream out;
  out << "broker pid " << getpid() << ", config " << config().source << " (fingerprint "
      << config().fingerprint << ", " << config().programs.size() << " program rules, "
      << config().policies.size() << " network.select policies), socket " << options_.socket_path
      << ", up " << (NowMs() - started_ms_) / 1000 << "s\n";
  for (const auto& [id, stp] : overlays_->all()) {
    const OverlayState& st = *stp;
    const config::Overlay& o = *st.overlay;
    out << "overlay " << id << " " << o.kind_name << overlays::EntrySummary(o, config().service);
    if (st.instance) {
      out << " connects ok=" << st.ok << " failed=" << st.failed;
    } else {
      out << " unavailable: " << st.error.message();
    }
    out << "\n";
  }
  out << "sessions: " << sessions_.size() << "\n";
  for (const auto& [token, s] : sessions_.sessions()) {
    size_t clients = 0;
    for (const auto& [cid, cl] : clients_) clients += cl->session == token;
    out << "session " << token.substr(0, 8) << " network " << s.network << " clients=" << clients;
    if (s.detached()) out << " detached heirs=" << s.heirs.size();
    out << "\n";
  }
  for (const auto& [id, st] : overlays_->all()) {
    if (st->instance) st->instance->AppendStatus(out);
  }
  out << "listeners: " << listeners_.size();
  if (!draining_.empty()) out << " (and " << draining_.size() << " closed, draining)";
  out << "\n";
  for (const auto& [lid, e] : listeners_) {
    std::string address = e.listener ? e.listener->address() : "";
    out << "listener " << e.overlay->overlay->id << " " << AddrText(e.bound, true) << " "
        << (address.empty() ? "(not ready)" : address) << " accepted=" << e.accepted << " "
        << e.owner << "\n";
  }
  out << "clients: " << clients_.size() << ", connects in flight: " << ops_.size() << "\n";
  AppendLoadStatus(out);
  // One line per program (not per thread), with its network and why: what policy decided.
  std::set<std::string> programs;
  for (const auto& [cid, cl] : clients_) {
    if (!cl->greeted || cl->control) continue;
    std::string line =
        "program " + PeerText(*cl) + " network " + cl->network +
        (cl->hello_error.ok() ? " (" + cl->origin + ")" : " REFUSED: " + cl->hello_error.message());
    if (programs.size() < 200) programs.insert(line);
  }
  for (const std::string& line : programs) out << line << "\n";
  out << "fake addresses: " << pool_->size() << " names (pool " << pool_->v4_cidr() << ", "
      << pool_->v6_cidr() << ")\n";
  std::string text = out.str();
  std::vector<uint8_t> buf(wire::kMaxMessage);
  wire::Writer w(buf.data(), buf.size(), wire::kStatus | wire::kReplyBit, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagText, std::string_view(text).substr(0, 60000));
  Reply(c, w);
}

void Server::AppendLoadStatus(std::ostream& out) const {
  int open_fds = OpenDescriptors();
  rlimit rl{};
  uint64_t limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? uint64_t(rl.rlim_cur) : ctx_.nofile_limit;
  out << "descriptors: " << open_fds << " of " << limit << " in use (RLIMIT_NOFILE); "
      << "clients at most " << ctx_.caps.total << ", " << ctx_.caps.per_pid << " per process\n";
  if (open_fds >= 0 && limit > 0 && uint64_t(open_fds) * 10 >= limit * 8) {
    out << "WARNING: the broker is near its descriptor limit (" << open_fds << " of " << limit
        << "): new clients may be refused; raise `ulimit -n` for the broker, or "
        << "find the program holding many connections (the program lines below)\n";
  }
  uint64_t refused = ctx_.load.refused_fd_limit + ctx_.load.refused_cap +
                     ctx_.load.refused_pid_cap + ctx_.load.refused_other_uid;
  out << "refused clients: " << refused << " since start (descriptor limit "
      << ctx_.load.refused_fd_limit << ", client cap " << ctx_.load.refused_cap
      << ", per-process cap " << ctx_.load.refused_pid_cap << ", other uid "
      << ctx_.load.refused_other_uid << ")\n";
  size_t paused = 0;
  for (const auto& [cid, cl] : clients_) paused += cl->conn.paused();
  const uint64_t dropped = ctx_.noisy.dropped();
  out << "backpressure: " << ctx_.load.backpressure_events
      << " time(s) a client's unread replies or connects stopped the broker reading its "
         "requests; "
      << paused << " client(s) paused now; " << dropped << " log line(s) suppressed\n";
}

void Server::HandleShutdown(Client& c, const wire::Message& m) {
  ReplyOk(c, wire::kShutdown | wire::kReplyBit, m.id());
  log_->info("shutdown requested by {}", PeerText(c));
  loop_->Quit();
}

// ---- inbound listeners ------------------------------------------------------------------------

void Server::HandleListen(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
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
  const std::string& id = c.overlay->overlay->id;
  switch (config().service.listen) {
    case config::ListenPolicy::kLocal: {
      if (uint64_t suppressed = 0; LogAllowed(Noisy::kOther, &suppressed)) {
        log_->info(
            "listen on {} under {} stays on the host's interfaces (network_service.listen: "
            "local) ({}){}",
            where, id, PeerText(c), SuppressedText(suppressed));
      }
      uint8_t buf[64];
      wire::Writer w(buf, sizeof buf, reply, m.id());
      w.PutU32(wire::kTagErrno, 0);
      w.PutU32(wire::kTagFlags, wire::kFlagListenLocal);
      return Reply(c, w);
    }
    case config::ListenPolicy::kRefuse: {
      std::string msg = "network_service.listen is refuse under " + id +
                        " (use overlay or local to allow listening)";
      if (uint64_t suppressed = 0; LogAllowed(Noisy::kOther, &suppressed)) {
        log_->warn("listen on {} refused: {} ({}){}", where, msg, PeerText(c),
                   SuppressedText(suppressed));
      }
      return ReplyError(c, reply, m.id(), EOPNOTSUPP, msg);
    }
    case config::ListenPolicy::kOverlay:
      break;
  }
  const std::string owner = PeerText(c);
  uint64_t lid = next_listener_++;
  ListenerEntry& e = listeners_[lid];
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
    std::string msg = l.status().code() == ENOTSUP
                          ? id + " (" + c.overlay->overlay->kind_name +
                                ") cannot carry inbound connections; set "
                                "network_service.listen: local to listen on the host's own "
                                "interfaces instead"
                          : id + ": " + l.status().message();
    int err = l.status().code() == ENOTSUP ? EOPNOTSUPP : l.status().code();
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kOther, &suppressed)) {
      log_->warn("listen on {} failed: {} ({}){}", where, msg, owner, SuppressedText(suppressed));
    }
    listeners_.erase(lid);
    return ReplyError(c, reply, m.id(), err, msg);
  }
  auto it = listeners_.find(lid);
  if (it == listeners_.end()) return;  // failed at once and was closed
  it->second.listener = std::move(*l);
  // The program closing its listening socket (or exiting) hangs up the socketpair.
  loop_->Watch(it->second.sock.get(), EPOLLRDHUP,
               [this, lid](uint32_t) { CloseListener(lid, "closed by the program"); });
  UpdateIdle();
}

void Server::OnListenerReady(uint64_t id, const Status& s) {
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return;
  ListenerEntry& e = it->second;
  if (e.replied) return;
  e.replied = true;
  const uint16_t reply = wire::kListen | wire::kReplyBit;
  auto cit = clients_.find(e.client);
  const std::string where = AddrText(e.bound, true);
  const std::string& oid = e.overlay->overlay->id;
  if (!s.ok()) {
    std::string msg = oid + ": " + s.message();
    log_->warn("listen on {} failed: {} ({})", where, msg, e.owner);
    if (cit != clients_.end()) ReplyError(*cit->second, reply, e.request_id, s.code(), msg);
    return CloseListener(id, "");
  }
  // `listener` is unset while Listen() has not returned yet.
  std::string address = e.listener ? e.listener->address() : "";
  if (cit == clients_.end()) return CloseListener(id, "the requester went away");
  uint8_t buf[512];
  wire::Writer w(buf, sizeof buf, reply, e.request_id);
  w.PutU32(wire::kTagErrno, 0);
  if (!address.empty()) w.PutString(wire::kTagListenAddress, address);
  Reply(*cit->second, w);
}

void Server::OnListenerAccepted(uint64_t id, overlays::AcceptedStream stream) {
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return;
  ListenerEntry& e = it->second;
  // The peer gets a fake address (getnameinfo maps it back to its overlay name), in the family of
  // the program's listening socket.
  FakeAddressPool::Pair pair = pool_->Lookup(stream.peer_name);
  wire::Addr peer = e.bound.family == 4 ? pair.v4 : pair.v6;
  peer.port = 0;
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kAccepted, uint32_t(e.accepted + 1));
  w.PutU32(wire::kTagErrno, 0);
  w.PutAddr(wire::kTagAddr, peer);
  w.PutString(wire::kTagPeerName, stream.peer_name);
  ssize_t r = wire::SendDatagram(e.sock.get(), w.data(), w.size(), stream.fd.get());
  if (r < 0) {
    log_->warn("listener {} of {}: cannot hand over a connection from {}: {}",
               AddrText(e.bound, true), e.owner, stream.peer_name, std::strerror(errno));
    return;
  }
  e.accepted++;
  log_->info("listener {} via {}: accepted a connection from {} ({})", AddrText(e.bound, true),
             e.overlay->overlay->id, stream.peer_name, e.owner);
}

void Server::CloseListener(uint64_t id, const std::string& why, bool drain) {
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return;
  if (it->second.sock) loop_->Unwatch(it->second.sock.get());
  if (!why.empty()) {
    log_->info("listener {} via {} ({}): {}", AddrText(it->second.bound, true),
               it->second.overlay->overlay->id, it->second.owner, why);
  }
  // Destroyed after the current handlers: this may run inside the listener's own callback.
  auto entry = std::make_shared<ListenerEntry>(std::move(it->second));
  listeners_.erase(it);
  if (entry->listener && drain) {
    // Accepted streams may still need the overlay side (e.g. a session of the listener's own).
    overlays::InboundListener* l = entry->listener.get();
    draining_[id] = std::move(entry->listener);
    l->Drain([this, id] {
      loop_->Post([this, id] {
        draining_.erase(id);
        UpdateIdle();
      });
    });
  }
  loop_->Post([entry] {});
  UpdateIdle();
}

}  // namespace via::broker
