// Strict mode's --audit: what would have left outside the overlay (strict_supervisor.h).
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "tools/strict_supervisor.h"

namespace via::tools::strict {

using wire::AddrCall;
using wire::KernelDest;
using wire::KernelDestination;
using wire::SockKind;

// --audit: a send on a socket that is not placed by via (UDP, ICMP, raw; TCP Fast Open) with
// an address outside the namespace: recorded; the kernel then finds no route for it.
void Supervisor::AuditSend(const seccomp_notif& n) {
  const pid_t tid = pid_t(n.pid);
  CallerSocket sock;
  if (!TakeSocket(pidfds_, tid, int(n.data.args[0]), &sock)) return;
  const pid_t pid = sock.pid;
  const int domain = sock.domain;
  const SockKind kind = sock.kind();
  auto one = [&](uint64_t name, uint64_t namelen, AddrCall call, int flags) {
    alignas(sockaddr_storage) char sa[128] = {};
    size_t want = std::min<uint64_t>(namelen, sizeof sa);
    if (name == 0 || want == 0 || !ReadMemory(tid, name, sa, want)) return;
    AuditDestination(pid, domain, kind, call, (flags & MSG_FASTOPEN) != 0, sa, socklen_t(namelen));
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

void Supervisor::AuditDestination(pid_t pid, int domain, SockKind kind, AddrCall call,
                                  bool fastopen, const char* sa, socklen_t len) {
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

void Supervisor::Record(pid_t pid, const std::string& what, const std::string& dest) {
  char exe[4096];
  std::string link = "/proc/" + std::to_string(pid) + "/exe";
  ssize_t n = readlink(link.c_str(), exe, sizeof exe - 1);
  exe[n > 0 ? n : 0] = 0;
  std::string key = "pid " + std::to_string(pid) + " " + (n > 0 ? exe : "?") + ": " + what +
                    (dest.empty() ? "" : " to " + dest);
  std::lock_guard<std::mutex> lock(mu_);
  ++audit_[key];
  // `via status` shows the session's refusals by kind ("UDP send", "io_uring_setup").
  ++refused_[what.substr(0, what.find(" ("))];
}

// --audit: what would have left outside the overlay, by process, at the command's exit.
void Supervisor::Report(const std::string& network) {
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

}  // namespace via::tools::strict
