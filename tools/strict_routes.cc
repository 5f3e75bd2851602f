// Strict mode's broker connections (strict_supervisor.h): which network each process of the
// command gets, the pools of connections by network, and what via run tells the broker past
// BrokerClient's calls (STRICT_PROCESS, REPORT).
//
// Program rules: via run makes every connect, so the broker's SO_PEERCRED names via run, never
// the program. For a process's first connect (and again after it execs another program) via run
// opens a connection greeted as the session's, sends STRICT_PROCESS with the process's pid and
// greets again: the broker selects for that process exactly as for the shim's HELLO (its own
// rule, else the session). Processes with the session's network share its route and pool.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/proxy_connect.h"
#include "tools/strict_supervisor.h"

namespace via::tools::strict {

namespace {

constexpr size_t kMaxPooled = 16;  // per network
constexpr size_t kMaxRoutes = 4096;

}  // namespace

Result<BrokerClient> Supervisor::Open(pid_t pid, std::string* network) {
  auto c = BrokerClient::Connect(socket_);
  if (!c.ok()) return c.status();
  auto net = c->Hello("", token_);
  if (!net.ok()) return net.status();
  if (pid != 0) {
    uint8_t buf[64];
    wire::Writer w(buf, sizeof buf, wire::kStrictProcess, RawId());
    w.PutU32(wire::kTagPid, uint32_t(pid));
    std::vector<uint8_t> reply;
    wire::Message m;
    std::string msg;
    if (int err = RawExchange(*c, w, -1, BrokerClient::kQuickMs, &reply, &m, &msg); err != 0) {
      return Status::Error(err, "the broker's network for pid " + std::to_string(pid) + ": " + msg);
    }
    net = c->Hello("", token_);
    if (!net.ok()) return net.status();
  }
  if (network != nullptr) *network = *net;
  return c;
}

Result<BrokerClient> Supervisor::Take(const Route& route, pid_t pid) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pools_.find(route.network);
    if (it != pools_.end() && !it->second.empty()) {
      BrokerClient c = std::move(it->second.back());
      it->second.pop_back();
      return c;
    }
  }
  return Open(route.network == network_ ? 0 : pid);
}

void Supervisor::Give(const Route& route, BrokerClient c) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<BrokerClient>& pool = pools_[route.network];
  if (pool.size() < kMaxPooled) pool.push_back(std::move(c));
}

// Requests sent past BrokerClient have ids with the top bit set, which its own counter never
// reaches: an answer left unread (a REPORT's) is skipped by its next exchange (another id).
uint32_t Supervisor::RawId() {
  std::lock_guard<std::mutex> lock(mu_);
  return 0x80000000u | (++next_raw_id_ & 0x7fffffffu);
}

int Supervisor::RawExchange(BrokerClient& c, const wire::Writer& w, int pass_fd, int timeout_ms,
                            std::vector<uint8_t>* buf, wire::Message* m, std::string* msg) {
  if (!w.ok()) {
    *msg = "request too long";
    return EMSGSIZE;
  }
  if (wire::SendDatagram(c.fd(), w.data(), w.size(), pass_fd) < 0) {
    *msg = Errno("sending to the broker");
    return EHOSTUNREACH;
  }
  const uint32_t id = wire::GetLE32(w.data() + 8);
  const int64_t deadline = proxy::MonotonicMs() + timeout_ms;
  buf->resize(wire::kMaxMessage);
  for (;;) {
    pollfd p{c.fd(), POLLIN, 0};
    int64_t left = deadline - proxy::MonotonicMs();
    if (left <= 0 || poll(&p, 1, int(left)) == 0) {
      *msg = "the broker did not answer within " + std::to_string(timeout_ms / 1000) + " s";
      return ETIMEDOUT;
    }
    ssize_t r = recv(c.fd(), buf->data(), buf->size(), MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) {
      *msg = "the broker closed the connection";
      return ECONNRESET;
    }
    if (m->Parse(buf->data(), size_t(r)) == wire::ParseError::kOk && m->id() == id) break;
  }
  wire::Field f;
  uint32_t err = EPROTO;
  if (m->Find(wire::kTagErrno, &f)) f.u32(&err);
  if (m->Find(wire::kTagMessage, &f)) *msg = std::string(f.str());
  if (err != 0 && msg->empty()) *msg = std::strerror(int(err));
  return int(err);
}

Supervisor::RoutePtr Supervisor::RouteFrom(const BrokerClient& c, const std::string& network) {
  auto r = std::make_shared<Route>();
  r->network = network;
  r->flags = c.hello_flags();
  if (c.socks5_plan() != nullptr) r->plan = *c.socks5_plan();
  return r;
}

Supervisor::RoutePtr Supervisor::RouteOf(pid_t pid) {
  char exe[4096];
  std::string link = "/proc/" + std::to_string(pid) + "/exe";
  ssize_t n = readlink(link.c_str(), exe, sizeof exe - 1);
  if (n <= 0) return session_;  // gone: its call fails or is answered anyway
  const std::string key = std::to_string(pid) + " " + std::string(exe, size_t(n));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = routes_.find(key); it != routes_.end()) return it->second;
  }
  std::string network;
  auto c = Open(pid, &network);
  if (!c.ok()) {
    if (!quiet_) Complain("strict: " + c.status().message() + " (the session's network is used)");
    return session_;
  }
  // This process's own route even on the session's network: its SOCKS5 credential may be its
  // own (isolation: process, program), which the session's (via run's) plan does not carry.
  RoutePtr route = RouteFrom(*c, network);
  Give(*route, std::move(*c));
  std::lock_guard<std::mutex> lock(mu_);
  if (routes_.size() >= kMaxRoutes) routes_.clear();
  routes_[key] = route;
  return route;
}

void Supervisor::ReportConnect(const wire::Addr& a, const std::optional<std::string>& name, int err,
                               const char* msg, const RoutePtr& route, pid_t pid) {
  if (err == 0 && (route->flags & wire::kFlagReportEach) == 0) {
    bool flush;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Unreported& u = unreported_[route->network];
      u.route = route;
      u.pid = pid;
      flush = ++u.count >= 256;
    }
    if (flush) FlushReports(true);
    return;
  }
  uint8_t buf[1024];
  wire::Writer w(buf, sizeof buf, wire::kReport, RawId());
  if (name) {
    w.PutString(wire::kTagName, *name);
    w.PutU16(wire::kTagPort, a.port);
  } else {
    w.PutAddr(wire::kTagAddr, a);
  }
  w.PutU32(wire::kTagErrno, uint32_t(err));
  if (err != 0) w.PutString(wire::kTagMessage, msg);
  auto c = Take(*route, pid);
  if (!w.ok() || !c.ok()) return;  // the report is for the log and counters only
  if (wire::SendDatagram(c->fd(), w.data(), w.size(), -1) >= 0) Give(*route, std::move(*c));
}

// The successes counted since the last REPORT COUNT: at 256, a second after the last, and when
// the command exits (`force`).
void Supervisor::FlushReports(bool force) {
  std::map<std::string, Unreported> due;
  std::map<std::string, uint32_t> refused;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (unreported_.empty() && refused_.empty()) return;
    if (!force && proxy::MonotonicMs() - reported_ms_ < 1000) return;
    due.swap(unreported_);
    refused.swap(refused_);
    reported_ms_ = proxy::MonotonicMs();
  }
  for (const auto& [kind, count] : refused) {
    uint8_t buf[256];
    wire::Writer w(buf, sizeof buf, wire::kReport, RawId());
    w.PutU32(wire::kTagCount, count);
    w.PutString(wire::kTagRefused, kind);
    auto c = Take(*session_, 0);
    if (w.ok() && c.ok() && wire::SendDatagram(c->fd(), w.data(), w.size(), -1) >= 0) {
      Give(*session_, std::move(*c));
    }
  }
  for (const auto& [network, u] : due) {
    uint8_t buf[64];
    wire::Writer w(buf, sizeof buf, wire::kReport, RawId());
    w.PutU32(wire::kTagCount, u.count);
    auto c = Take(*u.route, u.pid);
    if (c.ok() && wire::SendDatagram(c->fd(), w.data(), w.size(), -1) >= 0) {
      Give(*u.route, std::move(*c));
    }
  }
}

}  // namespace via::tools::strict
