// See strict_socket.h.
#include "shim/strict_socket.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string_view>

#include "common/request_client.h"
#include "common/socks5_plan.h"
#include "shim/broker_link.h"
#include "shim/process_route.h"
#include "shim/real.h"

namespace via::shim {

namespace {

// ---- the spare ---------------------------------------------------------------------------------
// Each proxy socket costs a round trip to the broker, two wake-ups of sleeping processes, which
// on a virtual machine cost about as much as the SOCKS5 handshake itself. So once a process has
// taken one, it asks for the next at once (PROXY_SOCKET posted on a link of its own): the
// broker connects it to the proxy meanwhile, and the next connect finds its reply (and socket)
// waiting on the link. One idle connection to the proxy per process that connects; a spare
// older than proxy::kSpareMaxMs, or one the proxy closed, is dropped unused.
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

// What a PROXY_SOCKET reply `m` says about its socket `fd`.
Placed FromReply(const wire::Message& m, int fd) {
  uint32_t flags = 0;
  wire::Field f;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&flags);
  return {fd, (flags & wire::kFlagInProgress) != 0, (flags & wire::kFlagGreeted) != 0};
}

// The reply `r` of a PROXY_SOCKET on the spare link (`err`: the exchange's): 0 with *out, or an
// errno with the broker's message in `msg`.
int ReadReply(int err, wire::Reply& r, Placed* out, char* msg, size_t msgcap) {
  std::string_view text;
  if (err == 0) err = wire::ReplyErrno(r.message, &text);
  if (err == 0 && r.nfds == 0) err = EPROTO;
  if (err != 0) {
    if (!text.empty()) std::snprintf(msg, msgcap, "%.*s", int(text.size()), text.data());
    for (size_t i = 0; i < r.nfds; ++i) close(r.fds[i]);
    return err;
  }
  *out = FromReply(r.message, r.fds[0]);
  return 0;
}

// A proxy socket asked for on this thread's link: 0 with *out, or an errno.
int AskThreadLink(const wire::Addr& to, int domain, Placed* out, char* msg, size_t msgcap) {
  uint8_t req[128];
  wire::Writer w(req, sizeof req, wire::kProxySocket, BrokerNextId());
  PutRequest(&w, to, domain, false);
  uint8_t reply[4096];
  wire::Message m;
  int fd = -1;
  if (int err = BrokerCallForFd(w, reply, sizeof reply, &m, &fd, msg, msgcap); err != 0) return err;
  *out = FromReply(m, fd);
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
                     !proxy::SpareUsable(out->fd, g_spare.posted_ms))) {
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
  g_spare.posted_ms = proxy::MonotonicMs();
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
  return AskThreadLink(to, domain, out, msg, msgcap);
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
  proxy::CopySocketOptions(fd, got.fd);
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
