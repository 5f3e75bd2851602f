// via run, broker, check, status, stop.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "broker/broker.h"
#include "common/paths.h"
#include "overlays/driver.h"
#include "tools/broker_client.h"
#include "tools/cli.h"

extern char** environ;

namespace via::tools {

namespace {

const std::map<std::string, std::string> kConfigAlias = {{"-c", "--config"}, {"-h", "--help"}};

bool WantsHelp(const Args& a, const char* text) {
  if (!a.Has("--help")) return false;
  std::fputs(text, stdout);
  return true;
}

// The list of overlay ids, for messages.
std::string KnownOverlays(const config::Config& cfg) {
  std::string s;
  for (const auto& o : cfg.overlays) s += (s.empty() ? "" : ", ") + o.id;
  return s.empty() ? "none" : s;
}

// Builds the child's environment: `vars` replace existing entries; LD_PRELOAD gets the shim
// prepended once.
std::vector<std::string> ChildEnv(const std::map<std::string, std::string>& vars,
                                  const std::string& shim) {
  std::vector<std::string> env;
  std::string preload;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    if (key == "LD_PRELOAD") {
      preload = kv.substr(kv.find('=') + 1);
      continue;
    }
    if (vars.count(key)) continue;
    env.push_back(kv);
  }
  // Drop any earlier libvia.so from the list, then put ours first.
  std::string rest;
  size_t start = 0;
  while (start <= preload.size()) {
    size_t end = preload.find_first_of(": ", start);
    if (end == std::string::npos) end = preload.size();
    std::string item = preload.substr(start, end - start);
    bool ours =
        item == shim || (item.size() >= 9 && item.compare(item.size() - 9, 9, "libvia.so") == 0);
    if (!item.empty() && !ours) rest += ":" + item;
    start = end + 1;
  }
  env.push_back("LD_PRELOAD=" + shim + rest);
  for (const auto& [k, v] : vars) env.push_back(k + "=" + v);
  return env;
}

}  // namespace

int CmdRun(int argc, char** argv) {
  auto args = ParseArgs(
      "run", argc, argv,
      {{"--config", true},
       {"--network", true},
       {"--direct", false},
       {"--quiet", false},
       {"--help", false}},
      {{"-c", "--config"}, {"-n", "--network"}, {"-q", "--quiet"}, {"-h", "--help"}}, true);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (WantsHelp(*args, kHelpRun)) return kExitOk;
  if (args->rest.empty()) {
    Error(
        "run: no command given; usage: via run [-c CONFIG] [--network NS:NAME | --direct] -- "
        "COMMAND [ARGS...]");
    return kExitUsage;
  }
  if (args->Has("--network") && args->Has("--direct")) {
    Error("run: --network and --direct exclude each other");
    return kExitUsage;
  }
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;

  // Selection: explicit, then inherited from an enclosing via session, then the default.
  std::string network;
  std::string origin;
  if (args->Has("--direct")) {
    network = "direct";
  } else if (args->Has("--network")) {
    network = args->Get("--network");
    origin = "--network";
  } else if (const char* inherited = std::getenv("VIA_NETWORK"); inherited && *inherited) {
    network = inherited;
    origin = "VIA_NETWORK (inherited)";
  } else if (!cfg->service.default_network.empty()) {
    network = cfg->service.default_network;
    origin = "network_service.default_network";
  } else {
    network = "direct";
  }
  if (network != "direct") {
    const config::Overlay* o = cfg->Find(network);
    if (o == nullptr) {
      Error("unknown overlay \"" + network + "\" (from " + origin + ") in " + cfg->source +
            " (known: " + KnownOverlays(*cfg) + ")");
      return kExitUsage;
    }
    if (o->kind != config::OverlayKind::kSocks5) {
      Error("overlay " + o->id + " (" + o->kind_name +
            ") is not supported by this build of via yet; only network.socks5 is");
      return kExitUsage;
    }
    network = o->id;
  }

  auto socket = SocketFor(*args, *cfg);
  if (!socket.ok()) {
    Error(socket.status().message());
    return kExitFailure;
  }
  if (Status s = EnsureBroker(*cfg, *socket); !s.ok()) {
    Error("cannot start the broker, so nothing was run: " + s.message());
    return kExitFailure;
  }
  auto client = BrokerClient::Connect(*socket);
  if (!client.ok()) {
    Error(client.status().message());
    return kExitFailure;
  }
  if (auto h = client->Hello("direct"); !h.ok()) {
    Error("broker: " + h.status().message());
    return kExitFailure;
  }
  auto token = client->OpenSession(network);
  if (!token.ok()) {
    Error("broker: " + token.status().message());
    return kExitUsage;
  }

  std::map<std::string, std::string> vars = {{"VIA_SOCKET", *socket},
                                             {"VIA_SESSION", *token},
                                             {"VIA_NETWORK", network},
                                             {"VIA_CONFIG", cfg->source}};
  if (args->Has("--quiet")) vars["VIA_QUIET"] = "1";
  std::vector<std::string> env = ChildEnv(vars, ShimPath());
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> child_argv;
  for (auto& a : args->rest) child_argv.push_back(a.data());
  child_argv.push_back(nullptr);

  // The terminal's SIGINT/SIGQUIT reach the child directly; we only wait for it.
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  pid_t pid = fork();
  if (pid < 0) {
    Error(std::string("fork: ") + std::strerror(errno));
    return kExitFailure;
  }
  if (pid == 0) {
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    environ = envp.data();
    execvp(child_argv[0], child_argv.data());
    int err = errno;
    std::fprintf(stderr, "via: cannot run %s: %s\n", child_argv[0], std::strerror(err));
    _exit(err == ENOENT ? 127 : 126);
  }
  static pid_t child;
  child = pid;
  auto forward = [](int sig) { kill(child, sig); };
  signal(SIGTERM, forward);
  signal(SIGHUP, forward);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return kExitFailure;
}

int CmdBroker(int argc, char** argv) {
  auto args = ParseArgs("broker", argc, argv,
                        {{"--config", true},
                         {"--socket", true},
                         {"--log", true},
                         {"--daemon", false},
                         {"--ensure", false},
                         {"--idle-timeout", true},
                         {"--help", false}},
                        kConfigAlias, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (WantsHelp(*args, kHelpBroker)) return kExitOk;
  if (!args->rest.empty()) {
    Error("broker: unexpected argument " + args->rest[0] + "; try 'via broker --help'");
    return kExitUsage;
  }
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;
  auto socket = SocketFor(*args, *cfg);
  if (!socket.ok()) {
    Error(socket.status().message());
    return kExitFailure;
  }
  if (args->Has("--ensure") || args->Has("--daemon")) {
    if (Status s = EnsureBroker(*cfg, *socket); !s.ok()) {
      Error(s.message());
      return kExitFailure;
    }
    if (args->Has("--ensure")) std::printf("%s\n", socket->c_str());
    return kExitOk;
  }
  broker::BrokerOptions opts;
  opts.config_path = cfg->source;
  opts.socket_path = *socket;
  opts.log_path = args->Get("--log");
  opts.foreground = true;
  opts.stay = !args->Has("--idle-timeout");
  if (args->Has("--idle-timeout")) {
    char* end = nullptr;
    long v = std::strtol(args->Get("--idle-timeout").c_str(), &end, 10);
    if (*end != 0 || v < 0) {
      Error("broker: --idle-timeout takes a number of seconds");
      return kExitUsage;
    }
    opts.idle_timeout_s = int(v);
  }
  return broker::RunBroker(*cfg, opts);
}

int CmdCheck(int argc, char** argv) {
  auto args =
      ParseArgs("check", argc, argv, {{"--config", true}, {"--help", false}}, kConfigAlias, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (WantsHelp(*args, kHelpCheck)) return kExitOk;
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;
  std::printf("config %s: OK\n", cfg->source.c_str());
  for (const auto& f : cfg->files) std::printf("  read %s\n", f.c_str());
  std::printf("overlays (%zu):\n", cfg->overlays.size());
  for (const auto& o : cfg->overlays) {
    std::string detail;
    switch (o.kind) {
      case config::OverlayKind::kSocks5:
        detail = o.socks5.host + ":" + std::to_string(o.socks5.port) +
                 "  isolate_streams=" + (o.socks5.isolate_streams ? "on" : "off") +
                 (o.socks5.username.empty() ? "" : "  auth=username/password") +
                 "  connect_timeout=" + std::to_string(o.socks5.connect_timeout_ms) + "ms";
        break;
      case config::OverlayKind::kTailscale:
        detail = "hostname=" + (o.tailscale.hostname.empty() ? "wippy" : o.tailscale.hostname) +
                 "  (not supported by this build yet)";
        break;
      case config::OverlayKind::kI2p:
        detail =
            o.i2p.host + ":" + std::to_string(o.i2p.port) + "  (not supported by this build yet)";
        break;
    }
    std::printf("  %-16s %-18s %s  (%s)\n", o.id.c_str(), o.kind_name.c_str(), detail.c_str(),
                o.pos.ToString().c_str());
  }
  std::printf("default network: %s\n", cfg->service.default_network.empty()
                                           ? "direct (none set)"
                                           : cfg->service.default_network.c_str());
  const char* lp[] = {"direct", "overlay", "refuse"};
  std::printf("loopback destinations: %s\n", lp[int(cfg->service.loopback)]);
  std::printf("fake address pools: %s, %s\n", cfg->service.fake_ipv4.c_str(),
              cfg->service.fake_ipv6.c_str());
  std::printf("state dir: %s\n", cfg->service.state_dir.c_str());
  std::printf("entries of other kinds skipped: %d\n", cfg->skipped_entries);
  return kExitOk;
}

namespace {

// Connects to the running broker for the config (or --socket / VIA_SOCKET); no start.
Result<BrokerClient> ConnectExisting(const Args& args, std::string* where) {
  std::string socket;
  if (args.Has("--socket")) {
    socket = args.Get("--socket");
  } else if (!args.Has("--config") && std::getenv("VIA_SOCKET") != nullptr) {
    socket = std::getenv("VIA_SOCKET");
  } else {
    auto cfg = LoadConfigOrComplain(args);
    if (!cfg) return Status::Invalid("");
    auto s = SocketFor(args, *cfg);
    if (!s.ok()) return s.status();
    socket = *s;
    *where = " for " + cfg->source;
  }
  *where += " (socket " + socket + ")";
  auto c = BrokerClient::Connect(socket);
  if (!c.ok()) return Status::Error(ECONNREFUSED, "no broker running" + *where);
  if (auto h = c->Hello("direct"); !h.ok()) return h.status();
  return c;
}

int StatusOrStop(int argc, char** argv, bool stop) {
  const char* name = stop ? "stop" : "status";
  auto args =
      ParseArgs(name, argc, argv, {{"--config", true}, {"--socket", true}, {"--help", false}},
                kConfigAlias, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (WantsHelp(*args, stop ? kHelpStop : kHelpStatus)) return kExitOk;
  std::string where;
  auto c = ConnectExisting(*args, &where);
  if (!c.ok()) {
    if (!c.status().message().empty()) Error(c.status().message());
    return c.status().code() == EINVAL ? kExitUsage : kExitFailure;
  }
  if (stop) {
    if (Status s = c->Shutdown(); !s.ok()) {
      Error(s.message());
      return kExitFailure;
    }
    std::printf("broker%s stopped\n", where.c_str());
    return kExitOk;
  }
  auto text = c->StatusText();
  if (!text.ok()) {
    Error(text.status().message());
    return kExitFailure;
  }
  std::fputs(text->c_str(), stdout);
  return kExitOk;
}

}  // namespace

int CmdStatus(int argc, char** argv) { return StatusOrStop(argc, argv, false); }
int CmdStop(int argc, char** argv) { return StatusOrStop(argc, argv, true); }

}  // namespace via::tools
