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
#include <filesystem>
#include <optional>
#include <sstream>

#include "broker/process_info.h"
#include "broker/selector.h"
#include "overlays/factory.h"
#include "overlays/handshake.h"

namespace via::broker {

namespace {

constexpr uint32_t kClientEvents = EPOLLIN | EPOLLRDHUP;
constexpr size_t kMaxFds = 4;             // descriptors accepted per datagram
constexpr int kReadsPerEvent = 1;         // epoll is level-triggered: a second read would mostly
                                          // find EAGAIN (a shim has one request in flight per link)
constexpr size_t kMaxMessageText = 3000;  // MESSAGE fields are cut to this

std::string Exe(pid_t pid) {
  char path[64], buf[4096];
  std::snprintf(path, sizeof path, "/proc/%d/exe", int(pid));
  ssize_t n = readlink(path, buf, sizeof buf - 1);
  if (n <= 0) return "?";
  return std::string(buf, size_t(n));
}

// `<socket>.exec-hello` (and `exec-hello` in its directory, which tells the shims to look for
// such markers) while the config has rules that give groups: shims then greet the broker before
// an exec in place (kFlagExecHello); without such rules they do not, at no cost.
void MarkExecHello(const std::string& socket_path, const config::Config& cfg) {
  bool groups = false;
  for (const config::ProgramRule& r : cfg.programs) groups = groups || !r.groups.empty();
  const std::string marker = socket_path + ".exec-hello";
  if (!groups) {
    unlink(marker.c_str());
    return;
  }
  size_t slash = socket_path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : socket_path.substr(0, slash);
  for (const std::string& path : {marker, dir + "/exec-hello"}) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
}

// A broker that stops takes its marker away, and the directory's when no other broker has one.
void UnmarkExecHello(const std::string& socket_path) {
  unlink((socket_path + ".exec-hello").c_str());
  size_t slash = socket_path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : socket_path.substr(0, slash);
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (it->path().string().ends_with(".exec-hello")) return;
  }
  if (!ec) unlink((dir + "/exec-hello").c_str());
}

bool Alive(pid_t pid, uint64_t start) {
  ProcessInfo p = ReadProcess(pid);
  return p.ok && p.start == start;
}

// Records, for every process of the chain, the groups it has now (docs/configuration.md,
// "Program rules, policy and precedence"): they stay with it across exec and argv changes.
void RecordChainGroups(SessionTable& table, const std::vector<ProcessInfo>& chain,
                       const Selection& sel) {
  for (size_t i = 0; i < chain.size() && i < sel.chain_groups.size(); ++i) {
    const RecordedGroups& g = sel.chain_groups[i];
    if (chain[i].pid > 0 && !g.groups.empty()) {
      table.RecordGroups(chain[i].pid, chain[i].start, g.groups, g.reasons, Alive);
    }
  }
}

// Answers a connection the broker will not serve (type 0x8000, id 0, like a framing error: the
// shim takes it as the reply to whatever it sent first) and closes it. Never waits.
void SendRefusal(int fd, const std::string& why) {
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kReplyBit, 0);
  w.PutU32(wire::kTagErrno, EAGAIN);
  w.PutString(wire::kTagMessage, why);
  if (w.ok()) send(fd, w.data(), w.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  // What the client sent already (its HELLO) is read and dropped: closing a socket with unread
  // data resets the connection, and the client would get ECONNRESET instead of the reason.
  for (int i = 0; i < 4; ++i) {
    char sink[256];
    int passed[kMaxFds];
    size_t npassed = 0;
    int msg_flags = 0;
    if (wire::ReceiveDatagram(fd, sink, sizeof sink, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, passed,
                              &npassed, &msg_flags) <= 0) {
      break;
    }
    for (size_t k = 0; k < npassed; ++k) close(passed[k]);
  }
}

std::string AddrText(const wire::Addr& a, bool with_port) {
  char buf[80];
  if (with_port) return wire::FormatAddr(a, buf, sizeof buf);
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, buf, sizeof buf);
  return buf;
}

}  // namespace

Server::Server(std::shared_ptr<const config::Config> config, const BrokerOptions& options,
               EventLoop* loop, std::shared_ptr<spdlog::logger> log)
    : config_(std::move(config)),
      options_(options),
      loop_(loop),
      log_(std::move(log)),
      recv_buf_(wire::kMaxMessage + 1) {
  idle_timeout_s_ =
      options.idle_timeout_s >= 0 ? options.idle_timeout_s : config_->service.idle_timeout_s;
  // DNS lines are an audit of what programs looked up: a larger allowance (200, then 10 a second).
  log_limits_[size_t(Noisy::kDns)] = LogLimiter(200, 600);
  started_ms_ = NowMs();
}

Server::~Server() {
  // Stop answering first, so that a client closed below (`via stop` waits for that) never finds
  // the old socket again and a new broker can take its place at once.
  if (listen_fd_) loop_->Unwatch(listen_fd_.get());
  listen_fd_.reset();
  if (accept_timer_ != 0) loop_->CancelTimer(accept_timer_);
  accept_timer_ = 0;
  // Only our own socket file: never one a later broker bound after we stopped answering.
  struct stat now;
  if (bound_ && stat(options_.socket_path.c_str(), &now) == 0 &&
      now.st_dev == socket_stat_.st_dev && now.st_ino == socket_stat_.st_ino) {
    unlink(options_.socket_path.c_str());
    UnmarkExecHello(options_.socket_path);
  }
  listeners_.clear();
  draining_.clear();
  // Overlays go down before the clients are closed: `via stop` returns when its connection
  // closes, and by then what they hold on their far side (a node, sessions) is gone. All are
  // told first, so that their waits overlap. (Clients may still share an OverlayState; its
  // overlay is gone, which they check.)
  for (auto& [id, st] : overlays_) {
    if (st->instance) st->instance->Stop();
  }
  for (auto& [id, st] : overlays_) st->instance.reset();
  while (!clients_.empty()) CloseClient(clients_.begin()->first);
  if (idle_timer_ != 0) loop_->CancelTimer(idle_timer_);
  if (prune_timer_ != 0) loop_->CancelTimer(prune_timer_);
}

// ---- start-up ---------------------------------------------------------------------------------

Status Server::Start() {
  auto pool = FakeAddressPool::Create(config_->service.fake_ipv4, config_->service.fake_ipv6);
  if (!pool.ok()) return pool.status().WithContext("network_service");
  pool_ = std::make_unique<FakeAddressPool>(std::move(*pool));

  // Overlays resolve their proxy hosts here, before the loop runs: never on the loop thread.
  overlays_ = BuildOverlays(config_, {});
  if (Status s = CheckSocketDir(); !s.ok()) return s;
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
  nofile_limit_ = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? uint64_t(rl.rlim_cur) : 1024;
  if (nofile_limit_ > (uint64_t(1) << 20)) nofile_limit_ = uint64_t(1) << 20;
  caps_ = ClientCaps::ForDescriptorLimit(nofile_limit_);
  if (Status s = Listen(); !s.ok()) return s;
  // Only now, as the one broker of this socket: the name table of the brokers before it, so
  // that an address a program still holds keeps its name (docs/architecture.md, "Names").
  MarkExecHello(options_.socket_path, *config_);
  size_t restored = 0;
  if (Status s = pool_->OpenJournal(options_.socket_path + ".names", &restored); !s.ok()) {
    return s.WithContext("network_service fake addresses");
  }
  log_->info("broker pid {} listening on {} (config {}); overlays: {}", getpid(),
             options_.socket_path, config_->source, OverlaySummary());
  log_->info("fake-address table {}: {} name(s) kept from earlier brokers", pool_->table_id(),
             restored);
  log_->info(
      "descriptor limit {}: up to {} client connections, {} per process, {} connects in flight",
      nofile_limit_, caps_.total, caps_.per_pid, caps_.ops);
  if (!config_->programs.empty() || !config_->policies.empty()) {
    log_->info("{} program rule(s), {} network.select policy entr(y/ies)", config_->programs.size(),
               config_->policies.size());
  }
  UpdateIdle();
  return Status::Ok();
}

Status Server::CheckSocketDir() const {
  const std::string& path = options_.socket_path;
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return Status::FromErrno("socket directory " + dir);
  if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
    return Status::Error(EPERM, "socket directory " + dir +
                                    " must be a directory owned by you with mode 0700 (chmod 700 " +
                                    dir + ")");
  }
  return Status::Ok();
}

Status Server::Listen() {
  const std::string& path = options_.socket_path;
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sun.sun_path) {
    return Status::Error(ENAMETOOLONG, "socket path is empty or too long: " + path);
  }
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  auto* sa = reinterpret_cast<sockaddr*>(&sun);

  // A socket file left behind by a broker that died is removed; a live broker is not disturbed.
  {
    UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!probe) return Status::FromErrno("socket");
    if (connect(probe.get(), sa, sizeof sun) == 0 || errno == EAGAIN) {
      return Status::Error(EADDRINUSE, "another broker is already listening on " + path);
    }
    if (errno == ECONNREFUSED) unlink(path.c_str());
  }

  listen_fd_.reset(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listen_fd_) return Status::FromErrno("socket");
  if (bind(listen_fd_.get(), sa, sizeof sun) != 0) return Status::FromErrno("bind " + path);
  bound_ = true;
  stat(path.c_str(), &socket_stat_);
  // The directory is private already; the mode is a second fence.
  if (chmod(path.c_str(), 0600) != 0) return Status::FromErrno("chmod " + path);
  if (listen(listen_fd_.get(), SOMAXCONN) != 0) return Status::FromErrno("listen " + path);
  return loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
}

std::string Server::OverlaySummary() const {
  std::string out;
  for (const auto& [id, st] : overlays_) {
    out += out.empty() ? "" : ", ";
    out += id + " (" + st->overlay->kind_name;
    if (st->instance) {
      for (const auto& e : st->instance->endpoints()) out += " " + e.text;
    } else {
      out += " unavailable";
    }
    out += ")";
  }
  return out.empty() ? "none" : out;
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
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kAccept, &suppressed)) {
        log_->warn("SO_PEERCRED: {}; connection closed{}", std::strerror(errno),
                   SuppressedText(suppressed));
      }
      continue;
    }
    if (cred.uid != geteuid()) {
      ++refused_other_uid_;
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kRefused, &suppressed)) {
        log_->warn("refused connection from uid {} pid {} (this broker serves uid {} only){}",
                   cred.uid, cred.pid, geteuid(), SuppressedText(suppressed));
      }
      continue;
    }
    if (clients_.size() >= caps_.total) {
      ++refused_cap_;
      std::string why = "the via broker serves at most " + std::to_string(caps_.total) +
                        " connections (its descriptor limit is " + std::to_string(nofile_limit_) +
                        "); try again later, or see `via status`";
      SendRefusal(fd.get(), why);
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kRefused, &suppressed)) {
        log_->warn("refused a connection from pid {}: at the client cap ({} connections){}",
                   cred.pid, caps_.total, SuppressedText(suppressed));
      }
      PauseAccepting();
      break;
    }
    size_t& mine = clients_per_pid_[cred.pid];
    if (mine >= caps_.per_pid) {
      ++refused_pid_cap_;
      SendRefusal(fd.get(), "this process has " + std::to_string(mine) +
                                " connections to the via broker already (at most " +
                                std::to_string(caps_.per_pid) + " per process)");
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kRefused, &suppressed)) {
        log_->warn("refused a connection from pid {}: it has {} already (the cap per process){}",
                   cred.pid, mine, SuppressedText(suppressed));
      }
      continue;
    }
    auto c = std::make_unique<Client>();
    c->id = next_client_++;
    c->pid = cred.pid;
    uint64_t id = c->id;
    Status s =
        loop_->Watch(fd.get(), kClientEvents, [this, id](uint32_t ev) { OnClientEvent(id, ev); });
    if (!s.ok()) {
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kAccept, &suppressed)) {
        log_->warn("cannot watch a client: {}{}", s.message(), SuppressedText(suppressed));
      }
      if (mine == 0) clients_per_pid_.erase(cred.pid);
      continue;
    }
    ++mine;
    c->events = kClientEvents;
    c->fd = std::move(fd);
    clients_[id] = std::move(c);
    accept_backoff_ms_ = 0;
  }
  UpdateIdle();
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
                                std::to_string(nofile_limit_) +
                                "); try again later, or see `via status`");
    }
    fd.reset();
    reserve_fd_.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
  }
  if (refused) ++refused_fd_limit_;
  uint64_t suppressed = 0;
  if (LogAllowed(Noisy::kAccept, &suppressed)) {
    int open_fds = OpenDescriptors();
    log_->warn("accept: {} ({} of {} descriptors open, {} clients): {}{}",
               std::strerror(accept_errno), open_fds, nofile_limit_, clients_.size(),
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

bool Server::LogAllowed(Noisy kind, uint64_t* suppressed) {
  uint64_t ignored = 0;
  return log_limits_[size_t(kind)].Allow(NowMs(), suppressed != nullptr ? suppressed : &ignored);
}

void Server::UpdateInterest(Client& c) {
  bool over = c.outbox.Full() || c.ops.size() >= kMaxOpsPerClient;
  if (over && !c.paused) {
    c.paused = true;
    ++backpressure_events_;
    uint64_t suppressed = 0;
    if (LogAllowed(Noisy::kOther, &suppressed)) {
      log_->info(
          "not reading requests from {} for now: {} replies ({} bytes) it has not read, {} "
          "connects in flight{}",
          PeerText(c), c.outbox.size(), c.outbox.bytes(), c.ops.size(), SuppressedText(suppressed));
    }
  } else if (c.paused && c.outbox.empty() && c.ops.size() < kMaxOpsPerClient) {
    c.paused = false;
  }
  uint32_t want = (c.paused ? 0 : kClientEvents) | (c.outbox.empty() ? 0 : uint32_t(EPOLLOUT));
  if (want != c.events && loop_->Modify(c.fd.get(), want).ok()) c.events = want;
}

void Server::OnClientEvent(uint64_t client_id, uint32_t events) {
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return;
  Client& c = *it->second;
  if (events & EPOLLOUT) {
    while (!c.outbox.empty()) {
      const auto& msg = c.outbox.front();
      ssize_t r = send(c.fd.get(), msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (r < 0) return CloseClient(client_id);
      c.outbox.Pop();
    }
    UpdateInterest(c);
    if (c.close_when_idle && c.ops.empty() && c.outbox.empty()) return CloseClient(client_id);
  }
  if (c.paused) {
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
    int passed[kMaxFds];
    size_t npassed = 0;
    int msg_flags = 0;
    ssize_t n =
        wire::ReceiveDatagram(c.fd.get(), recv_buf_.data(), recv_buf_.size(),
                              MSG_DONTWAIT | MSG_CMSG_CLOEXEC, passed, &npassed, &msg_flags);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) {
      CloseClient(client_id);
      return false;
    }
    // Take ownership of every descriptor at once, so none can leak on any path below.
    std::vector<UniqueFd> fds;
    for (size_t i = 0; i < npassed; ++i) fds.emplace_back(passed[i]);
    if ((msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
      std::string why = (msg_flags & MSG_TRUNC)
                            ? wire::ParseErrorText(wire::ParseError::kTooLarge)
                            : "the descriptors attached to the message did not fit (more than 4, "
                              "or the broker is at its descriptor limit)";
      uint64_t suppressed = 0;
      if (LogAllowed(Noisy::kMalformed, &suppressed)) {
        log_->warn("closing connection from {}: {}{}", PeerText(c), why,
                   SuppressedText(suppressed));
      }
      ReplyError(c, wire::kReplyBit, 0, EPROTO, why);
      CloseClient(client_id);
      return false;
    }
    Handle(c, recv_buf_.data(), size_t(n), fds);
    auto again = clients_.find(client_id);
    if (again == clients_.end()) return false;
    UpdateInterest(*again->second);
    if (again->second->paused) break;
  }
  return clients_.count(client_id) != 0;
}

void Server::CloseClient(uint64_t client_id) {
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return;
  std::unique_ptr<Client> c = std::move(it->second);
  clients_.erase(it);
  if (auto per = clients_per_pid_.find(c->pid); per != clients_per_pid_.end()) {
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
  loop_->Unwatch(c->fd.get());
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

std::string Server::PeerText(const Client& c) const {
  return "pid " + std::to_string(c.pid) + " " + Exe(c.pid);
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
  if (c.outbox.empty()) {
    ssize_t r;
    do {
      r = send(c.fd.get(), w.data(), w.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    // Any other error than EAGAIN: the client is gone, and its end-of-file closes it.
    if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      if (c.paused) UpdateInterest(c);  // a connect finished: it may read requests again
      return;
    }
  }
  // Queued: a request already read is always answered. Past the bound, UpdateInterest stops
  // reading this client's requests until it has read its replies.
  c.outbox.Push(w.data(), w.size());
  UpdateInterest(c);
}

void Server::ReplyError(Client& c, uint16_t type, uint32_t id, int err, const std::string& msg) {
  uint8_t buf[4096];
  wire::Writer w(buf, sizeof buf, type, id);
  w.PutU32(wire::kTagErrno, uint32_t(err));
  w.PutString(wire::kTagMessage, std::string_view(msg).substr(0, kMaxMessageText));
  Reply(c, w);
}

void Server::ReplyOk(Client& c, uint16_t type, uint32_t id) {
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, type, id);
  w.PutU32(wire::kTagErrno, 0);
  Reply(c, w);
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
  if (type == wire::kConnect && ops_.size() >= caps_.ops) {
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
                          std::to_string(nofile_limit_) + "; try again");
  }
  if (type != wire::kHello) {
    if (!c.greeted) {
      return ReplyError(c, reply, m.id(), EPROTO,
                        "HELLO must be the first message on a connection");
    }
    // After a reload, the network is selected again under the new rules and policies.
    if (c.generation != generation_) ApplyHello(c);
    if (!c.hello_error.ok()) {
      return ReplyError(c, reply, m.id(), c.hello_error.code(), c.hello_error.message());
    }
  }
  switch (type) {
    case wire::kHello:
      return HandleHello(c, m);
    case wire::kConnect:
      return HandleConnect(c, m, fds);
    case wire::kResolve:
      return HandleResolve(c, m);
    case wire::kReverse:
      return HandleReverse(c, m);
    case wire::kOpenSession:
      return HandleOpenSession(c, m);
    case wire::kStatus:
      return HandleStatus(c, m);
    case wire::kShutdown:
      return HandleShutdown(c, m);
    case wire::kDnsQuery:
      return HandleDnsQuery(c, m);
    case wire::kDnsSocket:
      return HandleDnsSocket(c, m);
    case wire::kSessionChild:
      return HandleSessionChild(c, m);
    case wire::kReload:
      return HandleReload(c, m);
    case wire::kSessionDetach:
      return HandleSessionDetach(c, m);
    case wire::kListen:
      return HandleListen(c, m, fds);
    case wire::kReport:
      return HandleReport(c, m);
    case wire::kStrictProcess:
      return HandleStrictProcess(c, m);
    default:
      return ReplyError(c, reply, m.id(), EPROTO, "unknown message type " + std::to_string(type));
  }
}

Status Server::SelectNetwork(const std::string& ref, std::shared_ptr<OverlayState>* out,
                             std::string* id) {
  out->reset();
  if (ref == "direct") {
    *id = "direct";
    return Status::Ok();
  }
  const config::Overlay* o = config_->Find(ref);
  if (o == nullptr) return Status::Error(ENOENT, "unknown overlay \"" + ref + "\"");
  auto it = overlays_.find(o->id);
  if (it == overlays_.end()) return Status::Error(ENOENT, "unknown overlay \"" + ref + "\"");
  const std::shared_ptr<OverlayState>& st = it->second;
  *id = o->id;
  if (!st->instance) {
    return Status::Error(st->error.code() != 0 ? st->error.code() : ENETUNREACH,
                         st->error.message());
  }
  *out = st;
  return Status::Ok();
}

void Server::HandleHello(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kHello | wire::kReplyBit;
  wire::Field f;
  uint16_t version = wire::kVersion;
  if (m.Find(wire::kTagVersion, &f) && (!f.u16(&version) || version != wire::kVersion)) {
    c.greeted = false;
    return ReplyError(c, reply, m.id(), EPROTO,
                      "protocol version " + std::to_string(version) +
                          " is not supported (this broker speaks version " +
                          std::to_string(wire::kVersion) + ")");
  }
  uint32_t hello_flags = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&hello_flags);
  if ((hello_flags & wire::kFlagExecHello) != 0) {
    // A process about to exec in place: record the groups it has now, and nothing else.
    c.greeted = false;
    SelectRequest req = MakeRequest(Ancestry(c.pid));
    Selection sel = Select(*config_, req);
    RecordChainGroups(sessions_, req.chain, sel);
    uint8_t buf[64];
    wire::Writer w(buf, sizeof buf, reply, m.id());
    w.PutU32(wire::kTagErrno, 0);
    w.PutU32(wire::kTagFlags, sel.groups.empty() ? 0 : wire::kFlagHasGroups);
    return Reply(c, w);
  }
  c.has_claim = m.Find(wire::kTagNetwork, &f) && f.len > 0;
  c.claim = c.has_claim ? std::string(f.str()) : std::string();
  c.token = m.Find(wire::kTagSession, &f) ? std::string(f.str()) : std::string();
  uint32_t req_flags = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&req_flags);
  c.control = (req_flags & wire::kFlagControl) != 0;
  c.greeted = true;
  ApplyHello(c);
  std::vector<uint8_t> buf(16384);  // MESSAGE and ORIGIN are capped well below this
  wire::Writer w(buf.data(), buf.size(), reply, m.id());
  w.PutU32(wire::kTagErrno, uint32_t(c.hello_error.code()));
  if (!c.hello_error.ok()) {
    w.PutString(wire::kTagMessage, std::string_view(c.hello_error.message()).substr(0, 2500));
  }
  w.PutString(wire::kTagNetwork, std::string_view(c.network).substr(0, 512));
  // The shim reads HELLO replies into 4 KiB (its stack): MESSAGE (2500) + ORIGIN (500) + the
  // rest fit.
  w.PutString(wire::kTagOrigin, std::string_view(c.origin).substr(0, 500));
  w.PutString(wire::kTagFingerprint, config_->fingerprint);
  uint32_t flags = 0;
  if (c.hello_error.ok() && c.overlay == nullptr) flags |= wire::kFlagDirect;
  if (config_->service.loopback == config::LoopbackPolicy::kOverlay) {
    flags |= wire::kFlagLoopbackRoute;
  }
  if (config_->service.loopback == config::LoopbackPolicy::kRefuse) {
    flags |= wire::kFlagLoopbackRefuse;
  }
  if (config_->service.unrouted_exec_allowed) flags |= wire::kFlagUnroutedExecAllow;
  c.shim_plan = ShimPlan(c, &w);
  if (!c.shim_plan.empty()) {
    flags |= wire::kFlagShimSocks5;
    if (c.overlay->instance->program_socks5()->isolate_streams) flags |= wire::kFlagIsolate;
    if (log_->should_log(spdlog::level::debug)) flags |= wire::kFlagReportEach;
  }
  w.PutU32(wire::kTagFlags, flags);
  w.PutU32(wire::kTagWaitMs, OverlayWaitMs(c));
  Reply(c, w);
}

uint32_t Server::OverlayWaitMs(const Client& c) const {
  if (c.overlay == nullptr || !c.overlay->instance) return 0;
  const int64_t ms = c.overlay->instance->wait_bound_ms();
  return uint32_t(std::min<int64_t>(ms + 1000, 24 * 3600 * 1000));
}

std::string Server::ShimPlan(const Client& c, wire::Writer* w) const {
  if (!c.hello_error.ok() || c.overlay == nullptr || !c.overlay->instance ||
      !config_->service.handshake_in_program || c.control) {
    return "";
  }
  const overlays::Overlay& o = *c.overlay->instance;
  const std::optional<overlays::Overlay::ProgramSocks5> plan = o.program_socks5();
  if (!plan) return "";
  const overlays::Overlay::ProgramSocks5& s = *plan;
  std::string key = c.overlay->overlay->id;
  for (const overlays::Endpoint& e : o.endpoints()) {
    wire::Addr a;
    if (!wire::AddrFromSockaddr(reinterpret_cast<const sockaddr*>(&e.addr), e.len, &a)) continue;
    if (w != nullptr) w->PutAddr(wire::kTagProxy, a);
    key += " " + e.text;
  }
  if (!s.isolate_streams && (!s.username.empty() || !s.password.empty())) {
    if (w != nullptr) {
      w->PutString(wire::kTagUsername, s.username);
      w->PutString(wire::kTagPassword, s.password);
    }
    key += " user " + s.username + " " + s.password;
  }
  if (s.isolate_streams) key += " isolate";
  const uint32_t timeout = uint32_t(o.connect_timeout_ms());
  key += " " + std::to_string(timeout);
  if (w != nullptr) {
    w->PutU32(wire::kTagTimeoutMs, timeout);
    w->PutAddr(wire::kTagFakeNet, pool_->V4Range());
    w->PutAddr(wire::kTagFakeNet, pool_->V6Range());
  }
  return key;
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
  if (c.close_when_idle && c.ops.empty() && c.outbox.empty()) CloseClient(c.id);
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

void Server::HandleOpenSession(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kOpenSession | wire::kReplyBit;
  // `via run` opens one session per connection; a client that opens more and more would grow
  // the table without bound (its sessions end only with its connection).
  constexpr size_t kMaxSessionsPerClient = 16;
  if (c.sessions_opened >= kMaxSessionsPerClient) {
    return ReplyError(c, reply, m.id(), EAGAIN,
                      "this connection already opened " + std::to_string(c.sessions_opened) +
                          " sessions (at most " + std::to_string(kMaxSessionsPerClient) +
                          " per connection; `via run` opens one)");
  }
  wire::Field f;
  // The selection is made for the command the session will start, as a child of the opener:
  // its groups are those of the command and of the opener's whole ancestry.
  std::vector<ProcessInfo> opener = Ancestry(c.pid);
  if (opener.empty()) {
    return ReplyError(c, reply, m.id(), ESRCH,
                      "cannot read /proc for pid " + std::to_string(c.pid));
  }
  ProcessInfo command;
  if (m.Find(wire::kTagExe, &f)) command.exe = std::string(f.str());
  m.ForEach([&](const wire::Field& af) {
    if (af.tag == wire::kTagArgv) command.argv.emplace_back(af.str());
  });
  command.ok = true;
  std::vector<ProcessInfo> chain{command};
  chain.insert(chain.end(), opener.begin(), opener.end());
  SelectRequest req = MakeRequest(std::move(chain));
  req.has_claim = m.Find(wire::kTagNetwork, &f) && f.len > 0;
  if (req.has_claim) req.claim = std::string(f.str());
  uint32_t flags = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&flags);
  req.force_explicit = req.has_claim && (flags & wire::kFlagSessionExplicit) != 0;
  req.selected_by_parent = true;  // the opener selects for the command it starts
  Selection sel = Select(*config_, req);
  RecordChainGroups(sessions_, req.chain, sel);
  if (!sel.error.ok()) {
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kSession, &suppressed)) {
      log_->warn("session refused for {} (command {}): {}{}", PeerText(c), Describe(command),
                 sel.error.message(), SuppressedText(suppressed));
    }
    return ReplyError(c, reply, m.id(), sel.error.code(), sel.error.message());
  }
  std::shared_ptr<OverlayState> st;
  std::string id;
  if (Status s = SelectNetwork(sel.network, &st, &id); !s.ok()) {
    return ReplyError(c, reply, m.id(), s.code(), s.message());
  }
  if (st != nullptr && st->instance) st->instance->Start();  // `via run`: ahead of its program
  auto session = sessions_.Open(id, c.id, NowMs());
  if (!session.ok()) {
    return ReplyError(c, reply, m.id(), session.status().code(), session.status().message());
  }
  ++c.sessions_opened;
  SessionTable::Session* s = sessions_.FindMutable((*session)->token);
  s->explicit_sel = sel.explicit_sel;
  s->root = opener[0].pid;
  s->root_start = opener[0].start;
  s->groups = sel.selector_groups;
  if (!sel.chain_groups.empty()) {
    s->command_groups = sel.chain_groups[0].groups;
    s->command_reasons = sel.chain_groups[0].reasons;
  }
  if (uint64_t suppressed = 0; LogAllowed(Noisy::kSession, &suppressed)) {
    log_->info("session {} opened for {} by {}: {}{}", s->token.substr(0, 8), id, PeerText(c),
               sel.origin, SuppressedText(suppressed));
  }
  std::vector<uint8_t> buf(8192);
  wire::Writer w(buf.data(), buf.size(), reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagSession, s->token);
  w.PutString(wire::kTagNetwork, id);
  w.PutString(wire::kTagOrigin, std::string_view(sel.origin).substr(0, kMaxMessageText));
  Reply(c, w);
  UpdateIdle();
}

void Server::HandleSessionChild(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kSessionChild | wire::kReplyBit;
  wire::Field f;
  uint32_t pid = 0;
  if (!m.Find(wire::kTagSession, &f)) {
    return ReplyError(c, reply, m.id(), EINVAL, "SESSION_CHILD needs SESSION and PID");
  }
  SessionTable::Session* s = sessions_.FindMutable(f.str());
  if (s == nullptr || s->owner != c.id) {
    return ReplyError(c, reply, m.id(), EPERM, "SESSION_CHILD: not a session of this connection");
  }
  if (!m.Find(wire::kTagPid, &f) || !f.u32(&pid) || pid == 0) {
    return ReplyError(c, reply, m.id(), EINVAL, "SESSION_CHILD needs SESSION and PID");
  }
  if (s->child != 0) return ReplyError(c, reply, m.id(), EEXIST, "the session has its command");
  ProcessInfo p = ReadProcess(pid_t(pid));
  if (!p.ok || p.ppid != s->root) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "pid " + std::to_string(pid) + " is not a child of the session's opener");
  }
  s->child = p.pid;
  s->child_start = p.start;
  // It waits for this reply before it execs: its groups are recorded before it can shed them.
  sessions_.RecordGroups(p.pid, p.start, s->command_groups, s->command_reasons, Alive);
  ReplyOk(c, reply, m.id());
}

void Server::HandleSessionDetach(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kSessionDetach | wire::kReplyBit;
  wire::Field f;
  if (!m.Find(wire::kTagSession, &f)) {
    return ReplyError(c, reply, m.id(), EINVAL, "SESSION_DETACH needs SESSION");
  }
  SessionTable::Session* s = sessions_.FindMutable(f.str());
  if (s == nullptr || s->owner != c.id) {
    return ReplyError(c, reply, m.id(), EPERM, "SESSION_DETACH: not a session of this connection");
  }
  // Only the opener's own children, as /proc says now.
  std::vector<std::pair<pid_t, uint64_t>> heirs;
  m.ForEach([&](const wire::Field& pf) {
    uint32_t pid = 0;
    if (pf.tag != wire::kTagPid || !pf.u32(&pid) || pid == 0 || heirs.size() >= 4096) return;
    if (pid_t(pid) == getpid()) return;  // a broker daemonized inside the session: not an heir
    ProcessInfo p = ReadProcess(pid_t(pid));
    if (p.ok && p.ppid == s->root) heirs.emplace_back(p.pid, p.start);
  });
  if (heirs.empty())
    return ReplyError(c, reply, m.id(), ESRCH, "none of them is the opener's child");
  log_->info("session {} carried on by {} process(es) after {} exits", s->token.substr(0, 8),
             heirs.size(), PeerText(c));
  sessions_.Detach(s, std::move(heirs));
  ReplyOk(c, reply, m.id());
  PruneDetached();
}

void Server::PruneDetached() {
  if (prune_timer_ != 0) loop_->CancelTimer(prune_timer_);
  prune_timer_ = 0;
  size_t ended = sessions_.PruneDetached([](pid_t pid, uint64_t start) {
    ProcessInfo p = ReadProcess(pid);
    return p.ok && p.start == start;
  });
  if (ended > 0) log_->info("{} detached session(s) ended: their processes are gone", ended);
  if (sessions_.detached_count() > 0) {
    prune_timer_ = loop_->AddTimer(2000, [this] {
      prune_timer_ = 0;
      PruneDetached();
    });
  }
  UpdateIdle();
}

void Server::HandleReload(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kReload | wire::kReplyBit;
  Status s = Reload("requested by " + PeerText(c));
  uint8_t buf[8192];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, uint32_t(s.code()));
  if (!s.ok()) w.PutString(wire::kTagMessage, std::string_view(s.message()).substr(0, 6000));
  w.PutString(wire::kTagFingerprint, config_->fingerprint);
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
  if (cfg->service.fake_ipv4 != config_->service.fake_ipv4 ||
      cfg->service.fake_ipv6 != config_->service.fake_ipv6) {
    log_->warn(
        "reload: the fake-address pools changed; they apply after a restart (names handed "
        "out must keep working)");
  }
  // Overlays resolve proxy host names; the loop is blocked for that (a config uses addresses
  // or names from /etc/hosts in practice).
  overlays_ = BuildOverlays(cfg, overlays_);
  config_ = std::move(cfg);
  MarkExecHello(options_.socket_path, *config_);
  ++generation_;
  logged_network_errors_.clear();
  // Every client's network is selected again now. A shim whose network is direct never asks the
  // broker again, and one routed through an overlay would keep sending CONNECTs: where the
  // reload flips a client between the two, its link is closed (once no connect is in flight),
  // and the shim's next call opens a new one and greets again. Programs' own connections are
  // untouched.
  std::vector<uint64_t> flipped;
  for (auto& [id, cl] : clients_) {
    if (!cl->greeted || cl->control) continue;
    bool was_direct = cl->hello_error.ok() && cl->overlay == nullptr;
    ApplyHello(*cl);
    bool now_direct = cl->hello_error.ok() && cl->overlay == nullptr;
    // A shim that runs SOCKS5 itself holds the proxy and credentials it was given: when those
    // change (or go away), it must greet again too.
    if (was_direct == now_direct && cl->shim_plan == ShimPlan(*cl, nullptr)) continue;
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
      config_->source, why, config_->fingerprint, OverlaySummary(), config_->programs.size(),
      config_->policies.size());
  return Status::Ok();
}

std::map<std::string, std::shared_ptr<Server::OverlayState>> Server::BuildOverlays(
    const std::shared_ptr<const config::Config>& cfg,
    const std::map<std::string, std::shared_ptr<OverlayState>>& previous) {
  std::map<std::string, std::shared_ptr<OverlayState>> out;
  for (const config::Overlay& o : cfg->overlays) {
    // An overlay that keeps state on its far side (a session, a node) is kept across a reload
    // when its entry is still there with the same kind: rebuilding would drop listeners and
    // restart the node. Changes to such an entry take effect after a restart (logged).
    if (auto it = previous.find(o.id); it != previous.end() && it->second->instance &&
                                       it->second->instance->keeps_state() &&
                                       it->second->overlay->kind == o.kind) {
      log_->info("reload: {} keeps its running {} (changes to its entry apply after a restart)",
                 o.id, o.kind_name);
      out[o.id] = it->second;
      continue;
    }
    auto st = std::make_shared<OverlayState>();
    st->config = cfg;
    st->overlay = &o;
    auto instance = overlays::CreateOverlay(o, {loop_, &cfg->service, log_});
    if (instance.ok()) {
      st->instance = std::move(*instance);
    } else {
      st->error = instance.status();
      log_->warn("overlay {} is unavailable: {}", o.id, st->error.message());
    }
    out[o.id] = std::move(st);
  }
  return out;
}

SelectRequest Server::MakeRequest(std::vector<ProcessInfo> chain) const {
  SelectRequest req;
  req.chain = std::move(chain);
  // Copies: the selector must not hold pointers into the table past this call.
  auto view = [](const SessionTable::Session& s) {
    SessionInfo v;
    v.token = s.token;
    v.network = s.network;
    v.explicit_sel = s.explicit_sel;
    v.root = s.root;
    v.root_start = s.root_start;
    v.child = s.child;
    v.child_start = s.child_start;
    v.groups = s.groups;
    v.heirs = s.heirs;
    return v;
  };
  auto holder = std::make_shared<std::vector<SessionInfo>>();
  holder->reserve(sessions_.size());
  for (const auto& [token, s] : sessions_.sessions()) holder->push_back(view(s));
  req.session_rooted_at = [holder](const ProcessInfo& p) -> const SessionInfo* {
    const SessionInfo* best = nullptr;
    for (const SessionInfo& s : *holder) {
      if (p.pid != 0 && (s.IsRoot(p) || s.IsHeir(p))) best = &s;
    }
    return best;
  };
  req.session_by_token = [holder](std::string_view token) -> const SessionInfo* {
    for (const SessionInfo& s : *holder) {
      if (s.token == token) return &s;
    }
    return nullptr;
  };
  auto recorded = std::make_shared<std::map<std::pair<pid_t, uint64_t>, RecordedGroups>>();
  for (const ProcessInfo& p : req.chain) {
    if (const auto* r = sessions_.FindGroups(p.pid, p.start)) {
      (*recorded)[{p.pid, p.start}] = RecordedGroups{r->first, r->second};
    }
  }
  req.recorded_groups = [recorded](const ProcessInfo& p) -> const RecordedGroups* {
    auto it = recorded->find({p.pid, p.start});
    return it == recorded->end() ? nullptr : &it->second;
  };
  return req;
}

void Server::ApplyHello(Client& c) {
  c.generation = generation_;
  c.overlay.reset();
  c.session.clear();
  c.hello_error = Status::Ok();
  if (c.control) {
    c.network = "direct";
    c.origin = "control connection";
    return;
  }
  SelectRequest req = MakeRequest(SelectionChain(c));
  req.has_claim = c.has_claim;
  req.claim = c.claim;
  req.token = c.token;
  Selection sel = Select(*config_, req);
  RecordChainGroups(sessions_, req.chain, sel);
  c.origin = sel.origin;
  if (sel.error.ok()) {
    c.hello_error = SelectNetwork(sel.network, &c.overlay, &c.network);
    if (!c.token.empty()) c.session = c.token;
    // The first program selecting an overlay starts what it needs before its first connect
    // (Overlay::Start, e.g. a session that takes 20 s); overlays nobody selects never contact
    // their far side.
    if (c.hello_error.ok() && c.overlay != nullptr && c.overlay->instance) {
      c.overlay->instance->Start();
    }
  } else {
    c.hello_error = sel.error;
    c.network = sel.network;
  }
  if (!c.hello_error.ok()) {
    std::string key = std::to_string(c.pid) + " " + c.hello_error.message();
    if (logged_network_errors_.size() < 10000 && logged_network_errors_.insert(key).second) {
      log_->warn("HELLO from {}: {}", PeerText(c), c.hello_error.message());
    }
  } else {
    log_->debug("HELLO from {}: network {} ({})", PeerText(c), c.network, c.origin);
  }
}

void Server::HandleStatus(Client& c, const wire::Message& m) {
  std::ostringstream out;
  out << "broker pid " << getpid() << ", config " << config_->source << " (fingerprint "
      << config_->fingerprint << ", " << config_->programs.size() << " program rules, "
      << config_->policies.size() << " network.select policies), socket " << options_.socket_path
      << ", up " << (NowMs() - started_ms_) / 1000 << "s\n";
  for (const auto& [id, stp] : overlays_) {
    const OverlayState& st = *stp;
    const config::Overlay& o = *st.overlay;
    out << "overlay " << id << " " << o.kind_name << overlays::EntrySummary(o, config_->service);
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
  for (const auto& [id, st] : overlays_) {
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
  uint64_t limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? uint64_t(rl.rlim_cur) : nofile_limit_;
  out << "descriptors: " << open_fds << " of " << limit << " in use (RLIMIT_NOFILE); "
      << "clients at most " << caps_.total << ", " << caps_.per_pid << " per process\n";
  if (open_fds >= 0 && limit > 0 && uint64_t(open_fds) * 10 >= limit * 8) {
    out << "WARNING: the broker is near its descriptor limit (" << open_fds << " of " << limit
        << "): new clients may be refused; raise `ulimit -n` for the broker, or "
        << "find the program holding many connections (the program lines below)\n";
  }
  uint64_t refused = refused_fd_limit_ + refused_cap_ + refused_pid_cap_ + refused_other_uid_;
  out << "refused clients: " << refused << " since start (descriptor limit " << refused_fd_limit_
      << ", client cap " << refused_cap_ << ", per-process cap " << refused_pid_cap_
      << ", other uid " << refused_other_uid_ << ")\n";
  size_t paused = 0;
  for (const auto& [cid, cl] : clients_) paused += cl->paused;
  uint64_t dropped = 0;
  for (const LogLimiter& l : log_limits_) dropped += l.dropped();
  out << "backpressure: " << backpressure_events_
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
  switch (config_->service.listen) {
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
