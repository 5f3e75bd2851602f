#include "broker/server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "overlays/handshake.h"

namespace via::broker {

struct Server::Client {
  uint64_t id = 0;
  UniqueFd fd;
  pid_t pid = 0;
  uid_t uid = 0;
  bool greeted = false;
  int hello_err = 0;  // the HELLO's error, repeated for every later request
  std::string hello_msg;
  OverlayState* overlay = nullptr;           // nullptr = direct
  std::string network;                       // effective network id or "direct"
  std::string session;                       // token this client presented or owns
  std::vector<std::vector<uint8_t>> outbox;  // replies waiting for EPOLLOUT
  std::vector<uint64_t> ops;                 // connect operations in flight
};

struct Server::ConnectOp {
  uint64_t id = 0;
  uint64_t client = 0;
  uint32_t request_id = 0;
  UniqueFd fd;  // the broker's duplicate of the program's socket
  int saved_flags = 0;
  bool flags_saved = false;  // restore them on every exit path once changed
  OverlayState* overlay = nullptr;
  overlays::Target target;
  std::unique_ptr<overlays::Handshake> handshake;
  std::string endpoint;
  bool connecting = true;
  uint64_t timer = 0;
};

namespace {

std::string Exe(pid_t pid) {
  char path[64], buf[4096];
  std::snprintf(path, sizeof path, "/proc/%d/exe", int(pid));
  ssize_t n = readlink(path, buf, sizeof buf - 1);
  if (n <= 0) return "?";
  return std::string(buf, size_t(n));
}

std::string RandomToken() {
  uint8_t b[16];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t r = getrandom(b + got, sizeof b - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    got += size_t(r);
  }
  char hex[33];
  for (int i = 0; i < 16; ++i) std::snprintf(hex + 2 * i, 3, "%02x", b[i]);
  return std::string(hex, 32);
}

constexpr uint32_t kClientEvents = EPOLLIN | EPOLLRDHUP;

}  // namespace

Server::Server(const config::Config& config, const BrokerOptions& options, EventLoop* loop,
               std::shared_ptr<spdlog::logger> log)
    : config_(config), options_(options), loop_(loop), log_(std::move(log)) {
  idle_timeout_s_ =
      options.idle_timeout_s >= 0 ? options.idle_timeout_s : config.service.idle_timeout_s;
  started_ms_ = NowMs();
}

Server::~Server() {
  while (!clients_.empty()) CloseClient(clients_.begin()->first);
  if (listen_fd_) {
    loop_->Unwatch(listen_fd_.get());
    unlink(options_.socket_path.c_str());
  }
}

Status Server::Start() {
  auto pool = FakeAddressPool::Create(config_.service.fake_ipv4, config_.service.fake_ipv6);
  if (!pool.ok()) return pool.status();
  pool_ = std::make_unique<FakeAddressPool>(std::move(*pool));

  for (const config::Overlay& o : config_.overlays) {
    OverlayState& st = overlays_[o.id];
    st.overlay = &o;
    auto driver = overlays::CreateDriver(o);
    if (driver.ok()) {
      st.driver = std::move(*driver);
      std::string eps;
      for (const auto& e : st.driver->endpoints()) eps += (eps.empty() ? "" : ", ") + e.text;
      log_->info("overlay {} ({}) ready: {}", o.id, o.kind_name, eps);
    } else {
      st.error = driver.status();
      log_->warn("overlay {} unavailable: {}", o.id, st.error.message());
    }
  }

  // The socket's directory must be ours alone.
  std::string dir = options_.socket_path.substr(0, options_.socket_path.rfind('/'));
  struct stat st;
  if (dir.empty() || stat(dir.c_str(), &st) != 0) {
    return Status::FromErrno("socket directory " + dir);
  }
  if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
    return Status::Error(EPERM, "socket directory " + dir +
                                    " must be owned by you and have mode 0700 (chmod 700 " + dir +
                                    ")");
  }
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (options_.socket_path.size() >= sizeof sun.sun_path) {
    return Status::Error(ENAMETOOLONG, "socket path too long: " + options_.socket_path);
  }
  std::memcpy(sun.sun_path, options_.socket_path.c_str(), options_.socket_path.size() + 1);

  // A socket file left behind by a broker that died is removed; a live broker is not disturbed.
  {
    UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (connect(probe.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0) {
      return Status::Error(EADDRINUSE,
                           "another broker is already listening on " + options_.socket_path);
    }
    if (errno == ECONNREFUSED) unlink(options_.socket_path.c_str());
  }
  listen_fd_.reset(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!listen_fd_) return Status::FromErrno("socket");
  mode_t old = umask(0177);
  int rc = bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof sun);
  umask(old);
  if (rc != 0) return Status::FromErrno("bind " + options_.socket_path);
  if (listen(listen_fd_.get(), 128) != 0) return Status::FromErrno("listen");
  if (Status s = loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); });
      !s.ok()) {
    return s;
  }
  log_->info("listening on {} (config {}, pid {})", options_.socket_path, config_.source, getpid());
  UpdateIdle();
  return Status::Ok();
}

void Server::OnAccept() {
  for (;;) {
    int fd = accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) log_->warn("accept: {}", std::strerror(errno));
      return;
    }
    UniqueFd owned(fd);
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != geteuid()) {
      log_->warn("refused connection from uid {} pid {}: the broker serves uid {} only", cred.uid,
                 cred.pid, geteuid());
      continue;
    }
    auto c = std::make_unique<Client>();
    c->id = next_client_++;
    c->fd = std::move(owned);
    c->pid = cred.pid;
    c->uid = cred.uid;
    uint64_t id = c->id;
    if (!loop_->Watch(fd, kClientEvents, [this, id](uint32_t ev) { OnClientEvent(id, ev); }).ok()) {
      continue;
    }
    clients_[id] = std::move(c);
  }
  UpdateIdle();
}

void Server::OnClientEvent(uint64_t client_id, uint32_t events) {
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return;
  Client& c = *it->second;
  if (events & EPOLLOUT) {
    while (!c.outbox.empty()) {
      auto& msg = c.outbox.front();
      ssize_t r = send(c.fd.get(), msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
      if (r < 0) {
        CloseClient(client_id);
        return;
      }
      c.outbox.erase(c.outbox.begin());
    }
    if (c.outbox.empty()) loop_->Modify(c.fd.get(), kClientEvents);
  }
  if (events & EPOLLIN) {
    for (int round = 0; round < 64; ++round) {
      uint8_t buf[wire::kMaxMessage + 1];
      iovec iov{buf, sizeof buf};
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 4)];
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = cbuf;
      mh.msg_controllen = sizeof cbuf;
      ssize_t n = recvmsg(c.fd.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n <= 0) {
        CloseClient(client_id);
        return;
      }
      std::vector<UniqueFd> fds;
      for (cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm != nullptr; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
          size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            fds.emplace_back(fd);
          }
        }
      }
      if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
        ReplyError(c, wire::kReplyBit, 0, EPROTO,
                   (mh.msg_flags & MSG_TRUNC) ? "message larger than 65536 bytes"
                                              : "too many descriptors attached");
        log_->warn("closing client pid {}: oversized message or descriptors", c.pid);
        CloseClient(client_id);
        return;
      }
      Handle(c, buf, size_t(n), fds);
      if (clients_.find(client_id) == clients_.end()) return;  // closed while handling
    }
  }
  if (events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) {
    // Drain first (above); a hang-up with nothing left to read ends the client.
    CloseClient(client_id);
  }
}

void Server::CloseClient(uint64_t client_id) {
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return;
  std::unique_ptr<Client> c = std::move(it->second);
  clients_.erase(it);
  for (uint64_t op : c->ops) {
    auto o = ops_.find(op);
    if (o == ops_.end()) continue;
    loop_->Unwatch(o->second->fd.get());
    loop_->CancelTimer(o->second->timer);
    if (o->second->flags_saved) fcntl(o->second->fd.get(), F_SETFL, o->second->saved_flags);
    ops_.erase(o);
  }
  for (auto s = sessions_.begin(); s != sessions_.end();) {
    if (s->second.owner == client_id) {
      log_->info("session {} ({}) ended", s->first.substr(0, 8), s->second.network);
      s = sessions_.erase(s);
    } else {
      ++s;
    }
  }
  loop_->Unwatch(c->fd.get());
  UpdateIdle();
}

void Server::UpdateIdle() {
  if (!clients_.empty() || options_.stay) {
    if (idle_timer_ != 0) loop_->CancelTimer(idle_timer_);
    idle_timer_ = 0;
    return;
  }
  if (idle_timer_ != 0) return;
  idle_timer_ = loop_->AddTimer(int64_t(idle_timeout_s_) * 1000, [this] {
    idle_timer_ = 0;
    log_->info("no sessions or clients for {}s; exiting", idle_timeout_s_);
    loop_->Quit();
  });
}

std::string Server::PeerText(const Client& c) const {
  return "pid " + std::to_string(c.pid) + " " + Exe(c.pid);
}

void Server::Reply(Client& c, wire::Writer& w) {
  if (!w.ok()) {
    log_->error("reply to pid {} did not fit in a message", c.pid);
    return;
  }
  if (c.outbox.empty()) {
    ssize_t r = send(c.fd.get(), w.data(), w.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r >= 0) return;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return;  // the client is gone; EPOLLHUP follows
  }
  c.outbox.emplace_back(w.data(), w.data() + w.size());
  loop_->Modify(c.fd.get(), kClientEvents | EPOLLOUT);
}

void Server::ReplyError(Client& c, uint16_t type, uint32_t id, int err, const std::string& msg) {
  uint8_t buf[4096];
  wire::Writer w(buf, sizeof buf, type, id);
  w.PutU32(wire::kTagErrno, uint32_t(err));
  w.PutString(wire::kTagMessage, std::string_view(msg).substr(0, 3000));
  Reply(c, w);
}

void Server::Handle(Client& c, const uint8_t* data, size_t n, std::vector<UniqueFd>& fds) {
  wire::Message m;
  wire::ParseError pe = m.Parse(data, n);
  if (pe != wire::ParseError::kOk) {
    std::string why = std::string("malformed message: ") + wire::ParseErrorText(pe);
    log_->warn("closing client {}: {}", PeerText(c), why);
    ReplyError(c, wire::kReplyBit, 0, EPROTO, why);
    CloseClient(c.id);
    return;
  }
  uint16_t type = m.type();
  uint16_t reply = type | wire::kReplyBit;
  if (type != wire::kConnect) fds.clear();  // descriptors belong only to CONNECT
  if (type != wire::kHello && !c.greeted) {
    ReplyError(c, reply, m.id(), EPROTO, "the first message on a connection must be HELLO");
    return;
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
    case wire::kShutdown: {
      uint8_t buf[64];
      wire::Writer w(buf, sizeof buf, reply, m.id());
      w.PutU32(wire::kTagErrno, 0);
      Reply(c, w);
      log_->info("shutdown requested by {}", PeerText(c));
      loop_->Quit();
      return;
    }
    default:
      ReplyError(c, reply, m.id(), EPROTO, "unknown message type " + std::to_string(type));
  }
}

Status Server::SelectNetwork(const std::string& ref, OverlayState** out, std::string* id) {
  *out = nullptr;
  if (ref.empty() || ref == "direct") {
    *id = "direct";
    return Status::Ok();
  }
  const config::Overlay* o = config_.Find(ref);
  if (o == nullptr) {
    std::string known;
    for (const auto& ov : config_.overlays) known += (known.empty() ? "" : ", ") + ov.id;
    return Status::Error(ENOENT, "unknown overlay \"" + ref + "\" in " + config_.source +
                                     " (known: " + (known.empty() ? "none" : known) + ")");
  }
  OverlayState& st = overlays_[o->id];
  *id = o->id;
  if (!st.driver)
    return Status::Error(st.error.code() ? st.error.code() : ENETUNREACH, st.error.message());
  *out = &st;
  return Status::Ok();
}

void Server::HandleHello(Client& c, const wire::Message& m) {
  wire::Field f;
  std::string ref, session;
  if (m.Find(wire::kTagNetwork, &f)) ref = std::string(f.str());
  if (m.Find(wire::kTagSession, &f)) session = std::string(f.str());
  c.greeted = true;
  c.session = session;
  if (ref.empty()) {
    auto s = sessions_.find(session);
    ref = s != sessions_.end() ? s->second.network : config_.service.default_network;
  }
  Status st = SelectNetwork(ref, &c.overlay, &c.network);
  c.hello_err = st.code();
  c.hello_msg = st.message();
  if (!st.ok()) log_->warn("HELLO from {}: {}", PeerText(c), st.message());
  uint8_t buf[4096];
  wire::Writer w(buf, sizeof buf, wire::kHello | wire::kReplyBit, m.id());
  w.PutU32(wire::kTagErrno, uint32_t(st.code()));
  if (!st.ok()) w.PutString(wire::kTagMessage, st.message());
  w.PutString(wire::kTagNetwork, c.network);
  uint32_t flags = 0;
  if (c.overlay == nullptr) flags |= wire::kFlagDirect;
  if (config_.service.loopback == config::LoopbackPolicy::kOverlay)
    flags |= wire::kFlagLoopbackRoute;
  if (config_.service.loopback == config::LoopbackPolicy::kRefuse)
    flags |= wire::kFlagLoopbackRefuse;
  w.PutU32(wire::kTagFlags, flags);
  Reply(c, w);
}

void Server::HandleConnect(Client& c, const wire::Message& m, std::vector<UniqueFd>& fds) {
  const uint16_t reply = wire::kConnect | wire::kReplyBit;
  if (c.hello_err != 0) return ReplyError(c, reply, m.id(), c.hello_err, c.hello_msg);
  if (fds.size() != 1) {
    return ReplyError(
        c, reply, m.id(), fds.empty() ? EBADF : EINVAL,
        fds.empty() ? "CONNECT carries no socket" : "CONNECT must carry exactly one socket");
  }
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EINVAL,
                      "this connection's network is direct; connect directly");
  }
  auto op = std::make_unique<ConnectOp>();
  op->fd = std::move(fds[0]);
  op->client = c.id;
  op->request_id = m.id();
  op->overlay = c.overlay;
  wire::Field f;
  wire::Addr dest;
  if (m.Find(wire::kTagAddr, &f)) {
    if (!f.addr(&dest)) return ReplyError(c, reply, m.id(), EINVAL, "CONNECT: malformed ADDR");
    op->target.port = dest.port;
    if (pool_->Contains(dest)) {
      const std::string* name = pool_->Reverse(dest);
      char text[80];
      if (name == nullptr) {
        return ReplyError(c, reply, m.id(), EHOSTUNREACH,
                          std::string("unknown fake address ") +
                              wire::FormatAddr(dest, text, sizeof text) +
                              " (resolved by a broker that has since restarted?)");
      }
      op->target.name = *name;
    } else {
      op->target.addr = wire::Unmapped(dest);
    }
  } else if (m.Find(wire::kTagName, &f)) {
    auto name = NormalizeName(f.str());
    wire::Field pf;
    uint16_t port = 0;
    if (!name.ok()) return ReplyError(c, reply, m.id(), EINVAL, name.status().message());
    if (!m.Find(wire::kTagPort, &pf) || !pf.u16(&port)) {
      return ReplyError(c, reply, m.id(), EINVAL, "CONNECT by NAME needs PORT");
    }
    op->target.name = *name;
    op->target.port = port;
  } else {
    return ReplyError(c, reply, m.id(), EINVAL, "CONNECT needs ADDR or NAME");
  }

  int type = 0, domain = 0;
  socklen_t len = sizeof type;
  if (getsockopt(op->fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    return ReplyError(c, reply, m.id(), ENOTSOCK,
                      "CONNECT: the attached descriptor is not a socket");
  }
  len = sizeof domain;
  getsockopt(op->fd.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len);
  if (type != SOCK_STREAM || (domain != AF_INET && domain != AF_INET6)) {
    return ReplyError(c, reply, m.id(), EPROTOTYPE,
                      "CONNECT: the attached socket is not a TCP/IP stream socket");
  }
  auto hs = op->overlay->driver->NewHandshake(op->target);
  if (!hs.ok()) {
    op->overlay->failed++;
    return ReplyError(c, reply, m.id(), hs.status().code(), hs.status().message());
  }
  op->handshake = std::move(*hs);
  op->id = next_op_++;
  c.ops.push_back(op->id);
  StartConnect(std::move(op));
}

void Server::StartConnect(std::unique_ptr<ConnectOp> op) {
  ConnectOp& o = *op;
  uint64_t id = o.id;
  ops_[id] = std::move(op);
  int domain = 0, v6only = 0;
  socklen_t len = sizeof domain;
  getsockopt(o.fd.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len);
  if (domain == AF_INET6) {
    len = sizeof v6only;
    getsockopt(o.fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len);
  }
  // Pick an endpoint the program's socket can reach: same family, or IPv4 through a mapped
  // address from an IPv6 socket that is not IPV6_V6ONLY.
  sockaddr_storage ep{};
  socklen_t ep_len = 0;
  for (const auto& e : o.overlay->driver->endpoints()) {
    int fam = e.addr.ss_family;
    if (fam == domain) {
      std::memcpy(&ep, &e.addr, e.len);
      ep_len = e.len;
    } else if (fam == AF_INET && domain == AF_INET6 && !v6only) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&e.addr);
      auto* in6 = reinterpret_cast<sockaddr_in6*>(&ep);
      in6->sin6_family = AF_INET6;
      in6->sin6_port = in->sin_port;
      in6->sin6_addr.s6_addr[10] = 0xff;
      in6->sin6_addr.s6_addr[11] = 0xff;
      std::memcpy(&in6->sin6_addr.s6_addr[12], &in->sin_addr, 4);
      ep_len = sizeof(sockaddr_in6);
    } else {
      continue;
    }
    o.endpoint = e.text;
    break;
  }
  if (ep_len == 0) {
    return FinishOp(id, EAFNOSUPPORT,
                    std::string("the program's ") + (domain == AF_INET ? "IPv4" : "IPv6-only") +
                        " socket cannot reach any address of the overlay's proxy");
  }
  o.saved_flags = fcntl(o.fd.get(), F_GETFL);
  o.flags_saved = true;
  fcntl(o.fd.get(), F_SETFL, o.saved_flags | O_NONBLOCK);
  o.timer = loop_->AddTimer(o.overlay->driver->connect_timeout_ms(), [this, id] {
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    it->second->timer = 0;
    FinishOp(id, ETIMEDOUT,
             std::string(it->second->connecting ? "no connection to" : "no answer from") +
                 " proxy " + it->second->endpoint + " within " +
                 std::to_string(it->second->overlay->driver->connect_timeout_ms()) + " ms");
  });
  int rc = connect(o.fd.get(), reinterpret_cast<sockaddr*>(&ep), ep_len);
  if (rc != 0 && errno != EINPROGRESS) {
    int err = errno;
    return FinishOp(id, err, "proxy " + o.endpoint + " unreachable: " + std::strerror(err));
  }
  if (!loop_->Watch(o.fd.get(), EPOLLOUT, [this, id](uint32_t) { OnOpEvent(id); }).ok()) {
    return FinishOp(id, EIO, "cannot watch the socket");
  }
}

void Server::OnOpEvent(uint64_t op_id) {
  auto it = ops_.find(op_id);
  if (it == ops_.end()) return;
  ConnectOp& o = *it->second;
  if (o.connecting) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(o.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      return FinishOp(op_id, err, "proxy " + o.endpoint + " unreachable: " + std::strerror(err));
    }
    o.connecting = false;
  }
  Pump(o);
}

void Server::Pump(ConnectOp& o) {
  uint64_t id = o.id;
  for (;;) {
    std::string_view out = o.handshake->Output();
    if (!out.empty()) {
      ssize_t r = send(o.fd.get(), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        loop_->Modify(o.fd.get(), EPOLLOUT);
        return;
      }
      if (r < 0) {
        int err = errno;
        return FinishOp(id, err, "sending to proxy " + o.endpoint + ": " + std::strerror(err));
      }
      o.handshake->Consumed(size_t(r));
      continue;
    }
    if (o.handshake->Done()) return FinishOp(id, 0, "");
    size_t want = o.handshake->WantRead();
    if (want == 0) return FinishOp(id, EPROTO, "handshake stalled");
    uint8_t buf[512];
    ssize_t r = recv(o.fd.get(), buf, std::min(want, sizeof buf), MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      loop_->Modify(o.fd.get(), EPOLLIN | EPOLLRDHUP);
      return;
    }
    if (r < 0) {
      int err = errno;
      return FinishOp(id, err, "reading from proxy " + o.endpoint + ": " + std::strerror(err));
    }
    if (r == 0) {
      return FinishOp(id, ECONNRESET,
                      "proxy " + o.endpoint + " closed the connection during the handshake");
    }
    Status st = o.handshake->Feed(buf, size_t(r));
    if (!st.ok()) return FinishOp(id, st.code(), st.message());
  }
}

void Server::FinishOp(uint64_t op_id, int err, const std::string& msg) {
  auto it = ops_.find(op_id);
  if (it == ops_.end()) return;
  std::unique_ptr<ConnectOp> op = std::move(it->second);
  ops_.erase(it);
  loop_->Unwatch(op->fd.get());
  if (op->timer != 0) loop_->CancelTimer(op->timer);
  if (op->flags_saved) fcntl(op->fd.get(), F_SETFL, op->saved_flags);
  op->fd.reset();
  std::string full = op->target.ToString() + " via " + op->overlay->overlay->id + ": " + msg;
  auto cit = clients_.find(op->client);
  if (err == 0) {
    op->overlay->ok++;
  } else {
    op->overlay->failed++;
  }
  if (cit == clients_.end()) return;
  Client& c = *cit->second;
  std::erase(c.ops, op_id);
  if (err == 0) {
    log_->debug("connect {} via {} ok ({})", op->target.ToString(), op->overlay->overlay->id,
                PeerText(c));
  } else {
    log_->warn("connect {} via {} failed: {} ({})", op->target.ToString(), op->overlay->overlay->id,
               msg, PeerText(c));
  }
  uint8_t buf[4096];
  wire::Writer w(buf, sizeof buf, wire::kConnect | wire::kReplyBit, op->request_id);
  w.PutU32(wire::kTagErrno, uint32_t(err));
  if (err != 0) w.PutString(wire::kTagMessage, std::string_view(full).substr(0, 3000));
  Reply(c, w);
}

void Server::HandleResolve(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kResolve | wire::kReplyBit;
  if (c.hello_err != 0) return ReplyError(c, reply, m.id(), c.hello_err, c.hello_msg);
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
  FakeAddressPool::Pair p = pool_->Lookup(*name);
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  if (family != 6) w.PutAddr(wire::kTagAddr, p.v4);
  if (family != 4) w.PutAddr(wire::kTagAddr, p.v6);
  Reply(c, w);
}

void Server::HandleReverse(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kReverse | wire::kReplyBit;
  wire::Field f;
  wire::Addr a;
  if (!m.Find(wire::kTagAddr, &f) || !f.addr(&a)) {
    return ReplyError(c, reply, m.id(), EINVAL, "REVERSE needs ADDR");
  }
  const std::string* name = pool_->Reverse(a);
  if (name == nullptr) return ReplyError(c, reply, m.id(), ENOENT, "not a fake address");
  uint8_t buf[512];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagName, *name);
  Reply(c, w);
}

void Server::HandleOpenSession(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kOpenSession | wire::kReplyBit;
  wire::Field f;
  std::string ref;
  if (m.Find(wire::kTagNetwork, &f)) ref = std::string(f.str());
  OverlayState* st = nullptr;
  std::string id;
  Status s = SelectNetwork(ref, &st, &id);
  if (!s.ok() && s.code() == ENOENT) return ReplyError(c, reply, m.id(), s.code(), s.message());
  Session session;
  session.token = RandomToken();
  session.network = id;
  session.owner = c.id;
  session.started_ms = NowMs();
  sessions_[session.token] = session;
  log_->info("session {} opened for {} by {}", session.token.substr(0, 8), id, PeerText(c));
  uint8_t buf[4096];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagSession, session.token);
  if (!s.ok()) w.PutString(wire::kTagMessage, s.message());  // overlay known but unavailable
  Reply(c, w);
}

void Server::HandleStatus(Client& c, const wire::Message& m) {
  std::ostringstream out;
  out << "broker pid " << getpid() << ", config " << config_.source << ", socket "
      << options_.socket_path << ", up " << (NowMs() - started_ms_) / 1000 << "s\n";
  for (const auto& [id, st] : overlays_) {
    const config::Overlay& o = *st.overlay;
    out << "overlay " << id << " " << o.kind_name;
    if (o.kind == config::OverlayKind::kSocks5) {
      out << " " << o.socks5.host << ":" << o.socks5.port
          << " isolate_streams=" << (o.socks5.isolate_streams ? "true" : "false");
    }
    if (!st.driver) {
      out << " unavailable: " << st.error.message();
    } else {
      out << " connects ok=" << st.ok << " failed=" << st.failed;
    }
    out << "\n";
  }
  out << "sessions: " << sessions_.size() << "\n";
  for (const auto& [token, s] : sessions_) {
    size_t clients = 0;
    for (const auto& [cid, cl] : clients_) clients += cl->session == token;
    out << "session " << token.substr(0, 8) << " network " << s.network << " clients=" << clients
        << " up " << (NowMs() - s.started_ms) / 1000 << "s\n";
  }
  out << "clients: " << clients_.size() << ", connects in flight: " << ops_.size() << "\n";
  out << "fake addresses: " << pool_->size() << " names (pool " << pool_->v4_cidr() << ", "
      << pool_->v6_cidr() << ")\n";
  std::string text = out.str();
  std::vector<uint8_t> buf(text.size() + 256);
  wire::Writer w(buf.data(), buf.size(), wire::kStatus | wire::kReplyBit, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagText, std::string_view(text).substr(0, 60000));
  Reply(c, w);
}

}  // namespace via::broker
