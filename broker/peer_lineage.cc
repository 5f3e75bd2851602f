#include "broker/peer_lineage.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "broker/process_info.h"
#include "common/broker_address.h"
#include "common/wire.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5
#endif

namespace via::broker {

namespace {

// A walk longer than this is not a real process tree (pid_max bounds it anyway).
constexpr int kMaxDepth = 4096;

// Parent and start time of `pid` from <proc_root>/PID/stat: only that file, so that a peer that
// connects again and again costs the broker one small read per ancestor.
bool ReadStat(const std::string& proc_root, pid_t pid, pid_t* ppid, uint64_t* start) {
  const std::string path = proc_root + "/" + std::to_string(pid) + "/stat";
  int fd;
  do {
    fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return false;
  char buf[1024];  // comm is at most 16 bytes: the fields up to starttime fit
  ssize_t n;
  do {
    n = read(fd, buf, sizeof buf);
  } while (n < 0 && errno == EINTR);
  close(fd);
  return n > 0 && ParseStat(std::string(buf, size_t(n)), ppid, start);
}

// The session (pid, start) opened or carries on, or nullptr.
const SessionTable::Session* SessionAt(const SessionTable& sessions, pid_t pid, uint64_t start) {
  for (const auto& [token, s] : sessions.sessions()) {
    if (s.root == pid && s.root_start == start) return &s;
    for (const auto& [hp, hs] : s.heirs) {
      if (hp == pid && hs == start) return &s;
    }
  }
  return nullptr;
}

int PidfdSendSignal(int pidfd, int sig) {
  return int(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

}  // namespace

LineageVerdict SessionLineage(pid_t pid, const SessionTable& sessions,
                              const std::string& proc_root) {
  LineageVerdict v;
  uint64_t child_start = UINT64_MAX;
  pid_t child = 0;
  for (int depth = 0; pid > 0 && depth < kMaxDepth; ++depth) {
    pid_t ppid = 0;
    uint64_t start = 0;
    if (!ReadStat(proc_root, pid, &ppid, &start)) {
      v.why = depth == 0 ? "the process is gone"
                         : "its ancestor pid " + std::to_string(pid) +
                               " vanished while the broker read the tree";
      return v;
    }
    if (start > child_start) {
      // A parent never starts after its child: pid `pid` was reused while we read.
      v.why = "pid " + std::to_string(pid) + ", the parent of pid " + std::to_string(child) +
              ", started after it (its pid was reused); its lineage is unknown";
      return v;
    }
    if (const SessionTable::Session* s = SessionAt(sessions, pid, start)) {
      v.admitted = true;
      v.why = "it descends from session " + s->token.substr(0, 8) + " (" + s->network +
              ") through pid " + std::to_string(pid) +
              (s->detached() ? ", one of the processes that carry it on" : ", its opener");
      return v;
    }
    child = pid;
    child_start = start;
    pid = ppid;
  }
  v.why = "it descends from no session of this broker";
  return v;
}

LineageVerdict CheckPeerLineage(int fd, const ucred& cred, const SessionTable& sessions) {
  LineageVerdict v;
  if (sessions.size() == 0) {
    v.why = "no session is open, so nothing can be its ancestor";
    return v;
  }
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) {
    if (errno != ENOPROTOOPT && errno != EINVAL) {
      v.why = std::string("SO_PEERPIDFD: ") + std::strerror(errno) + " (has the process exited?)";
      return v;
    }
    pidfd = int(syscall(SYS_pidfd_open, cred.pid, 0));
    if (pidfd < 0) {
      v.why = std::string("pidfd_open: ") + std::strerror(errno) + " (has the process exited?)";
      return v;
    }
  }
  UniqueFd hold(pidfd);
  v = SessionLineage(cred.pid, sessions);
  // Alive now, so it was alive (and held its pid) all the time /proc was read.
  if (v.admitted && PidfdSendSignal(hold.get(), 0) != 0 && errno == ESRCH) {
    v.admitted = false;
    v.why = "it exited while the broker read its process tree";
  }
  return v;
}

bool ForeignPeerMay(uint16_t type) {
  switch (type) {
    case wire::kHello:
    case wire::kConnect:
    case wire::kResolve:
    case wire::kReverse:
    case wire::kDnsQuery:
    case wire::kDnsSocket:
    case wire::kListen:
    case wire::kReport:
    case wire::kProxySocket:
      return true;
    default:
      return false;
  }
}

Result<UniqueFd> ListenAbstract(const std::string& socket_path) {
  sockaddr_un sun;
  socklen_t len = AbstractBrokerAddress(socket_path.c_str(), &sun);
  std::string name = "@" + std::string(sun.sun_path + 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket");
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sun), len) != 0) {
    return Status::FromErrno("bind " + name);
  }
  if (listen(fd.get(), SOMAXCONN) != 0) return Status::FromErrno("listen " + name);
  return fd;
}

}  // namespace via::broker
