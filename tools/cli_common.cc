#include <fcntl.h>
#include <poll.h>
#include <signal.h>
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

Result<Args> ParseArgs(const std::string& command, int argc, char** argv,
                       const std::map<std::string, bool>& spec,
                       const std::map<std::string, std::string>& aliases, bool stop_at_operand) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      for (++i; i < argc; ++i) args.rest.push_back(argv[i]);
      break;
    }
    if (a.size() > 1 && a[0] == '-') {
      std::string name = a, value;
      bool inline_value = false;
      if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
      if (auto al = aliases.find(name); al != aliases.end()) name = al->second;
      auto it = spec.find(name);
      if (it == spec.end()) {
        return Status::Invalid("unknown option " + a + " for '" + command + "'; try 'via " +
                               command + " --help'");
      }
      if (it->second && !inline_value) {
        if (i + 1 >= argc) {
          return Status::Invalid("option " + a + " needs a value; try 'via " + command +
                                 " --help'");
        }
        value = argv[++i];
      } else if (!it->second && inline_value) {
        return Status::Invalid("option " + name + " takes no value");
      }
      args.values[name] = value;
      continue;
    }
    args.rest.push_back(a);
    if (stop_at_operand) {
      for (++i; i < argc; ++i) args.rest.push_back(argv[i]);
      break;
    }
  }
  return args;
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
  return BrokerSocketPath(config.source);
}

namespace {

std::string LogTail(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  std::string out;
  for (size_t i = lines.size() > 3 ? lines.size() - 3 : 0; i < lines.size(); ++i) {
    out += "\n  " + lines[i];
  }
  return out;
}

// Forks a daemonized broker; returns when it listens (or failed).
Status StartDaemon(const config::Config& config, const std::string& socket) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno("pipe");
  std::string log_path = BrokerLogPath(socket);
  pid_t pid = fork();
  if (pid < 0) return Status::FromErrno("fork");
  if (pid == 0) {
    close(pipefd[0]);
    setsid();
    pid_t again = fork();
    if (again != 0) _exit(again < 0 ? 1 : 0);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
    }
    if (chdir("/") != 0) _exit(1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    broker::BrokerOptions opts;
    opts.config_path = config.source;
    opts.socket_path = socket;
    opts.log_path = log_path;
    opts.foreground = false;
    opts.stay = false;
    _exit(broker::RunBroker(config, opts, pipefd[1]));
  }
  close(pipefd[1]);
  int st = 0;
  waitpid(pid, &st, 0);
  pollfd p{pipefd[0], POLLIN, 0};
  int ready = poll(&p, 1, 10000);
  char byte = 0;
  bool ok = ready == 1 && read(pipefd[0], &byte, 1) == 1;
  close(pipefd[0]);
  if (!ok) {
    return Status::Error(EHOSTUNREACH,
                         "the broker did not start (log " + log_path + ")" + LogTail(log_path));
  }
  return Status::Ok();
}

}  // namespace

Status EnsureBroker(const config::Config& config, const std::string& socket) {
  if (BrokerClient::Connect(socket).ok()) return Status::Ok();
  Status s = StartDaemon(config, socket);
  if (!s.ok()) {
    // Another process may have started one at the same moment.
    if (BrokerClient::Connect(socket).ok()) return Status::Ok();
    return s;
  }
  return Status::Ok();
}

}  // namespace via::tools
