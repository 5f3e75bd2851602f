// Shared pieces of the `via` command line.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "config/config.h"

namespace via::tools {

// Exit statuses.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoConfig = 3;  // `via broker --ensure`: no configuration exists anywhere

// A parsed command line: flags (with or without values) and the remaining operands.
struct Args {
  std::map<std::string, std::string> values;  // "--network" -> "app:tor"; switches -> ""
  std::vector<std::string> rest;              // operands (for run: the command)
  // Every value of each flag, in order (a repeatable flag such as --route); `values` keeps the
  // last.
  std::map<std::string, std::vector<std::string>> all;
  bool Has(const std::string& flag) const { return values.count(flag) > 0; }
  std::string Get(const std::string& flag, const std::string& def = "") const {
    auto it = values.find(flag);
    return it == values.end() ? def : it->second;
  }
};

// Flag spec: name -> takes a value. Aliases map a short flag to its long name. Parsing stops at
// "--" or (when stop_at_operand) at the first operand. Errors name the flag and the command.
Result<Args> ParseArgs(const std::string& command, int argc, char** argv,
                       const std::map<std::string, bool>& spec,
                       const std::map<std::string, std::string>& aliases, bool stop_at_operand);

// Prints "via: <msg>" on stderr.
void Error(const std::string& msg);

// For commands without operands: prints the usage error and returns true if there are any.
bool HasOperands(const Args& args, const std::string& command);

// Loads -c FILE or the searched config. On failure prints the error and returns nullopt.
std::optional<config::Config> LoadConfigOrComplain(const Args& args);

// The broker socket for a config: --socket, else the one for its path and fingerprint.
Result<std::string> SocketFor(const Args& args, const config::Config& config);

// Makes the broker on `socket` run `config`: if its fingerprint differs (the file was edited
// since it started), asks it to reload. A config the broker rejects is an error.
Status SyncBrokerConfig(const config::Config& config, const std::string& socket);

// How a daemonized broker is started (the options of `via broker --daemon`).
struct DaemonOptions {
  std::string log_path;     // "" = BrokerLogPath(socket)
  int idle_timeout_s = -1;  // -1 = network_service.idle_timeout
};

// Makes sure a broker serves `config` on `socket`: connects, or runs
// `<this executable> broker -c <config.source> --socket <socket> --daemon`, which returns once
// the daemon listens (at most ~10 s). Fails closed with the reason and the last lines of the
// broker's log.
Status EnsureBroker(const config::Config& config, const std::string& socket,
                    const DaemonOptions& daemon = {});

// What `via broker --daemon/--ensure` does in its own process: under "<socket>.lock" (so that
// concurrent starters start one broker), if nothing answers on `socket`, double-fork a broker
// (setsid, stdio on /dev/null, no inherited descriptors) and wait for its readiness byte.
Status StartBrokerHere(const config::Config& config, const std::string& socket,
                       const DaemonOptions& daemon = {});

// The LD_PRELOAD value for a child: `shim` first, then the entries of `existing` (separated by
// ':' or ' ') except earlier copies of libvia.so, joined with ':'.
std::string PreloadWithShim(const std::string& existing, const std::string& shim);

// Command entry points; argv[0] is the command name.
int CmdRun(int argc, char** argv);
int CmdBroker(int argc, char** argv);
int CmdCheck(int argc, char** argv);
int CmdProbe(int argc, char** argv);
int CmdStatus(int argc, char** argv);
int CmdStop(int argc, char** argv);
int CmdReload(int argc, char** argv);
int CmdNewnym(int argc, char** argv);

}  // namespace via::tools
