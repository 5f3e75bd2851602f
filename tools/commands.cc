// via run, broker, check, status, stop.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
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
    size_t eq = kv.find('=');
    std::string key = kv.substr(0, eq);
    if (key == "LD_PRELOAD") {
      preload = eq == std::string::npos ? "" : kv.substr(eq + 1);
      continue;
    }
    if (vars.count(key)) continue;
    env.push_back(kv);
  }
  env.push_back("LD_PRELOAD=" + PreloadWithShim(preload, shim));
  for (const auto& [k, v] : vars) env.push_back(k + "=" + v);
  return env;
}

// The pid `via run` forwards SIGTERM/SIGHUP to.
volatile sig_atomic_t g_child = 0;

void ForwardSignal(int sig) {
  if (g_child > 0) kill(pid_t(g_child), sig);
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
      Error("unknown overlay \"" + network + "\" in " + cfg->source +
            " (known: " + KnownOverlays(*cfg) + ")" +
            (origin == "--network" ? "" : "; it was selected by " + origin));
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
    Error(s.message() + " (nothing was run)");
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
    // ENOENT: the running broker was started from an older version of the config.
    Error("broker: " + token.status().message() +
          (token.status().code() == ENOENT
               ? "; the running broker may predate a change to " + cfg->source +
                     " (restart it with: via stop -c " + cfg->source + ")"
               : ""));
    return token.status().code() == ENOENT ? kExitUsage : kExitFailure;
  }

  std::map<std::string, std::string> vars = {{"VIA_SOCKET", *socket},
                                             {"VIA_SESSION", *token},
                                             {"VIA_NETWORK", network},
                                             {"VIA_CONFIG", cfg->source}};
  if (args->Has("--quiet")) vars["VIA_QUIET"] = "1";
  if (cfg->service.unrouted_exec_allowed) vars["VIA_UNROUTED_EXEC"] = "allow";
  std::vector<std::string> env = ChildEnv(vars, ShimPath());
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> child_argv;
  for (auto& a : args->rest) child_argv.push_back(a.data());
  child_argv.push_back(nullptr);

  // The terminal's SIGINT/SIGQUIT reach the child directly (same process group); we only wait
  // for it. SIGTERM/SIGHUP sent to us are passed on. They stay blocked across fork so that the
  // handler never runs before the child's pid is known.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  struct sigaction old_int {
  }, old_quit{};
  sigaction(SIGINT, &ignore, &old_int);
  sigaction(SIGQUIT, &ignore, &old_quit);
  sigset_t forwarded, old_mask;
  sigemptyset(&forwarded);
  sigaddset(&forwarded, SIGTERM);
  sigaddset(&forwarded, SIGHUP);
  sigprocmask(SIG_BLOCK, &forwarded, &old_mask);
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    Error(std::string("fork: ") + std::strerror(errno));
    return kExitFailure;
  }
  if (pid == 0) {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGQUIT, &old_quit, nullptr);
    sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    environ = envp.data();
    execvp(child_argv[0], child_argv.data());
    int err = errno;
    std::fprintf(stderr, "via: cannot run %s: %s\n", child_argv[0], std::strerror(err));
    _exit(err == ENOENT ? 127 : 126);
  }
  g_child = pid;
  struct sigaction forward {};
  forward.sa_handler = ForwardSignal;
  forward.sa_flags = SA_RESTART;
  sigemptyset(&forward.sa_mask);
  sigaction(SIGTERM, &forward, nullptr);
  sigaction(SIGHUP, &forward, nullptr);
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  // `client` (the session) closes when we return: the broker may now go idle.
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
  if (HasOperands(*args, "broker")) return kExitUsage;
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;
  auto socket = SocketFor(*args, *cfg);
  if (!socket.ok()) {
    Error(socket.status().message());
    return kExitFailure;
  }
  int idle_timeout_s = -1;
  if (args->Has("--idle-timeout")) {
    const std::string v = args->Get("--idle-timeout");
    char* end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != 0 || n < 0 || n > 86400 * 365) {
      Error("broker: --idle-timeout takes a number of seconds, not \"" + v +
            "\"; try 'via broker --help'");
      return kExitUsage;
    }
    idle_timeout_s = int(n);
  }
  if (args->Has("--ensure") || args->Has("--daemon")) {
    DaemonOptions daemon;
    daemon.log_path = args->Get("--log");
    daemon.idle_timeout_s = idle_timeout_s;
    if (Status s = StartBrokerHere(*cfg, *socket, daemon); !s.ok()) {
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
  opts.stay = idle_timeout_s < 0;
  opts.idle_timeout_s = idle_timeout_s;
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
  if (HasOperands(*args, "check")) return kExitUsage;
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
                 "  isolate_streams=" + (o.socks5.isolate_streams ? "on" : "off");
        if (!o.socks5.username.empty()) detail += "  auth=username/password";
        if (o.socks5.connect_timeout_ms != config::Socks5Settings{}.connect_timeout_ms) {
          detail += "  connect_timeout=" + std::to_string(o.socks5.connect_timeout_ms) + "ms";
        }
        break;
      case config::OverlayKind::kTailscale:
        if (!o.tailscale.localapi_socket.empty()) {
          detail = "attached to tailscaled at " + o.tailscale.localapi_socket;
        } else {
          detail =
              "hostname=" + (o.tailscale.hostname.empty() ? "wippy" : o.tailscale.hostname) +
              (o.tailscale.ephemeral ? "  ephemeral" : "") +
              (o.tailscale.control_url.empty() ? "" : "  control_url=" + o.tailscale.control_url);
        }
        break;
      case config::OverlayKind::kI2p:
        detail =
            o.i2p.host + ":" + std::to_string(o.i2p.port) + "  session_name=" + o.i2p.session_name +
            "  destination=" +
            (o.i2p.destination == config::I2pDestination::kPersistent ? "persistent" : "ephemeral");
        for (const auto& [k, v] : o.i2p.options) detail += "  " + k + "=" + v;
        break;
    }
    std::printf("  %s  %s  %s  (%s:%d)\n", o.id.c_str(), o.kind_name.c_str(), detail.c_str(),
                o.pos.file.c_str(), o.pos.line);
  }
  std::printf("default network: %s\n", cfg->service.default_network.empty()
                                           ? "direct (none set)"
                                           : cfg->service.default_network.c_str());
  const char* lp[] = {"direct", "overlay", "refuse"};
  std::printf("loopback destinations: %s\n", lp[int(cfg->service.loopback)]);
  const char* lsp[] = {"overlay", "local", "refuse"};
  std::printf("non-loopback listen(): %s\n", lsp[int(cfg->service.listen)]);
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
  if (HasOperands(*args, name)) return kExitUsage;
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
    // Wait until it is gone (it closes every connection on exit), so that a `via run` right
    // after this starts a new broker instead of reaching the old one.
    pollfd p{c->fd(), POLLIN, 0};
    for (int waited = 0; waited < 5000; waited += 50) {
      char byte;
      if (poll(&p, 1, 50) == 1 && recv(c->fd(), &byte, 1, MSG_DONTWAIT) <= 0) break;
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
  if (!text->empty() && text->back() != '\n') std::fputc('\n', stdout);
  return kExitOk;
}

}  // namespace

int CmdStatus(int argc, char** argv) { return StatusOrStop(argc, argv, false); }
int CmdStop(int argc, char** argv) { return StatusOrStop(argc, argv, true); }

}  // namespace via::tools
