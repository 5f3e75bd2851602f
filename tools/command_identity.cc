#include "tools/command_identity.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace via::tools {

namespace {

std::string RealPath(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) != nullptr ? std::string(buf) : p;
}

bool Executable(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

// The `#!` line of `path`: interpreter and optional argument.
bool Shebang(const std::string& path, std::string* interp, std::string* arg) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[256];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n < 3 || buf[0] != '#' || buf[1] != '!') return false;
  std::string line(buf + 2, size_t(n - 2));
  line = line.substr(0, line.find('\n'));
  size_t b = line.find_first_not_of(" \t");
  if (b == std::string::npos) return false;
  line = line.substr(b);
  size_t sp = line.find_first_of(" \t");
  *interp = line.substr(0, sp);
  if (sp != std::string::npos) {
    std::string rest = line.substr(sp);
    size_t rb = rest.find_first_not_of(" \t"), re = rest.find_last_not_of(" \t\r");
    if (rb != std::string::npos) *arg = rest.substr(rb, re - rb + 1);
  }
  return !interp->empty();
}

}  // namespace

Result<PredictedCommand> PredictCommand(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0].empty()) return Status::Error(ENOENT, "no command given");
  std::string path;
  if (argv[0].find('/') != std::string::npos) {
    path = argv[0];
    if (!Executable(path)) {
      int err = access(path.c_str(), F_OK) == 0 ? EACCES : ENOENT;
      return Status::Error(err, std::strerror(err));
    }
  } else {
    const char* env = std::getenv("PATH");
    std::string dirs = env != nullptr ? env : "/usr/local/bin:/usr/bin:/bin";
    size_t start = 0;
    while (start <= dirs.size()) {
      size_t end = dirs.find(':', start);
      if (end == std::string::npos) end = dirs.size();
      std::string dir = dirs.substr(start, end - start);
      std::string cand = (dir.empty() ? "." : dir) + "/" + argv[0];
      if (Executable(cand)) {
        path = cand;
        break;
      }
      start = end + 1;
    }
    if (path.empty()) return Status::Error(ENOENT, "command not found in PATH");
  }
  PredictedCommand out;
  std::string interp, arg;
  if (Shebang(path, &interp, &arg)) {
    out.exe = RealPath(interp);
    out.argv.push_back(interp);
    if (!arg.empty()) out.argv.push_back(arg);
    out.argv.push_back(path);
    out.argv.insert(out.argv.end(), argv.begin() + 1, argv.end());
    out.note =
        "a #! script: the kernel runs " + interp + (arg.empty() ? "" : " " + arg) + " " + path;
    return out;
  }
  out.exe = RealPath(path);
  out.argv = argv;
  return out;
}

}  // namespace via::tools
