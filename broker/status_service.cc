#include "broker/status_service.h"

#include <sys/resource.h>
#include <unistd.h>

#include <set>
#include <sstream>
#include <string_view>
#include <vector>

#include "overlays/factory.h"

namespace via::broker {

StatusService::StatusService(BrokerContext* ctx, const ConnectService* connects,
                             const ListenerService* listeners)
    : Service(ctx), connects_(connects), listeners_(listeners), started_ms_(NowMs()) {}

void StatusService::HandleStatus(Client& c, const wire::Message& m) {
  std::string text = Render();
  std::vector<uint8_t> buf(wire::kMaxMessage);
  wire::Writer w(buf.data(), buf.size(), wire::kStatus | wire::kReplyBit, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagText, std::string_view(text).substr(0, 60000));
  Reply(c, w);
}

std::string StatusService::Render() const {
  std::ostringstream out;
  out << "broker pid " << getpid() << ", config " << config().source << " (fingerprint "
      << config().fingerprint << ", " << config().programs.size() << " program rules, "
      << config().policies.size() << " network.select policies), socket "
      << ctx_->options->socket_path << ", up " << (NowMs() - started_ms_) / 1000 << "s\n";
  AppendOverlays(out);
  AppendSessions(out);
  for (const auto& [id, st] : ctx_->overlays->all()) {
    if (st->instance) st->instance->AppendStatus(out);
  }
  AppendListeners(out);
  out << "clients: " << clients().clients().size()
      << ", connects in flight: " << connects_->in_flight() << "\n";
  AppendLoad(out);
  AppendPrograms(out);
  out << "fake addresses: " << pool()->size() << " names (pool " << pool()->v4_cidr() << ", "
      << pool()->v6_cidr() << ")\n";
  return out.str();
}

void StatusService::AppendOverlays(std::ostream& out) const {
  for (const auto& [id, stp] : ctx_->overlays->all()) {
    const OverlayState& st = *stp;
    const config::Overlay& o = *st.overlay;
    out << "overlay " << id << " " << o.kind_name << overlays::EntrySummary(o, config().service);
    if (st.instance) {
      out << " connects ok=" << st.ok << " failed=" << st.failed;
    } else {
      out << " unavailable: " << st.error.message();
    }
    out << "\n";
  }
}

void StatusService::AppendSessions(std::ostream& out) const {
  out << "sessions: " << sessions().size() << "\n";
  for (const auto& [token, s] : sessions().sessions()) {
    size_t clients_of = 0;
    for (const auto& [cid, cl] : clients().clients()) clients_of += cl->session == token;
    out << "session " << token.substr(0, 8) << " network " << s.network
        << " clients=" << clients_of;
    if (s.detached()) out << " detached heirs=" << s.heirs.size();
    out << "\n";
  }
}

void StatusService::AppendListeners(std::ostream& out) const {
  out << "listeners: " << listeners_->listeners().size();
  if (listeners_->draining() != 0) {
    out << " (and " << listeners_->draining() << " closed, draining)";
  }
  out << "\n";
  for (const auto& [lid, e] : listeners_->listeners()) {
    std::string address = e.listener ? e.listener->address() : "";
    out << "listener " << e.overlay->overlay->id << " " << AddrText(e.bound, true) << " "
        << (address.empty() ? "(not ready)" : address) << " accepted=" << e.accepted << " "
        << e.owner << "\n";
  }
}

void StatusService::AppendLoad(std::ostream& out) const {
  int open_fds = OpenDescriptors();
  rlimit rl{};
  uint64_t limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? uint64_t(rl.rlim_cur) : ctx_->nofile_limit;
  const ClientCaps& caps = ctx_->caps;
  out << "descriptors: " << open_fds << " of " << limit << " in use (RLIMIT_NOFILE); "
      << "clients at most " << caps.total << ", " << caps.per_pid << " per process\n";
  if (open_fds >= 0 && limit > 0 && uint64_t(open_fds) * 10 >= limit * 8) {
    out << "WARNING: the broker is near its descriptor limit (" << open_fds << " of " << limit
        << "): new clients may be refused; raise `ulimit -n` for the broker, or "
        << "find the program holding many connections (the program lines below)\n";
  }
  const LoadCounters& l = ctx_->load;
  uint64_t refused = l.refused_fd_limit + l.refused_cap + l.refused_pid_cap + l.refused_other_uid;
  out << "refused clients: " << refused << " since start (descriptor limit " << l.refused_fd_limit
      << ", client cap " << l.refused_cap << ", per-process cap " << l.refused_pid_cap
      << ", other uid " << l.refused_other_uid << ")\n";
  size_t paused = 0;
  for (const auto& [cid, cl] : clients().clients()) paused += cl->conn.paused();
  out << "backpressure: " << l.backpressure_events
      << " time(s) a client's unread replies or connects stopped the broker reading its "
         "requests; "
      << paused << " client(s) paused now; " << ctx_->noisy.dropped()
      << " log line(s) suppressed\n";
}

void StatusService::AppendPrograms(std::ostream& out) const {
  std::set<std::string> programs;
  for (const auto& [cid, cl] : clients().clients()) {
    if (!cl->greeted || cl->control) continue;
    std::string line =
        "program " + PeerText(*cl) + " network " + cl->network +
        (cl->hello_error.ok() ? " (" + cl->origin + ")" : " REFUSED: " + cl->hello_error.message());
    if (programs.size() < 200) programs.insert(line);
  }
  for (const std::string& line : programs) out << line << "\n";
}

}  // namespace via::broker
