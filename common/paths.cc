#include "common/paths.h"

#include <limits.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace via {

namespace {

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

bool IsFile(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

Result<std::string> RuntimeDir() {
  std::string dir;
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') {
    dir = std::string(xdg) + "/via";
  } else {
    dir = "/tmp/via-" + std::to_string(::getuid());
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno("cannot create runtime directory " + dir);
  }
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return Status::FromErrno("cannot stat " + dir);
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, "runtime directory " + dir + " is not a directory");
  }
  if (st.st_uid != ::getuid()) {
    return Status::Error(EPERM, "runtime directory " + dir + " belongs to uid " +
                                    std::to_string(st.st_uid) + ", not to you (uid " +
                                    std::to_string(::getuid()) +
                                    "); remove it or set XDG_RUNTIME_DIR");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return Status::Error(EPERM, "runtime directory " + dir +
                                    " is accessible to other users (mode " + mode +
                                    "); run: chmod 700 " + dir);
  }
  return dir;
}

Result<std::string> BrokerSocketPath(const std::string& config_key) {
  auto dir = RuntimeDir();
  if (!dir.ok()) return dir.status();
  char name[64];
  std::snprintf(name, sizeof name, "/broker-%016llx.sock",
                static_cast<unsigned long long>(Fnv1a(config_key)));
  std::string path = *dir + name;
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Status::Error(ENAMETOOLONG, "socket path " + path + " is too long for a Unix socket");
  }
  return path;
}

std::string BrokerLogPath(const std::string& socket_path) {
  std::string p = socket_path;
  if (p.size() > 5 && p.compare(p.size() - 5, 5, ".sock") == 0) p.resize(p.size() - 5);
  return p + ".log";
}

std::string SelfExeDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  std::string p(buf);
  auto slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

std::string ShimPath() {
  if (const char* env = std::getenv("VIA_SHIM"); env != nullptr && env[0] != 0) return env;
  std::string dir = SelfExeDir();
  for (const std::string& candidate : {dir + "/libvia.so", dir + "/../lib/via/libvia.so"}) {
    if (IsFile(candidate)) {
      char real[PATH_MAX];
      if (::realpath(candidate.c_str(), real) != nullptr) return real;
      return candidate;
    }
  }
  return VIA_SHIM_INSTALL_PATH;
}

}  // namespace via
