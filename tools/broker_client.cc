#include "tools/broker_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace via::tools {

Result<BrokerClient> BrokerClient::Connect(const std::string& path, int timeout_ms) {
  BrokerClient c;
  c.path_ = path;
  // Non-blocking: a full backlog (a stopped or flooded broker) gives EAGAIN at once instead of
  // blocking in connect; tried again until the deadline.
  c.fd_.reset(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!c.fd_) return Status::FromErrno("socket");
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.size() >= sizeof sun.sun_path) {
    return Status::Error(ENAMETOOLONG, "socket path too long: " + path);
  }
  std::memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  int err =
      wire::ConnectUntil(c.fd_.get(), sun, sizeof sun, wire::DeadlineInMs(timeout_ms),
                         [](int s, const sockaddr* a, socklen_t n) { return connect(s, a, n); });
  if (err == ETIMEDOUT) {
    return Status::Error(ETIMEDOUT, "the broker at " + path + " accepted no connection within " +
                                        std::to_string(timeout_ms / 1000) +
                                        " s (its backlog is full: stopped, stuck or overloaded?)");
  }
  if (err != 0) {
    return Status::FromErrno("cannot reach the broker at " + path, err);
  }
  c.rpc_.set_fd(c.fd_.get());
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(c.fd_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) c.broker_pid_ = cred.pid;
  return c;
}

Status BrokerClient::NoAnswer(int64_t ms) const {
  std::string pid = std::to_string(broker_pid_);
  return Status::Error(ETIMEDOUT, "the broker at " + path_ + " (pid " + pid +
                                      ") did not answer within " + std::to_string(ms / 1000) +
                                      " s: it is stopped, stuck or overloaded. If it does not "
                                      "recover, end it (kill " +
                                      pid + ") and run the command again");
}

Result<wire::Message> BrokerClient::Exchange(const wire::Writer& w, int pass_fd,
                                             int64_t timeout_ms) {
  if (timeout_ms < 0) timeout_ms = kQuickMs;
  reply_.resize(wire::kMaxMessage);
  wire::Reply reply(reply_.data(), reply_.size());
  int err = rpc_.Call(w, pass_fd, wire::DeadlineInMs(timeout_ms), &reply);
  switch (err) {
    case 0:
      return reply.message;
    case ETIMEDOUT:
      return NoAnswer(timeout_ms);
    case EPROTO:
      return Status::Error(EPROTO, std::string("malformed reply from the broker: ") + reply.error);
    default:
      return Status::FromErrno(reply.error, err);
  }
}

Status BrokerClient::ReplyStatus(const wire::Message& m) {
  std::string_view text;
  int err = wire::ReplyErrno(m, &text);
  if (err == 0) return Status::Ok();
  return Status::Error(err, text.data() != nullptr ? std::string(text) : std::strerror(err));
}

Result<std::string> BrokerClient::Hello(const std::string& network, const std::string& session) {
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kHello, rpc_.NextId());
  w.PutU16(wire::kTagVersion, wire::kVersion);
  if (!network.empty()) w.PutString(wire::kTagNetwork, network);
  if (!session.empty()) w.PutString(wire::kTagSession, session);
  w.PutU32(wire::kTagPid, uint32_t(getpid()));
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  wire::Field f;
  if (m->Find(wire::kTagFingerprint, &f)) fingerprint_ = std::string(f.str());
  uint32_t wait = 0;
  if (m->Find(wire::kTagWaitMs, &f) && f.u32(&wait)) wait_ms_ = wait;
  if (!m->Find(wire::kTagFlags, &f) || !f.u32(&hello_flags_)) hello_flags_ = 0;
  has_plan_ = (hello_flags_ & wire::kFlagShimSocks5) != 0 &&
              socks5::ReadPlan(*m, hello_flags_, uint32_t(broker_pid_), &plan_);
  fake_nets_.clear();
  m->ForEach([this](const wire::Field& field) {
    wire::Addr a;
    if (field.tag == wire::kTagFakeNet && field.addr(&a)) fake_nets_.push_back(a);
  });
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  return m->Find(wire::kTagNetwork, &f) ? std::string(f.str()) : std::string();
}

Status BrokerClient::HelloControl() {
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, wire::kHello, rpc_.NextId());
  w.PutU16(wire::kTagVersion, wire::kVersion);
  w.PutU32(wire::kTagFlags, wire::kFlagControl);
  w.PutU32(wire::kTagPid, uint32_t(getpid()));
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  wire::Field f;
  if (m->Find(wire::kTagFingerprint, &f)) fingerprint_ = std::string(f.str());
  return ReplyStatus(*m);
}

Result<std::string> BrokerClient::OpenSession(const std::string& network, bool explicit_sel,
                                              const SessionCommand& command, std::string* effective,
                                              const std::vector<std::string>& routes) {
  std::vector<uint8_t> buf(wire::kMaxMessage);
  wire::Writer w(buf.data(), buf.size(), wire::kOpenSession, rpc_.NextId());
  if (!network.empty()) w.PutString(wire::kTagNetwork, network);
  w.PutU32(wire::kTagFlags, explicit_sel ? wire::kFlagSessionExplicit : 0);
  if (!command.exe.empty()) w.PutString(wire::kTagExe, command.exe);
  for (const std::string& r : routes) w.PutString(wire::kTagRoute, r);
  size_t room = 56000;  // the command line is for matching rules; a long one is cut
  for (const std::string& a : command.argv) {
    if (a.size() + 4 > room) break;
    room -= a.size() + 4;
    w.PutString(wire::kTagArgv, a);
  }
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  wire::Field f;
  if (effective != nullptr && m->Find(wire::kTagNetwork, &f)) *effective = std::string(f.str());
  if (!m->Find(wire::kTagSession, &f)) return Status::Error(EPROTO, "no session token in reply");
  return std::string(f.str());
}

Status BrokerClient::SessionChild(const std::string& token, pid_t pid, uint32_t flags) {
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, wire::kSessionChild, rpc_.NextId());
  w.PutString(wire::kTagSession, token);
  w.PutU32(wire::kTagPid, uint32_t(pid));
  if (flags != 0) w.PutU32(wire::kTagFlags, flags);
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

Status BrokerClient::SessionDetach(const std::string& token, const std::vector<pid_t>& pids) {
  std::vector<uint8_t> buf(wire::kMaxMessage);
  wire::Writer w(buf.data(), buf.size(), wire::kSessionDetach, rpc_.NextId());
  w.PutString(wire::kTagSession, token);
  for (size_t i = 0; i < pids.size() && i < 4096; ++i) w.PutU32(wire::kTagPid, uint32_t(pids[i]));
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

Status BrokerClient::Reload() {
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, wire::kReload, rpc_.NextId());
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  wire::Field f;
  if (m->Find(wire::kTagFingerprint, &f)) fingerprint_ = std::string(f.str());
  return ReplyStatus(*m);
}

Result<std::string> BrokerClient::Newnym(const std::string& network, uint32_t* renewed) {
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kNewnym, rpc_.NextId());
  if (!network.empty()) w.PutString(wire::kTagNetwork, network);
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  wire::Field f;
  *renewed = 0;
  if (m->Find(wire::kTagCount, &f)) f.u32(renewed);
  return m->Find(wire::kTagMessage, &f) ? std::string(f.str()) : std::string();
}

Status BrokerClient::ConnectByName(int fd, const std::string& name, uint16_t port) {
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kConnect, rpc_.NextId());
  w.PutString(wire::kTagName, name);
  w.PutU16(wire::kTagPort, port);
  auto m = Exchange(w, fd, kQuickMs + wait_ms_);
  if (!m.ok()) return m.status();
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  // A route to direct: the broker leaves the connect to us, and `via run --strict` has no way
  // out but overlays (its sockets live outside the program's namespace).
  wire::Field f;
  uint32_t flags = 0;
  if (m->Find(wire::kTagFlags, &f) && f.u32(&flags) && (flags & wire::kFlagRouteDirect) != 0) {
    return Status::Error(ENETUNREACH, "a route sends it direct, and strict mode only routes");
  }
  return Status::Ok();
}

Status BrokerClient::ConnectAddr(int fd, const wire::Addr& addr) {
  uint8_t buf[256];
  wire::Writer w(buf, sizeof buf, wire::kConnect, rpc_.NextId());
  w.PutAddr(wire::kTagAddr, addr);
  auto m = Exchange(w, fd, kQuickMs + wait_ms_);
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

Result<std::vector<wire::Addr>> BrokerClient::Resolve(const std::string& name, uint32_t* hold_ms) {
  uint8_t buf[512];
  wire::Writer w(buf, sizeof buf, wire::kResolve, rpc_.NextId());
  w.PutString(wire::kTagName, name);
  if (!w.ok()) return Status::Error(EINVAL, "host name too long: " + name);
  auto m = Exchange(w, -1, kQuickMs + wait_ms_);
  if (!m.ok()) return m.status();
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  std::vector<wire::Addr> out;
  *hold_ms = 0;
  m->ForEach([&](const wire::Field& f) {
    wire::Addr a;
    if (f.tag == wire::kTagAddr && f.addr(&a)) out.push_back(a);
    if (f.tag == wire::kTagHoldMs) f.u32(hold_ms);
  });
  return out;
}

Result<std::string> BrokerClient::DnsQuery(const void* packet, size_t len) {
  std::vector<uint8_t> buf(wire::kMaxMessage);
  wire::Writer w(buf.data(), buf.size(), wire::kDnsQuery, rpc_.NextId());
  w.PutBytes(wire::kTagDnsPacket, packet, len);
  auto m = Exchange(w, -1, kQuickMs + wait_ms_);
  if (!m.ok()) return m.status();
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  wire::Field f;
  return m->Find(wire::kTagDnsPacket, &f) ? std::string(f.str()) : std::string();
}

Result<std::string> BrokerClient::StatusText() {
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, wire::kStatus, rpc_.NextId());
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  wire::Field f;
  return m->Find(wire::kTagText, &f) ? std::string(f.str()) : std::string();
}

Result<std::string> BrokerClient::StatusJson() {
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, wire::kStatus, rpc_.NextId());
  w.PutU32(wire::kTagFlags, wire::kFlagStatusJson);
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  if (Status s = ReplyStatus(*m); !s.ok()) return s;
  wire::Field f;
  if (!m->Find(wire::kTagJson, &f)) {
    return Status::Error(EPROTO, "the broker answered STATUS without JSON (an older broker?)");
  }
  return std::string(f.str());
}

Status BrokerClient::Shutdown() {
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, wire::kShutdown, rpc_.NextId());
  auto m = Exchange(w);
  if (!m.ok()) return m.status();
  return ReplyStatus(*m);
}

}  // namespace via::tools
