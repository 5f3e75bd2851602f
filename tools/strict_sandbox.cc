// Strict mode, the command's side (tools/strict.h): the namespaces, the namespace's resolver
// socket and the seccomp filter, set up in the command's process before it execs.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <vector>

#include "common/unique_fd.h"
#include "tools/cli.h"
#include "tools/strict.h"
#include "tools/strict_proc.h"

namespace via::tools::strict {

namespace {

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
constexpr uint32_t kX32Bit = 0x40000000;  // __X32_SYSCALL_BIT
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
constexpr uint32_t kX32Bit = 0;
#else
#error "strict mode: add this architecture's AUDIT_ARCH"
#endif

bool WriteFile(const char* path, const std::string& text) {
  UniqueFd fd(open(path, O_WRONLY | O_CLOEXEC));
  return fd && write(fd.get(), text.data(), text.size()) == ssize_t(text.size());
}

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

// The filter: connect, listen, getpeername, accept and getsockname go to `via run`, io_uring is
// refused (it would connect past the filter; the namespace stops it anyway, this makes it fail at
// once), everything else runs. Another architecture's calls (a 32-bit int 0x80) end the process:
// their numbers differ. With `audit`, io_uring_setup and every send that carries an address also go
// to `via run`, which records what would have left and lets the call meet the namespace.
UniqueFd InstallFilter(bool audit, bool listeners, std::string* why) {
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
      // A listen the overlay serves (or refuses, as for the shim): strict_listen.cc.
      jump(SYS_listen, 0, 1),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      // getpeername of a socket it placed: the destination, not the proxy (strict_listen.cc).
      jump(SYS_getpeername, 0, 1),
      stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      jump(SYS_io_uring_setup, 0, 1),
      stmt(BPF_RET | BPF_K, audit ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ERRNO | EPERM),
  };
  if (listeners) {
    // The listeners it places: their accept and name. Each call costs a notification (glibc's
    // getaddrinfo calls getsockname twice per lookup), so only when an overlay can serve them.
    for (uint32_t nr : {SYS_accept4, SYS_accept, SYS_getsockname}) {
      code.insert(code.end(), {jump(nr, 0, 1), stmt(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF)});
    }
  }
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

}  // namespace

bool EnterSandbox(int channel, const std::string& resolv_conf, bool audit, bool listeners) {
  std::string why;
  UniqueFd dns;
  if (!EnterNamespaces(&why) || !SetUpNetwork(resolv_conf, &dns, &why)) {
    SendSetup(channel, "E" + why);
    return false;
  }
  UniqueFd listener = InstallFilter(audit, listeners, &why);
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
