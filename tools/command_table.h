// The `via` command table: one entry per command, from which dispatch, the command list of
// `via --help` and each `via CMD --help` / `via help CMD` come.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "tools/cli.h"

namespace via::tools {

struct Command {
  const char* name;                       // "run"
  int (*handler)(int argc, char** argv);  // argv[0] is the command name
  const char* summary;                    // one line, for `via --help`
  const char* help;                       // full text for `via CMD --help`; nullptr: none (help)
};

// Every command, in the order `via --help` lists them.
std::span<const Command> Commands();

// The command called `name`, or nullptr.
const Command* FindCommand(std::string_view name);

// The text of `via --help`, its command list built from the table.
std::string MainHelp();

// If `args` asks for --help: prints `command`'s help text on stdout and returns true.
bool PrintHelpIfAsked(const Args& args, std::string_view command);

}  // namespace via::tools
