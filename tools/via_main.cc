// The `via` command line: dispatch and help.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "tools/cli.h"
#include "tools/command_table.h"

using namespace via::tools;

namespace {

int Dispatch(int argc, char** argv) {
  // `via` is often started under a via session (nested `via run`): its own sockets are not the
  // program's, so a preloaded shim must leave them alone.
  if (auto off = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "via_shim_set_passthrough"))) {
    off();
  }
  if (argc < 2) {
    std::fputs(MainHelp().c_str(), stderr);
    return kExitUsage;
  }
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help") {
    std::fputs(MainHelp().c_str(), stdout);
    return kExitOk;
  }
  if (cmd == "--version" || cmd == "version") {
    std::printf("via %s\n", VIA_VERSION);
    return kExitOk;
  }
  if (const Command* c = FindCommand(cmd)) return c->handler(argc - 1, argv + 1);
  Error("unknown command '" + cmd + "'; try 'via --help'");
  return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  // Libraries (yaml-cpp, spdlog, the standard library) may throw; nothing escapes as a crash.
  try {
    return Dispatch(argc, argv);
  } catch (const std::exception& e) {
    Error(std::string("internal error: ") + e.what());
  } catch (...) {
    Error("internal error: unknown exception");
  }
  return kExitFailure;
}
