// Optimistic data: the connect that stops at the written request, and the table of sockets whose
// SOCKS5 replies the first read must take off (optimistic.h).
#include "shim/optimistic.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "common/socks5_plan.h"
#include "shim/broker_link.h"
#include "shim/real.h"
#include "shim/state.h"
#include "shim/strict_socket.h"

namespace via::shim {

int g_optimistic_pending = 0;

namespace {

// One socket whose replies are unread. Freed when it has left the table and no caller holds it.
struct Pending {
  int fd;
  dev_t dev;
  ino_t ino;
  int refs;                // callers holding it (under g_mu)
  bool gone;               // left the table (under g_mu)
  pthread_mutex_t reader;  // one caller reads the replies at a time
  bool finished;           // the replies were read, or failed (under `reader`)
  int64_t deadline_ms;     // connect_timeout, counted from the connect
  socks5::Client hs;
  wire::Addr dest;
  bool by_name;
  char name[256];
  char overlay[256];
};

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
Pending** g_table = nullptr;  // g_optimistic_pending entries
int g_cap = 0;

// Bit fd set: `fd` may have an entry (set and cleared under g_mu, read without it). A read or
// write on any other descriptor then takes no lock, which also keeps a signal handler's write
// (the self-pipe idiom) from waiting on g_mu held by the thread it interrupted. Numbers past
// the bitmap always look up. In .bss: only the pages of numbers in use are ever touched.
constexpr int kBitmapFds = 1 << 16;
uint64_t g_maybe[kBitmapFds / 64];

bool MaybePending(int fd) {
  if (fd < 0) return false;
  if (fd >= kBitmapFds) return true;
  return (__atomic_load_n(&g_maybe[fd >> 6], __ATOMIC_RELAXED) >> (fd & 63)) & 1;
}

void SetMaybe(int fd, bool on) {
  if (fd < 0 || fd >= kBitmapFds) return;
  const uint64_t bit = uint64_t(1) << (fd & 63);
  if (on) {
    __atomic_fetch_or(&g_maybe[fd >> 6], bit, __ATOMIC_RELAXED);
  } else {
    __atomic_fetch_and(&g_maybe[fd >> 6], ~bit, __ATOMIC_RELAXED);
  }
}

// Under g_mu: takes `p` out of the table (it is freed once its last holder lets go).
void RemoveLocked(Pending* p) {
  if (p->gone) return;
  for (int i = 0; i < g_optimistic_pending; ++i) {
    if (g_table[i] == p) {
      g_table[i] = g_table[g_optimistic_pending - 1];
      __atomic_store_n(&g_optimistic_pending, g_optimistic_pending - 1, __ATOMIC_RELAXED);
      SetMaybe(p->fd, false);  // Add keeps one entry per number
      break;
    }
  }
  p->gone = true;
}

void Release(Pending* p) {
  pthread_mutex_lock(&g_mu);
  const bool last = --p->refs == 0 && p->gone;
  pthread_mutex_unlock(&g_mu);
  if (last) {
    pthread_mutex_destroy(&p->reader);
    p->~Pending();
    free(p);
  }
}

void Remove(Pending* p) {
  pthread_mutex_lock(&g_mu);
  RemoveLocked(p);
  pthread_mutex_unlock(&g_mu);
}

// The pending entry of `fd`, held (Release it), or nullptr. An entry whose descriptor number now
// names another file (the program closed the socket and the number was reused) is dropped.
Pending* Find(int fd) {
  if (!MaybePending(fd)) return nullptr;
  pthread_mutex_lock(&g_mu);
  Pending* p = nullptr;
  for (int i = 0; i < g_optimistic_pending; ++i) {
    if (g_table[i]->fd == fd) {
      p = g_table[i];
      ++p->refs;
      break;
    }
  }
  pthread_mutex_unlock(&g_mu);
  if (p == nullptr) return nullptr;
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_dev != p->dev || st.st_ino != p->ino) {
    Remove(p);
    Release(p);
    return nullptr;
  }
  return p;
}

// Adds `p` (refs 0) to the table, replacing a stale entry of the same number. False when out of
// memory.
bool Add(Pending* p) {
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < g_optimistic_pending; ++i) {
    if (g_table[i]->fd == p->fd) {
      Pending* old = g_table[i];
      RemoveLocked(old);
      if (old->refs == 0) {
        pthread_mutex_destroy(&old->reader);
        old->~Pending();
        free(old);
      }
      break;
    }
  }
  if (g_optimistic_pending == g_cap) {
    const int cap = g_cap == 0 ? 16 : 2 * g_cap;
    auto* grown = static_cast<Pending**>(realloc(g_table, sizeof(Pending*) * size_t(cap)));
    if (grown == nullptr) {
      pthread_mutex_unlock(&g_mu);
      return false;
    }
    g_table = grown;
    g_cap = cap;
  }
  g_table[g_optimistic_pending] = p;
  SetMaybe(p->fd, true);
  __atomic_store_n(&g_optimistic_pending, g_optimistic_pending + 1, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&g_mu);
  return true;
}

int64_t NowMs() { return MonotonicNs() / 1000000; }

// The errno a program's read gets for a failed handshake: one a TCP read can give. A refusal by
// the proxy or beyond (a reply code, a rejected credential) is "refused" unless the code says
// timeout or unreachable; a broken exchange (a closed connection, bytes that are no SOCKS5 reply)
// is a reset.
int ReadErrno(int err, uint8_t reply_code) {
  switch (err) {
    case ECONNREFUSED:
    case ECONNRESET:
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
      return err;
    default:
      return reply_code != 0 || err == EACCES ? ECONNREFUSED : ECONNRESET;
  }
}

// The handshake failed with `err` (`why` says how): said on stderr, REPORTed, the socket shut
// down (the proxy sees the end; later reads give EOF, writes EPIPE) and forgotten. Returns -1 with
// the program's errno. Under p->reader.
int Fail(Pending* p, int err, const char* why) {
  p->finished = true;
  Remove(p);
  shutdown(p->fd, SHUT_RDWR);
  const int program_err = ReadErrno(err, p->hs.reply_code());
  char where[80];
  Complain(
      "connect to %s through %s failed (optimistic data: seen on the first read): %s via %s: %s",
      wire::FormatAddr(p->dest, where, sizeof where), NetworkLabel(), p->hs.target(), p->overlay,
      why);
  BrokerReport(p->dest, p->by_name ? p->name : nullptr, err, why);
  errno = program_err;
  return -1;
}

// How long a blocking read may wait for the replies: SO_RCVTIMEO (0: none) and connect_timeout.
int64_t WaitDeadline(int fd, const Pending& p) {
  timeval tv{};
  socklen_t len = sizeof tv;
  if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0 &&
      (tv.tv_sec > 0 || tv.tv_usec > 0)) {
    const int64_t rcv = NowMs() + int64_t(tv.tv_sec) * 1000 + tv.tv_usec / 1000;
    if (rcv < p.deadline_ms) return -rcv;  // negative: SO_RCVTIMEO's (EAGAIN), not the handshake's
  }
  return p.deadline_ms;
}

// Reads the replies of `p` under p->reader. `wait`: block until they are all there. Returns 0
// (done: p is out of the table), 1 (not all there and not waiting, or SO_RCVTIMEO passed:
// errno EAGAIN), or -1 with errno.
int ReadReplies(Pending* p, bool wait) {
  if (p->finished) return 0;
  int64_t deadline = 0;  // of a wait, once one is needed
  for (;;) {
    const size_t want = p->hs.WantRead();
    if (want == 0) break;  // Done()
    uint8_t buf[512];
    ssize_t r = Real().recvfrom(p->fd, buf, want < sizeof buf ? want : sizeof buf, MSG_DONTWAIT,
                                nullptr, nullptr);
    if (r > 0) {
      if (int err = p->hs.Feed(buf, size_t(r)); err != 0) return Fail(p, err, p->hs.error());
      continue;
    }
    if (r == 0) return Fail(p, ECONNRESET, "the proxy closed the connection before its reply");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      const int err = errno;
      char why[160];
      std::snprintf(why, sizeof why, "reading the proxy's reply: %s", std::strerror(err));
      return Fail(p, err, why);
    }
    if (NowMs() >= p->deadline_ms) {
      char why[400];  // with the stall hint
      std::snprintf(why, sizeof why, "the proxy did not reply to CONNECT within connect_timeout%s",
                    p->hs.StallHint());
      return Fail(p, ETIMEDOUT, why);
    }
    if (!wait) {
      errno = EAGAIN;
      return 1;
    }
    if (deadline == 0) deadline = WaitDeadline(p->fd, *p);
    const int64_t until = deadline < 0 ? -deadline : deadline;
    int64_t left = until - NowMs();
    if (left <= 0) {
      if (deadline < 0) {
        errno = EAGAIN;  // SO_RCVTIMEO, as the kernel's read would say
        return 1;
      }
      continue;  // connect_timeout: failed above
    }
    // The system call itself: poll and ppoll may be hooked by other parts of the shim.
    pollfd pfd{p->fd, POLLIN, 0};
    timespec ts{time_t(left / 1000), long(left % 1000) * 1000000};
    long n = syscall(SYS_ppoll, &pfd, 1, &ts, nullptr, 0);
    if (n < 0 && errno == EINTR) return -1;  // a signal interrupts a blocking read
  }
  p->finished = true;
  Remove(p);
  BrokerReport(p->dest, p->by_name ? p->name : nullptr, 0, "");
  return 0;
}

}  // namespace

bool OptimisticAdopt(int fd, const socks5::Client& hs, const char* overlay, const char* name,
                     const wire::Addr& dest, int64_t deadline_ms) {
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  void* mem = malloc(sizeof(Pending));
  if (mem == nullptr) return false;
  Pending* p = new (mem) Pending{};
  p->fd = fd;
  p->dev = st.st_dev;
  p->ino = st.st_ino;
  pthread_mutex_init(&p->reader, nullptr);
  p->deadline_ms = deadline_ms;
  p->hs = hs;
  p->dest = dest;
  p->by_name = name != nullptr;
  if (name != nullptr) std::snprintf(p->name, sizeof p->name, "%s", name);
  std::snprintf(p->overlay, sizeof p->overlay, "%s", overlay);
  if (Add(p)) return true;
  pthread_mutex_destroy(&p->reader);
  p->~Pending();
  free(mem);
  return false;
}

int OptimisticConnect(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                      char* why, size_t whycap, char* msg, size_t msgcap) {
  socks5::Client hs;
  const int64_t deadline = NowMs() + plan.timeout_ms;
  int err = socks5::ConnectBlocking(fd, plan, name, dest, ProxyConnector{&plan}, why, whycap, msg,
                                    msgcap, &hs);
  if (err != 0) return err;
  if (OptimisticAdopt(fd, hs, plan.overlay, name, dest, deadline)) return 0;
  // No room to remember the socket: read the replies here, as without optimistic data, blocking
  // within what is left of connect_timeout (the socket's flags are the program's again).
  while (err == 0 && !hs.Done()) {
    uint8_t buf[512];
    const size_t want = hs.WantRead();
    ssize_t r = Real().recvfrom(fd, buf, want < sizeof buf ? want : sizeof buf, MSG_DONTWAIT,
                                nullptr, nullptr);
    if (r > 0) {
      err = hs.Feed(buf, size_t(r));
      if (err != 0) std::snprintf(why, whycap, "%s", hs.error());
    } else if (r == 0) {
      err = ECONNRESET;
      std::snprintf(why, whycap, "the proxy closed the connection during the handshake");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (proxy::WaitFor(fd, POLLIN, deadline) != 0) {
        err = ETIMEDOUT;
        std::snprintf(why, whycap, "the proxy did not reply to CONNECT in time");
      }
    } else if (errno != EINTR) {
      err = errno;
      std::snprintf(why, whycap, "reading the proxy's reply: %s", std::strerror(err));
    }
  }
  if (err != 0) std::snprintf(msg, msgcap, "%s via %s: %s", hs.target(), plan.overlay, why);
  return err;
}

int OptimisticBeforeRead(int fd, int flags) {
  Pending* p = Find(fd);
  if (p == nullptr) return 0;
  bool wait = (flags & MSG_DONTWAIT) == 0;
  if (wait) {
    const int fl = fcntl(fd, F_GETFL);
    wait = fl >= 0 && (fl & O_NONBLOCK) == 0;
  }
  int r;
  if (wait) {
    pthread_mutex_lock(&p->reader);
    r = ReadReplies(p, true);
    pthread_mutex_unlock(&p->reader);
  } else if (pthread_mutex_trylock(&p->reader) == 0) {
    r = ReadReplies(p, false);
    pthread_mutex_unlock(&p->reader);
  } else {
    errno = EAGAIN;  // another thread is reading them
    r = 1;
  }
  const int saved = errno;
  Release(p);
  errno = saved;
  return r == 0 ? 0 : -1;
}

int OptimisticBeforeWrite(int fd) {
  Pending* p = Find(fd);
  if (p == nullptr) return 0;
  int r = 0;
  const int saved_errno = errno;
  if (pthread_mutex_trylock(&p->reader) == 0) {
    r = ReadReplies(p, false);
    pthread_mutex_unlock(&p->reader);
  }
  const int err = errno;
  Release(p);
  if (r < 0) {
    errno = err;
    return -1;
  }
  errno = saved_errno;  // not all there yet: the write goes on, behind the request
  return 0;
}

}  // namespace via::shim
