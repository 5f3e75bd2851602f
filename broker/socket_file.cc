#include "broker/socket_file.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace via::broker {

namespace {

// A broker that stops takes its marker away, and the directory's when no other broker has one.
void UnmarkExecHello(const std::string& socket_path) {
  unlink((socket_path + ".exec-hello").c_str());
  size_t slash = socket_path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : socket_path.substr(0, slash);
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (it->path().string().ends_with(".exec-hello")) return;
  }
  if (!ec) unlink((dir + "/exec-hello").c_str());
}

}  // namespace

void MarkExecHello(const std::string& socket_path, const config::Config& cfg) {
  bool groups = false;
  for (const config::ProgramRule& r : cfg.programs) groups = groups || !r.groups.empty();
  const std::string marker = socket_path + ".exec-hello";
  if (!groups) {
    unlink(marker.c_str());
    return;
  }
  size_t slash = socket_path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : socket_path.substr(0, slash);
  for (const std::string& path : {marker, dir + "/exec-hello"}) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
}

Status CheckSocketDir(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return Status::FromErrno("socket directory " + dir);
  if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
    return Status::Error(EPERM, "socket directory " + dir +
                                    " must be a directory owned by you with mode 0700 (chmod 700 " +
                                    dir + ")");
  }
  return Status::Ok();
}

Result<UniqueFd> BindSocketFile(const std::string& path, bool* bound, struct stat* st) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof sun.sun_path) {
    return Status::Error(ENAMETOOLONG, "socket path is empty or too long: " + path);
  }
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  auto* sa = reinterpret_cast<sockaddr*>(&sun);

  // A socket file left behind by a broker that died is removed; a live broker is not disturbed.
  {
    UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!probe) return Status::FromErrno("socket");
    if (connect(probe.get(), sa, sizeof sun) == 0 || errno == EAGAIN) {
      return Status::Error(EADDRINUSE, "another broker is already listening on " + path);
    }
    if (errno == ECONNREFUSED) unlink(path.c_str());
  }

  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket");
  if (bind(fd.get(), sa, sizeof sun) != 0) return Status::FromErrno("bind " + path);
  *bound = true;
  stat(path.c_str(), st);
  // The directory is private already; the mode is a second fence.
  if (chmod(path.c_str(), 0600) != 0) return Status::FromErrno("chmod " + path);
  if (listen(fd.get(), SOMAXCONN) != 0) return Status::FromErrno("listen " + path);
  return fd;
}

void RemoveSocketFileIfOurs(const std::string& path, const struct stat& st) {
  struct stat now;
  if (stat(path.c_str(), &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino) {
    unlink(path.c_str());
    UnmarkExecHello(path);
  }
}

}  // namespace via::broker
