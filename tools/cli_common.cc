#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "broker/broker.h"
#include "common/paths.h"
#include "tools/broker_client.h"
#include "tools/cli.h"

namespace via::tools {

void Error(const std::string& msg) { std::fprintf(stderr, "via: %s\n", msg.c_str()); }

bool HasOperands(const Args& args, const std::string& command) {
  if (args.rest.empty()) return false;
  Error("unexpected argument '" + args.rest[0] + "' for '" + command + "'; try 'via " + command +
        " --help'");
  return true;
}

std::optional<config::Config> LoadConfigOrComplain(const Args& args) {
  std::string path = args.Get("--config");
  if (path.empty()) {
    auto found = config::FindConfig();
    if (!found.ok()) {
      Error(found.status().message());
      return std::nullopt;
    }
    path = *found;
  }
  auto cfg = config::LoadConfig(path);
  if (!cfg.ok()) {
    Error(cfg.status().message());
    return std::nullopt;
  }
  return std::move(*cfg);
}

Result<std::string> SocketFor(const Args& args, const config::Config& config) {
  if (args.Has("--socket")) return args.Get("--socket");
  // One broker per config path: an edited config is applied by reloading that broker
  // (SyncBrokerConfig), so that programs started earlier get the new rules and policies too.
  return BrokerSocketPath(config.source);
}

Status SyncBrokerConfig(const config::Config& config, const std::string& socket) {
  auto c = BrokerClient::Connect(socket);
  if (!c.ok()) return c.status();
  if (Status s = c->HelloControl(); !s.ok()) return s;
  if (c->fingerprint() == config.fingerprint) return Status::Ok();
  if (Status s = c->Reload(); !s.ok()) {
    return Status::Error(s.code(),
                         "the running broker for " + config.source +
                             " could not reload the edited configuration: " + s.message());
  }
  return Status::Ok();
}

namespace {

// The last lines the broker wrote to its log since `offset` (the size before it started).
std::string LogTail(const std::string& path, off_t offset) {
  std::ifstream in(path);
  if (!in) return "\n  (no log at " + path + ")";
  in.seekg(offset);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  if (lines.empty()) return " (the log " + path + " has nothing new)";
  std::string out = "; from " + path + ":";
  for (size_t i = lines.size() > 5 ? lines.size() - 5 : 0; i < lines.size(); ++i) {
    out += "\n  " + lines[i];
  }
  return out;
}

off_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : 0;
}

// The daemon's side after the double fork: a fresh session, no terminal, no inherited
// descriptors (a program's pipe held open by a long-lived broker would never see EOF), default
// signal handling. Never returns.
[[noreturn]] void BecomeBroker(const config::Config& config, const std::string& socket,
                               const DaemonOptions& daemon, const std::string& log_path,
                               int ready_fd) {
  constexpr int kReadyFd = 3;
  if (ready_fd != kReadyFd && dup2(ready_fd, kReadyFd) < 0) _exit(1);
  int devnull = open("/dev/null", O_RDWR);
  if (devnull >= 0) {
    for (int fd = 0; fd < 3; ++fd) {
      if (devnull != fd) dup2(devnull, fd);
    }
  }
  close_range(kReadyFd + 1, ~0U, 0);
  if (chdir("/") != 0) _exit(1);
  for (int sig : {SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGPIPE, SIGCHLD}) signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  broker::BrokerOptions opts;
  opts.config_path = config.source;
  opts.socket_path = socket;
  opts.log_path = log_path;
  opts.foreground = false;
  opts.stay = false;
  opts.idle_timeout_s = daemon.idle_timeout_s;
  int rc = 1;
  try {
    rc = broker::RunBroker(config, opts, kReadyFd);
  } catch (...) {
  }
  _exit(rc);
}

// Forks a daemonized broker; returns when it listens (or failed).
Status StartDaemon(const config::Config& config, const std::string& socket,
                   const DaemonOptions& daemon) {
  std::string log_path = daemon.log_path.empty() ? BrokerLogPath(socket) : daemon.log_path;
  off_t log_start = FileSize(log_path);
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno("pipe");
  std::fflush(nullptr);  // nothing buffered may be written twice
  pid_t pid = fork();
  if (pid < 0) {
    Status s = Status::FromErrno("fork");
    close(pipefd[0]);
    close(pipefd[1]);
    return s;
  }
  if (pid == 0) {
    close(pipefd[0]);
    setsid();
    pid_t again = fork();
    if (again != 0) _exit(again < 0 ? 1 : 0);
    BecomeBroker(config, socket, daemon, log_path, pipefd[1]);
  }
  close(pipefd[1]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  // One byte once it listens; EOF if it died first.
  pollfd p{pipefd[0], POLLIN, 0};
  int ready;
  do {
    ready = poll(&p, 1, 10000);
  } while (ready < 0 && errno == EINTR);
  char byte = 0;
  bool ok = ready == 1 && read(pipefd[0], &byte, 1) == 1;
  close(pipefd[0]);
  if (!ok) {
    std::string why =
        ready == 0 ? "the broker did not listen within 10 s" : "the broker exited during startup";
    return Status::Error(EHOSTUNREACH, why + LogTail(log_path, log_start));
  }
  return Status::Ok();
}

// Serializes starters so that concurrent `via run`s start one broker, not several.
class StartLock {
 public:
  explicit StartLock(const std::string& socket) {
    fd_ = open((socket + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ >= 0) {
      while (flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
      }
    }
  }
  ~StartLock() {
    if (fd_ >= 0) close(fd_);  // releases the lock
  }
  StartLock(const StartLock&) = delete;
  StartLock& operator=(const StartLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace

Status StartBrokerHere(const config::Config& config, const std::string& socket,
                       const DaemonOptions& daemon) {
  if (BrokerClient::Connect(socket).ok()) return Status::Ok();
  StartLock lock(socket);
  // Someone may have started one while we waited for the lock.
  if (BrokerClient::Connect(socket).ok()) return Status::Ok();
  Status s = StartDaemon(config, socket, daemon);
  if (!s.ok()) {
    if (BrokerClient::Connect(socket).ok()) return Status::Ok();
    return s.WithContext("cannot start the broker for " + config.source + " on " + socket);
  }
  return Status::Ok();
}

Status EnsureBroker(const config::Config& config, const std::string& socket,
                    const DaemonOptions& daemon) {
  if (BrokerClient::Connect(socket).ok()) return Status::Ok();
  // A fresh `via broker --daemon` process (not a fork of this one), so that the daemon shows up
  // as what it is in ps and holds nothing of ours. It returns once the broker listens.
  std::vector<std::string> argv_s = {"via",      "broker", "-c",      config.source,
                                     "--socket", socket,   "--daemon"};
  if (!daemon.log_path.empty()) argv_s.insert(argv_s.end(), {"--log", daemon.log_path});
  if (daemon.idle_timeout_s >= 0) {
    argv_s.insert(argv_s.end(), {"--idle-timeout", std::to_string(daemon.idle_timeout_s)});
  }
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return Status::FromErrno("cannot find the via executable (/proc/self/exe)");
  self[n] = 0;
  argv_s[0] = self;
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  int errpipe[2];
  if (pipe2(errpipe, O_CLOEXEC) != 0) return Status::FromErrno("pipe");
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    Status s = Status::FromErrno("fork");
    close(errpipe[0]);
    close(errpipe[1]);
    return s;
  }
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(errpipe[1], 2) < 0) {
      _exit(126);
    }
    close_range(3, ~0U, 0);
    for (int sig : {SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGPIPE}) signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(errpipe[1]);
  // Its stderr carries the reason if it fails; the daemon itself drops the pipe at once.
  std::string err;
  char buf[4096];
  for (;;) {
    pollfd p{errpipe[0], POLLIN, 0};
    int r = poll(&p, 1, 15000);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    ssize_t got = read(errpipe[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (err.size() < 65536) err.append(buf, size_t(got));
  }
  close(errpipe[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && BrokerClient::Connect(socket).ok()) {
    return Status::Ok();
  }
  while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
  if (err.rfind("via: ", 0) == 0) err.erase(0, 5);
  if (err.empty()) {
    err = "cannot start the broker for " + config.source + " on " + socket + ": `via broker` " +
          (WIFEXITED(st) ? "exited with status " + std::to_string(WEXITSTATUS(st))
                         : "was killed by signal " + std::to_string(WTERMSIG(st)));
  }
  return Status::Error(EHOSTUNREACH, err);
}

}  // namespace via::tools
