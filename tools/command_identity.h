// What a command line will look like to the broker once started: the executable the kernel will
// run (PATH searched, symbolic links resolved, a `#!` script's interpreter) and its argv.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace via::tools {

struct PredictedCommand {
  std::string exe;                // what /proc/PID/exe will show
  std::vector<std::string> argv;  // what /proc/PID/cmdline will show
  std::string note;               // e.g. "a #! script run by /usr/bin/python3"
};

// Fails (ENOENT/EACCES, with just the reason as message) when `argv[0]` cannot be found or
// executed, as execvp would.
Result<PredictedCommand> PredictCommand(const std::vector<std::string>& argv);

}  // namespace via::tools
