// Strict mode's listeners (strict_supervisor.h): a listen() inside the namespace on a
// non-loopback address is served by the overlay as the shim's is (docs/architecture.md,
// "Inbound listeners"), with nothing relayed. via run sends LISTEN with one end of an AF_UNIX
// SOCK_SEQPACKET socketpair and puts the other end on the program's descriptor number
// (SECCOMP_IOCTL_NOTIF_ADDFD with SETFD); the broker sends each accepted stream over it
// (ACCEPTED, the connected socket attached). The filter hands accept/accept4 and getsockname
// to via run too: on one of these listeners, accept takes one ACCEPTED and places its socket as
// the call's result (SECCOMP_ADDFD_FLAG_SEND), writing the peer's fake address; getsockname
// answers what the program bound. Anything else runs as the program made it. The listening
// descriptor is readable while a stream waits, so poll/epoll (Go's runtime) work unchanged.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tools/strict_supervisor.h"

namespace via::tools::strict {

namespace {

constexpr int kAcceptPollMs = 250;  // how often a blocked accept checks that its caller waits
// LISTEN waits for the overlay's listener (I2P: a session, about 20 s): the HELLO's default
// WAIT_MS plus the quick deadline, as the shim's.
constexpr int kListenWaitMs = 180000 + BrokerClient::kQuickMs;

// `a` as the kernel would write it for a socket of `family` (4 or 6) to the caller's `addr`
// and `*len` (the caller's size in, the address's size out, the address cut to fit); false when
// the caller's memory cannot be written. Nothing is written when `addr` or `len` is null.
bool WriteAddress(pid_t tid, uint64_t addr, uint64_t len, wire::Addr a, uint8_t family) {
  if (addr == 0 || len == 0) return true;
  socklen_t cap = 0;
  if (!ReadMemory(tid, len, &cap, sizeof cap)) return false;
  if (family == 6) a = wire::Mapped(a);
  sockaddr_storage ss{};
  socklen_t actual = wire::AddrToSockaddr(a, &ss);
  return WriteMemory(tid, addr, &ss, std::min(cap, actual)) &&
         WriteMemory(tid, len, &actual, sizeof actual);
}

// The local (`getsockname`) or peer (`getpeername`) address of socket `fd`; false on an error
// or a family other than IPv4/IPv6.
bool SocketName(int fd, int (*get)(int, sockaddr*, socklen_t*), wire::Addr* out) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  return get(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
         wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, out);
}

// The address a TCP socket of the program listens on, when the overlay is asked to serve it: an
// AF_INET/AF_INET6 stream socket on a non-loopback address. A socket not bound yet is bound to
// the unspecified address and a port the kernel picks, as listen() would, so the overlay gets
// the port.
bool OverlayListen(const CallerSocket& sock, wire::Addr* bound) {
  if ((sock.domain != AF_INET && sock.domain != AF_INET6) || sock.type != SOCK_STREAM) {
    return false;
  }
  if (!SocketName(sock.fd.get(), getsockname, bound) || wire::IsLoopback(*bound)) return false;
  if (bound->port != 0) return true;
  wire::Addr any;
  any.family = bound->family;
  sockaddr_storage ss{};
  socklen_t alen = wire::AddrToSockaddr(any, &ss);
  if (bind(sock.fd.get(), reinterpret_cast<sockaddr*>(&ss), alen) != 0) return false;
  return SocketName(sock.fd.get(), getsockname, bound);
}

}  // namespace

std::optional<Supervisor::Listener> Supervisor::ListenerOf(const CallerSocket& sock) {
  struct stat st {};
  if (sock.domain != AF_UNIX || sock.type != SOCK_SEQPACKET || fstat(sock.fd.get(), &st) != 0) {
    return std::nullopt;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = listeners_.find(st.st_ino);
  if (it == listeners_.end()) return std::nullopt;
  return it->second;
}

void Supervisor::HandleListen(const seccomp_notif& n) {
  const int fd = int(n.data.args[0]);
  CallerSocket sock;
  if (!TakeSocket(pidfds_, pid_t(n.pid), fd, &sock)) return Continue(n.id);
  if (ListenerOf(sock)) return Respond(n.id, 0);  // ours: listening already
  wire::Addr bound;
  if (!OverlayListen(sock, &bound)) return Continue(n.id);  // stays inside the namespace
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return Respond(n.id, errno);
  UniqueFd mine(sv[0]), theirs(sv[1]);
  uint32_t flags = 0;
  std::string address, msg;
  int err = BrokerListen(sock.pid, theirs.get(), bound, &flags, &address, &msg);
  theirs.reset();
  const std::string where = AddrText(bound);
  if (err != 0) {
    if (!quiet_) {
      Complain("listen on " + where + (err == EOPNOTSUPP ? " refused: " : " failed: ") + msg);
    }
    return Respond(n.id, err);
  }
  // listen: local: the namespace's own interfaces, which nothing outside can reach.
  if ((flags & wire::kFlagListenLocal) != 0) return Continue(n.id);
  if (!accept_hooked_) {
    // No overlay served listeners when the filter was made: it does not take accept, so the
    // program could never take a stream. (Closing our ends tears the listener down.)
    if (!quiet_) {
      Complain("listen on " + where + " refused: the overlay " + network_ +
               " serves listeners, but none did when this strict session started; run it again");
    }
    return Respond(n.id, EOPNOTSUPP);
  }
  int fl = fcntl(sock.fd.get(), F_GETFL);
  if (fl >= 0) fcntl(mine.get(), F_SETFL, fl & O_NONBLOCK);
  struct stat st {};
  fstat(mine.get(), &st);
  {
    std::lock_guard<std::mutex> lock(mu_);
    listeners_[st.st_ino] = Listener{bound};
  }
  has_listeners_.store(true, std::memory_order_release);
  if (!PlaceOn(n.id, mine.get(), sock.pid, fd)) return;
  if (!address.empty() && !quiet_) {
    Complain("listening on " + where + " through " + network_ + ": reachable at " + address);
  }
  Respond(n.id, 0);
}

// LISTEN goes past BrokerClient (which has no call for it) on a connection of its own, greeted
// for the listening process (its network: strict_routes.cc).
int Supervisor::BrokerListen(pid_t pid, int theirs, const wire::Addr& bound, uint32_t* flags,
                             std::string* address, std::string* msg) {
  RoutePtr route = RouteOf(pid);
  auto c = Open(route->network == network_ ? 0 : pid);
  if (!c.ok()) {
    *msg = c.status().message();
    return c.status().code() != 0 ? c.status().code() : EHOSTUNREACH;
  }
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, wire::kListen, RawId());
  w.PutAddr(wire::kTagAddr, bound);
  std::vector<uint8_t> reply;
  wire::Message m;
  int err = RawExchange(*c, w, theirs, kListenWaitMs, &reply, &m, msg);
  wire::Field f;
  if (m.Find(wire::kTagFlags, &f)) f.u32(flags);
  if (m.Find(wire::kTagListenAddress, &f)) *address = std::string(f.str());
  return err;
}

void Supervisor::HandleAccept(const seccomp_notif& n) {
  CallerSocket sock;
  if (!TakeSocket(pidfds_, pid_t(n.pid), int(n.data.args[0]), &sock)) return Continue(n.id);
  std::optional<Listener> l = ListenerOf(sock);
  if (!l) return Continue(n.id);  // a listener inside the namespace
  const int flags = n.data.nr == SYS_accept4 ? int(n.data.args[3]) : 0;
  if ((flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != 0) return Respond(n.id, EINVAL);
  const int fl = fcntl(sock.fd.get(), F_GETFL);
  UniqueFd conn;
  wire::Addr peer;
  int err = ReceiveAccepted(n, sock.fd.get(), fl >= 0 && (fl & O_NONBLOCK) != 0, &conn, &peer);
  if (err != 0) return Respond(n.id, err);
  if (!conn) return;  // the caller went away (the stream is lost with it)
  int cfl = fcntl(conn.get(), F_GETFL);
  fcntl(conn.get(), F_SETFL, (flags & SOCK_NONBLOCK) != 0 ? cfl | O_NONBLOCK : cfl & ~O_NONBLOCK);
  if (!WriteAddress(pid_t(n.pid), n.data.args[1], n.data.args[2], peer, l->bound.family)) {
    return Respond(n.id, EFAULT);
  }
  seccomp_notif_addfd add{};
  add.id = n.id;
  add.flags = SECCOMP_ADDFD_FLAG_SEND;  // placed and returned as the call's result, at once
  add.srcfd = uint32_t(conn.get());
  add.newfd_flags = (flags & SOCK_CLOEXEC) != 0 ? O_CLOEXEC : 0;
  if (ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_ADDFD, &add) < 0 && errno != ENOENT) {
    Respond(n.id, errno == EMFILE ? EMFILE : ECONNABORTED);
  }
}

int Supervisor::ReceiveAccepted(const seccomp_notif& n, int sock, bool nonblocking, UniqueFd* out,
                                wire::Addr* peer) {
  uint8_t buf[2048];
  int fds[4];
  size_t nfds = 0;
  int msg_flags = 0;
  ssize_t r;
  for (;;) {
    r = wire::ReceiveDatagram(sock, buf, sizeof buf, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, fds, &nfds,
                              &msg_flags);
    if (r >= 0 || (errno != EAGAIN && errno != EINTR)) break;
    if (nonblocking) return EAGAIN;
    pollfd p{sock, POLLIN, 0};
    poll(&p, 1, kAcceptPollMs);
    if (!StillWaiting(n.id)) return 0;
  }
  if (r < 0) return errno;
  for (size_t i = 1; i < nfds; ++i) close(fds[i]);
  if (nfds > 0) out->reset(fds[0]);
  if (r == 0) {
    if (!quiet_) Complain("the listener through " + network_ + " was closed by the broker");
    return EINVAL;  // as accept() on a socket that no longer listens
  }
  if (!*out) return (msg_flags & MSG_CTRUNC) != 0 ? EMFILE : ECONNABORTED;
  wire::Message m;
  wire::Field f;
  if (m.Parse(buf, size_t(r)) != wire::ParseError::kOk || m.type() != wire::kAccepted ||
      !m.Find(wire::kTagAddr, &f) || !f.addr(peer)) {
    out->reset();
    return ECONNABORTED;  // this stream is lost; the listener goes on
  }
  return 0;
}

void Supervisor::HandleGetsockname(const seccomp_notif& n) {
  CallerSocket sock;
  if (!TakeSocket(pidfds_, pid_t(n.pid), int(n.data.args[0]), &sock)) return Continue(n.id);
  std::optional<Listener> l = ListenerOf(sock);
  if (!l) return Continue(n.id);
  if (!StillWaiting(n.id)) return;
  bool ok = WriteAddress(pid_t(n.pid), n.data.args[1], n.data.args[2], l->bound, l->bound.family);
  Respond(n.id, ok ? 0 : EFAULT);
}

void Supervisor::RememberPeer(int host, const wire::Addr& dest) {
  struct stat st {};
  Peer p;
  p.dest = dest;
  if (fstat(host, &st) != 0 || !SocketName(host, getpeername, &p.kernel)) {
    return;  // then the kernel answers getpeername: the proxy's address
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (peers_.size() >= kMaxPeers) peers_.clear();
  peers_[st.st_ino] = p;
}

void Supervisor::HandleGetpeername(const seccomp_notif& n) {
  CallerSocket sock;
  if (!TakeSocket(pidfds_, pid_t(n.pid), int(n.data.args[0]), &sock, true)) return Continue(n.id);
  struct stat st {};
  if (sock.type != SOCK_STREAM || fstat(sock.fd.get(), &st) != 0) return Continue(n.id);
  std::optional<Peer> p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = peers_.find(st.st_ino); it != peers_.end()) p = it->second;
  }
  wire::Addr kernel;
  if (!p || !SocketName(sock.fd.get(), getpeername, &kernel) || !(kernel == p->kernel)) {
    return Continue(n.id);  // not one we placed (or no longer connected): the kernel answers
  }
  if (!StillWaiting(n.id)) return;
  const bool ok = WriteAddress(pid_t(n.pid), n.data.args[1], n.data.args[2], p->dest,
                               sock.domain == AF_INET6 ? 6 : 4);
  Respond(n.id, ok ? 0 : EFAULT);
}

}  // namespace via::tools::strict
