#include "overlays/tailscale/tailscale_overlay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <ostream>

#include "common/wire.h"
#include "overlays/socks5/socks5_handshake.h"

extern char** environ;

namespace via::overlays {

namespace {

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string p(buf, size_t(n));
  return p.substr(0, p.rfind('/'));
}

bool Executable(const std::string& p) { return !p.empty() && access(p.c_str(), X_OK) == 0; }

// tsnet reports a control server it cannot reach the same way as a refused login (NeedsLogin
// plus an error); only the text tells them apart. Unreachable control is worth waiting for.
bool IsConnectivityError(const std::string& e) {
  for (const char* s : {"fetch control key", "dial tcp", "connection refused", "i/o timeout",
                        "no such host", "network is unreachable", "context deadline exceeded"}) {
    if (e.find(s) != std::string::npos) return true;
  }
  return false;
}

// The helper's SOCKS5 refusals in a tailnet's terms. Its reply codes (tsnet/main.go: socksConn,
// resolve, dialErrorCode) mean something narrower than a proxy's, and there is no exit.
const char* TailnetRefusal(uint8_t code) {
  switch (code) {
    case 0x02:
      return "it is not a tailnet address (100.64.0.0/10, fd7a:115c:a1e0::/48); the node dials "
             "only its tailnet";
    case 0x03:
      return "the node is not Running";
    case 0x04:
      return "no node of that name in the tailnet's netmap, or no route to it";
    case 0x05:
      return "the peer refused the connection";
    case 0x06:
      return "the peer did not answer in time";
    case 0x07:
    case 0x08:
      return "the helper does not support this request (a via-tsnet of another version?)";
    default:
      return "the node could not dial it (the helper's log says why)";
  }
}

// SOCKS5 CONNECT to the helper, with failures worded by the overlay: `node` is who dials
// ("tailscale node via-a of app:ts").
class TailscaleHandshake : public Handshake {
 public:
  TailscaleHandshake(const Target& target, std::string secret, std::string node)
      : target_(target.ToString()),
        node_(std::move(node)),
        socks_(target, "via", std::move(secret)) {}

  std::string_view Output() const override { return socks_.Output(); }
  void Consumed(size_t n) override { socks_.Consumed(n); }
  size_t WantRead() const override { return socks_.WantRead(); }
  bool Done() const override { return socks_.Done(); }
  // The errno stays the reply code's (socks5::ReplyCodeToErrno); only the words change.
  Status Feed(const uint8_t* data, size_t n) override {
    Status st = socks_.Feed(data, n);
    if (st.ok()) return st;
    const uint8_t code = socks_.reply_code();
    if (code == 0) return Status::Error(st.code(), "the Tailscale helper: " + st.message());
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", code);
    return Status::Error(st.code(), node_ + " cannot reach " + target_ + ": " +
                                        TailnetRefusal(code) + " (helper reply " + hex + ")");
  }

 private:
  std::string target_;
  std::string node_;
  Socks5Handshake socks_;
};

}  // namespace

TailscaleOverlay::TailscaleOverlay(const config::Overlay& overlay, const OverlayContext& context)
    : overlay_(overlay),
      service_(context.service),
      loop_(context.loop),
      log_(context.log),
      waiters_(context.loop) {}

Result<std::unique_ptr<TailscaleOverlay>> TailscaleOverlay::Create(const config::Overlay& overlay,
                                                                   const OverlayContext& context) {
  std::unique_ptr<TailscaleOverlay> o(new TailscaleOverlay(overlay, context));
  o->auth_key_ = overlay.tailscale.auth_key;
  if (!o->attached() && o->auth_key_.empty() && !overlay.tailscale.auth_key_env.empty()) {
    const char* v = getenv(overlay.tailscale.auth_key_env.c_str());
    if (v == nullptr || *v == '\0') {
      return Status::Error(EINVAL, "overlay " + overlay.id + ": auth_key_env " +
                                       overlay.tailscale.auth_key_env +
                                       " is not set in the broker's environment; export it "
                                       "before `via broker` starts, or set auth_key");
    }
    o->auth_key_ = v;
  }
  if (!o->attached() && o->auth_key_.empty()) {
    return Status::Error(EINVAL, "overlay " + overlay.id +
                                     ": no auth key: set auth_key or auth_key_env (or "
                                     "localapi_socket to use a running tailscaled)");
  }
  uint8_t raw[16];
  if (getrandom(raw, sizeof raw, 0) != ssize_t(sizeof raw)) {
    return Status::FromErrno("overlay " + overlay.id + ": getrandom for the helper's secret");
  }
  static const char kHex[] = "0123456789abcdef";
  for (uint8_t b : raw) {
    o->secret_ += kHex[b >> 4];
    o->secret_ += kHex[b & 15];
  }
  return o;
}

std::string TailscaleOverlay::NameSuffix() const {
  std::string n = name_;  // "via-a.tailnet.test."
  while (!n.empty() && n.back() == '.') n.pop_back();
  const size_t dot = n.find('.');
  if (dot == std::string::npos || dot + 1 >= n.size()) return "";
  return n.substr(dot + 1);
}

std::string TailscaleOverlay::hostname() const {
  return overlay_.tailscale.hostname.empty() ? "wippy" : overlay_.tailscale.hostname;
}

std::string TailscaleOverlay::NodeText() const {
  return attached() ? "tailscaled at " + overlay_.tailscale.localapi_socket + " for " + overlay_.id
                    : "tailscale node " + hostname() + " of " + overlay_.id;
}

bool TailscaleOverlay::SetEndpoint(const std::string& host_port) {
  size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = host_port.substr(0, colon);
  char* end = nullptr;
  long port = strtol(host_port.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port <= 0 || port > 65535) return false;
  Endpoint e;
  auto* in = reinterpret_cast<sockaddr_in*>(&e.addr);
  in->sin_family = AF_INET;
  in->sin_port = htons(uint16_t(port));
  if (inet_pton(AF_INET, host.c_str(), &in->sin_addr) != 1) return false;
  if ((ntohl(in->sin_addr.s_addr) >> 24) != 127) return false;  // loopback only
  e.len = sizeof(sockaddr_in);
  e.text = host_port;
  endpoints_.assign(1, e);
  return true;
}

Result<std::unique_ptr<Handshake>> TailscaleOverlay::NewHandshake(const Target& target) {
  if (endpoints_.empty()) {
    return Status::Error(ENETUNREACH, "tailscale node " + overlay_.id + " is not running");
  }
  return std::unique_ptr<Handshake>(new TailscaleHandshake(target, secret_, NodeText()));
}

TailscaleOverlay::~TailscaleOverlay() {
  Stop();
  for (auto& [port, p] : ports_) {
    for (TailscaleListener* l : p.listeners) l->rt_ = nullptr;
  }
  WaitChildren(stop_deadline_ms_);
}

void TailscaleOverlay::Stop() {
  if (stop_deadline_ms_ != 0) return;
  stopping_ = true;
  stop_deadline_ms_ = NowMs() + kStopBoundMs;
  if (restart_timer_ != 0) loop_->CancelTimer(restart_timer_);
  restart_timer_ = 0;
  if (ctl_) {
    loop_->Unwatch(ctl_.get());
    ctl_.reset();  // EOF: the helper logs out an ephemeral node and stops
  }
  for (auto& [pid, c] : children_) {
    if (!c.retired) kill(pid, SIGTERM);  // the same, for a helper not reading its channel
    c.retired = true;
  }
  pid_ = -1;
}

namespace {

int PidfdOpen(pid_t pid) { return int(syscall(SYS_pidfd_open, pid, 0)); }

std::string ExitText(int st) {
  if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return std::string("was killed by ") + strsignal(WTERMSIG(st));
  return "stopped";
}

}  // namespace

void TailscaleOverlay::Track(pid_t pid) {
  Child& c = children_[pid];
  c.pidfd = UniqueFd(PidfdOpen(pid));
  if (c.pidfd) {
    loop_->Watch(c.pidfd.get(), EPOLLIN, [this, pid](uint32_t) { OnChildExit(pid); });
  } else {
    c.poll_timer = loop_->AddTimer(100, [this, pid] { PollChild(pid); });
  }
}

void TailscaleOverlay::PollChild(pid_t pid) {
  // No pidfd (a kernel before 5.3): look every 100 ms.
  auto it = children_.find(pid);
  if (it == children_.end()) return;
  it->second.poll_timer = 0;
  OnChildExit(pid);
  it = children_.find(pid);
  if (it != children_.end()) {
    it->second.poll_timer = loop_->AddTimer(100, [this, pid] { PollChild(pid); });
  }
}

void TailscaleOverlay::Untrack(pid_t pid) {
  auto it = children_.find(pid);
  if (it == children_.end()) return;
  if (it->second.pidfd) loop_->Unwatch(it->second.pidfd.get());
  if (it->second.poll_timer != 0) loop_->CancelTimer(it->second.poll_timer);
  if (it->second.kill_timer != 0) loop_->CancelTimer(it->second.kill_timer);
  children_.erase(it);
}

void TailscaleOverlay::OnChildExit(pid_t pid) {
  int st = 0;
  pid_t r = waitpid(pid, &st, WNOHANG);
  if (r == 0) return;  // still running
  Untrack(pid);
  std::string how = r == pid ? ExitText(st) : "is gone";
  if (pid != pid_) {
    log_->info("overlay {}: the Tailscale helper (pid {}) {}", overlay_.id, pid, how);
    return;
  }
  pid_ = -1;
  if (ctl_) OnHelperGone("the helper " + how);
}

void TailscaleOverlay::Retire(pid_t pid) {
  auto it = children_.find(pid);
  if (it == children_.end() || it->second.retired) return;
  it->second.retired = true;
  kill(pid, SIGTERM);
  it->second.kill_timer = loop_->AddTimer(kStopBoundMs, [this, pid] {
    auto c = children_.find(pid);
    if (c == children_.end()) return;
    c->second.kill_timer = 0;
    log_->warn(
        "overlay {}: the Tailscale helper (pid {}) did not exit within {} ms of SIGTERM; "
        "killing it",
        overlay_.id, pid, kStopBoundMs);
    kill(pid, SIGKILL);
  });
}

void TailscaleOverlay::WaitChildren(int64_t deadline_ms) {
  bool killed = false;
  for (;;) {
    for (auto it = children_.begin(); it != children_.end();) {
      pid_t pid = it->first;
      ++it;  // Untrack erases `pid` only
      int st = 0;
      pid_t r = waitpid(pid, &st, WNOHANG);
      if (r == 0) continue;
      if (r == pid) {
        log_->info("overlay {}: the Tailscale helper (pid {}) {}", overlay_.id, pid, ExitText(st));
      }
      Untrack(pid);
    }
    if (children_.empty()) return;
    int64_t left = deadline_ms - NowMs();
    if (left <= 0 && !killed) {
      for (auto& [pid, c] : children_) {
        log_->warn(
            "overlay {}: the Tailscale helper (pid {}) did not exit within {} ms of "
            "SIGTERM; killing it",
            overlay_.id, pid, kStopBoundMs);
        kill(pid, SIGKILL);
      }
      killed = true;
    }
    if (killed && left < -5000) {  // not even SIGKILL ended it (stuck in the kernel)
      log_->error("overlay {}: the Tailscale helper did not end after SIGKILL; not waiting",
                  overlay_.id);
      while (!children_.empty()) Untrack(children_.begin()->first);
      return;
    }
    std::vector<pollfd> fds;
    int ms = killed ? 100 : int(std::min<int64_t>(left, 1000));
    for (auto& [pid, c] : children_) {
      if (c.pidfd) {
        fds.push_back(pollfd{c.pidfd.get(), POLLIN, 0});
      } else {
        ms = std::min(ms, 20);  // polled
      }
    }
    poll(fds.data(), nfds_t(fds.size()), ms);
  }
}

std::string TailscaleOverlay::StateDir() const {
  return config::TailscaleStateDir(overlay_, *service_);
}

std::string TailscaleOverlay::HelperPath() const {
  if (!overlay_.tailscale.helper.empty()) return overlay_.tailscale.helper;
  if (const char* e = getenv("VIA_TSNET"); e != nullptr && *e != '\0') return e;
  std::string dir = SelfDir();
  for (const std::string& p :
       {dir + "/via-tsnet", dir + "/go/via-tsnet", dir + "/../lib/via/via-tsnet",
        std::string(VIA_TSNET_INSTALL_PATH)}) {
    if (Executable(p)) return p;
  }
  return VIA_TSNET_INSTALL_PATH;
}

void TailscaleOverlay::Start() {
  // Called whenever a program selects the overlay: the node starts with the first of them.
  if (started_) return;
  started_ = true;
  Spawn();
}

void TailscaleOverlay::Spawn() {
  restart_timer_ = 0;
  const std::string helper = HelperPath();
  std::string dir = StateDir();
  if (!dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      return OnHelperGone("cannot create the node's state directory " + dir + ": " + ec.message());
    }
    chmod(dir.c_str(), 0700);
    log_path_ = dir + "/via-tsnet.log";
    if (Status st = LockStateDir(dir); !st.ok()) return OnHelperGone(st.message());
  } else {
    log_path_ = "/dev/null";
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return OnHelperGone(std::string("socketpair: ") + std::strerror(errno));
  }
  UniqueFd mine(sv[0]), theirs(sv[1]);
  if (theirs.get() <= 3) {  // dup2(x, 3) must not be a no-op that keeps FD_CLOEXEC
    theirs = UniqueFd(fcntl(theirs.get(), F_DUPFD_CLOEXEC, 10));
  }
  UniqueFd logfd(open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  UniqueFd nullfd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, nullfd.get(), 0);
  if (logfd) {
    posix_spawn_file_actions_adddup2(&fa, logfd.get(), 1);
    posix_spawn_file_actions_adddup2(&fa, logfd.get(), 2);
  }
  posix_spawn_file_actions_adddup2(&fa, theirs.get(), 3);
  // The helper holds the directory's lock too: a helper still logging out after its broker was
  // killed keeps the next broker's node out of the directory until it is done.
  if (lock_) posix_spawn_file_actions_adddup2(&fa, lock_.get(), 4);
  // The helper must never run under the shim: it is the overlay.
  std::vector<std::string> env_store;
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (strncmp(*e, "LD_PRELOAD=", 11) == 0) continue;
    env.push_back(*e);
  }
  env.push_back(nullptr);
  char* argv[] = {const_cast<char*>(helper.c_str()), nullptr};
  pid_t pid = -1;
  int rc = posix_spawn(&pid, helper.c_str(), &fa, nullptr, argv, env.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    return OnHelperGone("cannot start the Tailscale helper " + helper + ": " + std::strerror(rc) +
                        " (build it with cmake, or set `helper:` or $VIA_TSNET)");
  }
  pid_ = pid;
  Track(pid);
  ctl_ = std::move(mine);
  const config::TailscaleSettings& s = overlay_.tailscale;
  std::vector<std::pair<std::string, std::string>> cfg = {
      {"id", overlay_.id},
      {"mode", attached() ? "attach" : "node"},
      {"secret", secret_},
  };
  if (attached()) {
    cfg.push_back({"socket", s.localapi_socket});
  } else {
    cfg.push_back({"hostname", hostname()});
    cfg.push_back({"dir", dir});
    cfg.push_back({"auth_key", auth_key_});
    cfg.push_back({"control_url", s.control_url});
    cfg.push_back({"ephemeral", s.ephemeral ? "1" : "0"});
  }
  if (getenv("VIA_TSNET_VERBOSE") != nullptr) cfg.push_back({"verbose", "1"});
  Send("CONFIG", cfg);
  state_ = "Starting";
  error_.clear();
  loop_->Watch(ctl_.get(), EPOLLIN, [this](uint32_t) { OnControl(); });
  log_->info("overlay {}: started the Tailscale helper {} (pid {}, {} mode, log {})", overlay_.id,
             helper, pid_, attached() ? "attach" : "node", log_path_);
}

Status TailscaleOverlay::LockStateDir(const std::string& dir) {
  if (lock_) return Status::Ok();  // ours for the overlay's life, across helper restarts
  const std::string path = dir + "/via-tsnet.lock";
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno("cannot open the state directory's lock " + path);
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Status::FromErrno("cannot lock " + path);
    // The config check sees only this config's entries and paths as written; this also
    // catches another broker's entry, and the same directory reached through a symlink.
    return Status::Error(EBUSY, "the state directory " + dir +
                                    " is in use by another Tailscale node (of another broker, "
                                    "or the same directory by another path); two nodes in one "
                                    "directory would share one node key: give this entry its "
                                    "own state_dir");
  }
  // Above the fds the helper gets (0-4), so that dup2 to 4 always makes an inheritable copy.
  lock_ = UniqueFd(fcntl(fd.get(), F_DUPFD_CLOEXEC, 10));
  if (!lock_) return Status::FromErrno("cannot lock " + path);
  return Status::Ok();
}

void TailscaleOverlay::Send(const std::string& verb,
                            const std::vector<std::pair<std::string, std::string>>& fields) {
  if (!ctl_) return;
  std::string m = FormatHelperMessage(verb, fields);
  if (send(ctl_.get(), m.data(), m.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    log_->warn("overlay {}: cannot send {} to the Tailscale helper: {}", overlay_.id, verb,
               std::strerror(errno));
  }
}

void TailscaleOverlay::OnControl() {
  for (;;) {
    char buf[65536];
    int fds[1];
    size_t nfds = 0;
    int msg_flags = 0;
    ssize_t n = wire::ReceiveDatagram(ctl_.get(), buf, sizeof buf, MSG_DONTWAIT | MSG_CMSG_CLOEXEC,
                                      fds, &nfds, &msg_flags);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    UniqueFd passed(nfds > 0 ? fds[0] : -1);
    if (n <= 0) {
      return OnHelperGone(n == 0 ? "the helper exited" : std::string(std::strerror(errno)));
    }
    auto m = ParseHelperMessage(std::string_view(buf, size_t(n)));
    if (!m.ok()) {
      log_->warn("overlay {}: {}", overlay_.id, m.status().message());
      continue;
    }
    if (m->verb == "STATUS") {
      OnStatus(*m);
    } else if (m->verb == "LISTENING" || m->verb == "LISTEN_FAILED") {
      OnListenReply(*m);
    } else if (m->verb == "ACCEPTED") {
      auto it = ports_.find(uint16_t(atoi(m->Get("port").c_str())));
      if (it == ports_.end() || it->second.listeners.empty() || !passed) continue;
      Port& p = it->second;
      TailscaleListener* l = p.listeners[p.next++ % p.listeners.size()];
      AcceptedStream a;
      a.fd = std::move(passed);
      a.peer_name = m->Get("name").empty() ? m->Get("peer") : m->Get("name");
      log_->info("overlay {}: port {} accepted a connection from {} ({})", overlay_.id, it->first,
                 m->Get("peer"), a.peer_name);
      if (l->events_.accepted) l->events_.accepted(std::move(a));
    }
    if (!ctl_) return;  // a callback may have led to the helper's end
  }
}

void TailscaleOverlay::OnStatus(const HelperMessage& m) {
  std::string old = state_;
  state_ = m.Get("state");
  error_ = m.Get("error");
  health_ = m.Get("health");
  auth_url_ = m.Get("auth_url");
  ips_ = m.Get("ips");
  name_ = m.Get("name");
  const bool running = state_ == "Running" && !ips_.empty();
  if (running) {
    if (!SetEndpoint(m.Get("socks"))) {
      log_->error("overlay {}: the helper reported a bad SOCKS address {:?}", overlay_.id,
                  m.Get("socks"));
      ClearEndpoint();
      return;
    }
    backoff_ms_ = 1000;
  } else {
    ClearEndpoint();
  }
  if (state_ != old) {
    log_->info("overlay {}: {} is {}{}{}", overlay_.id,
               attached() ? "tailscaled" : "node " + hostname(), state_,
               running ? " as " + name_ + " " + ips_ : "", error_.empty() ? "" : ": " + error_);
  }
  if (running) {
    for (auto& [port, p] : ports_) {
      if (!p.sent) SendListen(port);
    }
    return waiters_.FinishAll(Status::Ok());
  }
  // Waiting is pointless when the node needs a person (or a new key) to log in.
  if (LoginRefused()) waiters_.FinishAll(NotReadyStatus());
}

Status TailscaleOverlay::NotReadyStatus() const {
  const std::string what = NodeText();
  if (!ctl_) {
    return Status::Error(ENETUNREACH, what + " is not running: " +
                                          (error_.empty() ? "the helper is not running" : error_));
  }
  std::string detail = error_;
  if (detail.empty()) detail = health_;
  if (LoginRefused() || (state_ == "NeedsLogin" && !auth_url_.empty()) ||
      state_ == "NeedsMachineAuth") {
    std::string hint = attached() ? " (log that tailscaled in: `tailscale up`)"
                                  : " (check auth_key/auth_key_env: the key must be valid, "
                                    "pre-authorized and, for a reused node, not expired)";
    if (!auth_url_.empty()) hint += "; login URL: " + auth_url_;
    return Status::Error(EACCES,
                         what + " is " + state_ + (detail.empty() ? "" : ": " + detail) + hint);
  }
  if (state_ == "Unreachable") {
    return Status::Error(ENETUNREACH, what + ": " + detail);
  }
  std::string where = overlay_.tailscale.control_url.empty()
                          ? std::string("Tailscale's control server")
                          : "control server " + overlay_.tailscale.control_url;
  return Status::Error(ETIMEDOUT, what + " is not Running yet (state " + state_ +
                                      (detail.empty() ? "" : ": " + detail) + "); is " + where +
                                      " reachable? helper log: " + log_path_);
}

bool TailscaleOverlay::LoginRefused() const {
  return (state_ == "NeedsLogin" || state_ == "NeedsMachineAuth") && !error_.empty() &&
         !IsConnectivityError(error_);
}

uint64_t TailscaleOverlay::WhenReady(std::function<void(const Status&)> done) {
  Start();
  if (!endpoints_.empty()) {
    done(Status::Ok());
    return 0;
  }
  if (!ctl_ || LoginRefused()) {
    done(NotReadyStatus());
    return 0;
  }
  return waiters_.Add(std::move(done), overlay_.tailscale.connect_timeout_ms,
                      [this] { return NotReadyStatus(); });
}

void TailscaleOverlay::CancelWait(uint64_t wait) { waiters_.Cancel(wait); }

void TailscaleOverlay::OnHelperGone(const std::string& why) {
  if (ctl_) {
    loop_->Unwatch(ctl_.get());
    ctl_.reset();
  }
  // Its channel is closed: it exits (reaped when it does), or is made to.
  if (pid_ > 0) Retire(pid_);
  pid_ = -1;
  ClearEndpoint();
  if (stopping_) return;
  error_ = why;
  state_ = "Stopped";
  log_->warn("overlay {}: Tailscale helper stopped ({}); restarting in {} ms", overlay_.id, why,
             backoff_ms_);
  waiters_.FinishAll(NotReadyStatus());
  // Listeners of the old node are gone; their programs see accept() fail.
  std::map<uint16_t, Port> ps;
  ps.swap(ports_);
  for (auto& [port, p] : ps) {
    for (TailscaleListener* l : p.listeners) l->rt_ = nullptr;
  }
  for (auto& [port, p] : ps) {
    for (TailscaleListener* l : p.listeners) {
      // Not yet ready: the program's listen() fails; ready: its accept() fails.
      auto fn = l->ready_ ? l->events_.failed : l->events_.ready;
      if (fn) fn(Status::Error(ENETDOWN, "the Tailscale helper stopped: " + why));
    }
  }
  ++restarts_;
  restart_timer_ = loop_->AddTimer(backoff_ms_, [this] { Spawn(); });
  backoff_ms_ = std::min(backoff_ms_ * 2, 30000);
}

void TailscaleOverlay::SendListen(uint16_t port) {
  auto it = ports_.find(port);
  if (it == ports_.end()) return;
  it->second.sent = true;
  Send("LISTEN", {{"port", std::to_string(port)}});
}

void TailscaleOverlay::OnListenReply(const HelperMessage& m) {
  auto it = ports_.find(uint16_t(atoi(m.Get("port").c_str())));
  if (it == ports_.end()) return;
  Port& p = it->second;
  Status st = Status::Ok();
  if (m.verb == "LISTENING") {
    p.address = m.Get("addr");
    log_->info("overlay {}: node listens on {}", overlay_.id, p.address);
  } else {
    st = Status::Error(EADDRNOTAVAIL,
                       "the node cannot listen on port " + m.Get("port") + ": " + m.Get("error"));
    p.sent = false;
  }
  // Copied: a ready() callback may destroy a listener (and so change the vector).
  // (`p` itself may go when the last of them is destroyed.)
  std::vector<TailscaleListener*> ls = p.listeners;
  const std::string address = p.address;
  for (TailscaleListener* l : ls) {
    if (l->ready_) continue;
    l->ready_ = true;
    l->address_ = address;
    if (l->events_.ready) l->events_.ready(st);
  }
}

Result<std::unique_ptr<InboundListener>> TailscaleOverlay::Listen(uint16_t port,
                                                                  const std::string& owner,
                                                                  InboundListener::Events events) {
  if (attached()) {
    return Status::Error(ENOTSUP,
                         "an entry attached to tailscaled (localapi_socket) only dials "
                         "out; inbound needs a node run by via");
  }
  auto l = std::make_unique<TailscaleListener>(this, port, std::move(events));
  Port& p = ports_[port];
  p.listeners.push_back(l.get());
  log_->info("overlay {}: {} listens on tailnet port {}", overlay_.id, owner, port);
  if (!p.address.empty()) {
    // The node already listens on this port (another socket of a program): ready once the
    // Server has the listener.
    TailscaleListener* raw = l.get();
    raw->address_ = p.address;
    raw->ready_ = true;
    auto ready = raw->events_.ready;
    loop_->Post([ready] {
      if (ready) ready(Status::Ok());
    });
  } else if (!p.sent && !endpoints_.empty()) {
    SendListen(port);
  }
  return std::unique_ptr<InboundListener>(std::move(l));
}

TailscaleListener::~TailscaleListener() {
  if (rt_ == nullptr) return;
  auto it = rt_->ports_.find(port_);
  if (it == rt_->ports_.end()) return;
  auto& v = it->second.listeners;
  v.erase(std::remove(v.begin(), v.end(), this), v.end());
  if (!v.empty()) return;
  if (it->second.sent) rt_->Send("UNLISTEN", {{"port", std::to_string(port_)}});
  rt_->ports_.erase(it);
}

void TailscaleOverlay::AppendStatus(std::ostream& out) const {
  out << "tailscale " << overlay_.id << " " << (attached() ? "attached" : "node");
  if (!attached()) out << " hostname=" << hostname();
  out << " state=" << state_;
  if (!name_.empty()) out << " name=" << name_;
  if (!ips_.empty()) out << " ips=" << ips_;
  out << " helper=" << (pid_ > 0 ? "pid " + std::to_string(pid_) : "not running")
      << " restarts=" << restarts_;
  if (overlay_.tailscale.ephemeral) out << " ephemeral";
  if (attached()) out << " localapi=" << overlay_.tailscale.localapi_socket;
  out << "\n";
  if (!error_.empty()) out << "tailscale " << overlay_.id << " error: " << error_ << "\n";
  if (!health_.empty()) out << "tailscale " << overlay_.id << " health: " << health_ << "\n";
  if (!auth_url_.empty()) out << "tailscale " << overlay_.id << " login URL: " << auth_url_ << "\n";
  for (const auto& [port, p] : ports_) {
    out << "tailscale " << overlay_.id << " listener port " << port << " "
        << (p.address.empty() ? "(pending)" : p.address) << " sockets=" << p.listeners.size()
        << "\n";
  }
  out << "tailscale " << overlay_.id << " log: " << log_path_ << "\n";
}

}  // namespace via::overlays
