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

// A parsed command line: flags (with or without values) and the remaining operands.
struct Args {
  std::map<std::string, std::string> values;  // "--network" -> "app:tor"; switches -> ""
  std::vector<std::string> rest;              // operands (for run: the command)
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

// Loads -c FILE or the searched config. On failure prints the error and returns nullopt.
std::optional<config::Config> LoadConfigOrComplain(const Args& args);

// The broker socket for a config: --socket, else BrokerSocketPath(config.source).
Result<std::string> SocketFor(const Args& args, const config::Config& config);

// Makes sure a broker serves `config` on `socket`: connects, or starts a daemonized broker and
// waits for it to listen. Fails closed with the broker's own error.
Status EnsureBroker(const config::Config& config, const std::string& socket);

// Command entry points; argv[0] is the command name.
int CmdRun(int argc, char** argv);
int CmdBroker(int argc, char** argv);
int CmdCheck(int argc, char** argv);
int CmdProbe(int argc, char** argv);
int CmdStatus(int argc, char** argv);
int CmdStop(int argc, char** argv);

// Help texts (full, for `via CMD --help` and `via help CMD`).
extern const char* const kHelpMain;
extern const char* const kHelpRun;
extern const char* const kHelpBroker;
extern const char* const kHelpCheck;
extern const char* const kHelpProbe;
extern const char* const kHelpStatus;
extern const char* const kHelpStop;

}  // namespace via::tools
