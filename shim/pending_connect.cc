// Pending connects (pending_connect.h): the table of pending sockets, the thread that drives
// their handshakes, and what the hooks see meanwhile.
//
// The table lives in one MAP_SHARED anonymous mapping made at the first pending connect, so that
// a child forked while a socket is pending sees the parent's thread finish it (the child has no
// thread of its own for the parent's sockets). Its mutex is process-shared, recursive (a hook
// called from inside the module, getsockopt from the engine, must not deadlock) and robust (a
// process that dies holding it does not wedge the others).
//
// A slot is keyed by the socket's inode and the descriptor number the program connected; the
// thread works on a private F_DUPFD_CLOEXEC copy, so that the program closing its descriptor
// never makes the thread touch a reused number. Readiness is hidden by taking the program's epoll
// registrations of the socket out of the kernel (found in /proc/self/fdinfo of its epoll
// instances at the connect, recorded by the epoll_ctl hook afterwards) and adding them back when
// the handshake ends: the kernel polls the socket then, so level-triggered, EPOLLET and
// EPOLLONESHOT registrations all fire. (Out rather than masked: EPOLLERR/EPOLLHUP cannot be
// masked, and a socket the broker has not connected yet shows EPOLLHUP.) poll and select get a copy
// of the set with the pending socket's interest taken out and the slot's eventfd (written when the
// handshake ends) put in, and are restarted with the remaining time.
#include "shim/pending_connect.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/proxy_connect.h"
#include "common/socks5_plan.h"
#include "shim/broker_link.h"
#include "shim/optimistic.h"
#include "shim/process_route.h"
#include "shim/real.h"
#include "shim/routed.h"
#include "shim/state.h"
#include "shim/strict_socket.h"

namespace via::shim {

bool g_pending_ever = false;

namespace {

constinit LazyFn<int(int, int, int, epoll_event*)> g_epoll_ctl = {"epoll_ctl", nullptr};
constinit LazyFn<int(pollfd*, nfds_t, const timespec*, const sigset_t*)> g_ppoll = {"ppoll",
                                                                                    nullptr};
constinit LazyFn<int(int)> g_close = {"close", nullptr};
constinit LazyFn<int(int, int, int, void*, socklen_t*)> g_getsockopt = {"getsockopt", nullptr};

constexpr int kSlots = 512;         // pending sockets at once; more take the blocking path
constexpr int kCountedFds = 65536;  // descriptors below this are pre-filtered without the lock
constexpr int kRegs = 8;            // epoll registrations remembered per socket
constexpr int64_t kSliceMs = 1000;  // longest wait of a poll with a pending socket in its set

enum State : int { kFree = 0, kPending, kFailed };
enum Phase : int { kConnecting, kHandshake };

struct Reg {
  int epfd, tfd;
  uint32_t events;
  uint64_t data;
};

struct Slot {
  int state;
  uint32_t gen;  // changes at every reuse: a stale loop event never drives the next socket
  pid_t owner;   // the process whose thread drives it
  dev_t dev;
  ino_t ino;
  int prog_fd;  // the descriptor the program connected (-1 once it closed it)
  int priv_fd;  // the thread's copy (owner's numbering)
  int wake_fd;  // eventfd written when the handshake ends
  int err;
  bool reported;
  int phase;
  bool broker;     // the broker runs the handshake (CONNECT with the socket attached)
  bool finishing;  // the end is being said (Finish); Complete follows
  bool optimistic;  // optimistic_data: done once the request is written (HandOverOptimistic)
  int64_t deadline_ms;
  unsigned timeout_ms;
  socks5::Client hs;
  sockaddr_storage ep;
  socklen_t ep_len;
  char ep_text[80];
  wire::Addr dest;
  bool has_name;
  char name[256];
  char overlay[256];
  Reg regs[kRegs];
  int nregs;
};

struct Shared {
  pthread_mutex_t mu;
  int live;  // slots not free
  uint8_t counts[kCountedFds];
  Slot slots[kSlots];
};

Shared* g_shared = nullptr;

// The thread of this process (getpid() when started here), its epoll instance and eventfd.
pid_t g_thread_pid = 0;
int g_loop_ep = -1;
int g_loop_wake = -1;
constexpr uint64_t kWakeTag = ~uint64_t(0);
pthread_mutex_t g_start_mu = PTHREAD_MUTEX_INITIALIZER;

Shared* GetShared() { return __atomic_load_n(&g_shared, __ATOMIC_ACQUIRE); }

bool EnsureShared() {
  if (GetShared() != nullptr) return true;
  void* m = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  auto* s = static_cast<Shared*>(m);
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&s->mu, &a);
  pthread_mutexattr_destroy(&a);
  Shared* expected = nullptr;
  if (!__atomic_compare_exchange_n(&g_shared, &expected, s, false, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    munmap(m, sizeof(Shared));
  }
  return true;
}

// This thread is one of the shim's (the loop, a broker worker) or holds the table's lock: its
// reads and writes are the handshake's own (PendingIo lets them through).
thread_local bool t_shim_thread = false;
thread_local int t_locked = 0;

void Lock() {
  ++t_locked;
  if (pthread_mutex_lock(&g_shared->mu) == EOWNERDEAD) pthread_mutex_consistent(&g_shared->mu);
}
void Unlock() {
  pthread_mutex_unlock(&g_shared->mu);
  --t_locked;
}

// Without the lock: whether `fd` may be a socket of the table (false is certain).
bool MaybeTracked(int fd) {
  Shared* s = GetShared();
  if (s == nullptr || fd < 0 || __atomic_load_n(&s->live, __ATOMIC_RELAXED) == 0) return false;
  return fd >= kCountedFds || __atomic_load_n(&s->counts[fd], __ATOMIC_RELAXED) != 0;
}

int FindIno(dev_t dev, ino_t ino) {
  for (int i = 0; i < kSlots; ++i) {
    const Slot& s = g_shared->slots[i];
    if (s.state != kFree && s.ino == ino && s.dev == dev) return i;
  }
  return -1;
}

// Under the lock: whether slot `s` is pending for the hooks of this process. A slot of another
// process (the parent of a forked child) that is long past its deadline is not: its owner died or
// exec'ed with the handshake half done, and nobody will finish it.
bool StillPending(const Slot& s) {
  if (s.state != kPending) return false;
  return s.owner == getpid() || proxy::MonotonicMs() < s.deadline_ms + 1000;
}

// Under the lock: the slot of the socket `fd` is, or -1.
int FindLocked(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return -1;
  return FindIno(st.st_dev, st.st_ino);
}

void CountFd(int fd, int delta) {
  if (fd >= 0 && fd < kCountedFds) {
    __atomic_add_fetch(&g_shared->counts[fd], uint8_t(delta), __ATOMIC_RELAXED);
  }
}

// Under the lock.
void FreeSlot(Slot& s) {
  if (s.wake_fd >= 0 && s.owner == getpid()) g_close(s.wake_fd);
  if (s.priv_fd >= 0 && s.owner == getpid()) g_close(s.priv_fd);
  CountFd(s.prog_fd, -1);
  s.wake_fd = s.priv_fd = s.prog_fd = -1;
  s.state = kFree;
  __atomic_sub_fetch(&g_shared->live, 1, __ATOMIC_RELAXED);
}

// ---- epoll registrations -----------------------------------------------------------------------

// Calls fn(name) for each descriptor of this process (getdents64: no allocation).
template <typename Fn>
void ForEachFd(Fn&& fn) {
  int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  alignas(8) char buf[4096];
  for (;;) {
    long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<dirent64*>(buf + off);
      off += d->d_reclen;
      if (d->d_name[0] < '0' || d->d_name[0] > '9') continue;
      int fd = std::atoi(d->d_name);
      if (fd != dir) fn(fd);
    }
  }
  g_close(dir);
}

// Records the registrations of the socket `ino` in the epoll instance `epfd` (its fdinfo lines
// "tfd: N events: X data: X pos:N ino:X sdev:X") and masks them.
void MaskEpoll(int epfd, ino_t ino, Reg* regs, int* nregs) {
  char path[48];
  std::snprintf(path, sizeof path, "/proc/self/fdinfo/%d", epfd);
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return;
  char buf[4096];
  size_t have = 0;
  for (;;) {
    ssize_t n = read(f, buf + have, sizeof buf - 1 - have);
    if (n <= 0) break;
    have += size_t(n);
    buf[have] = 0;
    char* line = buf;
    for (char* nl; (nl = std::strchr(line, '\n')) != nullptr; line = nl + 1) {
      *nl = 0;
      int tfd;
      unsigned events;
      unsigned long long data;
      unsigned long lino;
      if (std::sscanf(line, "tfd: %d events: %x data: %llx pos:%*d ino:%lx", &tfd, &events, &data,
                      &lino) == 4 &&
          ino_t(lino) == ino && *nregs < kRegs) {
        if (g_epoll_ctl(epfd, EPOLL_CTL_DEL, tfd, nullptr) == 0) {
          regs[(*nregs)++] = Reg{epfd, tfd, events, data};
        }
      }
    }
    have = size_t(buf + have - line);
    std::memmove(buf, line, have);
    if (have == sizeof buf - 1) have = 0;  // a line longer than any fdinfo line: drop it
  }
  g_close(f);
}

bool IsEpoll(int fd) {
  char path[48], target[32];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n <= 0) return false;
  target[n] = 0;
  return std::strcmp(target, "anon_inode:[eventpoll]") == 0;
}

// The epoll instances this process made (epoll_create hooks), so that a connect looks at those
// instead of every descriptor: a program with thousands of sockets pays a handful of readlinks.
// Numbers the program closed and reused are weeded out when the list fills; once it overflows,
// every descriptor is looked at. Not seen: an instance inherited across exec
// (docs/architecture.md).
constexpr int kEpollsKnown = 32;
int g_epolls[kEpollsKnown];
int g_nepolls = 0;
bool g_epolls_overflow = false;
int g_epolls_lock = 0;

void LockEpolls() {
  while (__atomic_exchange_n(&g_epolls_lock, 1, __ATOMIC_ACQUIRE) != 0) sched_yield();
}
void UnlockEpolls() { __atomic_store_n(&g_epolls_lock, 0, __ATOMIC_RELEASE); }

// Takes the registrations of the socket `ino` out of every epoll instance of the process, into
// regs[*nregs...] (kRegs in all).
void MaskAllEpolls(ino_t ino, Reg* regs, int* nregs) {
  LockEpolls();
  if (!g_epolls_overflow) {
    for (int i = 0; i < g_nepolls; ++i) {
      if (g_epolls[i] != g_loop_ep && IsEpoll(g_epolls[i]))
        MaskEpoll(g_epolls[i], ino, regs, nregs);
    }
    UnlockEpolls();
    return;
  }
  UnlockEpolls();
  ForEachFd([&](int fd) {
    if (fd != g_loop_ep && IsEpoll(fd)) MaskEpoll(fd, ino, regs, nregs);
  });
}
void MaskAllEpolls(ino_t ino, Slot& s) { MaskAllEpolls(ino, s.regs, &s.nregs); }

// Puts registrations taken out by MaskAllEpolls back, by descriptor number: on whatever socket
// the number holds now.
void RestoreRegs(const Reg* regs, int nregs) {
  for (int i = 0; i < nregs; ++i) {
    epoll_event ev{};
    ev.events = regs[i].events;
    ev.data.u64 = regs[i].data;
    if (g_epoll_ctl(regs[i].epfd, EPOLL_CTL_ADD, regs[i].tfd, &ev) != 0 && errno == EEXIST) {
      g_epoll_ctl(regs[i].epfd, EPOLL_CTL_MOD, regs[i].tfd, &ev);
    }
  }
}

void RestoreEpolls(Slot& s) {
  RestoreRegs(s.regs, s.nregs);
  s.nregs = 0;
}

// ---- the end of a handshake --------------------------------------------------------------------

// What is said about a finished handshake, outside the lock.
struct Outcome {
  bool valid = false;
  bool report = true;  // REPORT to the broker (not for a connect the broker ran itself)
  bool quiet = false;  // a kernel connect (a route to direct): its failure is the program's to say
  int err = 0;
  wire::Addr dest;
  bool has_name = false;
  char name[256];
  char why[400];
  char msg[512];
};

void Tell(const Outcome& o) {
  if (!o.valid) return;
  if (o.report) {
    // This thread's own link, greeted once (a success is only sent on a link that exists).
    HelloInfo info;
    char ignored[8];
    BrokerHello(&info, ignored, sizeof ignored);
    BrokerReport(o.dest, o.has_name ? o.name : nullptr, o.err, o.why);
    // No exit flushes a shim thread's count of successes: the last pending one sends it.
    if (o.err == 0 && __atomic_load_n(&g_shared->live, __ATOMIC_RELAXED) <= 1) {
      BrokerFlushReports();
    }
  }
  if (o.err == 0 || o.quiet) return;
  char where[80];
  Complain("connect to %s through %s failed: %s", wire::FormatAddr(o.dest, where, sizeof where),
           NetworkLabel(), o.msg);
}

// Under the lock, in the owner: the handshake of `s` ended with `err` (0: connected) and `why`.
// The outcome is said (Tell, without the lock) before the program can see it, as the blocking
// path says it before connect returns: a program that exits as soon as it has its answer must not
// take the message and the REPORT with it. Until Complete the socket stays pending.
void Finish(Slot& s, int err, const char* why, Outcome* o) {
  if (s.priv_fd >= 0) g_epoll_ctl(g_loop_ep, EPOLL_CTL_DEL, s.priv_fd, nullptr);
  s.finishing = true;
  o->valid = true;
  o->report = !s.broker;
  o->err = err;
  o->dest = s.dest;
  o->has_name = s.has_name;
  std::memcpy(o->name, s.name, sizeof o->name);
  std::snprintf(o->why, sizeof o->why, "%s", why);
  if (err != 0 && s.broker) {
    std::snprintf(o->msg, sizeof o->msg, "%s", why);  // the broker's own words
  } else if (err != 0) {
    std::snprintf(o->msg, sizeof o->msg, "%s via %s: %s", s.hs.target(), s.overlay, why);
  }
}

// Under the lock, after Finish and Tell: what the program sees of the end.
void Complete(Slot& s, int err) {
  if (s.priv_fd >= 0) {
    if (err == 0) {
      struct stat st;
      if (s.prog_fd >= 0 && fstat(s.prog_fd, &st) == 0 && st.st_ino == s.ino) {
        RememberRouted(s.prog_fd, s.dest);
      }
    } else {
      // Every waiter wakes (POLLIN|POLLOUT|POLLHUP) and finds the cause in SO_ERROR; nothing
      // more reaches the proxy.
      shutdown(s.priv_fd, SHUT_RDWR);
    }
    g_close(s.priv_fd);
    s.priv_fd = -1;
  }
  RestoreEpolls(s);
  uint64_t one = 1;
  ssize_t w = write(s.wake_fd, &one, sizeof one);
  (void)w;
  s.finishing = false;
  if (err == 0) {
    FreeSlot(s);
  } else {
    s.state = kFailed;
    s.err = err;
    s.reported = false;
  }
}

// Without the lock: says the outcome of slot `i` (generation `gen`), then completes it unless the
// program closed the socket meanwhile.
void TellAndComplete(int i, uint32_t gen, const Outcome& o) {
  if (!o.valid) return;
  Tell(o);
  Lock();
  Slot& s = g_shared->slots[i];
  if (s.state == kPending && s.gen == gen && s.finishing) Complete(s, o.err);
  Unlock();
}

// ---- the thread --------------------------------------------------------------------------------

uint64_t LoopKey(int i) { return uint64_t(i) | uint64_t(g_shared->slots[i].gen) << 32; }

// Under the lock: optimistic data (`optimistic_data: true`): once the CONNECT request is written,
// the socket goes to optimistic.h, whose read and write hooks take the replies off, and the
// connect is complete for the program, whose first bytes follow the request. False: the thread
// waits for the reply as without the option (no room in that table, or the program closed it).
bool HandOverOptimistic(const Slot& s) {
  if (!s.optimistic || !s.hs.RequestSent() || s.prog_fd < 0) return false;
  return OptimisticAdopt(s.prog_fd, s.hs, s.overlay, s.has_name ? s.name : nullptr, s.dest,
                         s.deadline_ms);
}

void Drive(uint64_t key) {
  const int i = int(key & 0xffffffffu);
  if (i < 0 || i >= kSlots) return;
  Outcome o;
  const uint32_t gen = uint32_t(key >> 32);
  Lock();
  Slot& s = g_shared->slots[i];
  if (s.state == kPending && s.gen == gen && s.owner == getpid() && !s.finishing) {
    char why[400] = {};
    proxy::Step st{proxy::Next::kDone};
    if (s.phase == kConnecting) {
      st = proxy::ConnectResult(s.priv_fd, s.ep_text, why, sizeof why);
      if (st.next == proxy::Next::kDone) s.phase = kHandshake;
    }
    bool handed_over = false;
    if (s.phase == kHandshake) {
      st = proxy::Pump(s.priv_fd, s.hs, proxy::Reads::kTryFirst, true, s.ep_text, why, sizeof why);
      if (st.next == proxy::Next::kWaitReadable && HandOverOptimistic(s)) {
        st.next = proxy::Next::kDone;
        handed_over = true;
      }
    }
    switch (st.next) {
      case proxy::Next::kDone:
        Finish(s, 0, "", &o);
        o.report = o.report && !handed_over;  // the first read reports it (optimistic.h)
        break;
      case proxy::Next::kFailed:
        Finish(s, st.err, why, &o);
        break;
      case proxy::Next::kHandshakeFailed:
        Finish(s, st.err, s.hs.error(), &o);
        break;
      case proxy::Next::kWaitWritable:
      case proxy::Next::kWaitReadable: {
        epoll_event ev{};
        ev.events = st.next == proxy::Next::kWaitWritable ? EPOLLOUT : EPOLLIN;
        ev.data.u64 = key;
        g_epoll_ctl(g_loop_ep, EPOLL_CTL_MOD, s.priv_fd, &ev);
        break;
      }
    }
  }
  Unlock();
  TellAndComplete(i, gen, o);
}

// Ends what passed its deadline, drops what the program closed by a path the close hook does not
// see (dup2 over it, close_range), and returns how long the loop may sleep.
int Sweep() {
  const int64_t now = proxy::MonotonicMs();
  const pid_t me = getpid();
  int64_t next = now + 1000;
  for (int i = 0; i < kSlots; ++i) {
    Outcome o;
    Lock();
    Slot& s = g_shared->slots[i];
    const uint32_t gen = s.gen;
    if (s.state != kFree && s.owner != me && kill(s.owner, 0) != 0 && errno == ESRCH) {
      FreeSlot(s);  // a forked child's, and the child is gone: its descriptors went with it
    } else if (s.state != kFree && s.owner == me && !s.finishing) {
      struct stat st;
      const bool gone = s.prog_fd >= 0 && (fstat(s.prog_fd, &st) != 0 || st.st_ino != s.ino);
      if (gone) {
        if (s.priv_fd >= 0) g_epoll_ctl(g_loop_ep, EPOLL_CTL_DEL, s.priv_fd, nullptr);
        FreeSlot(s);
      } else if (s.state == kPending && !s.broker && now >= s.deadline_ms) {
        char why[400];
        proxy::TimeoutText(s.phase == kConnecting, s.ep_text, s.timeout_ms, why, sizeof why);
        const size_t used = std::strlen(why);
        std::snprintf(why + used, sizeof why - used, "%s", s.hs.StallHint());
        Finish(s, ETIMEDOUT, why, &o);
      } else if (s.state == kPending && !s.broker && s.deadline_ms < next) {
        next = s.deadline_ms;
      }
    }
    Unlock();
    TellAndComplete(i, gen, o);
  }
  int64_t wait = next - now;
  return int(wait < 1 ? 1 : wait);
}

void* Loop(void*) {
  t_shim_thread = true;
  epoll_event evs[64];
  int timeout = 1000;
  for (;;) {
    int n = epoll_wait(g_loop_ep, evs, 64, timeout);
    if (n == 0) BrokerFlushReports();  // idle: what the last ones left counted goes now
    for (int k = 0; k < n; ++k) {
      if (evs[k].data.u64 == kWakeTag) {
        uint64_t v;
        ssize_t r = read(g_loop_wake, &v, sizeof v);
        (void)r;
      } else {
        Drive(evs[k].data.u64);
      }
    }
    timeout = Sweep();
  }
  return nullptr;
}

// This process's thread, started on its first pending connect (again in a forked child, whose
// parent's thread did not come with it).
// A detached thread of the shim running fn(arg), with a small stack; it takes no signal meant for
// the program's threads (all are blocked in it).
bool StartThread(void* (*fn)(void*), void* arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 256 * 1024);
  pthread_t t;
  const bool ok = pthread_create(&t, &a, fn, arg) == 0;
  pthread_attr_destroy(&a);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return ok;
}

bool EnsureThread() {
  const pid_t me = getpid();
  if (__atomic_load_n(&g_thread_pid, __ATOMIC_ACQUIRE) == me) return true;
  pthread_mutex_lock(&g_start_mu);
  bool ok = g_thread_pid == me;
  if (!ok) {
    if (g_loop_ep >= 0) g_close(g_loop_ep);  // the parent's, inherited
    if (g_loop_wake >= 0) g_close(g_loop_wake);
    g_loop_ep = epoll_create1(EPOLL_CLOEXEC);
    g_loop_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kWakeTag;
    if (g_loop_ep >= 0 && g_loop_wake >= 0 &&
        g_epoll_ctl(g_loop_ep, EPOLL_CTL_ADD, g_loop_wake, &ev) == 0) {
      ok = StartThread(Loop, nullptr);
    }
    if (ok) __atomic_store_n(&g_thread_pid, me, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock(&g_start_mu);
  return ok;
}

// A child forked while the socket was pending waits for the parent's thread to finish it
// (bounded by the deadline). Called without the lock.
void WaitForOwner(int fd) {
  for (;;) {
    Lock();
    int i = FindLocked(fd);
    bool pending = i >= 0 && g_shared->slots[i].state == kPending;
    int64_t deadline = pending ? g_shared->slots[i].deadline_ms + 1000 : 0;
    Unlock();
    if (!pending || proxy::MonotonicMs() >= deadline) return;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
}

// Whether another descriptor of this process (not the module's own) holds the socket `ino`.
bool HeldElsewhere(ino_t ino, const Slot& s) {
  bool held = false;
  ForEachFd([&](int fd) {
    struct stat st;
    if (held || fd == s.priv_fd || fd == s.wake_fd) return;
    if (fstat(fd, &st) == 0 && st.st_ino == ino) held = true;
  });
  return held;
}

int64_t TimespecMs(const timespec* t) {
  if (t == nullptr) return -1;
  return int64_t(t->tv_sec) * 1000 + (t->tv_nsec + 999999) / 1000000;
}

// The poll loop of PendingPoll/PendingSelect over `fds` (n entries; `scratch` has room for 2n).
int PollCore(pollfd* fds, nfds_t n, pollfd* scratch, int64_t timeout_ms, const sigset_t* mask) {
  const int64_t end = timeout_ms < 0 ? -1 : proxy::MonotonicMs() + timeout_ms;
  for (;;) {
    nfds_t k = n;
    Lock();
    for (nfds_t i = 0; i < n; ++i) {
      scratch[i] = fds[i];
      scratch[i].revents = 0;
      if (!MaybeTracked(fds[i].fd)) continue;
      int j = FindLocked(fds[i].fd);
      if (j < 0 || !StillPending(g_shared->slots[j])) continue;
      // Not polled at all: a failed proxy connection (POLLERR/POLLHUP) is the thread's to see
      // first, and it wakes us when the program may see it.
      scratch[i].fd = -1;
      scratch[k++] = pollfd{g_shared->slots[j].wake_fd, POLLIN, 0};
    }
    Unlock();
    int64_t left = end < 0 ? -1 : end - proxy::MonotonicMs();
    if (left < 0 && end >= 0) left = 0;
    if (k == n) {  // nothing pending any more: the plain call with the time left
      timespec ts{time_t(left / 1000), long(left % 1000) * 1000000};
      return g_ppoll(fds, n, left < 0 ? nullptr : &ts, mask);
    }
    int64_t slice = left < 0 || left > kSliceMs ? kSliceMs : left;
    timespec ts{time_t(slice / 1000), long(slice % 1000) * 1000000};
    int r = g_ppoll(scratch, k, &ts, mask);
    if (r < 0) return r;
    int ready = 0;
    for (nfds_t i = 0; i < n; ++i) {
      fds[i].revents = scratch[i].revents;
      if (fds[i].revents != 0) ++ready;
    }
    if (ready > 0) return ready;
    bool woke = false;
    for (nfds_t i = n; i < k; ++i) woke = woke || scratch[i].revents != 0;
    if (!woke && end >= 0 && proxy::MonotonicMs() >= end) return 0;
  }
}

// Under the lock: the index of a free slot, or -1.
int FindFreeSlot() {
  for (int i = 0; i < kSlots; ++i) {
    if (g_shared->slots[i].state == kFree) return i;
  }
  return -1;
}

// Under the lock: claims slot `s` for a pending connect of `fd` (the socket `st`) to `dest`, whose
// handshake this process runs or, with `broker`, the broker does: the facts both share, and the
// counts that make the hooks look for it. The caller adds its own (deadline, name, overlay).
void ClaimSlot(Slot& s, int fd, const struct stat& st, const wire::Addr& dest, bool broker) {
  s.state = kPending;
  s.gen++;
  s.owner = getpid();
  s.dev = st.st_dev;
  s.ino = st.st_ino;
  s.prog_fd = fd;
  s.priv_fd = s.wake_fd = -1;
  s.err = 0;
  s.reported = false;
  s.phase = kConnecting;
  s.broker = broker;
  s.finishing = false;
  s.optimistic = false;
  s.dest = dest;
  s.has_name = false;
  s.name[0] = 0;
  s.overlay[0] = 0;
  s.nregs = 0;
  CountFd(fd, 1);
  __atomic_add_fetch(&g_shared->live, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&g_pending_ever, true, __ATOMIC_RELEASE);
}

// In a strict session the socket becomes the broker's (PlaceProxySocket; *st then describes it,
// as the slot records it). The program's epoll registrations of its own socket (made before its
// connect) are taken out first, by that socket's inode, into moved[*nmoved]: they go on the new
// socket by descriptor number with the slot's (RestoreEpolls), or at once (NotTaken) when the
// connect is not taken here. False when the socket could not be placed (the registrations are
// back): the blocking path then fails the usual way. Outside a strict session: nothing, true.
bool PlaceForStrict(int fd, const Socks5Plan& plan, struct stat* st, Reg* moved, int* nmoved) {
  if (!StrictHere()) return true;
  MaskAllEpolls(st->st_ino, moved, nmoved);
  if (PlaceProxySocket(fd, plan) && fstat(fd, st) == 0) return true;
  RestoreRegs(moved, *nmoved);
  return false;
}

// StartPendingSocks5's "not taken here" once PlaceForStrict moved registrations: put back.
int NotTaken(const Reg* moved, int nmoved) {
  RestoreRegs(moved, nmoved);
  return 0;
}

}  // namespace

int StartPendingSocks5(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest) {
  int fl = fcntl(fd, F_GETFL);
  struct stat st;
  if (fl < 0 || (fl & O_NONBLOCK) == 0 || fstat(fd, &st) != 0) return 0;
  Reg moved[kRegs];  // the program's registrations, in a strict session (PlaceForStrict)
  int nmoved = 0;
  if (!PlaceForStrict(fd, plan, &st, moved, &nmoved)) return 0;
  if (!EnsureShared() || !EnsureThread()) return NotTaken(moved, nmoved);
  Lock();
  const int i = FindFreeSlot();
  if (i < 0) {
    Unlock();
    return NotTaken(moved, nmoved);
  }
  Slot& s = g_shared->slots[i];
  ClaimSlot(s, fd, st, dest, false);
  std::memcpy(s.regs, moved, sizeof(Reg) * size_t(nmoved));  // restored with the slot's
  s.nregs = nmoved;
  s.timeout_ms = plan.timeout_ms;
  s.deadline_ms = proxy::MonotonicMs() + plan.timeout_ms;
  s.has_name = name != nullptr;
  std::snprintf(s.name, sizeof s.name, "%s", name != nullptr ? name : "");
  std::snprintf(s.overlay, sizeof s.overlay, "%s", plan.overlay);
  s.optimistic = plan.optimistic;

  Outcome o;
  char why[400] = {};
  int err = socks5::StartClient(plan, name, dest, &s.hs, why, sizeof why);
  if (err == 0) {
    err = socks5::plan_detail::PickEndpoint(fd, plan, &s.ep, &s.ep_len, s.ep_text, sizeof s.ep_text,
                                            why, sizeof why);
  }
  if (err == 0) {
    s.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s.priv_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (s.wake_fd < 0 || s.priv_fd < 0) {  // no room for descriptors: the blocking path
      FreeSlot(s);
      Unlock();
      return NotTaken(moved, nmoved);
    }
    // Hidden before the connect starts: no registration can see the proxy connection ready.
    MaskAllEpolls(st.st_ino, s);
    const ProxyConnector connect{&plan};
    proxy::Step step = proxy::StartConnect(fd, connect, reinterpret_cast<sockaddr*>(&s.ep),
                                           s.ep_len, s.ep_text, why, sizeof why);
    if (connect.greeted()) s.hs.SkipGreeting();  // a strict session's spare: the request only
    if (step.next == proxy::Next::kFailed) {
      err = step.err;
    } else {
      if (step.next == proxy::Next::kDone) s.phase = kHandshake;
      epoll_event ev{};
      ev.events = EPOLLOUT;
      ev.data.u64 = LoopKey(i);
      if (g_epoll_ctl(g_loop_ep, EPOLL_CTL_ADD, s.priv_fd, &ev) != 0) {
        err = errno;
        std::snprintf(why, sizeof why, "epoll_ctl: %s", std::strerror(err));
      }
    }
  }
  if (err != 0) {  // failed at once, as a kernel connect can: said below, nothing left pending
    Finish(s, err, why, &o);
    Complete(s, err);
    FreeSlot(s);
  }
  Unlock();
  if (err != 0) {
    Tell(o);
    errno = err;
    return -1;
  }
  uint64_t one = 1;
  ssize_t w = write(g_loop_wake, &one, sizeof one);  // the loop recomputes its deadline
  (void)w;
  errno = EINPROGRESS;
  return -1;
}

namespace {

// A connect the broker runs (CONNECT with the socket attached; its reply is the completion), in a
// thread of its own: the shim's request/reply link waits for each reply, so one thread per
// pending connect keeps them concurrent. `fd` is the worker's own copy of the socket (a close of
// the program's descriptor cannot make it send a reused number).
struct BrokerWork {
  int slot;
  uint32_t gen;
  int fd;
  wire::Addr dest;
  sockaddr_storage sa;  // the program's own address, for a route to direct
  socklen_t sa_len;
};

// A route to direct (the broker answered kRouteDirect): the kernel connects the socket, as without
// via, and the worker waits for the outcome (bounded by the kernel's own SYN retries), which ends
// the program's pending connect: 0 or the kernel's errno.
int ConnectDirectly(int fd, const sockaddr_storage& sa, socklen_t len) {
  if (Real().connect(fd, reinterpret_cast<const sockaddr*>(&sa), len) == 0) return 0;
  if (errno != EINPROGRESS) return errno;
  pollfd p{fd, POLLOUT, 0};
  while (g_ppoll(&p, 1, nullptr, nullptr) < 0 && errno == EINTR) {
  }
  int err = 0;
  socklen_t elen = sizeof err;
  if (g_getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) return errno;
  return err;
}

void* BrokerWorker(void* arg) {
  t_shim_thread = true;
  BrokerWork w = *static_cast<BrokerWork*>(arg);
  free(arg);
  char msg[512] = {};
  int err = BrokerConnect(w.fd, w.dest, msg, sizeof msg);
  const bool direct = err == kRouteDirect;
  if (direct) err = ConnectDirectly(w.fd, w.sa, w.sa_len);
  Outcome o;
  Lock();
  Slot& s = g_shared->slots[w.slot];
  const bool ours = s.state == kPending && s.gen == w.gen && !s.finishing;
  if (ours) {
    s.priv_fd = w.fd;  // Complete shuts it down after a failure, and closes it
    Finish(s, err, direct ? std::strerror(err) : msg, &o);
    o.quiet = direct;
  }
  Unlock();
  if (ours) {
    TellAndComplete(w.slot, w.gen, o);
  } else {
    g_close(w.fd);  // dropped by the program's close meanwhile
  }
  return nullptr;
}

}  // namespace

int StartPendingBroker(int fd, const wire::Addr& dest, const sockaddr* sa, socklen_t sa_len) {
  int fl = fcntl(fd, F_GETFL);
  struct stat st;
  if (fl < 0 || (fl & O_NONBLOCK) == 0 || fstat(fd, &st) != 0) return 0;
  if (!EnsureShared() || !EnsureThread()) return 0;
  auto* work = static_cast<BrokerWork*>(malloc(sizeof(BrokerWork)));
  if (work == nullptr) return 0;
  Lock();
  const int i = FindFreeSlot();
  const int wfd = i >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
  const int wake = wfd >= 0 ? eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) : -1;
  if (wake < 0) {
    if (wfd >= 0) g_close(wfd);
    Unlock();
    free(work);
    return 0;
  }
  Slot& s = g_shared->slots[i];
  ClaimSlot(s, fd, st, dest, true);  // not optimistic: the broker hands it over after the reply
  s.wake_fd = wake;
  s.deadline_ms = proxy::MonotonicMs();  // the broker keeps the overlay's connect_timeout
  MaskAllEpolls(st.st_ino, s);
  *work = BrokerWork{i, s.gen, wfd, dest, {}, 0};
  if (sa_len <= sizeof work->sa) {
    std::memcpy(&work->sa, sa, sa_len);
    work->sa_len = sa_len;
  }
  const bool started = StartThread(BrokerWorker, work);
  if (!started) {  // no thread: the blocking path, with nothing left pending
    RestoreEpolls(s);
    g_close(wfd);
    FreeSlot(s);
    Unlock();
    free(work);
    return 0;
  }
  Unlock();
  errno = EINPROGRESS;
  return -1;
}

void NoteEpoll(int epfd) {
  if (epfd < 0) return;
  LockEpolls();
  if (g_nepolls == kEpollsKnown) {  // weed out numbers that are no epoll instance any more
    int kept = 0;
    for (int i = 0; i < g_nepolls; ++i) {
      if (g_epolls[i] != epfd && IsEpoll(g_epolls[i])) g_epolls[kept++] = g_epolls[i];
    }
    g_nepolls = kept;
  }
  if (g_nepolls < kEpollsKnown) {
    g_epolls[g_nepolls++] = epfd;
  } else {
    g_epolls_overflow = true;
  }
  UnlockEpolls();
}

bool PendingConnectAgain(int fd, int* ret) {
  if (MaybeTracked(fd)) {
    Lock();
    int i = FindLocked(fd);
    int err = 0;
    if (i >= 0) {
      Slot& s = g_shared->slots[i];
      err = s.state == kPending ? EALREADY : s.err;
      if (s.state == kFailed) s.reported = true;
    }
    Unlock();
    if (i >= 0) {
      errno = err;
      *ret = -1;
      return true;
    }
  }
  wire::Addr dest;
  if (LookupRouted(fd, &dest)) {  // connected through the overlay
    errno = EISCONN;
    *ret = -1;
    return true;
  }
  return false;
}

bool PendingSoError(int fd, int* err) {
  if (!MaybeTracked(fd)) return false;
  // epoll cannot mask EPOLLERR/EPOLLHUP: a program woken by a failed proxy connection may ask
  // before the thread has finished the socket. Its answer is the thread's, so it waits for it
  // (the thread is about to end the handshake: it sees the same error).
  // (A socket the broker has not connected yet shows POLLHUP too: not waited for.)
  pollfd self{fd, 0, 0};
  const timespec zero{0, 0};
  if (g_ppoll(&self, 1, &zero, nullptr) == 1 && (self.revents & (POLLERR | POLLHUP)) != 0) {
    for (;;) {
      Lock();
      int i = FindLocked(fd);
      const bool pending = i >= 0 && StillPending(g_shared->slots[i]) && !g_shared->slots[i].broker;
      const int wake = pending ? g_shared->slots[i].wake_fd : -1;
      Unlock();
      if (!pending) break;
      pollfd w{wake, POLLIN, 0};
      const timespec slice{0, 100 * 1000 * 1000};  // the number may be closed and reused
      g_ppoll(&w, 1, &slice, nullptr);
    }
  }
  Lock();
  int i = FindLocked(fd);
  if (i >= 0) {
    Slot& s = g_shared->slots[i];
    *err = s.state == kFailed && !s.reported ? s.err : 0;
    if (s.state == kFailed) s.reported = true;
  }
  Unlock();
  return i >= 0;
}

bool PendingNotConnected(int fd) {
  if (!MaybeTracked(fd)) return false;
  Lock();
  int i = FindLocked(fd);
  bool pending = i >= 0 && g_shared->slots[i].state == kPending;
  Unlock();
  return pending;
}

bool PendingIo(int fd, int flags) {
  if (t_shim_thread || t_locked > 0 || !PendingNotConnected(fd)) return false;
  const int fl = fcntl(fd, F_GETFL);
  if ((flags & MSG_DONTWAIT) != 0 || fl < 0 || (fl & O_NONBLOCK) != 0) {
    errno = EAGAIN;
    return true;
  }
  pollfd p{fd, POLLOUT, 0};
  int ret = 0;
  PendingPoll(&p, 1, nullptr, nullptr, &ret);  // until the handshake's end, as a kernel connect
  return false;
}

bool PendingEpollCtl(int epfd, int op, int fd, epoll_event* ev, int* ret) {
  if (!MaybeTracked(fd)) return false;
  Lock();
  int i = FindLocked(fd);
  if (i < 0 || g_shared->slots[i].state != kPending) {
    Unlock();
    return false;
  }
  Slot& s = g_shared->slots[i];
  if (s.owner != getpid()) {  // a forked child: its registration waits for the parent's thread
    Unlock();
    WaitForOwner(fd);
    return false;
  }
  int r = 0;
  int at = -1;
  for (int k = 0; k < s.nregs; ++k) {
    if (s.regs[k].epfd == epfd && s.regs[k].tfd == fd) at = k;
  }
  // The socket's registrations are held out of the kernel while pending (the kernel's answers
  // are given here: EEXIST, ENOENT) and added when the handshake ends.
  if (op == EPOLL_CTL_ADD && ev != nullptr && at >= 0) {
    r = -1;
    errno = EEXIST;
  } else if (op == EPOLL_CTL_ADD && ev != nullptr && s.nregs < kRegs && IsEpoll(epfd)) {
    s.regs[s.nregs++] = Reg{epfd, fd, ev->events, ev->data.u64};
  } else if (op == EPOLL_CTL_MOD && ev != nullptr && at >= 0) {
    s.regs[at] = Reg{epfd, fd, ev->events, ev->data.u64};
  } else if (op == EPOLL_CTL_DEL && at >= 0) {
    s.regs[at] = s.regs[--s.nregs];
  } else {
    r = g_epoll_ctl(epfd, op, fd, ev);  // not one of ours (or no room): the kernel's answer
  }
  int saved = errno;
  Unlock();
  errno = saved;
  *ret = r;
  return true;
}

bool PendingPoll(pollfd* fds, nfds_t n, const timespec* timeout, const sigset_t* mask, int* ret) {
  bool any = false;
  for (nfds_t i = 0; i < n && !any; ++i) any = MaybeTracked(fds[i].fd);
  if (!any) return false;
  pollfd local[128];
  pollfd* scratch = 2 * n <= 128 ? local : static_cast<pollfd*>(malloc(2 * n * sizeof(pollfd)));
  if (scratch == nullptr) return false;
  *ret = PollCore(fds, n, scratch, TimespecMs(timeout), mask);
  int saved = errno;
  if (scratch != local) free(scratch);
  errno = saved;
  return true;
}

bool PendingSelect(int nfds, fd_set* rd, fd_set* wr, fd_set* ex, const timespec* timeout,
                   const sigset_t* mask, int* ret) {
  if (nfds > FD_SETSIZE) nfds = FD_SETSIZE;
  bool any = false;
  for (int fd = 0; fd < nfds && !any; ++fd) {
    any = ((rd && FD_ISSET(fd, rd)) || (wr && FD_ISSET(fd, wr)) || (ex && FD_ISSET(fd, ex))) &&
          MaybeTracked(fd);
  }
  if (!any) return false;
  // As the kernel maps select onto poll (fs/select.c: POLLIN_SET, POLLOUT_SET, POLLEX_SET).
  pollfd fds[FD_SETSIZE], scratch[2 * FD_SETSIZE];
  nfds_t n = 0;
  for (int fd = 0; fd < nfds; ++fd) {
    short ev = 0;
    if (rd && FD_ISSET(fd, rd)) ev |= POLLIN;
    if (wr && FD_ISSET(fd, wr)) ev |= POLLOUT;
    if (ex && FD_ISSET(fd, ex)) ev |= POLLPRI;
    if (ev != 0) fds[n++] = pollfd{fd, ev, 0};
  }
  int r = PollCore(fds, n, scratch, TimespecMs(timeout), mask);
  if (r < 0) {
    *ret = r;
    return true;
  }
  for (nfds_t i = 0; i < n; ++i) {
    if (fds[i].revents & POLLNVAL) {
      errno = EBADF;
      *ret = -1;
      return true;
    }
  }
  if (rd) FD_ZERO(rd);
  if (wr) FD_ZERO(wr);
  if (ex) FD_ZERO(ex);
  int count = 0;
  for (nfds_t i = 0; i < n; ++i) {
    const short re = fds[i].revents, want = fds[i].events;
    if ((want & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR))) {
      FD_SET(fds[i].fd, rd);
      ++count;
    }
    if ((want & POLLOUT) && (re & (POLLOUT | POLLERR))) {
      FD_SET(fds[i].fd, wr);
      ++count;
    }
    if ((want & POLLPRI) && (re & POLLPRI)) {
      FD_SET(fds[i].fd, ex);
      ++count;
    }
  }
  *ret = count;
  return true;
}

void PendingWaitBeforeExec() {
  // Only in a process that drives pending sockets (a vfork child shares the parent's memory but
  // is not it: it never waits here, and takes no lock).
  const pid_t me = getpid();
  if (GetShared() == nullptr || __atomic_load_n(&g_thread_pid, __ATOMIC_ACQUIRE) != me) return;
  for (;;) {
    int wake = -1;
    Lock();
    for (int i = 0; i < kSlots && wake < 0; ++i) {
      const Slot& s = g_shared->slots[i];
      if (s.state != kPending || s.owner != me || s.prog_fd < 0) continue;
      const int fdflags = fcntl(s.prog_fd, F_GETFD);
      if (fdflags >= 0 && (fdflags & FD_CLOEXEC) == 0) wake = s.wake_fd;
    }
    Unlock();
    if (wake < 0) return;
    pollfd w{wake, POLLIN, 0};
    const timespec slice{0, 100 * 1000 * 1000};
    g_ppoll(&w, 1, &slice, nullptr);
  }
}

int PendingClose(int fd, int (*real_close)(int)) {
  if (!MaybeTracked(fd)) return real_close(fd);
  struct stat st;
  const bool known = fstat(fd, &st) == 0;
  Lock();
  int r = real_close(fd);
  int saved = errno;
  int i = known ? FindIno(st.st_dev, st.st_ino) : -1;
  if (i >= 0) {
    Slot& s = g_shared->slots[i];
    if (s.prog_fd == fd) {
      CountFd(fd, -1);
      s.prog_fd = -1;
    }
    if (s.owner == getpid() && !HeldElsewhere(st.st_ino, s)) {
      // The program's last descriptor: drop the handshake. Closing the thread's copy closes the
      // proxy connection; nothing else is sent.
      if (s.priv_fd >= 0) g_epoll_ctl(g_loop_ep, EPOLL_CTL_DEL, s.priv_fd, nullptr);
      FreeSlot(s);
    }
  }
  Unlock();
  errno = saved;
  return r;
}

}  // namespace via::shim
