// Strict mode's supervisor: the notification workers and connect (strict_supervisor.h).
#include "tools/strict_supervisor.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <thread>

#include "broker/process_info.h"
#include "common/proxy_connect.h"

namespace via::tools::strict {

namespace {

constexpr int kDirectConnectMs = 10000;  // a loopback connect made directly (loopback: direct)
// How often, once the command exited, via run checks whether the processes it left are gone.
constexpr int kLeftPollMs = 100;

// linux/seccomp.h of Linux 6.6, which older headers lack.
constexpr unsigned long kIoctlNotifSetFlags = SECCOMP_IOW(4, uint64_t);
constexpr uint64_t kNotifSyncWakeUp = 1;  // SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP

// Signals to via run while it serves what the command left behind: passed on to those processes
// by Run's loop (async-signal-safe: the handler only records the signal).
volatile sig_atomic_t g_left_signal = 0;
void RecordLeftSignal(int sig) { g_left_signal = sig; }

// A loopback connect made directly from via run's namespace (network_service.loopback: direct).
int ConnectDirect(int fd, const wire::Addr& a) {
  sockaddr_storage ss;
  socklen_t len = wire::AddrToSockaddr(a, &ss);
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  int err = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    err = errno;
    if (err == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int r = poll(&p, 1, kDirectConnectMs);
      socklen_t el = sizeof err;
      if (r != 1) {
        err = ETIMEDOUT;
      } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) {
        err = errno;
      }
    }
  }
  fcntl(fd, F_SETFL, fl);
  return err;
}

// A connect's address (its first min(len, 128) bytes) from the calling thread's memory;
// false when it cannot be read.
bool ReadConnectAddress(const seccomp_notif& n, char* sa) {
  const int ulen = int(n.data.args[2]);
  size_t want = ulen < 0 ? 0 : std::min<size_t>(size_t(ulen), 128);
  return want == 0 || ReadMemory(pid_t(n.pid), n.data.args[1], sa, want);
}

}  // namespace

Supervisor::Supervisor(UniqueFd listener, UniqueFd dns, std::string socket, std::string token,
                       bool quiet, bool audit, bool listeners, std::vector<wire::Addr> fake_nets)
    : listener_(std::move(listener)),
      dns_(std::move(dns)),
      socket_(std::move(socket)),
      token_(std::move(token)),
      fake_nets_(std::move(fake_nets)),
      quiet_(quiet),
      audit_on_(audit),
      accept_hooked_(listeners) {}

bool Supervisor::Start(std::string* why) {
  seccomp_notif_sizes sizes{};
  if (Seccomp(SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) {
    *why = Errno("seccomp(SECCOMP_GET_NOTIF_SIZES)");
    return false;
  }
  notif_size_ = std::max<size_t>(sizes.seccomp_notif, sizeof(seccomp_notif));
  // Linux 6.6: the caller and the worker that takes its notification switch directly (as a
  // synchronous wake-up), instead of each waiting for the scheduler: most of what a notification
  // costs. An older kernel says EINVAL; the notifications work the same, slower.
  uint64_t sync = kNotifSyncWakeUp;
  ioctl(listener_.get(), kIoctlNotifSetFlags, sync);
  auto c = Open(0, &network_);
  if (!c.ok()) {
    *why = c.status().message();
    return false;
  }
  session_ = RouteFrom(*c, network_);
  if (!c->fake_nets().empty()) fake_nets_ = c->fake_nets();
  if ((session_->flags & wire::kFlagDirect) != 0) {
    *why = "the session's network is direct: strict mode needs an overlay";
    return false;
  }
  dns_client_.emplace(std::move(*c));
  reported_ms_ = proxy::MonotonicMs();
  return true;
}

int Supervisor::Run(pid_t command) {
  UniqueFd pidfd(int(syscall(SYS_pidfd_open, command, 0)));
  StartWorker();
  std::thread([this] { ServeDns(); }).detach();
  int st = 0;
  bool exited = false;  // the command has; processes it left in the sandbox may still run
  for (;;) {
    pollfd p{pidfd.get(), POLLIN, 0};
    // Once the command exited, its orphans (re-parented to us: run.cc makes via run a
    // subreaper) are checked for at kLeftPollMs; their exits wake nothing here.
    int r = poll(&p, pidfd && !exited ? 1 : 0, exited ? kLeftPollMs : 1000);
    if (r < 0 && errno != EINTR) break;
    if (r == 0) FlushReports(false);
    pid_t w;
    int ws = 0;
    while ((w = waitpid(-1, &ws, WNOHANG)) > 0) {
      if (w == command) {
        st = ws;
        exited = true;
      }
    }
    // Nobody left: the sandbox is empty (before the command exited this cannot happen).
    if (w < 0 && errno == ECHILD) break;
    if (exited && !serving_left_) ServeLeftBehind();
    if (int sig = g_left_signal; sig != 0 && exited) {
      g_left_signal = 0;
      // Every descendant, not only our children: a daemon whose parent has not exited yet.
      std::vector<pid_t> left = broker::ChildrenOf(getpid());
      for (size_t i = 0; i < left.size(); ++i) {
        for (pid_t child : broker::ChildrenOf(left[i])) left.push_back(child);
        kill(left[i], sig);
      }
    }
  }
  while (!exited && waitpid(command, &st, 0) < 0 && errno == EINTR) {
  }
  FlushReports(true);
  return st;
}

// The command exited and left processes in the sandbox (a daemon that double-forked, a job in
// the background): they live in the namespace whatever we do, and their connects need this
// listener (without it they would get ENOSYS: closed, but broken). So via run stays and serves
// them until the last one exits, and passes its signals on to them; their exit statuses are
// not the command's.
void Supervisor::ServeLeftBehind() {
  serving_left_ = true;
  struct sigaction record {};
  record.sa_handler = RecordLeftSignal;
  sigemptyset(&record.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &record, nullptr);
  if (!quiet_) {  // after the handlers: a signal sent once this is read is passed on
    Complain(
        "strict: the command exited; via run serves the processes it left in its "
        "namespace until they exit (signals to via run are passed on to them)");
  }
}

void Supervisor::Respond(uint64_t id, int err, uint32_t flags) {
  seccomp_notif_resp r{};
  r.id = id;
  r.error = err == 0 ? 0 : -err;
  r.flags = flags;
  ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_SEND, &r);
}

bool Supervisor::StillWaiting(uint64_t id) {
  return ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

// Connects wait for the overlay (seconds, at worst). Workers take notifications from the kernel
// themselves (each blocked in NOTIF_RECV: no hand-off between threads); one more is started
// whenever all are busy, up to kWorkers; past that, calls wait in the kernel.
void Supervisor::StartWorker() {
  ++workers_;
  std::thread([this] { Work(); }).detach();
}

void Supervisor::Work() {
  std::vector<char> buf(notif_size_);
  auto* n = reinterpret_cast<seccomp_notif*>(buf.data());
  // Idle workers wait in epoll with EPOLLEXCLUSIVE, not in NOTIF_RECV: the kernel wakes every
  // thread blocked in NOTIF_RECV for each notification (all but one go back to sleep: two
  // context switches each), but only one exclusive epoll waiter. Without epoll (it failed),
  // NOTIF_RECV alone, as before.
  UniqueFd ep(epoll_create1(EPOLL_CLOEXEC));
  epoll_event want{};
  want.events = EPOLLIN | EPOLLEXCLUSIVE;
  if (ep && epoll_ctl(ep.get(), EPOLL_CTL_ADD, listener_.get(), &want) != 0) ep.reset();
  for (;;) {
    if (ep) {
      epoll_event got;
      int r = epoll_wait(ep.get(), &got, 1, -1);
      if (r < 0 && errno != EINTR) return;
      if (r <= 0) continue;
      if ((got.events & (EPOLLHUP | EPOLLERR)) != 0 && (got.events & EPOLLIN) == 0) return;
    }
    std::fill(buf.begin(), buf.end(), 0);  // NOTIF_RECV wants a zeroed buffer
    if (ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_RECV, n) != 0) {
      if (errno == EINTR || errno == ENOENT) continue;  // ENOENT: that caller went away
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (++busy_ == workers_ && workers_ < kWorkers) StartWorker();
    }
    Handle(*n);
    std::lock_guard<std::mutex> lock(mu_);
    --busy_;
  }
}

void Supervisor::Handle(const seccomp_notif& n) {
  switch (n.data.nr) {
    case SYS_connect:
      return HandleConnect(n);
    case SYS_listen:
      return HandleListen(n);
    case SYS_accept:
    case SYS_accept4:
      // Until the overlay serves a listener, none of these can be one of ours.
      if (!has_listeners_.load(std::memory_order_acquire)) return Continue(n.id);
      return HandleAccept(n);
    case SYS_getsockname:
      if (!has_listeners_.load(std::memory_order_acquire)) return Continue(n.id);
      return HandleGetsockname(n);
    case SYS_getpeername:
      return HandleGetpeername(n);
    case SYS_io_uring_setup:  // only with --audit
      Record(ProcessOf(pid_t(n.pid)), "io_uring_setup (refused: EPERM)", "");
      return Respond(n.id, EPERM);
    default:
      AuditSend(n);  // sendto with an address, sendmsg, sendmmsg: only with --audit
      return Continue(n.id);
  }
}

void Supervisor::HandleConnect(const seccomp_notif& n) {
  const int fd = int(n.data.args[0]);
  const int ulen = int(n.data.args[2]);
  alignas(sockaddr_storage) char sa[128] = {};
  CallerSocket sock;
  // Without --audit, a socket that is not SOCK_STREAM is let through after one read (glibc's
  // resolver connects a UDP socket per lookup, and getaddrinfo one per address it sorts).
  const bool is_socket = TakeSocket(pidfds_, pid_t(n.pid), fd, &sock, !audit_on_);
  if (!is_socket || sock.type != SOCK_STREAM || sock.kind() != wire::SockKind::kStream) {
    if (audit_on_ && is_socket && ReadConnectAddress(n, sa)) {
      AuditDestination(sock.pid, sock.domain, sock.kind(), wire::AddrCall::kConnect, false, sa,
                       socklen_t(ulen));
    }
    return Continue(n.id);  // not a TCP socket (or not a socket: the kernel says so)
  }
  // The address, read from the program's memory, then checked to still be this call's.
  if (!ReadConnectAddress(n, sa)) return Respond(n.id, EFAULT);
  if (!StillWaiting(n.id)) return;
  wire::KernelDest d =
      wire::KernelDestination(sock.domain, wire::SockKind::kStream, wire::AddrCall::kConnect, false,
                              reinterpret_cast<sockaddr*>(sa), socklen_t(ulen));
  if (d.kind == wire::KernelDest::kReject) return Respond(n.id, d.err);
  if (d.kind == wire::KernelDest::kNone) return Continue(n.id);  // AF_UNSPEC: a disconnect
  UniqueFd host(socket(sock.domain, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!host) return Respond(n.id, errno);
  const RoutePtr route = RouteOf(sock.pid);
  std::string spare;
  int err = Connect(host.get(), d.addr, route, sock.pid, &spare);
  if (err != 0) return Respond(n.id, err);
  proxy::CopySocketOptions(sock.fd.get(), host.get());
  RememberPeer(host.get(), d.addr);
  if (PlaceOn(n.id, host.get(), sock.pid, fd)) Respond(n.id, 0);
  if (!spare.empty()) RefillSpare(spare, *route->plan, sock.domain);
}

bool Supervisor::PlaceOn(uint64_t id, int src, pid_t pid, int fd) {
  seccomp_notif_addfd add{};
  add.id = id;
  add.flags = SECCOMP_ADDFD_FLAG_SETFD;
  add.srcfd = uint32_t(src);
  add.newfd = uint32_t(fd);
  add.newfd_flags = CloseOnExec(pid, fd) ? O_CLOEXEC : 0;
  return ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_ADDFD, &add) >= 0;
}

// Our socket `fd` connected to `a` as process `pid`'s network says: through the overlay, or
// (loopback) directly or refused. 0 or an errno.
int Supervisor::Connect(int fd, const wire::Addr& a, const RoutePtr& route, pid_t pid,
                        std::string* spare) {
  if ((route->flags & wire::kFlagDirect) != 0) {
    // A program rule that sends this program direct: strict mode has no way out but overlays.
    if (!quiet_) {
      Complain("strict: connect to " + AddrText(a) + " refused: pid " + std::to_string(pid) +
               " is to go direct (" + route->network + "), and strict mode only routes");
    }
    return ENETUNREACH;
  }
  if (wire::IsLoopback(a) && (route->flags & wire::kFlagLoopbackRoute) == 0) {
    if ((route->flags & wire::kFlagLoopbackRefuse) != 0) return ECONNREFUSED;
    return ConnectDirect(fd, wire::Unmapped(a));
  }
  // A SOCKS5 overlay that lets programs run the handshake (handshake: program): run it here,
  // as the shim would, for a real address. A fake address goes to the broker, which knows
  // its name (via run holds no RESOLVE promise for it, as the shim may).
  // With routes (HELLO flag), every connect goes to the broker, which applies them: a name or
  // an address routed elsewhere must not take this overlay's SOCKS5 here.
  static const std::optional<Socks5Plan> kNoPlan;
  const std::optional<Socks5Plan>& plan =
      (route->flags & wire::kFlagRoutes) != 0 ? kNoPlan : route->plan;
  std::optional<std::string> name;
  if (plan && socks5::InFakeRange(*plan, a)) name = NameOf(a);
  if (plan && (name || !socks5::InFakeRange(*plan, a))) {
    return ConnectSocks5(fd, a, name, route, pid, spare);
  }
  auto c = Take(*route, pid);
  if (!c.ok()) {
    if (!quiet_) Complain("strict: " + c.status().message());
    return EHOSTUNREACH;
  }
  Status s = c->ConnectAddr(fd, a);
  if (s.ok()) {
    Give(*route, std::move(*c));
    return 0;
  }
  if (!quiet_) Complain("strict: connect to " + AddrText(a) + ": " + s.message());
  if (s.code() != ETIMEDOUT && s.code() != EPIPE && s.code() != ECONNRESET) {
    Give(*route, std::move(*c));
  }
  return s.code() != 0 ? s.code() : EHOSTUNREACH;
}

int Supervisor::ConnectSocks5(int fd, const wire::Addr& a, const std::optional<std::string>& name,
                              const RoutePtr& route, pid_t pid, std::string* spare) {
  int domain = 0;
  socklen_t dl = sizeof domain;
  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl);
  *spare = SpareKey(*route, domain);
  // On a spare the proxy was greeted already: the handshake is the request alone.
  struct Connector {
    bool ready;
    int operator()(int s, const sockaddr* to, socklen_t len) const {
      return ready ? 0 : ::connect(s, to, len);
    }
    bool greeted() const { return ready; }
  };
  const Connector connect{!spare->empty() && TakeSpare(*spare, fd)};
  char why[768], msg[1024];  // room for the machine's longest error()
  int err = socks5::ConnectBlocking(fd, *route->plan, name ? name->c_str() : nullptr, a, connect,
                                    why, sizeof why, msg, sizeof msg);
  if (err != 0 && !quiet_) Complain("strict: " + std::string(msg));
  ReportConnect(a, name, err, why, route, pid);
  return err;
}

void Supervisor::Complain(const std::string& what) {
  std::fprintf(stderr, "via: %s\n", what.c_str());
}

}  // namespace via::tools::strict
