// via run: parse, select the network, reach the broker and open a session, build the child's
// environment and command line, then start the command at a gate and wait for it as subreaper.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "broker/process_info.h"
#include "common/paths.h"
#include "tools/broker_client.h"
#include "tools/cli.h"
#include "tools/command_identity.h"
#include "tools/command_table.h"
#include "tools/strict.h"

extern char** environ;

namespace via::tools {

namespace {

// A step either lets `via run` go on (nullopt) or ends it with this exit status.
using Exit = std::optional<int>;

Exit ParseRunArgs(int argc, char** argv, Args* out) {
  auto args = ParseArgs(
      "run", argc, argv,
      {{"--config", true},
       {"--network", true},
       {"--direct", false},
       {"--quiet", false},
       {"--strict", false},
       {"--audit", false},
       {"--no-shim", false},
       {"--argv0", true},
       {"--route", true},
       {"--help", false}},
      {{"-c", "--config"}, {"-n", "--network"}, {"-q", "--quiet"}, {"-h", "--help"}}, true);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (PrintHelpIfAsked(*args, "run")) return kExitOk;
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
  if (args->Has("--strict") && args->Has("--direct")) {
    Error("run: --strict routes through an overlay; it cannot be --direct");
    return kExitUsage;
  }
  *out = std::move(*args);
  return std::nullopt;
}

// The list of overlay ids, for messages.
std::string KnownOverlays(const config::Config& cfg) {
  std::string s;
  for (const auto& o : cfg.overlays) s += (s.empty() ? "" : ", ") + o.id;
  return s.empty() ? "no overlay is configured" : s;
}

// --network/--direct is an explicit selection, checked by the broker against security.policy.
// Without them the broker decides (program rules, the enclosing session, default_network),
// taking an inherited VIA_NETWORK into account. An overlay named either way must exist.
Exit SelectNetwork(const Args& args, const config::Config& cfg, std::string* network,
                   bool* explicit_sel) {
  *explicit_sel = false;
  if (args.Has("--direct")) {
    *network = "direct";
    *explicit_sel = true;
  } else if (args.Has("--network")) {
    *network = args.Get("--network");
    *explicit_sel = true;
  } else if (const char* inherited = std::getenv("VIA_NETWORK"); inherited && *inherited) {
    *network = inherited;
  }
  if (network->empty() || config::IsBuiltinNetwork(*network)) return std::nullopt;
  const config::Overlay* o = cfg.Find(*network);
  if (o == nullptr) {
    Error("unknown overlay \"" + *network + "\" in " + cfg.source +
          " (known: " + KnownOverlays(cfg) + "; or direct, none)" +
          (*explicit_sel ? "" : "; it was selected by VIA_NETWORK (inherited)"));
    return kExitUsage;
  }
  *network = o->id;
  return std::nullopt;
}

// The session `via run` holds with the broker while the command runs.
struct RunSession {
  std::string socket;
  std::optional<BrokerClient> client;
  std::string token;
};

// Starts (or reloads) the broker for `cfg` and connects to it as a control client.
Exit ReachBroker(const Args& args, const config::Config& cfg, RunSession* session) {
  auto socket = SocketFor(args, cfg);
  if (!socket.ok()) {
    Error(socket.status().message());
    return kExitFailure;
  }
  session->socket = *socket;
  if (Status s = EnsureBroker(cfg, *socket); !s.ok()) {
    Error(s.message() + " (nothing was run)");
    return kExitFailure;
  }
  if (Status s = SyncBrokerConfig(cfg, *socket); !s.ok()) {
    Error(s.message() + " (nothing was run)");
    return kExitFailure;
  }
  auto client = BrokerClient::Connect(*socket);
  if (!client.ok()) {
    Error(client.status().message());
    return kExitFailure;
  }
  if (Status h = client->HelloControl(); !h.ok()) {
    Error("broker: " + h.message());
    return kExitFailure;
  }
  session->client.emplace(std::move(*client));
  return std::nullopt;
}

// Opens the session for `command`; `network` becomes the one the broker selected.
Exit OpenRunSession(const PredictedCommand& command, bool explicit_sel, std::string* network,
                    const std::vector<std::string>& routes, RunSession* session) {
  std::string effective;
  auto token = session->client->OpenSession(*network, explicit_sel, {command.exe, command.argv},
                                            &effective, routes);
  if (!token.ok()) {
    // EACCES: security.policy denies the selection (the message names the entry).
    Error(token.status().message() + " (nothing was run)");
    return token.status().code() == ENOENT ? kExitUsage : kExitFailure;
  }
  session->token = *token;
  *network = effective.empty() ? *network : effective;
  return std::nullopt;
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

// What the child executes: its environment and argv, ready for execvp (the pointers refer to
// `env` and to the command's operands).
struct ChildLaunch {
  std::vector<std::string> env;
  std::vector<char*> envp;
  std::vector<char*> argv;
  const char* file = nullptr;  // what execvp runs: argv[0], or the command when --argv0 renames it
  // --strict: the child enters its sandbox (tools/strict.h) over `channel`, mounting `resolv`.
  bool strict = false;
  bool quiet = false;
  bool audit = false;
  bool listeners = false;  // the filter also takes accept and getsockname (strict.h)
  int channel = -1;
  std::string resolv;
  // The configuration's fake-address ranges (port: the prefix length), for a broker whose HELLO
  // does not send them (it does only with a SOCKS5 plan).
  std::vector<wire::Addr> fake_nets;
};

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return stat(a.c_str(), &sa) == 0 && stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// --strict --no-shim: the child's environment without the shim and without the VIA_* variables:
// the filter does all the work (as for static and Go programs).
std::vector<std::string> StrictChildEnv() {
  std::vector<std::string> env;
  const std::string shim = ShimPath();
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    if (kv.rfind("VIA_", 0) == 0) continue;
    if (kv.rfind("LD_PRELOAD=", 0) == 0) {
      std::string kept;
      std::string list = kv.substr(11);
      for (size_t a = 0; a <= list.size();) {
        size_t b = list.find_first_of(": ", a);
        if (b == std::string::npos) b = list.size();
        std::string entry = list.substr(a, b - a);
        if (!entry.empty() && !SameFile(entry, shim)) kept += (kept.empty() ? "" : ":") + entry;
        a = b + 1;
      }
      if (!kept.empty()) env.push_back("LD_PRELOAD=" + kept);
      continue;
    }
    env.push_back(kv);
  }
  return env;
}

// Whether the command runs in strict mode: --strict, or under an overlay `strict: true` in
// network_service or on a via.program rule matching the command.
bool StrictFor(const Args& args, const config::Config& cfg, const PredictedCommand& command,
               const std::string& network) {
  if (args.Has("--strict")) return true;
  if (network == "direct") return false;
  if (cfg.service.strict) return true;
  for (const config::ProgramRule& r : cfg.programs) {
    if (r.strict && config::RuleMatches(r, {command.exe, command.argv})) return true;
  }
  return false;
}

void BuildChild(const Args& args, const config::Config& cfg, const RunSession& session,
                const std::string& network, bool strict, ChildLaunch* child) {
  std::map<std::string, std::string> vars = {{"VIA_SOCKET", session.socket},
                                             {"VIA_SESSION", session.token},
                                             {"VIA_NETWORK", network},
                                             {"VIA_CONFIG", cfg.source}};
  if (args.Has("--quiet")) vars["VIA_QUIET"] = "1";
  if (cfg.service.unrouted_exec_allowed) vars["VIA_UNROUTED_EXEC"] = "allow";
  if (cfg.service.unrouted_exec_strict) vars["VIA_UNROUTED_EXEC"] = "strict";
  child->strict = strict;
  child->quiet = args.Has("--quiet");
  child->audit = args.Has("--audit");
  // Only an I2P or Tailscale overlay serves listeners; without one, strict mode spares every
  // program's accept and getsockname a notification.
  child->listeners = cfg.service.listen == config::ListenPolicy::kOverlay &&
                     std::any_of(cfg.overlays.begin(), cfg.overlays.end(), [](const auto& o) {
                       return o.kind != config::OverlayKind::kSocks5;
                     });
  for (const std::string* cidr : {&cfg.service.fake_ipv4, &cfg.service.fake_ipv6}) {
    if (auto net = strict::ParseCidr(*cidr)) child->fake_nets.push_back(*net);
  }
  // In strict mode too the shim serves dynamic programs (names from its cache, SOCKS5 on a socket
  // the broker made: shim/strict_socket.h); the filter serves the rest, and the namespace holds
  // the guarantee either way.
  child->env =
      child->strict && args.Has("--no-shim") ? StrictChildEnv() : ChildEnv(vars, ShimPath());
  for (auto& e : child->env) child->envp.push_back(e.data());
  child->envp.push_back(nullptr);
  // Under an overlay the command starts through /bin/sh's `exec`, so that the shim's exec guard
  // (shim/hook_exec.cc) judges it as it judges every exec below it: a static, setuid or Go
  // binary run directly by `via run` would otherwise escape the overlay.
  static char kSh[] = "/bin/sh", kDashC[] = "-c", kExec[] = "exec \"$@\"", kName[] = "via";
  if (network != "direct" && !child->strict && access(kSh, X_OK) == 0) {
    child->argv = {kSh, kDashC, kExec, kName};
  }
  for (const auto& a : args.rest) child->argv.push_back(const_cast<char*>(a.data()));
  child->argv.push_back(nullptr);
  child->file = child->argv[0];
  // --argv0 NAME (the shim's exec guard running a program in strict mode for a process that
  // exec'd it: the program keeps the argv[0] it was given).
  if (args.Has("--argv0") && child->strict) {
    child->file = args.rest[0].c_str();
    child->argv[0] = const_cast<char*>(args.values.at("--argv0").c_str());
  }
}

// The pid `via run` forwards SIGTERM/SIGHUP to.
volatile sig_atomic_t g_child = 0;

void ForwardSignal(int sig) {
  if (g_child > 0) kill(pid_t(g_child), sig);
}

// The signal dispositions and mask `via run` had, restored in the child.
struct SavedSignals {
  struct sigaction old_int {};
  struct sigaction old_quit {};
  sigset_t old_mask{};
};

// The terminal's SIGINT/SIGQUIT reach the child directly (same process group); we only wait
// for it. SIGTERM/SIGHUP sent to us are passed on. They stay blocked across fork so that the
// handler never runs before the child's pid is known. Orphans of the command's tree are
// re-parented to us, not to init: they stay inside the session's tree, where the broker can see
// where they came from.
void PrepareSignalsAndSubreaper(SavedSignals* saved) {
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGINT, &ignore, &saved->old_int);
  sigaction(SIGQUIT, &ignore, &saved->old_quit);
  sigset_t forwarded;
  sigemptyset(&forwarded);
  sigaddset(&forwarded, SIGTERM);
  sigaddset(&forwarded, SIGHUP);
  sigprocmask(SIG_BLOCK, &forwarded, &saved->old_mask);
  prctl(PR_SET_CHILD_SUBREAPER, 1);
}

// Passes SIGTERM/SIGHUP on to `pid` from now on, and unblocks them.
void ForwardSignalsTo(pid_t pid, const SavedSignals& saved) {
  g_child = pid;
  struct sigaction forward {};
  forward.sa_handler = ForwardSignal;
  forward.sa_flags = SA_RESTART;
  sigemptyset(&forward.sa_mask);
  sigaction(SIGTERM, &forward, nullptr);
  sigaction(SIGHUP, &forward, nullptr);
  sigprocmask(SIG_SETMASK, &saved.old_mask, nullptr);
}

// In the child: waits at the gate until the broker knows it as the session's command, then
// executes it. Never returns.
[[noreturn]] void ExecAtGate(int gate_read, const ChildLaunch& child, const SavedSignals& saved) {
  char go = 0;
  ssize_t got;
  do {
    got = read(gate_read, &go, 1);
  } while (got < 0 && errno == EINTR);
  if (got != 1) _exit(126);  // via run failed to register us: never run unregistered
  close(gate_read);
  if (child.strict &&
      !strict::EnterSandbox(child.channel, child.resolv, child.audit, child.listeners)) {
    _exit(126);  // via run says why; never run unprotected
  }
  sigaction(SIGINT, &saved.old_int, nullptr);
  sigaction(SIGQUIT, &saved.old_quit, nullptr);
  sigprocmask(SIG_SETMASK, &saved.old_mask, nullptr);
  environ = const_cast<char**>(child.envp.data());
  execvp(child.file, child.argv.data());
  int err = errno;
  std::fprintf(stderr, "via: cannot run %s: %s\n", child.file, std::strerror(err));
  _exit(err == ENOENT ? 127 : 126);
}

// Forks the child, registers it with the broker as the session's command and opens its gate.
Exit SpawnRegistered(const ChildLaunch& child, const SavedSignals& saved, RunSession* session,
                     pid_t* pid) {
  int gate[2];
  if (pipe2(gate, O_CLOEXEC) != 0) {
    Error(std::string("pipe: ") + std::strerror(errno));
    return kExitFailure;
  }
  std::fflush(nullptr);
  *pid = fork();
  if (*pid < 0) {
    Error(std::string("fork: ") + std::strerror(errno));
    return kExitFailure;
  }
  if (*pid == 0) {
    close(gate[1]);
    ExecAtGate(gate[0], child, saved);
  }
  close(gate[0]);
  const uint32_t mode =
      child.strict ? wire::kFlagSessionStrict | (child.audit ? wire::kFlagSessionAudit : 0) : 0;
  if (Status reg = session->client->SessionChild(session->token, *pid, mode); !reg.ok()) {
    close(gate[1]);
    kill(*pid, SIGKILL);
    while (waitpid(*pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    Error("broker: " + reg.message() + " (nothing was run)");
    return kExitFailure;
  }
  (void)!write(gate[1], "1", 1);
  close(gate[1]);
  return std::nullopt;
}

// Reaps adopted orphans as they exit; returns the wait status of the command itself.
int WaitAsSubreaper(pid_t pid) {
  int status = 0;
  for (;;) {
    int st = 0;
    pid_t r = waitpid(-1, &st, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;  // ECHILD: cannot happen before the command exited
    if (r == pid) {
      status = st;
      break;
    }
  }
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  return status;
}

// Processes of the session still running (re-parented to us) carry it on after we exit: the
// broker keeps the session for them until they are gone. A failure here only means they get
// EACCES later (fail closed), so it is not reported.
void HandOverSession(RunSession* session) {
  if (std::vector<pid_t> left = broker::ChildrenOf(getpid()); !left.empty()) {
    (void)session->client->SessionDetach(session->token, left);
  }
}

// --strict: the channel to the child (its end in child->channel) and the resolv.conf it mounts.
Exit PrepareStrict(ChildLaunch* child, UniqueFd* channel) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    Error(std::string("socketpair: ") + std::strerror(errno));
    return kExitFailure;
  }
  channel->reset(sv[0]);
  child->channel = sv[1];
  auto dir = RuntimeDir();
  if (!dir.ok()) {
    Error(dir.status().message());
    return kExitFailure;
  }
  child->resolv = strict::WriteResolvConf(*dir);
  if (child->resolv.empty()) return kExitFailure;
  return std::nullopt;
}

// --strict: serves the command's sandbox until it exits; its wait status, or -1 when the
// sandbox could not be set up (the command is then ended before it ran).
int SuperviseStrict(int channel, pid_t pid, const ChildLaunch& child, const RunSession& session) {
  int status = strict::Supervise(channel, pid, session.socket, session.token, child.quiet,
                                 child.audit, child.listeners, child.fake_nets);
  unlink(child.resolv.c_str());
  if (status < 0) {
    kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  return status;
}

// The command's own status (128+N if it died of signal N).
int ExitStatusOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return kExitFailure;
}

}  // namespace

int CmdRun(int argc, char** argv) {
  Args args;
  if (Exit e = ParseRunArgs(argc, argv, &args)) return *e;
  auto cfg = LoadConfigOrComplain(args);
  if (!cfg) return kExitUsage;
  std::string network;
  bool explicit_sel = false;
  if (Exit e = SelectNetwork(args, *cfg, &network, &explicit_sel)) return *e;
  auto predicted = PredictCommand(args.rest);
  if (!predicted.ok()) {
    Error("cannot run " + args.rest[0] + ": " + predicted.status().message());
    return predicted.status().code() == ENOENT ? 127 : 126;
  }
  RunSession session;
  if (Exit e = ReachBroker(args, *cfg, &session)) return *e;
  std::vector<std::string> routes;
  if (auto it = args.all.find("--route"); it != args.all.end()) routes = it->second;
  for (const std::string& r : routes) {
    // Checked here for a quick usage error; the broker checks again (with security.policy).
    if (auto parsed = config::ParseRouteSpec(r, *cfg); !parsed.ok()) {
      Error("run: " + parsed.status().message());
      return kExitUsage;
    }
  }
  if (Exit e = OpenRunSession(*predicted, explicit_sel, &network, routes, &session)) return *e;
  ChildLaunch child;
  BuildChild(args, *cfg, session, network, StrictFor(args, *cfg, *predicted, network), &child);
  if (child.audit && !child.strict) {
    Error(
        "run: --audit reports what strict mode contained; use it with --strict (nothing was run)");
    return kExitUsage;
  }
  if (args.Has("--no-shim") && !child.strict) {
    Error("run: --no-shim applies to strict mode only; use it with --strict (nothing was run)");
    return kExitUsage;
  }
  UniqueFd channel;
  if (child.strict) {
    if (Exit e = PrepareStrict(&child, &channel)) return *e;
  }
  SavedSignals saved;
  PrepareSignalsAndSubreaper(&saved);
  pid_t pid = -1;
  Exit spawned = SpawnRegistered(child, saved, &session, &pid);
  if (child.strict) close(child.channel);
  if (spawned) return *spawned;
  ForwardSignalsTo(pid, saved);
  int status =
      child.strict ? SuperviseStrict(channel.get(), pid, child, session) : WaitAsSubreaper(pid);
  if (child.strict && status < 0) return kExitFailure;
  HandOverSession(&session);
  // `session.client` (the session) closes when we return: the broker may now go idle.
  return ExitStatusOf(status);
}

}  // namespace via::tools
