#include "overlays/i2p/i2p_listener.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "common/unique_fd.h"
#include "overlays/connect_op.h"
#include "overlays/i2p/i2p_overlay.h"
#include "overlays/i2p/sam.h"
#include "overlays/i2p/sam_session.h"

namespace via::overlays {

namespace {

Status MkdirP(const std::string& path) {
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (mkdir(cur.c_str(), 0700) != 0 && errno != EEXIST) return Status::FromErrno("mkdir " + cur);
  }
  return Status::Ok();
}

Result<std::string> ReadKeys(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) return std::string();
    return Status::FromErrno("cannot read " + path);
  }
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("cannot read " + path);
    if (n == 0) break;
    text.append(buf, size_t(n));
    if (text.size() > 16384) return Status::Invalid(path + ": too large for I2P keys");
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (!sam::IsSafeToken(text) || !sam::PublicDestination(text).ok()) {
    return Status::Invalid(path +
                           " does not hold I2P private keys (remove it to get a new "
                           "destination)");
  }
  return text;
}

Status WriteKeys(const std::string& path, const std::string& keys) {
  size_t slash = path.rfind('/');
  if (Status s = MkdirP(path.substr(0, slash)); !s.ok()) return s;
  std::string tmp = path + ".tmp";
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno("cannot write " + tmp);
  std::string text = keys + "\n";
  if (write(fd.get(), text.data(), text.size()) != ssize_t(text.size()) || fsync(fd.get()) != 0) {
    return Status::FromErrno("cannot write " + tmp);
  }
  fd.reset();
  if (rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno("cannot rename " + tmp);
  return Status::Ok();
}

class I2pListener : public InboundListener {
 public:
  I2pListener(I2pOverlay* rt, uint16_t port, std::string owner, Events events)
      : rt_(rt), port_(port), owner_(std::move(owner)), events_(std::move(events)) {
    rt_->listening_ports()[port_]++;
  }
  ~I2pListener() override {
    alive_.reset();
    accept_op_.reset();
    if (peer_watched_) rt_->loop()->Unwatch(peer_fd_.get());
    if (retry_timer_ != 0) rt_->loop()->CancelTimer(retry_timer_);
    if (session_) {
      rt_->log()->info("{}: listener on port {} closed; SAM session {} ended ({})", rt_->id(),
                       port_, session_->id(), address_);
    }
    session_.reset();
    if (--rt_->listening_ports()[port_] == 0) rt_->listening_ports().erase(port_);
  }

  std::string address() const override { return address_; }

  void Drain(std::function<void()> done) override {
    events_ = Events{};
    accept_op_.reset();
    if (peer_watched_) rt_->loop()->Unwatch(peer_fd_.get());
    peer_watched_ = false;
    peer_fd_.reset();
    if (retry_timer_ != 0) rt_->loop()->CancelTimer(retry_timer_);
    retry_timer_ = 0;
    drained_ = std::move(done);
    if (!session_ || !session_->ready()) return FinishDrain();
    CheckDrain();
  }

  void Start() {
    std::string keys = "TRANSIENT";
    const bool persistent = rt_->settings().destination == config::I2pDestination::kPersistent;
    if (persistent) {
      if (rt_->state_dir().empty()) {
        return Ready(Status::Invalid(
            "a persistent I2P destination needs network_service.state_dir (it is empty); set "
            "it, or use destination: ephemeral"));
      }
      auto stored = ReadKeys(rt_->KeyPath(port_));
      if (!stored.ok()) return Ready(stored.status());
      if (!stored->empty()) keys = *stored;
      fresh_keys_ = stored->empty();
    }
    session_ =
        std::make_unique<SamSession>(rt_->loop(), rt_, rt_->settings().options,
                                     rt_->NewSessionId("l" + std::to_string(port_) + "-"), keys);
    std::weak_ptr<int> alive = alive_;
    session_->Start(
        [this, alive, persistent](const Status& s) {
          if (alive.expired()) return;
          if (!s.ok()) return Ready(s);
          auto b32 = sam::B32Address(session_->private_keys());
          if (!b32.ok()) {
            return Ready(Status::Error(EPROTO,
                                       "SAM SESSION STATUS carried no usable "
                                       "DESTINATION: " +
                                           b32.status().message()));
          }
          if (persistent && fresh_keys_) {
            if (Status w = WriteKeys(rt_->KeyPath(port_), session_->private_keys()); !w.ok()) {
              return Ready(w);
            }
          }
          address_ = *b32 + ":" + std::to_string(port_);
          rt_->log()->info(
              "{}: listener on port {} is {} (SAM session {}, {} destination) for {}", rt_->id(),
              port_, *b32, session_->id(),
              persistent ? (fresh_keys_ ? "new persistent" : "persistent") : "ephemeral", owner_);
          // Ready once the first STREAM ACCEPT is pending: a peer may connect at once.
          NextAccept();
        },
        [this, alive](const Status& s) {
          if (alive.expired()) return;
          rt_->log()->warn("{}: listener on port {} ({}) lost its SAM session: {}", rt_->id(),
                           port_, address_, s.message());
          if (drained_) return FinishDrain();
          Fail(s);
        });
  }

 private:
  void Ready(const Status& s) {
    auto ready = std::move(events_.ready);
    events_.ready = nullptr;
    if (ready) ready(s);
  }
  void Fail(const Status& s) {
    auto failed = std::move(events_.failed);
    events_.failed = nullptr;
    if (failed) failed(s);
  }

  // Accepted sockets the program still holds: their inodes are listed in /proc/net/tcp{,6}
  // (an orphaned socket, closed by the program, shows inode 0).
  void PruneStreams() {
    std::vector<unsigned long> live;
    for (const char* path : {"/proc/net/tcp", "/proc/net/tcp6"}) {
      FILE* f = std::fopen(path, "re");
      if (f == nullptr) continue;
      char line[512];
      while (std::fgets(line, sizeof line, f) != nullptr) {
        unsigned long inode = 0;
        // sl local rem st queues tr retrnsmt uid timeout inode
        if (std::sscanf(line, "%*s %*s %*s %*s %*s %*s %*s %*s %*s %lu", &inode) == 1 &&
            inode != 0) {
          live.push_back(inode);
        }
      }
      std::fclose(f);
    }
    std::erase_if(streams_, [&](unsigned long ino) {
      return std::find(live.begin(), live.end(), ino) == live.end();
    });
  }

  void CheckDrain() {
    PruneStreams();
    // Once the program holds none, give the router a moment to send what they carried.
    const bool idle = streams_.empty();
    retry_timer_ = rt_->loop()->AddTimer(idle ? 3000 : 1000, [this, idle] {
      retry_timer_ = 0;
      idle ? FinishDrain() : CheckDrain();
    });
  }

  void FinishDrain() {
    auto done = std::move(drained_);
    drained_ = nullptr;
    if (done) done();
  }

  void NextAccept() {
    auto hs = sam::NewAcceptHandshake(session_->id());
    auto fd = SamSocket(*rt_);
    if (!hs.ok() || !fd.ok()) return Fail(hs.ok() ? fd.status() : hs.status());
    peer_fd_ = std::move(*fd);
    auto dup = DupFd(peer_fd_.get());
    if (!dup.ok()) return Fail(dup.status());
    accept_op_ = std::make_unique<ConnectOp>(rt_->loop(), rt_, std::move(*dup), std::move(*hs));
    std::weak_ptr<int> alive = alive_;
    accept_op_->Start([this, alive](int err, const std::string& msg) {
      if (alive.expired()) return;
      rt_->loop()->Post([op = std::shared_ptr<ConnectOp>(std::move(accept_op_))] {});
      if (err != 0) {
        rt_->log()->warn("{}: STREAM ACCEPT for port {} failed: {}", rt_->id(), port_, msg);
        peer_fd_.reset();
        if (events_.ready) return Ready(Status::Error(err, msg));
        if (!session_ || !session_->ready()) return;
        // Try again in a second; the session's own hang-up ends the listener if it is gone.
        retry_timer_ = rt_->loop()->AddTimer(1000, [this, alive] {
          retry_timer_ = 0;
          if (!alive.expired()) NextAccept();
        });
        return;
      }
      Ready(Status::Ok());  // the first time only
      if (alive.expired()) return;
      // Waiting for a peer: its destination line comes first (SILENT=false).
      fcntl(peer_fd_.get(), F_SETFL, fcntl(peer_fd_.get(), F_GETFL) | O_NONBLOCK);
      Status w = rt_->loop()->Watch(peer_fd_.get(), EPOLLIN | EPOLLRDHUP,
                                    [this](uint32_t) { OnPeerReadable(); });
      if (!w.ok()) return Fail(w);
      peer_watched_ = true;
    });
  }

  void OnPeerReadable() {
    char buf[4096];
    ssize_t n = recv(peer_fd_.get(), buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    const void* nl = n > 0 ? std::memchr(buf, '\n', size_t(n)) : nullptr;
    std::string problem;
    if (n <= 0) {
      problem = "the stream ended before the peer's destination line";
    } else {
      // Through the '\n' only: what follows is the peer's payload, for the program.
      size_t take = nl == nullptr ? size_t(n) : size_t(static_cast<const char*>(nl) - buf) + 1;
      ssize_t r = recv(peer_fd_.get(), buf, take, MSG_DONTWAIT);
      if (r != ssize_t(take)) {
        problem = "short read";
      } else {
        line_.append(buf, take);
        if (line_.size() >= sam::kMaxLine) problem = "the peer's destination line is too long";
      }
    }
    if (problem.empty() && nl == nullptr) return;  // the rest of the line comes later
    rt_->loop()->Unwatch(peer_fd_.get());
    peer_watched_ = false;
    UniqueFd fd = std::move(peer_fd_);
    std::string line = std::move(line_);
    line_.clear();
    Result<std::string> peer = Status::Error(EPROTO, problem);
    if (problem.empty())
      peer = sam::ParsePeerLine(std::string_view(line).substr(0, line.size() - 1));
    if (!peer.ok()) {
      rt_->log()->warn("{}: an accepted stream on port {} was dropped: {}", rt_->id(), port_,
                       peer.status().message());
      return NextAccept();
    }
    fcntl(fd.get(), F_SETFL, fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
    struct stat st;
    if (fstat(fd.get(), &st) == 0) {
      if (streams_.size() >= 256) PruneStreams();
      streams_.push_back(static_cast<unsigned long>(st.st_ino));
    }
    std::weak_ptr<int> alive = alive_;
    NextAccept();  // keep one STREAM ACCEPT pending
    if (alive.expired()) return;
    if (events_.accepted) events_.accepted(AcceptedStream{std::move(fd), *peer});
  }

  I2pOverlay* rt_;
  uint16_t port_;
  std::string owner_;
  Events events_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  std::unique_ptr<SamSession> session_;
  bool fresh_keys_ = false;
  std::string address_;
  std::unique_ptr<ConnectOp> accept_op_;
  UniqueFd peer_fd_;
  bool peer_watched_ = false;
  std::string line_;                    // the peer's destination line, as far as it came
  std::vector<unsigned long> streams_;  // inodes of accepted sockets handed to the program
  std::function<void()> drained_;       // set while draining
  uint64_t retry_timer_ = 0;
};

}  // namespace

std::unique_ptr<InboundListener> StartI2pListener(I2pOverlay* i2p, uint16_t port,
                                                  const std::string& owner,
                                                  InboundListener::Events events) {
  auto l = std::make_unique<I2pListener>(i2p, port, owner, std::move(events));
  I2pListener* raw = l.get();
  std::unique_ptr<InboundListener> out = std::move(l);
  raw->Start();
  return out;
}

}  // namespace via::overlays
