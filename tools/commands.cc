// via broker, check, status, stop, reload.
#include <arpa/inet.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "broker/broker.h"
#include "broker/process_info.h"
#include "broker/selector.h"
#include "common/json.h"
#include "common/paths.h"
#include "tools/broker_client.h"
#include "tools/cli.h"
#include "tools/command_identity.h"
#include "tools/command_table.h"
#include "tools/tor_control.h"

namespace via::tools {

namespace {

const std::map<std::string, std::string> kConfigAlias = {{"-c", "--config"}, {"-h", "--help"}};

}  // namespace

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
  if (PrintHelpIfAsked(*args, "broker")) return kExitOk;
  if (HasOperands(*args, "broker")) return kExitUsage;
  if (args->Has("--ensure") && !args->Has("--config")) {
    const char* env = std::getenv("VIA_CONFIG");
    if ((env == nullptr || *env == 0) && !config::FindConfig().ok()) {
      // The shim treats this as "nothing to enforce" when nothing asked for an overlay.
      Error(config::FindConfig().status().message());
      return kExitNoConfig;
    }
  }
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
    if (Status s = SyncBrokerConfig(*cfg, *socket); !s.ok()) {
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

namespace {

// `via check --to HOST:PORT -- CMD`: the way to one destination for a process whose own network
// is `network`, and why (the route that decides, or none). HOST:PORT, [V6]:PORT.
void ExplainDestination(const std::string& dest, const std::vector<config::Route>& routes,
                        const std::string& network) {
  std::string host = dest, port_text;
  if (!dest.empty() && dest[0] == '[' && dest.find("]:") != std::string::npos) {
    host = dest.substr(1, dest.find("]:") - 1);
    port_text = dest.substr(dest.find("]:") + 2);
  } else if (size_t colon = dest.rfind(':');
             colon != std::string::npos && dest.find(':') == colon) {
    host = dest.substr(0, colon);
    port_text = dest.substr(colon + 1);
  }
  char* end = nullptr;
  long port = port_text.empty() ? -1 : std::strtol(port_text.c_str(), &end, 10);
  if (port < 1 || port > 65535 || *end != 0) {
    std::printf("destination %s: not HOST:PORT or [IPV6]:PORT\n", dest.c_str());
    return;
  }
  uint8_t bytes[16];
  const config::Route* r = nullptr;
  bool by_name = false;
  if (inet_pton(AF_INET, host.c_str(), bytes) == 1) {
    r = config::FindAddrRoute(routes, 4, bytes, int(port));
  } else if (inet_pton(AF_INET6, host.c_str(), bytes) == 1) {
    r = config::FindAddrRoute(routes, 6, bytes, int(port));
  } else {
    by_name = true;
    std::transform(host.begin(), host.end(), host.begin(),
                   [](unsigned char ch) { return char(std::tolower(ch)); });
    while (host.size() > 1 && host.back() == '.') host.pop_back();
    r = config::FindNameRoute(routes, host, int(port));
  }
  std::printf("destination %s: ", dest.c_str());
  if (r == nullptr) {
    std::printf("%s\n  because: no route matches; the command's own network\n", network.c_str());
    return;
  }
  const std::string& n = r->network;
  if (n == config::kBlockNetwork) {
    std::printf("blocked (%s)\n",
                by_name ? "the lookup fails: EAI_FAIL" : "the connect fails: ENETUNREACH");
  } else if (n == config::kDirectNetwork) {
    std::printf("direct%s\n", by_name ? " (resolved by the system resolver)" : "");
  } else {
    std::printf("%s\n", n.c_str());
  }
  std::printf("  because: route %s (%s) matches %s\n", r->id.c_str(), r->where().c_str(),
              r->MatchText().c_str());
}

// `via check -- CMD ARGS...`: which network and groups CMD would get if started from here, and
// why. Offline: the process tree is this shell's; an enclosing session is taken from
// VIA_NETWORK.
int ExplainCommand(const Args& args, const config::Config& cfg) {
  auto predicted = PredictCommand(args.rest);
  if (!predicted.ok()) {
    Error("cannot run " + args.rest[0] + ": " + predicted.status().message());
    return kExitUsage;
  }
  broker::ProcessInfo command;
  command.exe = predicted->exe;
  command.argv = predicted->argv;
  command.ok = true;
  std::vector<broker::ProcessInfo> chain{command};
  for (auto& p : broker::Ancestry(getppid())) chain.push_back(std::move(p));
  broker::SelectRequest req;
  req.chain = chain;
  // Inside a via session the broker knows the session; offline, VIA_NETWORK stands for it.
  broker::SessionInfo session;
  const char* env_network = std::getenv("VIA_NETWORK");
  if (env_network != nullptr && *env_network != 0 && chain.size() > 1) {
    const config::Overlay* o = cfg.Find(env_network);
    session.network = o != nullptr ? o->id : std::string(env_network);
    session.token = "VIA_NETWORK";
    session.root = chain[1].pid;
    session.root_start = chain[1].start;
    req.session_rooted_at = [&](const broker::ProcessInfo& p) -> const broker::SessionInfo* {
      return p.pid == session.root && p.start == session.root_start ? &session : nullptr;
    };
  }
  if (args.Has("--direct") || args.Has("--network")) {
    req.has_claim = true;
    req.claim = args.Has("--direct") ? "direct" : args.Get("--network");
    req.force_explicit = true;
  }
  req.selected_by_parent = true;  // as `via run` from this shell would select
  broker::Selection sel = broker::Select(cfg, req);
  std::string line;
  for (const auto& a : args.rest) line += (line.empty() ? "" : " ") + a;
  std::printf("command: %s\n", line.c_str());
  std::printf("  executable: %s\n", predicted->exe.c_str());
  if (!predicted->note.empty()) std::printf("  (%s)\n", predicted->note.c_str());
  std::string groups;
  for (const auto& g : sel.groups) groups += (groups.empty() ? "" : ", ") + g;
  std::printf("groups: %s\n", groups.empty() ? "none" : groups.c_str());
  for (const auto& r : sel.group_reasons) std::printf("  %s\n", r.c_str());
  if (!sel.error.ok()) {
    std::printf("network: DENIED\n  %s\n", sel.error.message().c_str());
    return kExitFailure;
  }
  std::printf("network: %s\n  because: %s\n", sel.network.c_str(), sel.origin.c_str());
  if (!sel.inherited.empty() && sel.origin != sel.inherited_origin) {
    std::printf("  (it would otherwise inherit %s: %s)\n", sel.inherited.c_str(),
                sel.inherited_origin.c_str());
  }
  // Where the destinations asked about (--to) go: the routes first (--route, the config's, the
  // built-ins), then the command's network.
  if (auto to = args.all.find("--to"); to != args.all.end()) {
    std::vector<config::Route> run_routes;
    if (auto rs = args.all.find("--route"); rs != args.all.end()) {
      for (const std::string& spec : rs->second) {
        auto r = config::ParseRouteSpec(spec, cfg);
        if (!r.ok()) {
          Error("check: " + r.status().message());
          return kExitUsage;
        }
        run_routes.push_back(std::move(*r));
      }
    }
    const std::vector<config::Route> routes = sel.network == config::kNoNetwork
                                                  ? std::vector<config::Route>{}
                                                  : config::EffectiveRoutes(cfg, run_routes);
    for (const std::string& dest : to->second) ExplainDestination(dest, routes, sel.network);
  }
  // What an explicit selection would meet, for every network.
  if (!req.has_claim) {
    std::vector<std::string> all{"direct"};
    for (const auto& o : cfg.overlays) all.push_back(o.id);
    std::printf("explicit selection by this command for its children (VIA_NETWORK, via run):\n");
    for (const auto& n : all) {
      config::PolicyVerdict v = config::CheckSelect(cfg.policies, sel.groups, n);
      std::printf(
          "  %-16s %s%s\n", n.c_str(), v.allowed ? "allowed" : "denied",
          v.policy != nullptr
              ? (" by security.policy " + v.policy->id + " (" + v.policy->where() + ")").c_str()
              : "");
    }
  }
  return kExitOk;
}

}  // namespace

namespace {

const char* LoopbackName(config::LoopbackPolicy p) {
  const char* names[] = {"direct", "overlay", "refuse"};
  return names[int(p)];
}

const char* ListenName(config::ListenPolicy p) {
  const char* names[] = {"overlay", "local", "refuse"};
  return names[int(p)];
}

// One line of `via check` about overlay `o`: its settings as configured.
std::string OverlayDetail(const config::Overlay& o) {
  std::string detail;
  switch (o.kind) {
    case config::OverlayKind::kSocks5:
      detail = o.socks5.host + ":" + std::to_string(o.socks5.port) +
               "  isolate_streams=" + (o.socks5.isolate_streams ? "on" : "off");
      if (o.socks5.isolation != config::Isolation::kNone && !o.socks5.isolate_streams) {
        detail += std::string("  isolation=") + config::IsolationName(o.socks5.isolation);
      }
      if (o.socks5.control_port != 0) {
        detail += "  control_port=" + std::to_string(o.socks5.control_port);
      }
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
  return detail;
}

// `via check` without a command: what the config says, entry by entry.
void PrintConfig(const config::Config& cfg) {
  std::printf("config %s: OK\n", cfg.source.c_str());
  for (const auto& f : cfg.files) std::printf("  read %s\n", f.c_str());
  std::printf("overlays (%zu):\n", cfg.overlays.size());
  for (const auto& o : cfg.overlays) {
    std::printf("  %s  %s  %s  (%s:%d)\n", o.id.c_str(), o.kind_name.c_str(), OverlayDetail(o).c_str(),
                o.pos.file.c_str(), o.pos.line);
  }
  std::printf("default network: %s\n", cfg.service.default_network.empty()
                                           ? "direct (none set)"
                                           : cfg.service.default_network.c_str());
  std::printf("loopback destinations: %s\n", LoopbackName(cfg.service.loopback));
  std::printf("non-loopback listen(): %s\n", ListenName(cfg.service.listen));
  std::printf("fake address pools: %s, %s\n", cfg.service.fake_ipv4.c_str(),
              cfg.service.fake_ipv6.c_str());
  std::printf("state dir: %s\n", cfg.service.state_dir.c_str());
  std::printf("strict mode for via run: %s\n", cfg.service.strict ? "on" : "off (--strict)");
  std::printf("program rules (%zu):\n", cfg.programs.size());
  for (const auto& r : cfg.programs) {
    std::string argv_text;
    for (const auto& a : r.argv) argv_text += (argv_text.empty() ? "" : " ") + a;
    std::string groups;
    for (const auto& g : r.groups) groups += (groups.empty() ? "" : ",") + g;
    std::printf("  %s  exe=%s%s%s  network=%s  groups=%s%s  (%s)\n", r.id.c_str(),
                r.exe.empty() ? "*" : r.exe.c_str(),
                argv_text.empty() ? "" : "  argv=", argv_text.c_str(),
                r.network.empty() ? "-" : r.network.c_str(), groups.empty() ? "-" : groups.c_str(),
                r.strict ? "  strict" : "", r.where().c_str());
  }
  std::printf("network.select policies (%zu):\n", cfg.policies.size());
  for (const auto& p : cfg.policies) {
    std::string res, groups;
    for (const auto& r : p.resources) res += (res.empty() ? "" : ",") + r;
    for (const auto& g : p.groups) groups += (groups.empty() ? "" : ",") + g;
    std::printf("  %s  %s  resources=%s  groups=%s  (%s)\n", p.id.c_str(),
                p.effect == config::PolicyEffect::kDeny ? "deny" : "allow", res.c_str(),
                groups.empty() ? "(all)" : groups.c_str(), p.where().c_str());
  }
  const std::vector<config::Route> routes = config::EffectiveRoutes(cfg, {});
  if (!routes.empty()) std::printf("routes (first match wins):\n");
  for (const auto& r : routes) {
    std::printf("  %-24s -> %-12s %s (%s)\n", r.MatchText().c_str(), r.network.c_str(),
                r.id.c_str(), r.where().c_str());
  }
  std::printf("entries of other kinds skipped: %d\n", cfg.skipped_entries);
}

// An overlay's settings as JSON members (docs/json.md).
void OverlaySettingsJson(const config::Overlay& o, Json& j) {
  switch (o.kind) {
    case config::OverlayKind::kSocks5:
      j.Key("host").String(o.socks5.host).Key("port").Int(o.socks5.port);
      j.Key("isolate_streams").Bool(o.socks5.isolate_streams);
      j.Key("isolation").String(config::IsolationName(o.socks5.isolation));
      j.Key("control_port").Int(o.socks5.control_port);
      j.Key("auth").Bool(!o.socks5.username.empty());
      j.Key("connect_timeout_ms").Int(o.socks5.connect_timeout_ms);
      break;
    case config::OverlayKind::kTailscale:
      j.Key("localapi_socket").StringOrNull(o.tailscale.localapi_socket);
      j.Key("hostname").String(o.tailscale.hostname.empty() ? "wippy" : o.tailscale.hostname);
      j.Key("ephemeral").Bool(o.tailscale.ephemeral);
      j.Key("control_url").StringOrNull(o.tailscale.control_url);
      break;
    case config::OverlayKind::kI2p:
      j.Key("host").String(o.i2p.host).Key("port").Int(o.i2p.port);
      j.Key("session_name").String(o.i2p.session_name);
      j.Key("destination")
          .String(o.i2p.destination == config::I2pDestination::kPersistent ? "persistent"
                                                                           : "ephemeral");
      j.Key("options").BeginObject();
      for (const auto& [k, v] : o.i2p.options) j.Key(k).String(v);
      j.EndObject();
      break;
  }
}

// `via check --json`: what PrintConfig lists, as one JSON object (docs/json.md).
void PrintConfigJson(const config::Config& cfg) {
  Json j;
  j.BeginObject();
  j.Key("config").String(cfg.source).Key("files").Strings(cfg.files);
  j.Key("overlays").BeginArray();
  for (const auto& o : cfg.overlays) {
    j.BeginObject().Key("id").String(o.id).Key("kind").String(o.kind_name);
    j.Key("where").String(o.pos.file + ":" + std::to_string(o.pos.line));
    j.Key("settings").BeginObject();
    OverlaySettingsJson(o, j);
    j.EndObject().EndObject();
  }
  j.EndArray();
  j.Key("default_network").StringOrNull(cfg.service.default_network);
  j.Key("loopback").String(LoopbackName(cfg.service.loopback));
  j.Key("listen").String(ListenName(cfg.service.listen));
  j.Key("fake_ipv4").String(cfg.service.fake_ipv4).Key("fake_ipv6").String(cfg.service.fake_ipv6);
  j.Key("state_dir").String(cfg.service.state_dir);
  j.Key("strict").Bool(cfg.service.strict);
  j.Key("programs").BeginArray();
  for (const auto& r : cfg.programs) {
    j.BeginObject().Key("id").String(r.id).Key("exe").StringOrNull(r.exe);
    j.Key("argv").Strings(r.argv).Key("network").StringOrNull(r.network);
    j.Key("groups").Strings(r.groups).Key("strict").Bool(r.strict);
    j.Key("where").String(r.where()).EndObject();
  }
  j.EndArray();
  j.Key("policies").BeginArray();
  for (const auto& p : cfg.policies) {
    j.BeginObject().Key("id").String(p.id);
    j.Key("effect").String(p.effect == config::PolicyEffect::kDeny ? "deny" : "allow");
    j.Key("resources").Strings(p.resources).Key("groups").Strings(p.groups);
    j.Key("where").String(p.where()).EndObject();
  }
  j.EndArray();
  j.Key("routes").BeginArray();  // in force, first match wins: the config's, then built-ins
  for (const auto& r : config::EffectiveRoutes(cfg, {})) {
    j.BeginObject().Key("id").String(r.id);
    j.Key("name").StringOrNull(r.has_cidr ? "" : r.name);
    j.Key("cidr").StringOrNull(r.has_cidr ? r.cidr.ToString() : "");
    j.Key("port").Int(r.port).Key("network").String(r.network);
    j.Key("builtin").Bool(r.line == 0).Key("where").String(r.where()).EndObject();
  }
  j.EndArray();
  j.Key("skipped_entries").Int(cfg.skipped_entries);
  j.EndObject();
  std::printf("%s\n", j.str().c_str());
}

}  // namespace

int CmdCheck(int argc, char** argv) {
  auto args = ParseArgs("check", argc, argv,
                        {{"--config", true},
                         {"--network", true},
                         {"--direct", false},
                         {"--json", false},
                         {"--to", true},
                         {"--route", true},
                         {"--help", false}},
                        {{"-c", "--config"}, {"-n", "--network"}, {"-h", "--help"}}, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (PrintHelpIfAsked(*args, "check")) return kExitOk;
  if (args->rest.empty() && (args->Has("--network") || args->Has("--direct"))) {
    Error("check: --network/--direct need a command: via check --network ID -- COMMAND [ARGS...]");
    return kExitUsage;
  }
  if (args->rest.empty() && (args->Has("--to") || args->Has("--route"))) {
    Error("check: --to/--route need a command: via check --to HOST:PORT -- COMMAND [ARGS...]");
    return kExitUsage;
  }
  if (!args->rest.empty() && args->Has("--json")) {
    Error(
        "check: --json lists the configuration; explaining a COMMAND has no JSON form yet "
        "(drop --json, or the COMMAND)");
    return kExitUsage;
  }
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;
  if (!args->rest.empty()) return ExplainCommand(*args, *cfg);
  if (args->Has("--json")) {
    PrintConfigJson(*cfg);
    return kExitOk;
  }
  PrintConfig(*cfg);
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
  if (Status h = c->HelloControl(); !h.ok()) return h;
  return c;
}

int StatusOrStop(int argc, char** argv, bool stop) {
  const char* name = stop ? "stop" : "status";
  std::map<std::string, bool> spec{{"--config", true}, {"--socket", true}, {"--help", false}};
  if (!stop) spec["--json"] = false;  // `via status --json` (docs/json.md)
  auto args = ParseArgs(name, argc, argv, spec, kConfigAlias, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (PrintHelpIfAsked(*args, name)) return kExitOk;
  if (HasOperands(*args, name)) return kExitUsage;
  std::string where;
  auto c = ConnectExisting(*args, &where);
  if (!c.ok()) {
    if (!c.status().message().empty()) Error(c.status().message());
    return c.status().code() == EINVAL ? kExitUsage : kExitFailure;
  }
  if (stop) {
    // The broker's process, held by a pidfd from before it is asked to stop (its pid cannot be
    // reused while we hold it): "stopped" means the process is gone, not only its socket.
    ucred cred{};
    socklen_t credlen = sizeof cred;
    int pidfd = -1;
    if (getsockopt(c->fd(), SOL_SOCKET, SO_PEERCRED, &cred, &credlen) == 0 && cred.pid > 0) {
      pidfd = int(syscall(SYS_pidfd_open, cred.pid, 0));
    }
    if (Status s = c->Shutdown(); !s.ok()) {
      if (pidfd >= 0) close(pidfd);
      Error(s.message());
      return kExitFailure;
    }
    // Wait until it is gone (it closes every connection on exit, after its overlays
    // are down: an ephemeral Tailscale node logs out, up to 10 s), so that a `via run` right
    // after this starts a new broker instead of reaching the old one.
    pollfd p{c->fd(), POLLIN, 0};
    int waited = 0;
    for (; waited < 15000; waited += 50) {
      char byte;
      if (poll(&p, 1, 50) == 1 && recv(c->fd(), &byte, 1, MSG_DONTWAIT) <= 0) break;
    }
    if (pidfd >= 0) {
      // Its connections are closed just before it exits; the exit itself follows.
      pollfd q{pidfd, POLLIN, 0};
      poll(&q, 1, waited < 15000 ? 15000 - waited : 0);
      close(pidfd);
    }
    std::printf("broker%s stopped\n", where.c_str());
    return kExitOk;
  }
  auto text = args->Has("--json") ? c->StatusJson() : c->StatusText();
  if (!text.ok()) {
    Error(text.status().message());
    return kExitFailure;
  }
  std::fputs(text->c_str(), stdout);
  if (!text->empty() && text->back() != '\n') std::fputc('\n', stdout);
  return kExitOk;
}

}  // namespace

int CmdReload(int argc, char** argv) {
  auto args =
      ParseArgs("reload", argc, argv, {{"--config", true}, {"--socket", true}, {"--help", false}},
                kConfigAlias, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (PrintHelpIfAsked(*args, "reload")) return kExitOk;
  if (HasOperands(*args, "reload")) return kExitUsage;
  // The configuration is not loaded here: a broken one must still reach the broker, which
  // rejects it with its error and keeps running the previous one.
  std::string socket, where;
  if (args->Has("--socket")) {
    socket = args->Get("--socket");
  } else if (!args->Has("--config") && std::getenv("VIA_SOCKET") != nullptr) {
    socket = std::getenv("VIA_SOCKET");
  } else {
    std::string path = args->Get("--config");
    if (path.empty()) {
      auto found = config::FindConfig();
      if (!found.ok()) {
        Error(found.status().message());
        return kExitUsage;
      }
      path = *found;
    }
    char real[PATH_MAX];
    if (::realpath(path.c_str(), real) == nullptr) {
      Error(path + ": " + std::strerror(errno));
      return kExitUsage;
    }
    auto s = BrokerSocketPath(real);
    if (!s.ok()) {
      Error(s.status().message());
      return kExitFailure;
    }
    socket = *s;
    where = std::string(" for ") + real;
  }
  where += " (socket " + socket + ")";
  auto c = BrokerClient::Connect(socket);
  if (!c.ok()) {
    Error("no broker running" + where);
    return kExitFailure;
  }
  if (Status h = c->HelloControl(); !h.ok()) {
    Error(h.message());
    return kExitFailure;
  }
  if (Status s = c->Reload(); !s.ok()) {
    Error("reload rejected, the broker" + where +
          " keeps its previous configuration: " + s.message());
    return kExitFailure;
  }
  std::printf("broker%s reloaded its configuration (fingerprint %s)\n", where.c_str(),
              c->fingerprint().c_str());
  return kExitOk;
}

// `via newnym`: the broker's overlays start new credentials for later connections (NEWNYM), and
// each SOCKS5 entry with a control_port gets Tor's SIGNAL NEWNYM.
int CmdNewnym(int argc, char** argv) {
  auto args =
      ParseArgs("newnym", argc, argv, {{"--config", true}, {"--network", true}, {"--help", false}},
                {{"-c", "--config"}, {"-n", "--network"}, {"-h", "--help"}}, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (PrintHelpIfAsked(*args, "newnym")) return kExitOk;
  if (HasOperands(*args, "newnym")) return kExitUsage;
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;
  std::string only;
  if (args->Has("--network")) {
    const config::Overlay* o = cfg->Find(args->Get("--network"));
    if (o == nullptr) {
      Error("unknown overlay \"" + args->Get("--network") + "\" in " + cfg->source);
      return kExitUsage;
    }
    only = o->id;
  }
  bool failed = false;
  std::string where;
  auto c = ConnectExisting(*args, &where);
  if (c.ok()) {
    uint32_t renewed = 0;
    auto text = c->Newnym(only, &renewed);
    if (!text.ok()) {
      Error(text.status().message());
      failed = true;
    } else {
      std::fputs(text->c_str(), stdout);
    }
  } else {
    std::printf(
        "no broker running%s: nothing to renew in via (its next start draws new "
        "credentials)\n",
        where.c_str());
  }
  for (const config::Overlay& o : cfg->overlays) {
    if (o.kind != config::OverlayKind::kSocks5 || o.socks5.control_port == 0) continue;
    if (!only.empty() && o.id != only) continue;
    auto r =
        TorControlSignal(o.socks5.host, o.socks5.control_port, o.socks5.control_password, "NEWNYM");
    if (r.ok()) {
      std::printf("%s: Tor control %s:%d: SIGNAL NEWNYM: %s\n", o.id.c_str(), o.socks5.host.c_str(),
                  o.socks5.control_port, r->c_str());
    } else {
      Error(o.id + ": " + r.status().message());
      failed = true;
    }
  }
  return failed ? kExitFailure : kExitOk;
}

int CmdStatus(int argc, char** argv) { return StatusOrStop(argc, argv, false); }
int CmdStop(int argc, char** argv) { return StatusOrStop(argc, argv, true); }

}  // namespace via::tools
