#include "tools/tor_control.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "common/unique_fd.h"

namespace via::tools {

namespace {

class Control {
 public:
  Control(std::string where, int timeout_ms) : where_(std::move(where)), timeout_ms_(timeout_ms) {}

  Status Connect(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    const std::string service = std::to_string(port);
    if (int e = getaddrinfo(host.c_str(), service.c_str(), &hints, &res); e != 0) {
      return Status::Error(EHOSTUNREACH, where_ + ": " + gai_strerror(e));
    }
    int err = ECONNREFUSED;
    for (addrinfo* ai = res; ai != nullptr && !fd_; ai = ai->ai_next) {
      UniqueFd fd(socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (!fd) continue;
      timeval tv{timeout_ms_ / 1000, (timeout_ms_ % 1000) * 1000};
      setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0) {
        fd_ = std::move(fd);
      } else {
        err = errno;
      }
    }
    freeaddrinfo(res);
    if (!fd_) {
      return Status::Error(err, where_ + ": connect: " + std::strerror(err) +
                                    " (is Tor's ControlPort there? control_port on the entry)");
    }
    return Status::Ok();
  }

  // Sends `line` and reads the reply up to its final line ("NNN text"); all lines in *lines.
  Status Command(const std::string& line, std::vector<std::string>* lines) {
    const std::string out = line + "\r\n";
    if (send(fd_.get(), out.data(), out.size(), MSG_NOSIGNAL) != ssize_t(out.size())) {
      return Status::Error(errno, where_ + ": send: " + std::strerror(errno));
    }
    lines->clear();
    while (true) {
      std::string l;
      if (Status s = ReadLine(&l); !s.ok()) return s;
      lines->push_back(l);
      if (l.size() >= 4 && l[3] == ' ') return Status::Ok();  // "250 OK", "515 ..."
    }
  }

 private:
  Status ReadLine(std::string* line) {
    while (true) {
      if (size_t nl = buf_.find("\r\n"); nl != std::string::npos) {
        *line = buf_.substr(0, nl);
        buf_.erase(0, nl + 2);
        return Status::Ok();
      }
      if (buf_.size() > 65536) return Status::Error(EPROTO, where_ + ": reply line too long");
      char chunk[4096];
      ssize_t n = recv(fd_.get(), chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = n == 0 ? ECONNRESET : errno;
        return Status::Error(err,
                             where_ + (n == 0 ? ": Tor closed the connection"
                                              : std::string(": no reply: ") + std::strerror(err)));
      }
      buf_.append(chunk, size_t(n));
    }
  }

  std::string where_;
  int timeout_ms_;
  UniqueFd fd_;
  std::string buf_;
};

bool Ok(const std::vector<std::string>& lines) {
  return !lines.empty() && lines.back().rfind("250", 0) == 0;
}

// The value of KEY=... in a PROTOCOLINFO line (quoted or not).
std::string Field(const std::string& line, const std::string& key) {
  size_t at = line.find(" " + key + "=");
  if (at == std::string::npos) return "";
  at += key.size() + 2;
  if (at < line.size() && line[at] == '"') {
    std::string v;
    for (size_t i = at + 1; i < line.size() && line[i] != '"'; ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) ++i;
      v += line[i];
    }
    return v;
  }
  size_t end = line.find(' ', at);
  return line.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

std::string Quoted(const std::string& s) {
  std::string q = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return q + "\"";
}

// The AUTHENTICATE line for what PROTOCOLINFO offered.
Result<std::string> AuthLine(const std::vector<std::string>& info, const std::string& password,
                             const std::string& where) {
  std::string methods, cookie;
  for (const std::string& l : info) {
    if (l.rfind("250-AUTH ", 0) == 0) {
      methods = "," + Field(l, "METHODS") + ",";
      cookie = Field(l, "COOKIEFILE");
    }
  }
  if (methods.find(",NULL,") != std::string::npos) return std::string("AUTHENTICATE");
  if (!password.empty() && methods.find(",HASHEDPASSWORD,") != std::string::npos) {
    return "AUTHENTICATE " + Quoted(password);
  }
  if (methods.find(",COOKIE,") != std::string::npos && !cookie.empty()) {
    std::ifstream in(cookie, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) bytes.clear();
    if (bytes.size() != 32) {
      return Status::Error(EACCES, where + ": cannot read Tor's cookie file " + cookie + " (" +
                                       (bytes.empty() ? std::strerror(errno) : "not 32 bytes") +
                                       "): run as a user who may read it (Debian: group "
                                       "debian-tor), or set control_password");
    }
    static const char kHex[] = "0123456789ABCDEF";
    std::string hex;
    for (unsigned char c : bytes) {
      hex += kHex[c >> 4];
      hex += kHex[c & 15];
    }
    return "AUTHENTICATE " + hex;
  }
  return Status::Error(EACCES, where + ": Tor offers authentication methods " +
                                   methods.substr(1, methods.size() > 2 ? methods.size() - 2 : 0) +
                                   (password.empty() ? "; set control_password on the entry"
                                                     : "; none of them is usable here"));
}

}  // namespace

Result<std::string> TorControlSignal(const std::string& host, int port, const std::string& password,
                                     const std::string& signal, int timeout_ms) {
  const std::string where = "Tor control " + host + ":" + std::to_string(port);
  Control c(where, timeout_ms);
  if (Status s = c.Connect(host, port); !s.ok()) return s;
  std::vector<std::string> lines;
  if (Status s = c.Command("PROTOCOLINFO 1", &lines); !s.ok()) return s;
  if (!Ok(lines)) return Status::Error(EPROTO, where + ": PROTOCOLINFO: " + lines.back());
  auto auth = AuthLine(lines, password, where);
  if (!auth.ok()) return auth.status();
  if (Status s = c.Command(*auth, &lines); !s.ok()) return s;
  if (!Ok(lines)) {
    return Status::Error(EACCES, where + ": authentication refused: " + lines.back());
  }
  if (Status s = c.Command("SIGNAL " + signal, &lines); !s.ok()) return s;
  if (!Ok(lines)) return Status::Error(EPROTO, where + ": SIGNAL " + signal + ": " + lines.back());
  std::vector<std::string> bye;
  (void)c.Command("QUIT", &bye);
  return lines.back();
}

}  // namespace via::tools
