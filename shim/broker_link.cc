// The shim's connection to the broker: one SOCK_SEQPACKET connection per thread, opened on the
// first routed call. It survives what host programs do to descriptors: after fork the child opens
// its own; if the program closed our descriptor or dup2'd something over it (close_range, daemon
// helpers), the inode check notices and we reconnect instead of talking to the program's file.
// That lifecycle is this file's; each request and its reply (ids, deadline, stale replies) is
// wire::RequestClient (common/request_client.h), the same client as the CLI's.
#include "shim/broker_link.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/broker_address.h"
#include "common/request_client.h"
#include "shim/exec_env.h"
#include "shim/name_cache.h"
#include "shim/real.h"
#include "shim/state.h"

extern char** environ;

namespace via::shim {

namespace {

struct Link {
  wire::RequestClient rpc;  // its fd is the link's descriptor (-1: none), owned by the Link
  pid_t pid = 0;
  dev_t dev = 0;
  ino_t ino = 0;
  bool hello_done = false;
  int hello_err = 0;
  uint32_t flags = 0;
  uint32_t broker_pid = 0;  // SO_PEERCRED of the broker: whose fake addresses we were given
  uint32_t wait_ms = 0;     // HELLO's WAIT_MS: how long requests that wait on the overlay may take
  char hello_msg[256] = {};
  // Connects the shim ran itself that the broker has not been told about yet (REPORT COUNT).
  uint32_t unreported = 0;
  int64_t reported_ns = 0;  // when the last count went out
};

__thread Link t_link;
// What the thread's HELLO reply said about running SOCKS5 here; valid while t_link.flags has
// kFlagShimSocks5. Apart from Link so that it stays in .tbss (zero-filled, not copied per
// thread from an initialization image as Link's fields with initializers are).
constinit __thread Socks5Plan t_plan = {};
// The HELLO reply's ranges when it had kFlagRoutes: the fake ranges and the routes' ranges, the
// port field each one's prefix length.
struct RouteNets {
  static constexpr int kMax = 64;
  wire::Addr nets[kMax];
  bool fake[kMax];  // a fake range (else a route's)
  int n;
};
constinit __thread RouteNets t_route_nets = {};
// ... and the routes' name globs, NUL-separated; `all`: more than fit (every name matches).
struct RouteNames {
  char text[2048];
  size_t len;
  bool all;
};
constinit __thread RouteNames t_route_names = {};
pthread_key_t g_key;
pthread_once_t g_key_once = PTHREAD_ONCE_INIT;

// Deadlines on the broker link (docs/protocol.md, "Deadlines"): every request ends, at the
// latest, with ETIMEDOUT and a message naming the broker, so that a stopped or stuck broker
// fails programs instead of hanging them. Any request (and the connect to the socket) gets
// kQuickMs; requests that wait on the overlay get the broker's WAIT_MS on top.
constexpr int64_t kQuickMs = 10000;
// Without WAIT_MS in the HELLO reply: the longest wait the protocol allows (I2P's session, 120 s,
// plus a connect).
constexpr int64_t kDefaultWaitMs = 180000;
// `via broker --ensure` (which may start a broker and wait for it to listen).
constexpr int64_t kEnsureMs = 60000;

// Socket path discovered by `via broker --ensure` when VIA_SOCKET was not set.
pthread_mutex_t g_path_mu = PTHREAD_MUTEX_INITIALIZER;
char g_ensured_path[108];
int g_ensure_err = 0;
char g_ensure_msg[256];
// A HELLO in this program said "overlay" or refused it (not direct). Kept across fork: a forked
// child is the same program under the same rules (it would get the same answer).
bool g_routed = false;
bool g_no_config = false;  // `via broker --ensure` exited 3: no configuration anywhere

bool StillOurs(const Link& l) {
  struct stat st;
  return l.rpc.fd() >= 0 && fstat(l.rpc.fd(), &st) == 0 && S_ISSOCK(st.st_mode) &&
         st.st_dev == l.dev && st.st_ino == l.ino;
}

// The one liveness check of a link: whether the broker at the other end of `fd` is still there
// and has not hung up. A broker that exited, or that closes a link to make the shim greet again
// (a reload changed this process's network between direct and an overlay), leaves our end with
// POLLRDHUP (or POLLHUP/POLLERR). Only those are asked for, so any event means "gone". One poll,
// no wait, no round trip.
bool BrokerStillThere(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 0;
}

// Whether the link is still this process's, greeted without error, and the broker still there.
bool LinkUp(const Link& l) {
  return l.rpc.fd() >= 0 && l.pid == getpid() && l.hello_err == 0 && StillOurs(l) &&
         BrokerStillThere(l.rpc.fd());
}

void Drop(Link* l, bool close_fd) {
  if (close_fd && l->rpc.fd() >= 0) close(l->rpc.fd());
  *l = Link{};
}

void FlushReports(Link* l);

void ThreadExit(void*) {
  if (t_link.pid == getpid() && StillOurs(t_link)) {
    FlushReports(&t_link);
    close(t_link.rpc.fd());
  }
  t_link = Link{};
}

void MakeKey() { pthread_key_create(&g_key, ThreadExit); }

// Finds the `via` executable next to this library: the same directory (build tree) or
// <prefix>/bin/via for <prefix>/lib/via/libvia.so.
bool FindViaExe(char* out, size_t cap) {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&FindViaExe), &info) == 0 || info.dli_fname == nullptr) {
    return false;
  }
  char dir[4096];
  std::snprintf(dir, sizeof dir, "%s", info.dli_fname);
  char* slash = std::strrchr(dir, '/');
  if (slash == nullptr) return false;
  *slash = 0;
  const char* candidates[] = {"%s/via", "%s/../../bin/via"};
  for (const char* pattern : candidates) {
    std::snprintf(out, cap, pattern, dir);
    if (access(out, X_OK) == 0) return true;
  }
  return false;
}

// The failure of `via broker --ensure` (or of starting it), for every routed call of this process.
__attribute__((format(printf, 2, 3))) void EnsureFailed(int err, const char* fmt, ...) {
  g_ensure_err = err;
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_ensure_msg, sizeof g_ensure_msg, fmt, ap);
  va_end(ap);
}

// Starts `exe broker --ensure` with its standard output on `out_fd`: 0 or posix_spawn's error.
// The environment goes minus LD_PRELOAD: the broker must never route its own sockets.
int SpawnEnsure(const char* exe, int out_fd, pid_t* pid) {
  size_t n = 0;
  while (environ[n] != nullptr) ++n;
  char** env = static_cast<char**>(calloc(n + 1, sizeof(char*)));
  size_t k = 0;
  for (size_t i = 0; i < n && env != nullptr; ++i) {
    if (std::strncmp(environ[i], "LD_PRELOAD=", 11) != 0) env[k++] = environ[i];
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  char arg0[] = "via", arg1[] = "broker", arg2[] = "--ensure";
  char* argv[] = {arg0, arg1, arg2, nullptr};
  // The real posix_spawn: the hook's exec guard may itself be asking for this broker.
  int rc = Real().posix_spawn(pid, exe, &fa, nullptr, argv, env != nullptr ? env : environ);
  posix_spawn_file_actions_destroy(&fa);
  free(env);
  return rc;
}

// Reads what `fd` gives until its end, `buf` full (NUL-terminated, capacity `cap`) or
// `deadline`: false when the deadline came first.
bool ReadOutput(int fd, char* buf, size_t cap, int64_t deadline) {
  size_t got = 0;
  bool in_time = true;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int ready = poll(&p, 1, wire::LeftMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      in_time = false;
      break;
    }
    ssize_t r = read(fd, buf + got, cap - 1 - got);
    if (r > 0) {
      got += static_cast<size_t>(r);
      if (got == cap - 1) break;
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  buf[got] = 0;
  return in_time;
}

// Runs `via broker --ensure` (without the shim in its environment) and reads the socket path it
// prints. Done once per process; the answer (or the failure) is cached.
void EnsureBroker() {
  char exe[4200];
  if (!FindViaExe(exe, sizeof exe)) {
    // Without VIA_CONFIG nothing points at a configuration either: as "no configuration".
    const char* cfg = getenv("VIA_CONFIG");
    g_no_config = cfg == nullptr || cfg[0] == 0;
    EnsureFailed(EHOSTUNREACH,
                 "VIA_SOCKET is not set and no `via` executable was found next to libvia.so to "
                 "start a broker; run the program with `via run`");
    return;
  }
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    EnsureFailed(errno, "pipe: %s", std::strerror(errno));
    return;
  }
  pid_t pid = -1;
  int rc = SpawnEnsure(exe, pipefd[1], &pid);
  close(pipefd[1]);
  if (rc != 0) {
    close(pipefd[0]);
    EnsureFailed(rc, "cannot run %s: %s", exe, std::strerror(rc));
    return;
  }
  char buf[512];
  bool timed_out = !ReadOutput(pipefd[0], buf, sizeof buf, wire::DeadlineInMs(kEnsureMs));
  close(pipefd[0]);
  if (timed_out) kill(pid, SIGKILL);  // it prints the path and exits; this one is stuck
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    EnsureFailed(ETIMEDOUT,
                 "`%s broker --ensure` did not finish within %d s (a stopped or stuck broker?); "
                 "see `via status`",
                 exe, static_cast<int>(kEnsureMs / 1000));
    return;
  }
  char* nl = std::strchr(buf, '\n');
  if (nl != nullptr) *nl = 0;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 3) {
    g_no_config = true;
    EnsureFailed(EHOSTUNREACH,
                 "no via configuration was found (VIA_SOCKET and VIA_CONFIG are not set)");
    return;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || buf[0] != '/' ||
      std::strlen(buf) >= sizeof g_ensured_path) {
    EnsureFailed(EHOSTUNREACH,
                 "`%s broker --ensure` could not start a broker (see its message above)", exe);
    return;
  }
  std::snprintf(g_ensured_path, sizeof g_ensured_path, "%s", buf);
}

// The broker's socket path, or an errno with a message.
int SocketPath(char* out, size_t cap, char* msg, size_t msgcap) {
  const Settings& s = GetSettings();
  if (s.socket_path[0] != 0) {
    std::snprintf(out, cap, "%s", s.socket_path);
    return 0;
  }
  pthread_mutex_lock(&g_path_mu);
  if (g_ensured_path[0] == 0 && g_ensure_err == 0) EnsureBroker();
  int err = g_ensure_err;
  if (err == 0) std::snprintf(out, cap, "%s", g_ensured_path);
  if (err != 0 && msg != nullptr) std::snprintf(msg, msgcap, "%s", g_ensure_msg);
  pthread_mutex_unlock(&g_path_mu);
  return err;
}

// The broker's socket path for messages ("" if not known yet).
const char* BrokerPathText() {
  const Settings& s = GetSettings();
  return s.socket_path[0] != 0 ? s.socket_path : g_ensured_path;
}

// Reads ERRNO and MESSAGE from a reply: the errno, its message into `msg` when it is not 0.
int ReplyErrno(const wire::Message& m, char* msg, size_t msgcap) {
  std::string_view text;
  int err = wire::ReplyErrno(m, &text);
  if (err != 0 && msg != nullptr && msgcap > 0) {
    if (text.data() != nullptr) {
      std::snprintf(msg, msgcap, "%.*s", static_cast<int>(text.size()), text.data());
    } else {
      std::snprintf(msg, msgcap, "%s", std::strerror(err));
    }
  }
  return err;
}

// The SOCKS5 fields of a HELLO reply with kFlagShimSocks5 (common/socks5_plan.h). False when
// one is missing or does not fit: the shim then hands its sockets to the broker as without the
// flag.
bool ReadPlan(const wire::Message& m, Link* l) {
  return socks5::ReadPlan(m, l->flags, l->broker_pid, &t_plan);
}

// Sends the count of connects the broker has not heard of (REPORT COUNT, no reply), without
// waiting: a full link drops it (the count is for `via status`, nothing depends on it).
void FlushReports(Link* l) {
  // StillOurs: at exit or thread exit the program may have closed our descriptor and reused the
  // number; a REPORT must never land in the program's own file.
  if (l->unreported == 0 || l->rpc.fd() < 0 || l->pid != getpid() || !StillOurs(*l)) return;
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, wire::kReport, l->rpc.NextId());
  w.PutU32(wire::kTagCount, l->unreported);
  l->rpc.Post(w);
  l->unreported = 0;
  l->reported_ns = MonotonicNs();
}

// The fields of this process's HELLO: who it is and which network its environment asks for.
void PutHello(wire::Writer* w) {
  const Settings& s = GetSettings();
  w->PutU16(wire::kTagVersion, wire::kVersion);
  if (s.network[0] != 0) w->PutString(wire::kTagNetwork, s.network);
  if (s.session[0] != 0) w->PutString(wire::kTagSession, s.session);
  w->PutU32(wire::kTagPid, static_cast<uint32_t>(getpid()));
}

int DoHello(Link* l) {
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kHello, l->rpc.NextId());
  PutHello(&w);
  uint8_t reply_buf[4096];  // MESSAGE (at most 2500 bytes) and ORIGIN (500) may both be there
  wire::Reply reply(reply_buf, sizeof reply_buf);
  int err = l->rpc.Call(w, -1, wire::DeadlineInMs(kQuickMs), &reply);
  if (err != 0) return err;
  const wire::Message& m = reply.message;
  l->hello_done = true;
  l->hello_err = ReplyErrno(m, l->hello_msg, sizeof l->hello_msg);
  wire::Field f;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&l->flags);
  l->wait_ms = static_cast<uint32_t>(kDefaultWaitMs);
  if (m.Find(wire::kTagWaitMs, &f)) f.u32(&l->wait_ms);
  if (l->hello_err == 0 && (l->flags & wire::kFlagShimSocks5) != 0 && !ReadPlan(m, l)) {
    l->flags &= ~wire::kFlagShimSocks5;  // incomplete: hand sockets to the broker instead
  }
  if (l->hello_err != 0 || (l->flags & wire::kFlagDirect) == 0) {
    __atomic_store_n(&g_routed, true, __ATOMIC_RELAXED);
  }
  t_route_nets.n = 0;
  t_route_names.len = 0;
  t_route_names.all = false;
  if (l->hello_err == 0 && (l->flags & wire::kFlagRoutes) != 0) {
    m.ForEach([&](const wire::Field& rf) {
      if (rf.tag == wire::kTagRouteName) {
        if (t_route_names.len + rf.len + 1 > sizeof t_route_names.text) {
          t_route_names.all = true;
        } else {
          std::memcpy(t_route_names.text + t_route_names.len, rf.data, rf.len);
          t_route_names.len += rf.len;
          t_route_names.text[t_route_names.len++] = 0;
        }
      }
      wire::Addr a;
      if ((rf.tag == wire::kTagFakeNet || rf.tag == wire::kTagRouteNet) &&
          t_route_nets.n < RouteNets::kMax && rf.addr(&a)) {
        t_route_nets.fake[t_route_nets.n] = rf.tag == wire::kTagFakeNet;
        t_route_nets.nets[t_route_nets.n++] = a;
      }
    });
    // More ranges than fit: every address asks the broker (a 0-length prefix covers all).
    if (t_route_nets.n == RouteNets::kMax) {
      t_route_nets.nets[0] = wire::Addr{};
      t_route_nets.nets[0].family = 4;
      t_route_nets.nets[1] = wire::Addr{};
      t_route_nets.nets[1].family = 6;
      t_route_nets.fake[0] = t_route_nets.fake[1] = false;
      t_route_nets.n = 2;
    }
  }
  return 0;
}

// A new connection to the broker at `path` (non-blocking, close-on-exec): *fd, or an errno
// with the reason in `msg`.
int ConnectToBroker(const char* path, int* out, char* msg, size_t msgcap) {
  // Non-blocking: a broker whose backlog is full (stopped, or flooded) makes connect fail with
  // EAGAIN at once instead of blocking; it is tried again until the deadline.
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    int err = errno;
    std::snprintf(msg, msgcap, "cannot create a socket for the broker: %s", std::strerror(err));
    return err;
  }
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
  socklen_t sunlen = sizeof sun;
  // A process that changed user inside a session (apt's _apt, runuser, setpriv) cannot enter
  // the broker's 0700 directory, or would be refused there: it uses the broker's abstract
  // socket, where the broker admits it by its process tree (common/broker_address.h).
  bool abstract = false;
  struct stat dir;
  char* slash = strrchr(sun.sun_path, '/');
  if (slash != nullptr && slash != sun.sun_path) {
    *slash = 0;
    abstract = stat(sun.sun_path, &dir) == 0 && dir.st_uid != geteuid();
    *slash = '/';
  }
  if (abstract) sunlen = AbstractBrokerAddress(path, &sun);
  auto real_connect = [](int s, const sockaddr* a, socklen_t n) {
    return Real().connect(s, a, n);  // past the connect hook
  };
  const int64_t deadline = wire::DeadlineInMs(kQuickMs);
  int err = wire::ConnectUntil(fd, sun, sunlen, deadline, real_connect);
  if ((err == EACCES || err == EPERM) && !abstract) {
    abstract = true;
    sunlen = AbstractBrokerAddress(path, &sun);
    err = wire::ConnectUntil(fd, sun, sunlen, deadline, real_connect);
  }
  ucred cred{};
  socklen_t credlen = sizeof cred;
  if (err == 0 && abstract &&
      (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) != 0 ||
       !AbstractPeerTrusted(path, cred.uid))) {
    // Anyone can bind an abstract name first; only the broker's user (or root) is believed.
    close(fd);
    std::snprintf(msg, msgcap,
                  "the abstract socket @%s of the via broker at %s is held by uid %u, not by the "
                  "broker's user: refusing to talk to it (someone else took the name?); nothing "
                  "was sent",
                  sun.sun_path + 1, path, static_cast<unsigned>(cred.uid));
    return EACCES;
  }
  if (err == 0) {
    *out = fd;
    return 0;
  }
  close(fd);
  if (abstract && err != ETIMEDOUT) {
    std::snprintf(msg, msgcap,
                  "this process (uid %u) cannot use the via broker at %s, and its abstract socket "
                  "@%s for processes that changed user is not reachable (%s); nothing was sent",
                  static_cast<unsigned>(geteuid()), path, sun.sun_path + 1, std::strerror(err));
    return err == ENOENT || err == ECONNREFUSED ? EACCES : err;
  }
  if (err == ETIMEDOUT) {
    std::snprintf(msg, msgcap,
                  "the via broker at %s accepted no connection within %d s (stopped, stuck or "
                  "overloaded?); nothing was sent. See `via status`; if it stays so, end the "
                  "broker",
                  path, static_cast<int>(kQuickMs / 1000));
    return ETIMEDOUT;
  }
  std::snprintf(msg, msgcap, "the via broker at %s is not reachable (%s); nothing was sent", path,
                std::strerror(err));
  return err == ENOENT ? ECONNREFUSED : err;
}

// Makes the connected `fd` the thread's link `l`: moved out of the low descriptor numbers that
// programs expect to be theirs, its inode and the broker's pid remembered.
int MoveHigh(int fd) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > 512) {
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 400);
    if (high >= 0) {
      close(fd);
      fd = high;
    }
  }
  return fd;
}

void AdoptLink(Link* l, int fd) {
  fd = MoveHigh(fd);
  struct stat st;
  fstat(fd, &st);
  ucred cred{};
  socklen_t credlen = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) == 0) {
    l->broker_pid = static_cast<uint32_t>(cred.pid);
  }
  l->rpc.set_fd(fd);
  l->pid = getpid();
  l->dev = st.st_dev;
  l->ino = st.st_ino;
  pthread_setspecific(g_key, l);
}

// HELLO on the new link `l` to the broker at `path`: 0, or an errno with the reason in `msg`
// (the link is dropped then).
int Greet(Link* l, const char* path, char* msg, size_t msgcap) {
  int err = DoHello(l);
  if (err == 0) return 0;
  if (err == ETIMEDOUT) {
    std::snprintf(msg, msgcap,
                  "the via broker at %s (pid %u) did not answer within %d s (stopped, stuck or "
                  "overloaded?); nothing was sent. See `via status`; if it stays so, end it: "
                  "kill %u",
                  path, l->broker_pid, static_cast<int>(kQuickMs / 1000), l->broker_pid);
  } else if (err == ECONNRESET || err == EPIPE) {
    // Closed at once: a broker refusing clients (at its descriptor limit or a connection cap)
    // whose reason did not arrive.
    std::snprintf(msg, msgcap,
                  "the via broker at %s (pid %u) closed the connection at once (%s): it may be "
                  "refusing clients at its descriptor limit; see `via status`",
                  path, l->broker_pid, std::strerror(err));
  } else {
    std::snprintf(msg, msgcap, "the via broker did not answer: %s", std::strerror(err));
  }
  Drop(l, true);
  return err;
}

// Returns the calling thread's link, connected and greeted, or an errno.
int GetLink(Link** out, char* msg, size_t msgcap) {
  pthread_once(&g_key_once, MakeKey);
  Link* l = &t_link;
  if (l->rpc.fd() >= 0) {
    if (l->pid != getpid()) {
      // Inherited across fork: the parent still uses this connection; close our copy.
      Drop(l, StillOurs(*l));
    } else if (!StillOurs(*l)) {
      Drop(l, false);  // the program closed or replaced it; that descriptor is not ours now
    } else if (!BrokerStillThere(l->rpc.fd())) {
      Drop(l, true);  // greeted again below: the broker may have a new answer
    }
  }
  if (l->rpc.fd() < 0) {
    char path[108];
    int fd = -1;
    if (int err = SocketPath(path, sizeof path, msg, msgcap); err != 0) return err;
    if (int err = ConnectToBroker(path, &fd, msg, msgcap); err != 0) return err;
    AdoptLink(l, fd);
    if (int err = Greet(l, path, msg, msgcap); err != 0) return err;
  }
  if (l->hello_err != 0) {
    std::snprintf(msg, msgcap, "%s", l->hello_msg);
    return l->hello_err;
  }
  *out = l;
  return 0;
}

// One request/reply on the thread's link; retried once on a fresh link if the old one broke.
// `got_fd` (optional): the descriptor the reply carried, or -1.
int Request(wire::Writer& w, int pass_fd, uint8_t* reply, size_t cap, wire::Message* m, char* msg,
            size_t msgcap, int* got_fd = nullptr) {
  for (int attempt = 0;; ++attempt) {
    Link* l = nullptr;
    int err = GetLink(&l, msg, msgcap);
    if (err != 0) return err;
    FlushReports(l);
    const uint16_t type = wire::GetLE16(w.data() + 4);
    const bool waits_on_overlay = type == wire::kConnect || type == wire::kListen ||
                                  type == wire::kResolve || type == wire::kReverse ||
                                  type == wire::kDnsQuery;
    const int64_t timeout_ms = kQuickMs + (waits_on_overlay ? int64_t(l->wait_ms) : 0);
    wire::Reply r(reply, cap, got_fd != nullptr ? 1 : 0);
    err = l->rpc.Call(w, pass_fd, wire::DeadlineInMs(timeout_ms), &r);
    if (err == ETIMEDOUT) {
      // The reply may still come; this link is dropped so that it never answers a later request.
      uint32_t broker = l->broker_pid;
      Drop(l, true);
      std::snprintf(msg, msgcap,
                    "the via broker at %s (pid %u) did not answer within %d s (stopped, stuck or "
                    "overloaded?). See `via status`; if it stays so, end it: kill %u",
                    BrokerPathText(), broker, static_cast<int>(timeout_ms / 1000), broker);
      return err;
    }
    if (err == 0) {
      *m = r.message;
      if (got_fd != nullptr) *got_fd = r.nfds > 0 ? r.fds[0] : -1;
      return 0;
    }
    Drop(l, true);
    if (err == EPROTO) {
      std::snprintf(msg, msgcap, "malformed reply from the via broker: %s", r.error);
      return err;
    }
    if (attempt == 1 || (err != EPIPE && err != ECONNRESET && err != ENOTCONN)) {
      std::snprintf(msg, msgcap, "lost the connection to the via broker: %s", std::strerror(err));
      return err;
    }
  }
}

// Request, then the reply's ERRNO (and MESSAGE into msg): 0 when the broker said yes.
int Call(wire::Writer& w, int pass_fd, uint8_t* reply, size_t cap, wire::Message* m, char* msg,
         size_t msgcap, int* got_fd = nullptr) {
  int err = Request(w, pass_fd, reply, cap, m, msg, msgcap, got_fd);
  if (err == 0) err = ReplyErrno(*m, msg, msgcap);
  if (err != 0 && got_fd != nullptr && *got_fd >= 0) {
    close(*got_fd);
    *got_fd = -1;
  }
  return err;
}

// At exit, the exiting thread's count (other threads flush at their own exit).
__attribute__((destructor)) void FlushAtExit() { FlushReports(&t_link); }

}  // namespace

bool BrokerRoutedThisProcess() { return __atomic_load_n(&g_routed, __ATOMIC_RELAXED); }

bool NoConfigAnywhere() {
  pthread_mutex_lock(&g_path_mu);
  bool none = g_no_config;
  pthread_mutex_unlock(&g_path_mu);
  return none;
}

int BrokerHello(HelloInfo* info, char* msg, size_t msgcap) {
  // Once this thread has the flags (or has inherited them across fork) they hold until the
  // broker hangs up the link: it does so when a reload changes what this process gets (direct
  // or an overlay, the loopback policy). One poll, no wait; a hang-up goes the long way and
  // greets again. A broker that restarted is noticed the same way.
  if (t_link.hello_done && t_link.hello_err == 0 && t_link.rpc.fd() >= 0 &&
      BrokerStillThere(t_link.rpc.fd())) {
    info->flags = t_link.flags;
    return 0;
  }
  Link* l = nullptr;
  int err = GetLink(&l, msg, msgcap);
  if (err != 0) return err;
  info->flags = l->flags;
  return 0;
}

int BrokerConnect(int fd, const wire::Addr& dest, char* msg, size_t msgcap) {
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, wire::kConnect, t_link.rpc.NextId());
  w.PutAddr(wire::kTagAddr, dest);
  uint8_t reply[4096];  // an error MESSAGE is at most 3000 bytes
  wire::Message m;
  int err = Call(w, fd, reply, sizeof reply, &m, msg, msgcap);
  uint32_t flags = 0;
  wire::Field f;
  if (err == 0 && m.Find(wire::kTagFlags, &f) && f.u32(&flags) &&
      (flags & wire::kFlagRouteDirect) != 0) {
    return kRouteDirect;
  }
  return err;
}

uint32_t BrokerNextId() { return t_link.rpc.NextId(); }

int BrokerCallForFd(wire::Writer& w, uint8_t* reply, size_t cap, wire::Message* m, int* fd,
                    char* msg, size_t msgcap) {
  int err = Call(w, -1, reply, cap, m, msg, msgcap, fd);
  if (err == 0 && *fd < 0) {
    std::snprintf(msg, msgcap, "the via broker's reply carried no socket");
    err = EPROTO;
  }
  return err;
}

int BrokerOpenLink(int* out, char* msg, size_t msgcap) {
  *out = -1;
  char path[108];
  int fd = -1;
  if (int err = SocketPath(path, sizeof path, msg, msgcap); err != 0) return err;
  if (int err = ConnectToBroker(path, &fd, msg, msgcap); err != 0) return err;
  fd = MoveHigh(fd);
  wire::RequestClient rpc(fd);
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kHello, rpc.NextId());
  PutHello(&w);
  uint8_t reply_buf[4096];
  wire::Reply reply(reply_buf, sizeof reply_buf);
  int err = rpc.Call(w, -1, wire::DeadlineInMs(kQuickMs), &reply);
  if (err != 0) {
    std::snprintf(msg, msgcap, "the via broker at %s did not answer: %s", path, std::strerror(err));
  } else {
    err = ReplyErrno(reply.message, msg, msgcap);
  }
  if (err != 0) {
    close(fd);
    return err;
  }
  *out = fd;
  return 0;
}

bool RouteNamesMatch(const char* name) {
  if ((t_link.flags & wire::kFlagRoutes) == 0) return false;
  if (t_route_names.all) return true;
  char n[256];
  size_t len = strnlen(name, sizeof n);
  if (len >= sizeof n) return true;  // the broker judges what does not fit here
  std::memcpy(n, name, len);
  n[len] = 0;
  while (len > 1 && n[len - 1] == '.') n[--len] = 0;
  for (size_t at = 0; at < t_route_names.len;) {
    const char* glob = t_route_names.text + at;
    if (fnmatch(glob, n, FNM_CASEFOLD) == 0) return true;
    at += std::strlen(glob) + 1;
  }
  return false;
}

bool RoutesCover(const wire::Addr& addr, bool with_fake) {
  if ((t_link.flags & wire::kFlagRoutes) == 0) return false;
  const wire::Addr a = wire::Unmapped(addr);
  for (int i = 0; i < t_route_nets.n; ++i) {
    if ((with_fake || !t_route_nets.fake[i]) && wire::InPrefix(t_route_nets.nets[i], a)) {
      return true;
    }
  }
  return false;
}

int BrokerSocks5Plan(const Socks5Plan** plan, char* msg, size_t msgcap) {
  *plan = nullptr;
  Link* l = nullptr;
  int err = GetLink(&l, msg, msgcap);
  if (err != 0) return err;
  if ((l->flags & wire::kFlagShimSocks5) != 0) *plan = &t_plan;
  return 0;
}

void BrokerReport(const wire::Addr& dest, const char* name, int err, const char* msg) {
  Link* l = &t_link;
  if (err == 0 && (l->flags & wire::kFlagReportEach) == 0) {
    // Counted, and told in batches: a message per connect would wake the broker each time (a
    // cost on the program's latency the design is here to avoid).
    ++l->unreported;
    if (l->unreported >= 256 || MonotonicNs() - l->reported_ns > 1000000000) FlushReports(l);
    return;
  }
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kReport, l->rpc.NextId());
  if (name != nullptr) {
    w.PutString(wire::kTagName, name);
    w.PutU16(wire::kTagPort, dest.port);
  } else {
    w.PutAddr(wire::kTagAddr, dest);
  }
  w.PutU32(wire::kTagErrno, static_cast<uint32_t>(err));
  if (err == 0) {
    // The broker logs each connect (debug): one message, no reply, never a wait.
    if (l->rpc.fd() >= 0 && l->pid == getpid() && StillOurs(*l) && w.ok()) l->rpc.Post(w);
    return;
  }
  w.PutString(wire::kTagMessage, msg);
  if (!w.ok()) return;
  uint8_t reply[1024];
  wire::Message m;
  char ignored[64];
  Call(w, -1, reply, sizeof reply, &m, ignored, sizeof ignored);
}

void BrokerFlushReports() { FlushReports(&t_link); }

int BrokerResolve(const char* name, int family, wire::Addr* out, int cap, int* count, char* msg,
                  size_t msgcap) {
  *count = 0;
  // A repeat lookup within the broker's promise: answered here if the broker that gave it is
  // still the one at the end of our link.
  if (t_link.broker_pid != 0 && NameCacheGet(name, family, t_link.broker_pid, out, cap, count)) {
    if (LinkUp(t_link)) return 0;
    *count = 0;
  }
  uint8_t buf[512];
  wire::Writer w(buf, sizeof buf, wire::kResolve, t_link.rpc.NextId());
  w.PutString(wire::kTagName, name);
  w.PutU8(wire::kTagFamily, static_cast<uint8_t>(family));
  if (!w.ok()) {
    std::snprintf(msg, msgcap, "host name too long");
    return EINVAL;
  }
  uint8_t reply[4096];
  wire::Message m;
  if (int err = Call(w, -1, reply, sizeof reply, &m, msg, msgcap); err != 0) {
    return err;
  }
  uint32_t hold_ms = 0, flags = 0;
  m.ForEach([&](const wire::Field& f) {
    wire::Addr a;
    if (f.tag == wire::kTagAddr && *count < cap && f.addr(&a)) out[(*count)++] = a;
    if (f.tag == wire::kTagHoldMs) f.u32(&hold_ms);
    if (f.tag == wire::kTagFlags) f.u32(&flags);
  });
  if ((flags & wire::kFlagRouteDirect) != 0) {
    *count = 0;
    return kRouteDirect;
  }
  // A name routed elsewhere stays out of the cache: the cache's names are what this thread's
  // SOCKS5 sends by name, and this one's connects must go to the broker.
  if ((flags & wire::kFlagRouted) == 0) {
    NameCachePut(name, family, t_link.broker_pid, out, *count, hold_ms);
  }
  return 0;
}

int BrokerReverse(const wire::Addr& addr, char* name, size_t namecap) {
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, wire::kReverse, t_link.rpc.NextId());
  w.PutAddr(wire::kTagAddr, addr);
  uint8_t reply[4096];
  wire::Message m;
  char msg[256];
  if (int err = Call(w, -1, reply, sizeof reply, &m, msg, sizeof msg); err != 0) {
    return err;
  }
  wire::Field f;
  if (!m.Find(wire::kTagName, &f) || f.len == 0 || f.len >= namecap) return ENOENT;
  std::memcpy(name, f.data, f.len);
  name[f.len] = 0;
  return 0;
}

int BrokerListen(int pass_fd, const wire::Addr& bound, uint32_t* flags, char* address,
                 size_t addrcap, char* msg, size_t msgcap) {
  *flags = 0;
  if (addrcap > 0) address[0] = 0;
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, wire::kListen, t_link.rpc.NextId());
  w.PutAddr(wire::kTagAddr, bound);
  uint8_t reply[4096];
  wire::Message m;
  if (int err = Call(w, pass_fd, reply, sizeof reply, &m, msg, msgcap); err != 0) {
    return err;
  }
  wire::Field f;
  if (m.Find(wire::kTagFlags, &f)) f.u32(flags);
  if (m.Find(wire::kTagListenAddress, &f) && f.len < addrcap) {
    std::memcpy(address, f.data, f.len);
    address[f.len] = 0;
  }
  return 0;
}

int BrokerDnsSocket(const wire::Addr& local, wire::Addr* responder, char* msg, size_t msgcap) {
  uint8_t buf[128];
  wire::Writer w(buf, sizeof buf, wire::kDnsSocket, t_link.rpc.NextId());
  w.PutAddr(wire::kTagAddr, local);
  uint8_t reply[1024];
  wire::Message m;
  if (int err = Call(w, -1, reply, sizeof reply, &m, msg, msgcap); err != 0) {
    return err;
  }
  wire::Field f;
  if (!m.Find(wire::kTagAddr, &f) || !f.addr(responder)) {
    std::snprintf(msg, msgcap, "DNS_SOCKET reply without an address");
    return EPROTO;
  }
  return 0;
}

int BrokerDnsQuery(const void* query, size_t n, uint8_t* answer, size_t cap, size_t* answer_len,
                   char* msg, size_t msgcap) {
  *answer_len = 0;
  if (n > kMaxDnsQuery) {
    std::snprintf(msg, msgcap, "DNS query of %zu bytes (at most %zu)", n, kMaxDnsQuery);
    return EMSGSIZE;
  }
  uint8_t buf[kMaxDnsQuery + 64];
  wire::Writer w(buf, sizeof buf, wire::kDnsQuery, t_link.rpc.NextId());
  w.PutBytes(wire::kTagDnsPacket, query, n);
  uint8_t reply[kMaxDnsQuery + 1024];
  wire::Message m;
  if (int err = Call(w, -1, reply, sizeof reply, &m, msg, msgcap); err != 0) {
    return err;
  }
  wire::Field f;
  if (m.Find(wire::kTagMessage, &f)) {
    std::snprintf(msg, msgcap, "%.*s", int(f.len), reinterpret_cast<const char*>(f.data));
  }
  if (m.Find(wire::kTagDnsPacket, &f)) {
    if (f.len > cap) return EMSGSIZE;
    std::memcpy(answer, f.data, f.len);
    *answer_len = f.len;
  }
  return 0;
}

// For the exec guard in a vfork child (state.cc, ExecRouted): greets the broker on a connection
// of its own, so that the thread's link (shared with the suspended parent) stays untouched.
int BrokerHelloDetached(uint32_t* flags, char* msg, size_t msgcap) {
  *flags = 0;
  const Settings& s = GetSettings();
  char path[108];
  if (s.socket_path[0] != 0) {
    std::snprintf(path, sizeof path, "%s", s.socket_path);
  } else {
    bool known = false;
    if (pthread_mutex_trylock(&g_path_mu) == 0) {  // never wait in a vfork child
      known = g_ensure_err == 0 && g_ensured_path[0] != 0;
      if (known) std::snprintf(path, sizeof path, "%s", g_ensured_path);
      pthread_mutex_unlock(&g_path_mu);
    }
    if (!known) {
      if (int err = EnsureBrokerDetached(path, sizeof path, msg, msgcap); err != 0) return err;
    }
  }
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
  int err = 0;
  int rc;
  do {
    rc = Real().connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun);
  } while (rc < 0 && errno == EINTR);
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kHello, 1);  // the connection's first and only request
  PutHello(&w);
  uint8_t reply_buf[4096];
  wire::Reply reply(reply_buf, sizeof reply_buf);
  if (rc < 0) {
    err = errno;
    std::snprintf(msg, msgcap, "the via broker at %s is not reachable (%s)", path,
                  std::strerror(err));
  } else {
    wire::RequestClient rpc(fd);
    err = rpc.Call(w, -1, wire::DeadlineInMs(kQuickMs), &reply);
    if (err == ETIMEDOUT) {
      std::snprintf(msg, msgcap, "the via broker at %s did not answer within %d s", path,
                    static_cast<int>(kQuickMs / 1000));
    }
  }
  close(fd);
  if (err != 0) return err;
  const wire::Message& m = reply.message;
  if (int refused = ReplyErrno(m, msg, msgcap); refused != 0) return refused;
  wire::Field f;
  if (m.Find(wire::kTagFlags, &f)) f.u32(flags);
  return 0;
}

}  // namespace via::shim
