// via run --strict: spare proxy sockets for the SOCKS5 handshakes via run runs itself (static and
// Go programs, --no-shim). See strict_supervisor.h.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "common/proxy_connect.h"
#include "common/socks5_client.h"
#include "tools/strict_supervisor.h"

namespace via::tools::strict {

std::string Supervisor::SpareKey(const Route& route, int domain) {
  if (!route.plan || (route.flags & wire::kFlagRoutes) != 0 || route.plan->isolate ||
      route.plan->per_destination) {
    return "";
  }
  const Socks5Plan& p = *route.plan;
  std::string key = route.network + '\0' + std::to_string(domain) + '\0';
  key.append(p.username, p.username_len);
  key += '\0';
  key.append(p.password, p.password_len);
  return key;
}

bool Supervisor::TakeSpare(const std::string& key, int fd) {
  UniqueFd spare;
  int64_t made = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = spares_.find(key);
    if (it == spares_.end() || !it->second.fd) return false;  // none, or being made
    spare = std::move(it->second.fd);
    made = it->second.made_ms;
    spares_.erase(it);
  }
  if (!proxy::SpareUsable(spare.get(), made)) return false;
  // Our own socket `fd` becomes the spare (blocking, as `fd` was made).
  if (dup3(spare.get(), fd, O_CLOEXEC) < 0) return false;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return true;
}

void Supervisor::RefillSpare(const std::string& key, const Socks5Plan& plan, int domain) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (spares_.count(key) != 0) return;
    if (spares_.size() >= kMaxSpares) {  // the oldest made goes (a process long gone, likely)
      auto oldest = spares_.end();
      for (auto it = spares_.begin(); it != spares_.end(); ++it) {
        if (it->second.fd &&
            (oldest == spares_.end() || it->second.made_ms < oldest->second.made_ms)) {
          oldest = it;
        }
      }
      if (oldest == spares_.end()) return;  // all being made
      spares_.erase(oldest);
    }
    spares_[key];  // being made: no other worker makes one too
  }
  UniqueFd fd(socket(domain, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP));
  bool ok = false;
  if (fd) {
    sockaddr_storage ss;
    socklen_t len = 0;
    char ep[80], why[768];  // room for the machine's longest error()
    socks5::Client greeting;
    wire::Addr none;
    none.family = 4;
    greeting.Start(nullptr, none, 0, plan.username, plan.username_len, plan.password,
                   plan.password_len);
    greeting.SetGreetOnly();
    ok = socks5::plan_detail::PickEndpoint(fd.get(), plan, &ss, &len, ep, sizeof ep, why,
                                           sizeof why) == 0 &&
         proxy::RunBlocking(fd.get(), greeting, ::connect, reinterpret_cast<sockaddr*>(&ss), len,
                            ep, plan.timeout_ms, why, sizeof why) == 0;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!ok) {
    spares_.erase(key);
    return;
  }
  Spare& s = spares_[key];
  s.fd = std::move(fd);
  s.made_ms = proxy::MonotonicMs();
}

}  // namespace via::tools::strict
