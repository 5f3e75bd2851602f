// The `via` command table: each command's name, handler, summary and help text. Dispatch,
// `via --help`'s command list and `via CMD --help` all come from it.
#include "tools/command_table.h"

#include <cstdio>

#include "tools/cli.h"
#include "tools/install_user.h"

namespace via::tools {

namespace {

const char* const kMainHelpHead =
    R"HELP(via - route a program's network traffic through an overlay network

Usage: via COMMAND [OPTIONS]

Commands:
)HELP";

const char* const kMainHelpTail =
    R"HELP(
Options:
  -h, --help     show this help
  --version      print the version

The configuration is the Wippy registry format (docs/configuration.md). Without -c it is
looked up in $VIA_CONFIG, ./_index.yaml, ./via.yaml, $XDG_CONFIG_HOME/via/, /etc/via/.

Examples:
  via check -c via.yaml
  via run -c via.yaml --network app:tor -- curl https://example.org/
  LD_PRELOAD=/usr/local/lib/via/libvia.so VIA_NETWORK=app:tor wget -qO- http://example.org/
)HELP";

const char* const kHelpRun =
    R"HELP(Usage: via run [-c CONFIG] [--network NS:NAME | --direct] [--route SPEC]... [-q] [--]
               COMMAND [ARGS...]
       via run [-c CONFIG] [--network NS:NAME] --strict [--audit] [--no-shim] [--]
               COMMAND [ARGS...]

Runs COMMAND with libvia.so preloaded, so that its TCP connects and name lookups (and those of
every child it starts) go through the selected overlay. Names are never looked up locally: the
program sees a fake address and the overlay receives the name. Nothing ever falls back to a
direct connection: if the overlay cannot be used, the connect fails. Under a SOCKS5
overlay the program's own thread runs the SOCKS5 handshake, with the proxy and credentials the
broker gives it (network_service.handshake: broker hands every socket to the broker instead).

A listen() on a non-loopback address is served by the overlay when it can carry inbound
connections (I2P: the program is reachable at a .b32.i2p address, printed once on stderr and
shown by `via status`) and fails with EOPNOTSUPP otherwise (SOCKS5), unless
network_service.listen says local. Loopback listens stay local.

--strict runs COMMAND in a network namespace of its own that has only lo (inside a user
namespace when not root), so that programs the shim cannot cover are routed too: Go, static
and raw-system-call programs. Each TCP connect the shim does not make is handed to via run
(seccomp user notification), which has the broker connect a socket through the overlay and
puts it on the program's descriptor; names get fake addresses from a resolver via run answers
in the namespace. Dynamic programs keep the shim (names from its cache; under SOCKS5 their own
handshake on a socket the broker connected to the proxy), which is faster; --no-shim leaves
everything to via run. Whatever is not routed (UDP, ICMP, TCP Fast Open, io_uring) has no route
out and fails. via run returns when the last process of the namespace has exited (a daemon
the command left behind is served until then). Needs Linux 5.9 and, when not root, unprivileged
user namespaces; if the kernel refuses, nothing is run. docs/architecture.md, "Strict mode",
says what it does not do yet. Without --strict, a static or Go program that COMMAND or its
children exec runs this way on its own (one line on stderr says so;
network_service.unrouted_exec: strict, the default; refuse refuses it). `via status` marks
strict sessions, and with --audit counts what they refused.

Options:
  -c, --config PATH    configuration file or directory (default: the usual search)
  -n, --network ID     the overlay, as namespace:name (e.g. app:tor) or a unique name; or
                       none: no network at all (every connect, listen, datagram and name
                       lookup fails; nothing direct, nothing resolved; always allowed)
      --direct         no overlay for this command and its children
      --route SPEC     route a destination for this session, ahead of the configuration's
                       via.route entries (repeatable, first match wins): GLOB[:PORT]=NETWORK,
                       CIDR[:PORT]=NETWORK or [IPV6-CIDR]:PORT=NETWORK, NETWORK an overlay,
                       direct or block (e.g. '*.onion=app:tor', '10.0.0.0/8=block');
                       checked against security.policy as --network is
  -q, --quiet          the shim prints nothing (default: one line per failed connect)
      --strict         run COMMAND in its own network namespace, every connect placed by via
      --audit          with --strict: at the end, list by process every attempt that would have
                       left outside the overlay (sends with an address on UDP/ICMP/raw
                       sockets, UDP connects, TCP Fast Open, io_uring); they all failed
      --no-shim        with --strict: no shim in COMMAND; via run serves every connect and
                       name lookup (what static and Go programs get anyway)
  -h, --help           show this help

--network and --direct are explicit selections: the broker checks them against the
security.policy entries (network.select) for the groups of COMMAND and of every process above
this one, and refuses a denied one, naming the entry. Without them the broker decides, in this
order: a via.program rule matching COMMAND, the enclosing session (inherited), then
network_service.default_network, then direct (docs/configuration.md, "Program rules, policy and
precedence"). A broker for the configuration is started if none is running, and reloaded if
the configuration changed since it started.

Exit status: the command's own status (128+N if it died of signal N); 2 for a usage or
configuration error, including an unknown overlay (nothing is run); 1 if the broker cannot be
started or security.policy denies the selection (nothing is run); 126/127 if COMMAND cannot be
executed / is not found.

Examples:
  via run --network app:tor -- curl http://example.test:8080/
  via run -c ./_index.yaml -- python3 -c "import urllib.request as u; print(u.urlopen('http://example.test/').read())"
  via run --direct -- make
  via run --strict --network app:tor -- ./static-go-tool https://example.test/
  via run --network app:i2p -- curl http://<52 chars>.b32.i2p/
  via run --network app:i2p -- python3 -m http.server 8080   # reachable from I2P only
)HELP";

const char* const kHelpBroker =
    R"HELP(Usage: via broker [-c CONFIG] [--socket PATH] [--log FILE] [--idle-timeout SECONDS]
       via broker [-c CONFIG] [--socket PATH] --daemon
       via broker [-c CONFIG] [--socket PATH] --ensure

Runs the broker for a configuration: it owns the overlays and the fake-address table,
and connects the sockets that programs under via hand to it. `via run` starts one for you.

Options:
  -c, --config PATH      configuration file or directory (default: the usual search)
      --socket PATH      socket to listen on (default: $XDG_RUNTIME_DIR/via/broker-<hash>.sock,
                         or /tmp/via-<uid>/broker-<hash>.sock)
      --log FILE         also log to FILE (the foreground broker logs to stderr)
      --idle-timeout S   exit S seconds after the last client is gone (default in the
                         foreground: never)
      --daemon           start it in the background (unless one is running) and return once
                         it listens; it logs to broker-<hash>.log beside the socket (or
                         --log FILE) and exits network_service.idle_timeout seconds (or
                         --idle-timeout) after its last session and client
      --ensure           like --daemon, then print the socket path (used by libvia.so when a
                         program was started with LD_PRELOAD but without VIA_SOCKET)
  -h, --help             show this help

Signals: SIGTERM/SIGINT stop it; SIGHUP makes it re-read its configuration (via reload). Exit status: 0 after a clean stop (--daemon, --ensure: once
it listens, or if one was already running), 1 if it cannot start (the reason, with the last
lines of its log), 2 for a usage or configuration error.

Examples:
  via broker -c ./_index.yaml                      # foreground, logs on stderr, Ctrl-C stops it
  via broker -c ./_index.yaml --idle-timeout 60 --log /tmp/via-broker.log
  via broker --ensure                              # prints the socket path
)HELP";

const char* const kHelpCheck = R"HELP(Usage: via check [-c CONFIG] [--json]
       via check [-c CONFIG] [--network NS:NAME | --direct] [--route SPEC]...
                 [--to HOST:PORT]... -- COMMAND [ARGS...]

Loads and validates a configuration, then lists the files read, each overlay (kind, endpoint,
options, where it is defined), the default network, the loopback policy, the fake-address
pools, the program rules, the network.select policies and how many entries of other kinds were
skipped.

With a COMMAND: explains which network and groups COMMAND would get if started from this
shell (e.g. by via run), and why: the executable the kernel would run (PATH, #! scripts), the
rules that give it groups, the rule, session or default that gives it its network, and for
each network whether an explicit selection would be allowed, naming the policy entry. With
--network/--direct: whether that explicit selection would be allowed. --to HOST:PORT (or
[IPV6]:PORT; repeatable): which way a connect of COMMAND to it takes, and why: the route that
decides (its entry and file:line, or built-in), else the command's network. --route SPEC adds a
session's routes as `via run --route` would.

Options:
  -c, --config PATH    configuration file or directory (default: the usual search)
  -n, --network ID     explain an explicit selection of ID for COMMAND
      --direct         explain an explicit selection of direct for COMMAND
      --to HOST:PORT   explain the way COMMAND's connects to HOST:PORT take (repeatable)
      --route SPEC     with --to: a session route, as via run --route (repeatable)
      --json           list the configuration as one JSON object (docs/json.md); not with
                       a COMMAND
  -h, --help           show this help

Output (one line per overlay):
  app:tor  network.socks5  127.0.0.1:9050  isolate_streams=on  (/path/_index.yaml:12)

Exit status: 0 if the configuration is valid (and, with COMMAND, the selection allowed); 1 if
the explained selection is denied; 2 otherwise, with the error as
file:line:col: entry NS:NAME (KIND): FIELD: problem.

Examples:
  via check
  via check -c ./src/_index.yaml
  via check -- git fetch
  via check --direct -- ~/untrusted/tool --flag
  via check --to abc.onion:80 --to 10.1.2.3:22 -- firefox
)HELP";

const char* const kHelpReload = R"HELP(Usage: via reload [-c CONFIG] [--socket PATH]

Makes the running broker for a configuration (or for $VIA_SOCKET inside a via session) read
its configuration file again, as SIGHUP does. A configuration that does not load is rejected:
the broker keeps running the previous one, and this command prints the error. Connections
already made, and connects in flight, are not cut; every program's network is selected again
under the new rules and policies at its next request to the broker. (`via run` reloads the
broker by itself when the configuration changed since the broker started.)

Options:
  -c, --config PATH   configuration whose broker to reload (default: the usual search)
      --socket PATH   reload the broker on this socket
  -h, --help          show this help

Exit status: 0 once reloaded; 1 if no broker is running or the configuration was rejected.

Examples:
  via reload
  kill -HUP <broker pid>      # the same, from the log's "broker pid N listening" line
)HELP";

const char* const kHelpProbe =
    R"HELP(Usage: via probe [-c CONFIG] [--network NS:NAME] [--url URL] [--timeout SECONDS] [--cafile FILE]

Fetches an IP-echo URL twice, directly and through an overlay, and prints
  direct IP: <address>          or   direct failed: <error>
  <overlay name> IP: <address>  or   <overlay name> failed: <error>
The name in the URL is never resolved locally on the overlay path. HTTPS is checked against
the system's CA certificates (or --cafile) and the host name.

Options:
  -c, --config PATH    configuration (default: the usual search)
  -n, --network ID     overlay to probe (default: network_service.default_network, else the
                       only network.socks5 entry)
      --url URL        http:// or https:// URL answering {"ip": "..."} or the bare address
                       (default: https://api.ipify.org?format=json)
      --timeout S      per fetch, in seconds (default 15)
      --cafile FILE    trust the CA certificates in FILE instead of the system's
  -h, --help           show this help

Exit status: 0 if both lines succeeded, 1 if either failed, 2 for a usage/config error.

Examples:
  via probe
  via probe -c ./src/_index.yaml --network app:tor
  via probe --url http://127.0.0.1:8080/ip --timeout 5
)HELP";

const char* const kHelpStatus = R"HELP(Usage: via status [-c CONFIG] [--socket PATH] [--json]

Shows the running broker for a configuration (or for $VIA_SOCKET inside a via session): its
overlays with connect counts (and, for SOCKS5, who runs the handshake: handshake=program or
broker; connects a program made itself are counted in batches, so an idle program's last ones
show once it connects again or exits), sessions, clients, each connected program with its network and
why (or why it was refused), SAM sessions (I2P), for each Tailscale entry its node's state
(Starting, NeedsLogin, Running...), tailnet addresses, MagicDNS name, last error and login URL,
listeners with the overlay address each one is reachable at, the size of the fake-address
table, and its load: descriptors in use against its limit (with a WARNING line above 80 %),
the clients it refused since start and why (descriptor limit, client cap, per-process cap,
other uid), and how often a client that did not read its replies was paused. It does not start
a broker.

Options:
  -c, --config PATH   configuration whose broker to ask (default: the usual search)
      --socket PATH   ask the broker on this socket
      --json          the same as one JSON object on one line (docs/json.md)
  -h, --help          show this help

Exit status: 0, or 1 if no broker is running or it did not answer within 10 s (a stopped or
stuck broker).

Examples:
  via status
  via status -c ./src/_index.yaml
  via status --json | python3 -m json.tool
  via run -- via status      # the broker serving this session
)HELP";

const char* const kHelpStop = R"HELP(Usage: via stop [-c CONFIG] [--socket PATH]

Asks the running broker for a configuration to exit. Programs still running under it lose
their overlay: their next connects fail (they never go direct).

Options:
  -c, --config PATH   configuration whose broker to stop (default: the usual search)
      --socket PATH   stop the broker on this socket
  -h, --help          show this help

Exit status: 0 once it has exited, or 1 if no broker is running.

Examples:
  via stop
  via stop --socket /run/user/1000/via/broker-0123456789abcdef.sock
)HELP";

const char* const kHelpInstall = R"HELP(Usage: via install --user [-c CONFIG]
       via install --user --uninstall

Makes your login session preload via's shim (libvia.so) with your configuration, so that its
via.program rules apply however a program starts: from a desktop menu, a login shell, a
systemd user service or timer, not only under `via run`. Programs without a rule get
network_service.default_network, else direct, as under `via run`. It changes only files in your
home directory (docs/install.md says exactly which, and what cron needs):

  $XDG_CONFIG_HOME/environment.d/60-via.conf   LD_PRELOAD and VIA_CONFIG for systemd's user
                                               manager: user services, the graphical session
  ~/.profile                                   a block between "# >>> via install --user >>>"
                                               and "# <<< via install --user <<<" for login
                                               shells (also ~/.bash_profile or ~/.bash_login,
                                               and ~/.zprofile, when they exist)
  $XDG_CONFIG_HOME/systemd/user/via-broker.service   the broker as a user service (`via
                                               broker -c CONFIG`), enabled in
                                               default.target.wants; started now if a user
                                               manager runs
($XDG_CONFIG_HOME defaults to ~/.config.) It never replaces a file it did not write; run it
again to change the configuration (the blocks are replaced in place). The change applies to
sessions started after it: log out and in again. Programs of the session then fail closed as
under `via run`: if the configuration stops loading, their connects fail until it is fixed.

--uninstall removes the files and blocks, and the directories and newlines it had to add (it
records them in 60-via.conf), leaving the files as they were before; text you added around a
block stays.

Options:
      --user          change your own login session (required)
  -c, --config PATH   the configuration (default: the usual search, as `via check`); it must
                      load: it is checked first
      --uninstall     undo every change of `via install --user`
  -h, --help          show this help

Exit status: 0 when done (or nothing to undo); 1 if a file it would write exists and is not
its own (then nothing is changed) or a file could not be written; 2 for a usage or
configuration error.

Examples:
  via install --user
  via install --user -c ~/.config/via/via.yaml
  via install --user --uninstall
)HELP";

const char* const kHelpNewnym = R"HELP(Usage: via newnym [-c CONFIG] [--network NS:NAME]

Starts a new identity for later connections: the running broker gives every SOCKS5 overlay
(or only NS:NAME) new isolation credentials, so Tor puts later connections on new circuits
(isolation destination, process, program and session; connection's are new every time
anyway), and programs running under via pick them up at their next connect. Connections
already open keep their circuits. For each SOCKS5 entry with a control_port, Tor itself is
sent SIGNAL NEWNYM (authenticating with no password, its cookie file, or control_password),
which also renews the circuits of isolation none. `via status` shows the identity count.

Options:
  -c, --config PATH    configuration whose broker and Tor to ask (default: the usual search)
  -n, --network ID     only this overlay (namespace:name or a unique name)
  -h, --help           show this help

Exit status: 0, 1 if the broker or a control port failed (each failure is named), 2 for a
usage or configuration error. Without a running broker, only the control ports are asked.

Examples:
  via newnym
  via newnym --network app:tor
)HELP";

int CmdHelp(int argc, char** argv);

// In the order `via --help` lists them.
const Command kCommands[] = {
    {"run", CmdRun,
     "run a program with its TCP connections and name lookups routed through an overlay", kHelpRun},
    {"check", CmdCheck, "validate a configuration; with -- COMMAND, explain its overlay and groups",
     kHelpCheck},
    {"probe", CmdProbe,
     "fetch an IP-echo URL directly and through an overlay, and print both addresses", kHelpProbe},
    {"status", CmdStatus, "show the running broker: overlays, sessions, fake addresses",
     kHelpStatus},
    {"reload", CmdReload, "make the running broker re-read its configuration", kHelpReload},
    {"newnym", CmdNewnym, "new credentials (Tor: new circuits) for later connections", kHelpNewnym},
    {"stop", CmdStop, "stop the running broker", kHelpStop},
    {"broker", CmdBroker, "run the broker (normally started for you by `via run`)", kHelpBroker},
    {"install", CmdInstall,
     "make your login session preload the shim, so that program rules apply everywhere",
     kHelpInstall},
    {"help", CmdHelp, "show help for a command: via help run", nullptr},
    // Hidden (not in `via --help`): what the shell completions ask for.
    {"__complete", CmdComplete, "", nullptr},
};

// `via help [CMD]`: the main help, or CMD's.
int CmdHelp(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(MainHelp().c_str(), stdout);
    return kExitOk;
  }
  const std::string name = argv[1];
  const Command* c = FindCommand(name);
  if (c == nullptr || c->help == nullptr) {
    Error("no such command: " + name + "; try 'via --help'");
    return kExitUsage;
  }
  std::fputs(c->help, stdout);
  return kExitOk;
}

}  // namespace

std::span<const Command> Commands() { return kCommands; }

const Command* FindCommand(std::string_view name) {
  for (const Command& c : kCommands) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

std::string MainHelp() {
  std::string text = kMainHelpHead;
  for (const Command& c : kCommands) {
    if (c.name[0] == '_') continue;  // hidden
    char line[16];
    std::snprintf(line, sizeof line, "  %-8s ", c.name);
    text += line;
    text += c.summary;
    text += '\n';
  }
  return text + kMainHelpTail;
}

bool PrintHelpIfAsked(const Args& args, std::string_view command) {
  if (!args.Has("--help")) return false;
  const Command* c = FindCommand(command);
  if (c != nullptr && c->help != nullptr) std::fputs(c->help, stdout);
  return true;
}

}  // namespace via::tools
