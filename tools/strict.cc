// Strict mode, via run's entry (tools/strict.h): takes the sandbox's descriptors and runs the
// supervisor (tools/strict_supervisor.h). The command's side is strict_sandbox.cc.
#include "tools/strict.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "common/unique_fd.h"
#include "tools/cli.h"
#include "tools/strict_proc.h"
#include "tools/strict_supervisor.h"

namespace via::tools::strict {

namespace {

constexpr int kSetupWaitMs = 10000;  // for the command's process to enter the sandbox

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

}  // namespace

std::optional<wire::Addr> ParseCidr(const std::string& cidr) {
  const size_t slash = cidr.find('/');
  if (slash == std::string::npos) return std::nullopt;
  const std::string ip = cidr.substr(0, slash), bits = cidr.substr(slash + 1);
  wire::Addr a;
  a.family = ip.find(':') == std::string::npos ? 4 : 6;
  char* end = nullptr;
  const unsigned long prefix = std::strtoul(bits.c_str(), &end, 10);
  if (bits.empty() || *end != 0 || prefix > (a.family == 4 ? 32u : 128u) ||
      inet_pton(a.family == 4 ? AF_INET : AF_INET6, ip.c_str(), a.bytes) != 1) {
    return std::nullopt;
  }
  a.port = uint16_t(prefix);
  return a;
}

int Supervise(int channel, pid_t command, const std::string& socket, const std::string& token,
              bool quiet, bool audit, bool listeners, const std::vector<wire::Addr>& fake_nets) {
  UniqueFd listener, dns;
  std::string why;
  if (!ReceiveSetup(channel, command, &listener, &dns, &why)) {
    Error("strict mode: " + why + " (nothing was run)");
    return -1;
  }
  // Never freed: connect threads may outlive the command by a moment.
  auto* s = new Supervisor(std::move(listener), std::move(dns), socket, token, quiet, audit,
                           listeners, fake_nets);
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

}  // namespace via::tools::strict
