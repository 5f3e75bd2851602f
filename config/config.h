// Loading via's configuration: the Wippy registry format (version, namespace, entries) plus the
// `network_service:` settings of `.wippy.yaml`. See docs/configuration.md.
//
// Every error message has the form "<file>:<line>:<col>: <what>", and for entry problems
// "<file>:<line>:<col>: entry <ns:name> (<kind>): <field>: <problem>".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "config/program_rules.h"
#include "config/routes.h"

namespace via::config {

// Where something was written: 1-based line and column.
struct SourcePos {
  std::string file;
  int line = 0;
  int column = 0;
  std::string ToString() const;  // "file:line:col"
};

enum class OverlayKind { kSocks5, kTailscale, kI2p };

// The two networks every config has besides its overlays. Reserved words wherever a network is
// named (`--network`, VIA_NETWORK, default_network, a rule's network): they win over an overlay
// whose bare name is the same.
//   direct  no overlay: the program's own connections
//   none    no network at all: every connect, listen, datagram and lookup fails (ENETUNREACH,
//           EAI_FAIL), nothing direct and nothing resolved
inline constexpr std::string_view kDirectNetwork = "direct";
inline constexpr std::string_view kNoNetwork = "none";
inline bool IsBuiltinNetwork(std::string_view ref) {
  return ref == kDirectNetwork || ref == kNoNetwork;
}

enum class Isolation { kNone, kConnection, kDestination, kProcess, kProgram, kSession };
const char* IsolationName(Isolation i);  // "none", "connection", ...

// `kind: network.socks5` (fields as in Wippy, plus via's connect_timeout).
struct Socks5Settings {
  std::string host;      // required
  int port = 0;          // required, 1..65535
  std::string username;  // optional, <= 255 bytes
  std::string password;  // optional, <= 255 bytes
  // Which connections share SOCKS5 credentials, so Tor puts them on one circuit (IsolateSOCKSAuth;
  // docs/configuration.md, "Isolation"): every connection its own (`connection`, also
  // `isolate_streams: true`), one per destination host:port, per process, per program
  // (executable), per `via run` session, or the configured pair for all (`none`).
  Isolation isolation = Isolation::kNone;
  bool isolate_streams = false;  // isolation == kConnection (either set means connection)
  // via extension: Tor's control port on `host`, for `via newnym` (SIGNAL NEWNYM); 0: none.
  // Authentication as the port offers it: none, the cookie file, or control_password.
  int control_port = 0;
  std::string control_password;
  // via extension: names asked for by programs are resolved by the proxy with Tor's RESOLVE
  // (0xF0) / RESOLVE_PTR (0xF1) SOCKS commands instead of getting fake addresses.
  bool remote_resolve = false;
  int connect_timeout_ms = 15000;  // via extension: `connect_timeout: 15s` (or a number of seconds)
  // via extension: send the greeting, the credentials and the CONNECT request in one write (one
  // round trip instead of two or three). Off by default: a proxy that reads one message per
  // recv() (microsocks 1.0.3) drops the rest and the connect hangs until connect_timeout.
  bool pipeline = false;
  // via extension: `connect` returns once the CONNECT request is written, the program's first
  // bytes follow it, and the shim strips the proxy's replies on the first read (shim/
  // optimistic.h). Off by default: a refused CONNECT then shows up on a read, not on connect, and
  // a proxy that reads one message per recv() (microsocks 1.0.3) drops the early bytes.
  bool optimistic_data = false;
  // via extension: `tor: true|false`: this proxy is Tor (the built-in route sends `*.onion`
  // here). Not given (-1): Tor when control_port is set.
  int tor = -1;
};

// Whether a SOCKS5 entry is marked as Tor: `tor: true`, or a control_port without `tor: false`.
inline bool IsTor(const Socks5Settings& s) {
  return s.tor == 1 || (s.tor == -1 && s.control_port != 0);
}

// The isolation an entry asks for (isolate_streams: true is connection).
inline Isolation EffectiveIsolation(const Socks5Settings& s) {
  return s.isolate_streams ? Isolation::kConnection : s.isolation;
}

// `kind: network.tailscale`: a node of its own, run by the via-tsnet helper (docs/tailscale.md).
struct TailscaleSettings {
  std::string hostname;  // default "wippy" applied by TailscaleOverlay
  std::string auth_key;
  std::string auth_key_env;
  // As given, but a relative path is joined to the directory of the file it was found in, and
  // normalised; "" when not given (see TailscaleStateDir for the default).
  std::string state_dir;
  SourcePos state_dir_pos;  // where state_dir was given (file "": not given)
  std::string control_url;
  bool ephemeral = false;
  // via extensions (docs/tailscale.md):
  std::string localapi_socket;     // attach to this tailscaled's LocalAPI instead of running a node
  std::string helper;              // path of via-tsnet; default: next to the via binary
  int connect_timeout_ms = 30000;  // waiting for the node to be Running, plus the dial
};

// `kind: network.i2p`: an I2P router's SAM v3 bridge (fields as in Wippy, plus via's
// destination, options and connect_timeout; docs/configuration.md).
enum class I2pDestination { kPersistent, kEphemeral };
struct I2pSettings {
  std::string host;                    // required
  int port = 0;                        // required, 1..65535
  std::string session_name = "wippy";  // prefix of SAM session IDs: [A-Za-z0-9._-], 1..64 chars
  // Listeners' destinations: kept under <state_dir>/i2p/<ns>.<name>/ (persistent) or new each
  // time (ephemeral). Outbound sessions are always TRANSIENT.
  I2pDestination destination = I2pDestination::kPersistent;
  // Extra SESSION CREATE options, in file order, passed as KEY=VALUE (keys such as
  // inbound.length, i2cp.leaseSetType); STYLE, ID and DESTINATION are refused.
  std::vector<std::pair<std::string, std::string>> options;
  int connect_timeout_ms = 60000;  // waiting for the session plus STREAM CONNECT
};

struct Overlay {
  std::string id;  // "namespace:name"
  std::string name;
  std::string ns;
  std::string kind_name;  // "network.socks5", ...
  OverlayKind kind = OverlayKind::kSocks5;
  SourcePos pos;  // position of the entry
  Socks5Settings socks5;
  TailscaleSettings tailscale;
  I2pSettings i2p;
};

// What to do with loopback destinations (127.0.0.0/8, ::1) under an overlay.
enum class LoopbackPolicy { kDirect, kOverlay, kRefuse };

// What a non-loopback listen() under an overlay does (`network_service.listen`).
//  kOverlay: served by the overlay when it can carry inbound connections (I2P, Tailscale);
//            refused with EOPNOTSUPP when it cannot (SOCKS5).
//  kLocal:   the program listens on the host's real interfaces, as without via (explicit opt-in).
//  kRefuse:  always refused with EOPNOTSUPP.
// Loopback listens are always local.
enum class ListenPolicy { kOverlay, kLocal, kRefuse };

// `network_service:` (from .wippy.yaml or a top-level key in any config file).
struct NetworkService {
  std::string state_dir;        // absolute; default "<config dir>/.wippy/net"
  std::string default_network;  // "" = direct; or "none", or an overlay id
  SourcePos default_network_pos;
  std::string fake_ipv4 = "198.18.0.0/15";        // pool for fake addresses
  std::string fake_ipv6 = "fd76:6961:ff00::/64";  // pool for fake addresses
  LoopbackPolicy loopback = LoopbackPolicy::kDirect;
  ListenPolicy listen = ListenPolicy::kOverlay;
  // Whether programs under an overlay may exec binaries that would run without the shim
  // (setuid/setgid, file capabilities, statically linked): `unrouted_exec: refuse|allow`.
  bool unrouted_exec_allowed = false;
  // `unrouted_exec: strict` (the default): such a binary, when it is statically linked or Go, runs
  // in strict mode (`via run --strict`) instead of being refused.
  bool unrouted_exec_strict = true;
  // `strict: true`: `via run` under an overlay runs its command in strict mode (`--strict`).
  bool strict = false;
  int idle_timeout_s = 30;  // broker exits this long after its last session/client is gone
  // `handshake: program|broker`: whether the shim runs SOCKS5 CONNECT on the program's socket
  // itself, with what the broker tells it (proxy, credentials), or hands every socket to the
  // broker. Only SOCKS5 overlays; I2P and Tailscale always go through the broker.
  bool handshake_in_program = true;
  // `default_routes: false`: no built-in routes (.onion, .i2p, the tailnet; config/routes.h).
  bool default_routes = true;
};

struct Config {
  std::string source;              // absolute path of the file or directory that was loaded
  std::vector<std::string> files;  // every file read, in order
  std::vector<Overlay> overlays;   // network.* entries, in file order
  NetworkService service;
  std::vector<ProgramRule> programs;     // via.program entries, in file order
  std::vector<SecurityPolicy> policies;  // security.policy entries for network.select
  std::vector<Route> routes;             // via.route entries, in file order
  int skipped_entries = 0;               // entries of kinds via does not use
  std::string fingerprint;               // hash of the text of every file read (16 hex chars)

  // Finds an overlay by "ns:name", or by bare "name" when exactly one overlay has that name.
  const Overlay* Find(std::string_view ref) const;
};

// The directory a `network.tailscale` entry keeps its node in (keys, netmap cache, the helper's
// log): its state_dir, else <network_service.state_dir>/tailscale/<TailscaleDirName(id)>, else
// "" when network_service.state_dir is "" (tsnet's own default). Derived from the entry's full
// name, never its hostname: two entries are two nodes with two keys. The loader refuses a
// config where two entries would get the same directory.
std::string TailscaleStateDir(const Overlay& overlay, const NetworkService& service);
// "ns:name" as one path component: bytes other than [A-Za-z0-9_.:-] (and a leading '.') become
// %XX, so the result is never "." or "..", has no '/', and differs for different names.
std::string TailscaleDirName(std::string_view id);

// Loads a file, or every `*.yaml` file (sorted by name, dotfiles excluded) of a directory.
// `network_service:` is read from a top-level key of any loaded file, else from `.wippy.yaml` in
// the config's directory or its parent.
Result<Config> LoadConfig(const std::string& path);

// Parses one document given as text (for tests and embedded defaults). `filename` is used in
// messages; `base_dir` resolves a relative state_dir.
Result<Config> ParseConfigText(std::string_view text, const std::string& filename,
                               const std::string& base_dir);

// The search order when no -c is given: $VIA_CONFIG, ./_index.yaml, ./via.yaml,
// $XDG_CONFIG_HOME/via/ (or ~/.config/via/), /etc/via/. Returns the first that exists, or an
// error listing every place looked at. A $VIA_CONFIG that does not exist is an error of its own
// (never a fall-through to the next place).
Result<std::string> FindConfig();

}  // namespace via::config
