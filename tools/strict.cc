// Strict mode: see strict.h.
#include "tools/strict.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "broker/dns_message.h"
#include "common/kernel_sockaddr.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "tools/broker_client.h"
#include "tools/cli.h"

namespace via::tools::strict {

namespace {

constexpr int kSetupWaitMs = 10000;      // for the command's process to enter the sandbox
constexpr int kDirectConnectMs = 10000;  // a loopback connect made directly (loopback: direct)

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
constexpr uint32_t kX32Bit = 0x40000000;  // __X32_SYSCALL_BIT
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
constexpr uint32_t kX32Bit = 0;
#else
#error "strict mode: add this architecture's AUDIT_ARCH"
#endif

long Seccomp(unsigned op, unsigned flags, void* args) {
  return syscall(SYS_seccomp, op, flags, args);
}

bool WriteFile(const char* path, const std::string& text) {
  UniqueFd fd(open(path, O_WRONLY | O_CLOEXEC));
  return fd && write(fd.get(), text.data(), text.size()) == ssize_t(text.size());
}

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

using wire::AddrCall;
using wire::ClassifySocket;
using wire::KernelDest;
using wire::KernelDestination;
using wire::SockKind;

// "1.2.3.4:80", "[::1]:80".
std::string AddrText(const wire::Addr& a) {
  char ip[INET6_ADDRSTRLEN] = "?";
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, ip, sizeof ip);
  return (a.family == 6 ? "[" + std::string(ip) + "]" : std::string(ip)) + ":" +
         std::to_string(a.port);
}

// ---- the command's side ---------------------------------------------------------------------

// The namespaces: network and mount, inside a user namespace of our own when not root (the
// uid and gid map to themselves, so the program runs as the same user, without capabilities).
bool EnterNamespaces(std::string* why) {
  uid_t uid = geteuid();
  gid_t gid = getegid();
  int flags = CLONE_NEWNET | CLONE_NEWNS | (uid != 0 ? CLONE_NEWUSER : 0);
  if (unshare(flags) != 0) {
    *why = Errno(uid != 0 ? "unshare(user, network and mount namespaces)"
                          : "unshare(network and mount namespaces)") +
           (uid != 0 ? "; unprivileged user namespaces may be disabled here "
                       "(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, an "
                       "AppArmor or container policy): enable them, or run as root"
                     : "");
    return false;
  }
  if (uid != 0 &&
      (!WriteFile("/proc/self/setgroups", "deny") ||
       !WriteFile("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1") ||
       !WriteFile("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1"))) {
    *why = Errno("mapping the user namespace's uid and gid");
    return false;
  }
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    *why = Errno("making the mount namespace private");
    return false;
  }
  return true;
}

// lo up, the resolver's socket bound on 127.0.0.1:53, resolv.conf naming it.
bool SetUpNetwork(const std::string& resolv_conf, UniqueFd* dns, std::string* why) {
  UniqueFd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  if (!s || ioctl(s.get(), SIOCGIFFLAGS, &ifr) != 0) {
    *why = Errno("reading lo's flags");
    return false;
  }
  ifr.ifr_flags = short(ifr.ifr_flags | IFF_UP);
  if (ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) {
    *why = Errno("bringing lo up");
    return false;
  }
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(53);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0) {
    *why = Errno("binding the namespace's resolver on 127.0.0.1:53");
    return false;
  }
  // Without /etc/resolv.conf the resolvers use 127.0.0.1 anyway.
  if (access("/etc/resolv.conf", F_OK) == 0 &&
      mount(resolv_conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0) {
    *why = Errno("mounting the namespace's resolv.conf over /etc/resolv.conf");
    return false;
  }
  *dns = std::move(s);
  return true;
}

// The filter: connect goes to `via run`, io_uring is refused (it would connect past the filter;
// the namespace stops it anyway, this makes it fail at once), everything else runs. Another
// architecture's calls (a 32-bit int 0x80) end the process: their numbers differ. With `audit`,
// io_uring_setup and every send that carries an address also go to `via run`, which records
// what would have left and lets the call meet the namespace.
UniqueFd InstallFilter(bool audit, std::string* why) {
  auto stmt = [](uint16_t code, uint32_t k) { return sock_filter BPF_STMT(code, k); };
  auto jump = [](uint32_t k, uint8_t jt, uint8_t jf) {
    return sock_filter BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, k, jt, jf);
  };
  const uint32_t arg4 = offsetof(seccomp_data, args) + 4 * sizeof(uint64_t);  // little endian
  std::vector<sock_filter> code = {
      stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      jump(kAuditArch, 1, 0),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      sock_filter BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, kX32Bit, 0, 1),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      jump(SYS_connect, 0, 1),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      jump(SYS_io_uring_setup, 0, 1),
      stmt(BPF_RET | BPF_K, audit ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ERRNO | EPERM),
  };
  if (audit) {
    code.insert(code.end(), {
                                jump(SYS_sendmsg, 0, 1),
                                stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
                                jump(SYS_sendmmsg, 0, 1),
                                stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
                                jump(SYS_sendto, 0, 5),  // else to ALLOW
                                stmt(BPF_LD | BPF_W | BPF_ABS, arg4),
                                jump(0, 0, 2),  // low word set: an address
                                stmt(BPF_LD | BPF_W | BPF_ABS, arg4 + 4),
                                jump(0, 1, 0),  // both zero: no address, ALLOW
                                stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
                            });
  }
  code.push_back(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  sock_fprog prog{static_cast<unsigned short>(code.size()), code.data()};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    *why = Errno("prctl(PR_SET_NO_NEW_PRIVS)");
    return UniqueFd();
  }
  long fd = Seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  if (fd < 0) {
    *why = Errno(
        "installing the seccomp filter (user notification needs Linux 5.0, descriptor "
        "placement 5.9)");
    return UniqueFd();
  }
  return UniqueFd(int(fd));
}

// "E<why>", or "OK <listener> <dns>": the descriptor numbers, which via run takes with
// pidfd_getfd. (Not SCM_RIGHTS: with --audit the filter already hands sendmsg to via run, which
// would wait for this very message to learn the listener.)
bool SendSetup(int channel, const std::string& text) {
  return write(channel, text.data(), text.size()) == ssize_t(text.size());
}

// ---- via run's side -------------------------------------------------------------------------

bool ReceiveSetup(int channel, pid_t command, UniqueFd* listener, UniqueFd* dns, std::string* why) {
  pollfd p{channel, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, kSetupWaitMs);
  } while (r < 0 && errno == EINTR);
  if (r != 1) {
    *why = "the command did not enter its sandbox within 10 s";
    return false;
  }
  char text[1024];
  ssize_t n = read(channel, text, sizeof text - 1);
  if (n <= 0) {
    *why = "the command exited before entering its sandbox";
    return false;
  }
  text[n] = 0;
  if (text[0] == 'E') {
    *why = text + 1;
    return false;
  }
  int fds[2] = {-1, -1};
  UniqueFd pidfd(int(syscall(SYS_pidfd_open, command, 0)));
  if (std::sscanf(text, "OK %d %d", &fds[0], &fds[1]) != 2 || !pidfd) {
    *why = "the command's sandbox sent an unexpected setup message";
    return false;
  }
  listener->reset(int(syscall(SYS_pidfd_getfd, pidfd.get(), fds[0], 0)));
  dns->reset(int(syscall(SYS_pidfd_getfd, pidfd.get(), fds[1], 0)));
  if (!*listener || !*dns) {
    *why = Errno("taking the sandbox's descriptors (pidfd_getfd)");
    return false;
  }
  return true;
}

// The process (thread group) of thread `tid`: the notification names the calling thread, and
// pidfd_open wants a process.
// The first read of /proc/PID/`file` into `buf` (NUL-terminated); false when it cannot be read.
bool ReadProc(pid_t pid, const std::string& file, char* buf, size_t cap) {
  std::string path = "/proc/" + std::to_string(pid) + "/" + file;
  UniqueFd f(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ssize_t n = f ? read(f.get(), buf, cap - 1) : -1;
  if (n <= 0) return false;
  buf[n] = 0;
  return true;
}

pid_t ProcessOf(pid_t tid) {
  char buf[4096];
  const char* tgid =
      ReadProc(tid, "status", buf, sizeof buf) ? std::strstr(buf, "\nTgid:") : nullptr;
  return tgid != nullptr ? pid_t(std::strtol(tgid + 6, nullptr, 10)) : tid;
}

// Whether descriptor `fd` of process `pid` is close-on-exec (its fdinfo "flags:", octal).
bool CloseOnExec(pid_t pid, int fd) {
  char buf[512];
  if (!ReadProc(pid, "fdinfo/" + std::to_string(fd), buf, sizeof buf)) return false;
  const char* flags = std::strstr(buf, "flags:");
  return flags != nullptr && (std::strtoul(flags + 6, nullptr, 8) & O_CLOEXEC) != 0;
}

// The program's socket options that matter to it, onto our socket: non-blocking mode,
// TCP_NODELAY, SO_KEEPALIVE. (Buffer sizes are left to the kernel's autotuning.)
void CopyOptions(int from, int to) {
  int fl = fcntl(from, F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK) != 0) fcntl(to, F_SETFL, fcntl(to, F_GETFL) | O_NONBLOCK);
  const std::pair<int, int> options[] = {{IPPROTO_TCP, TCP_NODELAY}, {SOL_SOCKET, SO_KEEPALIVE}};
  for (auto [level, name] : options) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(from, level, name, &v, &len) == 0 && v != 0) {
      setsockopt(to, level, name, &v, sizeof v);
    }
  }
}

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

class Supervisor {
 public:
  Supervisor(UniqueFd listener, UniqueFd dns, std::string socket, std::string token, bool quiet,
             bool audit)
      : listener_(std::move(listener)),
        dns_(std::move(dns)),
        socket_(std::move(socket)),
        token_(std::move(token)),
        quiet_(quiet),
        audit_on_(audit) {}

  // The first broker connection: its HELLO reply says how loopback destinations go.
  bool Start(std::string* why) {
    seccomp_notif_sizes sizes{};
    if (Seccomp(SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) {
      *why = Errno("seccomp(SECCOMP_GET_NOTIF_SIZES)");
      return false;
    }
    notif_size_ = std::max<size_t>(sizes.seccomp_notif, sizeof(seccomp_notif));
    auto c = Open(&network_);
    if (!c.ok()) {
      *why = c.status().message();
      return false;
    }
    flags_ = c->hello_flags();
    fake_nets_ = c->fake_nets();
    if (c->socks5_plan() != nullptr) plan_ = *c->socks5_plan();
    if ((flags_ & wire::kFlagDirect) != 0) {
      *why = "the session's network is direct: strict mode needs an overlay";
      return false;
    }
    dns_client_.emplace(std::move(*c));
    return true;
  }

  // Serves until `command` exits (reaping the orphans adopted meanwhile); its wait status.
  int Run(pid_t command) {
    UniqueFd pidfd(int(syscall(SYS_pidfd_open, command, 0)));
    StartWorker();
    for (;;) {
      pollfd p[2] = {{dns_.get(), POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
      int r = poll(p, pidfd ? 2 : 1, 1000);
      if (r < 0 && errno != EINTR) break;
      if (r > 0 && (p[0].revents & POLLIN) != 0) OnDnsQuery();
      if (r > 0 && p[1].revents == 0) continue;  // a query: no child can have exited
      int st = 0;
      pid_t w;
      while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
        if (w == command) return st;
      }
      if (w < 0 && errno == ECHILD) break;
    }
    int st = 0;
    while (waitpid(command, &st, 0) < 0 && errno == EINTR) {
    }
    return st;
  }

 private:
  Result<BrokerClient> Open(std::string* network = nullptr) {
    auto c = BrokerClient::Connect(socket_);
    if (!c.ok()) return c.status();
    auto net = c->Hello("", token_);
    if (!net.ok()) return net.status();
    if (network != nullptr) *network = *net;
    return c;
  }

  Result<BrokerClient> Take() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!pool_.empty()) {
        BrokerClient c = std::move(pool_.back());
        pool_.pop_back();
        return c;
      }
    }
    return Open();
  }

  void Give(BrokerClient c) {
    std::lock_guard<std::mutex> lock(mu_);
    if (pool_.size() < 16) pool_.push_back(std::move(c));
  }

  void Respond(uint64_t id, int err, uint32_t flags = 0) {
    seccomp_notif_resp r{};
    r.id = id;
    r.error = err == 0 ? 0 : -err;
    r.flags = flags;
    ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_SEND, &r);
  }

  // The kernel runs the call as the program made it, in the program's namespace: only for
  // calls that cannot leave it (any socket that is not TCP; a TCP socket the program could
  // swap in meanwhile still finds no route out).
  void Continue(uint64_t id) { Respond(id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE); }

  // Connects wait for the overlay (seconds, at worst). Workers take notifications from the
  // kernel themselves (each blocked in NOTIF_RECV: no hand-off between threads); one more is
  // started whenever all are busy, up to kWorkers; past that, connects wait in the kernel.
  void StartWorker() {
    ++workers_;
    std::thread([this] { Work(); }).detach();
  }

  void Work() {
    std::vector<char> buf(notif_size_);
    auto* n = reinterpret_cast<seccomp_notif*>(buf.data());
    for (;;) {
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

  void Handle(const seccomp_notif& n) {
    if (n.data.nr == SYS_connect) return HandleConnect(n);
    if (n.data.nr == SYS_io_uring_setup) {  // only with --audit
      Record(ProcessOf(pid_t(n.pid)), "io_uring_setup (refused: EPERM)", "");
      return Respond(n.id, EPERM);
    }
    AuditSend(n);  // sendto with an address, sendmsg, sendmmsg: only with --audit
    Continue(n.id);
  }

  // --audit: a send on a socket that is not placed by via (UDP, ICMP, raw; TCP Fast Open) with
  // an address outside the namespace: recorded; the kernel then finds no route for it.
  void AuditSend(const seccomp_notif& n) {
    const pid_t tid = pid_t(n.pid);
    CallerSocket sock;
    if (!TakeSocket(tid, int(n.data.args[0]), &sock)) return;
    const pid_t pid = sock.pid;
    const int domain = sock.domain;
    const SockKind kind = sock.kind();
    auto one = [&](uint64_t name, uint64_t namelen, AddrCall call, int flags) {
      alignas(sockaddr_storage) char sa[128] = {};
      size_t want = std::min<uint64_t>(namelen, sizeof sa);
      if (name == 0 || want == 0 || !ReadMemory(tid, name, sa, want)) return;
      AuditDestination(pid, domain, kind, call, (flags & MSG_FASTOPEN) != 0, sa,
                       socklen_t(namelen));
    };
    if (n.data.nr == SYS_sendto) {
      one(n.data.args[4], n.data.args[5], AddrCall::kSendto, int(n.data.args[3]));
    } else if (n.data.nr == SYS_sendmsg) {
      msghdr m{};
      if (ReadMemory(tid, n.data.args[1], &m, sizeof m)) {
        one(uint64_t(m.msg_name), m.msg_namelen, AddrCall::kSendmsg, int(n.data.args[2]));
      }
    } else if (n.data.nr == SYS_sendmmsg) {
      mmsghdr v[16];
      size_t count = std::min<uint64_t>(n.data.args[2], 16);
      if (count > 0 && ReadMemory(tid, n.data.args[1], v, count * sizeof v[0])) {
        for (size_t i = 0; i < count; ++i) {
          one(uint64_t(v[i].msg_hdr.msg_name), v[i].msg_hdr.msg_namelen, AddrCall::kSendmsg,
              int(n.data.args[3]));
        }
      }
    }
  }

  void AuditDestination(pid_t pid, int domain, SockKind kind, AddrCall call, bool fastopen,
                        const char* sa, socklen_t len) {
    if (domain != AF_INET && domain != AF_INET6) return;
    KernelDest d =
        KernelDestination(domain, kind, call, fastopen, reinterpret_cast<const sockaddr*>(sa), len);
    if (d.kind != KernelDest::kAddr || wire::IsLoopback(d.addr)) return;
    if (kind == SockKind::kStream && !fastopen) return;  // a TCP send ignores the address
    // A UDP connect sends nothing; to one of via's fake addresses it is the resolver sorting
    // its answers (RFC 6724), not an attempt to reach anything.
    if (call == AddrCall::kConnect) {
      for (const wire::Addr& net : fake_nets_) {
        if (wire::InPrefix(net, d.addr)) return;
      }
    }
    const char* what = kind == SockKind::kStream ? "TCP Fast Open"
                       : kind == SockKind::kUdp  ? "UDP"
                       : kind == SockKind::kPing ? "ICMP"
                                                 : "raw IP";
    Record(pid, std::string(what) + (call == AddrCall::kConnect ? " connect" : " send"),
           AddrText(d.addr));
  }

  static bool ReadMemory(pid_t tid, uint64_t addr, void* out, size_t len) {
    iovec local{out, len}, remote{reinterpret_cast<void*>(addr), len};
    return process_vm_readv(tid, &local, 1, &remote, 1, 0) == ssize_t(len);
  }

  void Record(pid_t pid, const std::string& what, const std::string& dest) {
    char exe[4096];
    std::string link = "/proc/" + std::to_string(pid) + "/exe";
    ssize_t n = readlink(link.c_str(), exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    std::string key = "pid " + std::to_string(pid) + " " + (n > 0 ? exe : "?") + ": " + what +
                      (dest.empty() ? "" : " to " + dest);
    std::lock_guard<std::mutex> lock(mu_);
    ++audit_[key];
  }

 public:
  const std::string& network() const { return network_; }

  // --audit: what would have left outside the overlay, by process, at the command's exit.
  void Report(const std::string& network) {
    std::lock_guard<std::mutex> lock(mu_);
    if (audit_.empty()) {
      std::fprintf(stderr, "via: audit: nothing tried to leave outside %s\n", network.c_str());
      return;
    }
    int total = 0;
    for (const auto& [key, count] : audit_) total += count;
    std::fprintf(stderr,
                 "via: audit: %d attempt%s would have left outside %s (each failed: the "
                 "namespace has no route):\n",
                 total, total == 1 ? "" : "s", network.c_str());
    for (const auto& [key, count] : audit_) {
      std::fprintf(stderr, "via: audit:   %s%s\n", key.c_str(),
                   count > 1 ? (" (x" + std::to_string(count) + ")").c_str() : "");
    }
  }

 private:
  // A duplicate of the calling program's descriptor and what kind of socket it is.
  struct CallerSocket {
    pid_t pid = 0;  // the caller's process (the notification names its thread)
    UniqueFd fd;
    int domain = 0, type = 0, protocol = 0;
    SockKind kind() const { return ClassifySocket(domain, type, protocol); }
  };

  // Takes descriptor `fd` of thread `tid`'s process (pidfd_getfd); false when it is not a socket
  // (or gone). The caller is usually its process's main thread, whose pidfd opens at once;
  // another thread's id is refused (EINVAL, or ENOENT since Linux 6.9) and its process looked up.
  static bool TakeSocket(pid_t tid, int fd, CallerSocket* out) {
    out->pid = tid;
    UniqueFd pidfd(int(syscall(SYS_pidfd_open, tid, 0)));
    if (!pidfd) {
      out->pid = ProcessOf(tid);
      pidfd.reset(int(syscall(SYS_pidfd_open, out->pid, 0)));
    }
    out->fd.reset(pidfd ? int(syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)) : -1);
    socklen_t len = sizeof(int);
    return out->fd && getsockopt(out->fd.get(), SOL_SOCKET, SO_DOMAIN, &out->domain, &len) == 0 &&
           getsockopt(out->fd.get(), SOL_SOCKET, SO_TYPE, &out->type, &len) == 0 &&
           getsockopt(out->fd.get(), SOL_SOCKET, SO_PROTOCOL, &out->protocol, &len) == 0;
  }

  // A connect's address (its first min(len, 128) bytes) from the calling thread's memory;
  // false when it cannot be read.
  static bool ReadConnectAddress(const seccomp_notif& n, char* sa) {
    const int ulen = int(n.data.args[2]);
    size_t want = ulen < 0 ? 0 : std::min<size_t>(size_t(ulen), 128);
    return want == 0 || ReadMemory(pid_t(n.pid), n.data.args[1], sa, want);
  }

  void HandleConnect(const seccomp_notif& n) {
    const int fd = int(n.data.args[0]);
    const int ulen = int(n.data.args[2]);
    alignas(sockaddr_storage) char sa[128] = {};
    CallerSocket sock;
    const bool is_socket = TakeSocket(pid_t(n.pid), fd, &sock);
    if (!is_socket || sock.kind() != SockKind::kStream) {
      if (audit_on_ && is_socket && ReadConnectAddress(n, sa)) {
        AuditDestination(sock.pid, sock.domain, sock.kind(), AddrCall::kConnect, false, sa,
                         socklen_t(ulen));
      }
      return Continue(n.id);  // not a TCP socket (or not a socket: the kernel says so)
    }
    const pid_t pid = sock.pid;
    const int domain = sock.domain;
    const UniqueFd& prog = sock.fd;
    // The address, read from the program's memory, then checked to still be this call's.
    if (!ReadConnectAddress(n, sa)) return Respond(n.id, EFAULT);
    uint64_t id = n.id;
    if (ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0) return;
    KernelDest d = KernelDestination(domain, SockKind::kStream, AddrCall::kConnect, false,
                                     reinterpret_cast<sockaddr*>(sa), socklen_t(ulen));
    if (d.kind == KernelDest::kReject) return Respond(n.id, d.err);
    if (d.kind == KernelDest::kNone) return Continue(n.id);  // AF_UNSPEC: a disconnect
    UniqueFd host(socket(domain, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
    if (!host) return Respond(n.id, errno);
    int err = Connect(host.get(), d.addr);
    if (err != 0) return Respond(n.id, err);
    CopyOptions(prog.get(), host.get());
    seccomp_notif_addfd add{};
    add.id = n.id;
    add.flags = SECCOMP_ADDFD_FLAG_SETFD;
    add.srcfd = uint32_t(host.get());
    add.newfd = uint32_t(fd);
    add.newfd_flags = CloseOnExec(pid, fd) ? O_CLOEXEC : 0;
    if (ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_ADDFD, &add) < 0) return;  // it is gone
    Respond(n.id, 0);
  }

  // Our socket `fd` connected to `a` as the session's network says: through the overlay, or
  // (loopback) directly or refused. 0 or an errno.
  int Connect(int fd, const wire::Addr& a) {
    if (wire::IsLoopback(a) && (flags_ & wire::kFlagLoopbackRoute) == 0) {
      if ((flags_ & wire::kFlagLoopbackRefuse) != 0) return ECONNREFUSED;
      return ConnectDirect(fd, wire::Unmapped(a));
    }
    // A SOCKS5 overlay that lets programs run the handshake (handshake: program): run it here,
    // as the shim would, for a real address. A fake address goes to the broker, which knows
    // its name (via run holds no RESOLVE promise for it, as the shim may).
    std::optional<std::string> name;
    if (plan_ && socks5::InFakeRange(*plan_, a)) name = NameOf(a);
    if (plan_ && (name || !socks5::InFakeRange(*plan_, a))) {
      char why[256], msg[512];
      int err = socks5::ConnectBlocking(fd, *plan_, name ? name->c_str() : nullptr, a, ::connect,
                                        why, sizeof why, msg, sizeof msg);
      if (err != 0 && !quiet_) Complain("strict: " + std::string(msg));
      return err;
    }
    auto c = Take();
    if (!c.ok()) {
      if (!quiet_) Complain("strict: " + c.status().message());
      return EHOSTUNREACH;
    }
    Status s = c->ConnectAddr(fd, a);
    if (s.ok()) {
      Give(std::move(*c));
      return 0;
    }
    if (!quiet_) Complain("strict: connect to " + AddrText(a) + ": " + s.message());
    if (s.code() != ETIMEDOUT && s.code() != EPIPE && s.code() != ECONNRESET) Give(std::move(*c));
    return s.code() != 0 ? s.code() : EHOSTUNREACH;
  }

  void OnDnsQuery() {
    char q[4096];
    sockaddr_storage from{};
    socklen_t fl = sizeof from;
    ssize_t n =
        recvfrom(dns_.get(), q, sizeof q, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fl);
    if (n <= 0) return;
    if (plan_) {
      // A/AAAA with the fake addresses RESOLVE promises: via run can then run the SOCKS5
      // handshake by name itself (Connect). Anything else as DNS_QUERY answers it.
      if (std::optional<std::string> mine = AnswerFromResolve(std::string_view(q, size_t(n)))) {
        sendto(dns_.get(), mine->data(), mine->size(), MSG_DONTWAIT,
               reinterpret_cast<sockaddr*>(&from), fl);
        return;
      }
    }
    auto answer = dns_client_->DnsQuery(q, size_t(n));
    if (!answer.ok()) {
      if (!quiet_) Complain("strict: DNS query: " + answer.status().message());
      if (auto c = Open(); c.ok()) dns_client_.emplace(std::move(*c));
      return;
    }
    if (answer->empty()) return;
    sendto(dns_.get(), answer->data(), answer->size(), MSG_DONTWAIT,
           reinterpret_cast<sockaddr*>(&from), fl);
  }

  // The answer to an A or AAAA query built from RESOLVE (broker/dns_message.h's policy, as the
  // broker's DNS_QUERY builds it), remembering each fake address's name while the broker
  // promises it; nullopt when the query is anything else or the answer would not be two fake
  // addresses with a promise (the caller then asks DNS_QUERY).
  std::optional<std::string> AnswerFromResolve(std::string_view packet) {
    broker::DnsParseError perr;
    std::optional<broker::DnsQuery> query = broker::ParseDnsQuery(packet, &perr);
    if (!query || (query->qtype != broker::kDnsA && query->qtype != broker::kDnsAaaa)) {
      return std::nullopt;
    }
    bool usable = true;
    broker::DnsPolicy policy;
    policy.lookup = [&](const std::string& name) -> std::pair<wire::Addr, wire::Addr> {
      // A repeat within half the promise: answered here, as the shim's name cache does (a
      // program that resolves before every connect pays no broker round trip).
      if (auto it = answers_.find(name); it != answers_.end()) {
        if (it->second.until > proxy::MonotonicMs()) return {it->second.v4, it->second.v6};
        answers_.erase(it);
      }
      uint32_t hold_ms = 0;
      auto addrs = dns_client_->Resolve(name, &hold_ms);
      wire::Addr v4, v6;
      for (const wire::Addr& a : addrs.ok() ? *addrs : std::vector<wire::Addr>{}) {
        if (a.family == 4 && v4.family == 0) v4 = a;
        if (a.family == 6 && v6.family == 0) v6 = a;
      }
      if (hold_ms == 0 || !socks5::InFakeRange(*plan_, v4) || !socks5::InFakeRange(*plan_, v6)) {
        usable = false;
      } else {
        Remember(v4, name, hold_ms);
        Remember(v6, name, hold_ms);
        if (answers_.size() > 4096) answers_.clear();
        answers_[name] = {v4, v6, proxy::MonotonicMs() + hold_ms / 2};
      }
      return {v4, v6};
    };
    policy.reverse = [](const wire::Addr&) { return std::optional<std::string>(); };
    std::string summary;
    std::optional<std::string> answer = broker::AnswerDnsQuery(packet, policy, &summary);
    if (!usable) return std::nullopt;
    return answer;
  }

  // A fake address's name, kept for half of the broker's promise (as the shim's name cache).
  void Remember(const wire::Addr& fake, const std::string& name, uint32_t hold_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    if (names_.size() > 4096) names_.clear();
    names_[AddrText(WithoutPort(fake))] = {name, proxy::MonotonicMs() + hold_ms / 2};
  }

  std::optional<std::string> NameOf(const wire::Addr& fake) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = names_.find(AddrText(WithoutPort(fake)));
    if (it == names_.end() || it->second.second < proxy::MonotonicMs()) return std::nullopt;
    return it->second.first;
  }

  static wire::Addr WithoutPort(const wire::Addr& addr) {
    wire::Addr a = wire::Unmapped(addr);
    a.port = 0;
    return a;
  }

  static void Complain(const std::string& what) { std::fprintf(stderr, "via: %s\n", what.c_str()); }

  UniqueFd listener_, dns_;
  std::string socket_, token_;
  size_t notif_size_ = sizeof(seccomp_notif);
  uint32_t flags_ = 0;
  std::string network_;  // the session's, for messages
  std::vector<wire::Addr> fake_nets_;
  std::optional<Socks5Plan> plan_;  // SOCKS5 without the broker, when the HELLO allows it
  // The main thread's RESOLVE answers by name, while half their promise lasts.
  struct Answer {
    wire::Addr v4, v6;
    int64_t until;
  };
  std::map<std::string, Answer> answers_;
  // Fake address ("198.18.0.5:0") -> its name and until when (MonotonicMs) it may be used.
  std::map<std::string, std::pair<std::string, int64_t>> names_;
  bool quiet_;
  bool audit_on_;
  std::map<std::string, int> audit_;  // "pid N EXE: what to where" -> times
  std::optional<BrokerClient> dns_client_;
  static constexpr int kWorkers = 32;
  std::mutex mu_;  // guards the rest
  std::vector<BrokerClient> pool_;
  int workers_ = 0, busy_ = 0;
};

}  // namespace

bool EnterSandbox(int channel, const std::string& resolv_conf, bool audit) {
  std::string why;
  UniqueFd dns;
  if (!EnterNamespaces(&why) || !SetUpNetwork(resolv_conf, &dns, &why)) {
    SendSetup(channel, "E" + why);
    return false;
  }
  UniqueFd listener = InstallFilter(audit, &why);
  if (!listener) {
    SendSetup(channel, "E" + why);
    return false;
  }
  if (!SendSetup(channel,
                 "OK " + std::to_string(listener.get()) + " " + std::to_string(dns.get()))) {
    return false;
  }
  // Run only once via run has taken both and serves the sandbox; then the listener must not
  // stay with the program (it could answer its own connects).
  char go = 0;
  ssize_t n;
  do {
    n = read(channel, &go, 1);
  } while (n < 0 && errno == EINTR);
  return n == 1 && go == 'G';
}

int Supervise(int channel, pid_t command, const std::string& socket, const std::string& token,
              bool quiet, bool audit) {
  UniqueFd listener, dns;
  std::string why;
  if (!ReceiveSetup(channel, command, &listener, &dns, &why)) {
    Error("strict mode: " + why + " (nothing was run)");
    return -1;
  }
  // Never freed: connect threads may outlive the command by a moment.
  auto* s = new Supervisor(std::move(listener), std::move(dns), socket, token, quiet, audit);
  if (!s->Start(&why)) {
    Error("strict mode: " + why + " (nothing was run)");
    return -1;
  }
  if (write(channel, "G", 1) != 1) {
    Error(Errno("strict mode: starting the command") + " (nothing was run)");
    return -1;
  }
  int status = s->Run(command);
  if (audit) s->Report(s->network());
  return status;
}

std::string WriteResolvConf(const std::string& dir) {
  std::string path = dir + "/strict-resolv.conf.XXXXXX";
  UniqueFd fd(mkstemp(path.data()));
  const std::string text =
      "# via run --strict: the namespace's resolver, answered by via\n"
      "nameserver 127.0.0.1\n";
  if (!fd || write(fd.get(), text.data(), text.size()) != ssize_t(text.size()) ||
      fchmod(fd.get(), 0644) != 0) {
    Error(Errno(("writing " + path).c_str()));
    if (fd) unlink(path.c_str());
    return "";
  }
  return path;
}

}  // namespace via::tools::strict
