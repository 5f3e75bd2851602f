// See strict_socket.h.
#include "shim/strict_socket.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "common/request_client.h"
#include "common/socks5_plan.h"
#include "shim/broker_link.h"
#include "shim/process_route.h"
#include "shim/real.h"

namespace via::shim {

namespace {

// Copies onto `to` what the program may have set on `from` before its connect and that matters
// to it afterwards (as `via run --strict` does for the sockets it places).
void CopyOptions(int from, int to) {
  const int levels[2][2] = {{IPPROTO_TCP, TCP_NODELAY}, {SOL_SOCKET, SO_KEEPALIVE}};
  for (const auto& o : levels) {
    int v = 0;
    socklen_t l = sizeof v;
    if (getsockopt(from, o[0], o[1], &v, &l) == 0 && v != 0) setsockopt(to, o[0], o[1], &v, l);
  }
  const int fl = fcntl(from, F_GETFL);
  if (fl >= 0) fcntl(to, F_SETFL, fl & O_NONBLOCK);
}

// ---- the spare ---------------------------------------------------------------------------------
// Each proxy socket costs a round trip to the broker, two wake-ups of sleeping processes, which
// on a virtual machine cost about as much as the SOCKS5 handshake itself. So once a process has
// taken one, it asks for the next at once (PROXY_SOCKET posted on a link of its own): the
// broker connects it to the proxy meanwhile, and the next connect finds its reply (and socket)
// waiting on the link. One idle connection to the proxy per process that connects; a spare
// older than kSpareMaxMs is dropped unused (proxies time out idle handshakes: danted after 30 s).
constexpr int64_t kSpareMaxMs = 10000;
constexpr int64_t kSpareWaitMs = 10000;  // for a posted reply (the broker answers at once)

struct Spare {
  pid_t pid;  // whose link: a forked child starts its own
  int link;   // BrokerOpenLink's, or -1
  dev_t dev;
  ino_t ino;                // the link's: the program may close or replace the descriptor
  wire::RequestClient rpc;  // on `link`
  bool posted;              // a PROXY_SOCKET is out: its reply carries the spare
  uint32_t posted_id;
  wire::Addr to;
  int domain;
  bool greet;  // asked to be greeted (kFlagGreeted)
  int64_t posted_ms;
};
constinit Spare g_spare = {0, -1, 0, 0, wire::RequestClient(), false, 0, {}, 0, false, 0};
pthread_mutex_t g_spare_mu = PTHREAD_MUTEX_INITIALIZER;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Forgets the spare link; closes it if it is still this process's own descriptor.
void DropSpare(bool ours) {
  if (ours && g_spare.link >= 0) close(g_spare.link);
  g_spare.link = -1;
  g_spare.posted = false;
}

bool SpareLinkOurs() {
  struct stat st;
  return g_spare.link >= 0 && fstat(g_spare.link, &st) == 0 && st.st_dev == g_spare.dev &&
         st.st_ino == g_spare.ino;
}

// The spare link, open and this process's: 0, or an errno.
int SpareLink(char* msg, size_t msgcap) {
  if (g_spare.link >= 0 && g_spare.pid != getpid()) DropSpare(SpareLinkOurs());  // the parent's
  if (g_spare.link >= 0 && !SpareLinkOurs()) DropSpare(false);
  if (g_spare.link >= 0) return 0;
  int fd = -1;
  if (int err = BrokerOpenLink(&fd, msg, msgcap); err != 0) return err;
  struct stat st;
  fstat(fd, &st);
  g_spare.pid = getpid();
  g_spare.link = fd;
  g_spare.dev = st.st_dev;
  g_spare.ino = st.st_ino;
  g_spare.rpc.set_fd(fd);
  g_spare.posted = false;
  return 0;
}

// Whether a spare connection to the proxy is still as it was made: the proxy has sent nothing
// and not closed it (a proxy that restarted, or timed the idle connection out). One poll.
bool StillIdle(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return poll(&p, 1, 0) == 0;
}

void PutRequest(wire::Writer* w, const wire::Addr& to, int domain, bool greet) {
  w->PutAddr(wire::kTagAddr, to);
  w->PutU8(wire::kTagFamily, domain == AF_INET6 ? 6 : 4);
  if (greet) w->PutU32(wire::kTagFlags, wire::kFlagGreeted);
}

// What a PROXY_SOCKET gave: the socket, its connect in progress, the proxy greeted on it.
struct Placed {
  int fd = -1;
  bool in_progress = false;
  bool greeted = false;
};

// The reply `r` of a PROXY_SOCKET: 0 with *out, or an errno.
int ReadReply(int err, wire::Reply& r, Placed* out, char* msg, size_t msgcap) {
  wire::Field f;
  if (err == 0) {
    uint32_t code = EPROTO;  // no ERRNO: malformed
    if (r.message.Find(wire::kTagErrno, &f)) f.u32(&code);
    err = int(code);
    if (err != 0 && r.message.Find(wire::kTagMessage, &f)) {
      std::snprintf(msg, msgcap, "%.*s", int(f.len), reinterpret_cast<const char*>(f.data));
    }
  }
  if (err == 0 && r.nfds == 0) err = EPROTO;
  if (err != 0) {
    for (size_t i = 0; i < r.nfds; ++i) close(r.fds[i]);
    return err;
  }
  uint32_t flags = 0;
  if (r.message.Find(wire::kTagFlags, &f)) f.u32(&flags);
  out->fd = r.fds[0];
  out->in_progress = (flags & wire::kFlagInProgress) != 0;
  out->greeted = (flags & wire::kFlagGreeted) != 0;
  return 0;
}

// A proxy socket from the spare link: the posted one when it is for `to`, `domain` and `greet`
// and young enough, else one asked for now (not greeted: the program waits for it); then the
// next one is posted, greeted when `greet`. 0, or an errno (the link is dropped: the caller asks
// on the thread's link instead).
int TakeFromSpare(const wire::Addr& to, int domain, bool greet, Placed* out, char* msg,
                  size_t msgcap) {
  if (int err = SpareLink(msg, msgcap); err != 0) return err;
  uint8_t buf[4096];
  wire::Reply r(buf, sizeof buf, 1);
  int err = EAGAIN;
  if (g_spare.posted) {
    g_spare.posted = false;
    err = g_spare.rpc.Await(g_spare.posted_id, wire::DeadlineInMs(kSpareWaitMs), &r);
    err = ReadReply(err, r, out, msg, msgcap);
    if (err == 0 && (!(g_spare.to == to) || g_spare.domain != domain || g_spare.greet != greet ||
                     NowMs() - g_spare.posted_ms > kSpareMaxMs || !StillIdle(out->fd))) {
      close(out->fd);  // for another proxy, too old to trust, or closed: asked for again below
      err = EAGAIN;
    }
  }
  if (err != 0) {
    uint8_t req[128];
    wire::Writer w(req, sizeof req, wire::kProxySocket, g_spare.rpc.NextId());
    PutRequest(&w, to, domain, false);
    err = g_spare.rpc.Call(w, -1, wire::DeadlineInMs(kSpareWaitMs), &r);
    err = ReadReply(err, r, out, msg, msgcap);
  }
  if (err != 0) {
    DropSpare(true);
    return err;
  }
  uint8_t next[128];
  g_spare.posted_id = g_spare.rpc.NextId();
  wire::Writer w(next, sizeof next, wire::kProxySocket, g_spare.posted_id);
  PutRequest(&w, to, domain, greet);
  g_spare.posted = g_spare.rpc.Post(w);
  g_spare.to = to;
  g_spare.domain = domain;
  g_spare.greet = greet;
  g_spare.posted_ms = NowMs();
  return 0;
}

// A proxy socket for `to`: the spare's, or one asked for on the thread's link. The lock is only
// tried: another thread's connect (or a fork while one held it) means asking on this thread's
// link, never a wait.
int TakeProxySocket(const wire::Addr& to, int domain, bool greet, Placed* out, char* msg,
                    size_t msgcap) {
  if (pthread_mutex_trylock(&g_spare_mu) == 0) {
    int err = TakeFromSpare(to, domain, greet, out, msg, msgcap);
    pthread_mutex_unlock(&g_spare_mu);
    if (err == 0) return 0;
  }
  *out = Placed{};
  return BrokerProxySocket(to, domain, &out->fd, &out->in_progress, msg, msgcap);
}

// Whether a spare may come greeted: the plan's credentials are the same for every connect.
bool MayGreet(const Socks5Plan* plan) {
  return plan != nullptr && !plan->isolate && !plan->per_destination;
}

// The last connect's socket came greeted (ProxyConnector::greeted).
thread_local bool t_greeted = false;

// PlaceProxySocket's outcome for ProxyConnect: the descriptor, 0 or EINPROGRESS, greeted.
thread_local int t_placed_fd = -1;
thread_local int t_placed_err = 0;
thread_local bool t_placed_greeted = false;
thread_local ino_t t_placed_ino = 0;  // the placed socket's: a later socket on the number is not it

}  // namespace

bool PlaceProxySocket(int fd, const Socks5Plan& plan) {
  t_placed_fd = -1;
  if (!StrictHere()) return true;
  sockaddr_storage ss;
  socklen_t len = 0;
  char ep[80], why[256];
  if (socks5::plan_detail::PickEndpoint(fd, plan, &ss, &len, ep, sizeof ep, why, sizeof why) != 0) {
    return false;
  }
  int err = 0;
  const ProxyConnector connect{&plan};
  if (connect(fd, reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    err = errno;
    if (err != EINPROGRESS) return false;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  t_placed_fd = fd;
  t_placed_err = err;
  t_placed_greeted = t_greeted;
  t_placed_ino = st.st_ino;
  return true;
}

bool ProxyConnector::greeted() const { return t_greeted; }

int ProxyConnector::operator()(int fd, const sockaddr* addr, socklen_t len) const {
  t_greeted = false;
  struct stat st;
  if (t_placed_fd >= 0 && t_placed_fd == fd && fstat(fd, &st) == 0 && st.st_ino == t_placed_ino) {
    t_placed_fd = -1;
    t_greeted = t_placed_greeted;
    if (t_placed_err == 0) return 0;
    errno = t_placed_err;
    return -1;
  }
  if (!StrictHere()) return Real().connect(fd, addr, len);
  wire::Addr to;
  int domain = 0;
  socklen_t dl = sizeof domain;
  if (!wire::AddrFromSockaddr(addr, len, &to) ||
      getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) != 0) {
    errno = EINVAL;
    return -1;
  }
  Placed got;
  char msg[256];
  if (int err = TakeProxySocket(to, domain, MayGreet(plan), &got, msg, sizeof msg); err != 0) {
    errno = err;
    return -1;
  }
  CopyOptions(fd, got.fd);
  const int fdfl = fcntl(fd, F_GETFD);
  const int r = dup3(got.fd, fd, (fdfl >= 0 && (fdfl & FD_CLOEXEC) != 0) ? O_CLOEXEC : 0);
  const int err = errno;
  close(got.fd);
  if (r < 0) {
    errno = err;
    return -1;
  }
  t_greeted = got.greeted;
  if (got.in_progress) {
    errno = EINPROGRESS;
    return -1;
  }
  return 0;
}

}  // namespace via::shim
