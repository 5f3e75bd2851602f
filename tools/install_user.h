// `via install --user` (the user's login session preloads the shim) and the hidden
// `via __complete` (what the shell completions ask for). docs/install.md.
#pragma once

#include <string>
#include <vector>

namespace via::tools {

// `via install --user [-c CONFIG]` / `via install --user --uninstall`.
int CmdInstall(int argc, char** argv);

// `via __complete commands | flags COMMAND | networks [-c CONFIG]`: one word per line, for the
// bash and zsh completions (packaging/completions/). Prints nothing it cannot know (a config
// that does not load): a completion must never print errors into the user's command line.
int CmdComplete(int argc, char** argv);

// The flags a command's help text lists in its "Options:" section ("-c", "--config", ...), in
// order: the completions' flags come from the help, so that they are not written twice.
std::vector<std::string> FlagsFromHelp(const std::string& help);

}  // namespace via::tools
