#include "broker/status_service.h"

#include <sys/resource.h>
#include <unistd.h>

#include <map>
#include <sstream>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "overlays/factory.h"

namespace via::broker {

namespace {

// "program pid 123 /usr/bin/curl network app:tor (origin)", or "... REFUSED: why".
std::string ProgramLine(const StatusData::Program& p) {
  return "program pid " + std::to_string(p.pid) + " " + p.exe + " network " + p.network +
         (p.refused ? " REFUSED: " + p.error : " (" + p.origin + ")");
}

void TextHeader(const StatusData& d, std::ostream& out) {
  out << "broker pid " << d.pid << ", config " << d.config << " (fingerprint " << d.fingerprint
      << ", " << d.program_rules << " program rules, " << d.policies
      << " network.select policies), socket " << d.socket << ", up " << d.uptime_s << "s\n";
  for (const StatusData::Overlay& o : d.overlays) {
    out << "overlay " << o.id << " " << o.kind << o.settings;
    if (o.available) {
      out << " connects ok=" << o.connects_ok << " failed=" << o.connects_failed;
    } else {
      out << " unavailable: " << o.error;
    }
    out << "\n";
  }
  out << "sessions: " << d.sessions.size() << "\n";
  for (const StatusData::Session& s : d.sessions) {
    out << "session " << s.token_prefix << " network " << s.network << " clients=" << s.clients;
    if (s.detached) out << " detached heirs=" << s.heirs;
    if (s.strict) out << (s.audit ? " strict (audit)" : " strict");
    if (!s.refused.empty()) {
      out << " refused:";
      const char* sep = " ";
      for (const auto& [kind, n] : s.refused) {
        out << sep << kind << " x" << n;
        sep = ", ";
      }
    }
    out << "\n";
  }
  for (const StatusData::Overlay& o : d.overlays) {
    for (const std::string& line : o.lines) out << line << "\n";
  }
}

void TextLoad(const StatusData& d, std::ostream& out) {
  const int open_fds = d.open_descriptors;
  const uint64_t limit = d.descriptor_limit;
  out << "descriptors: " << open_fds << " of " << limit << " in use (RLIMIT_NOFILE); "
      << "clients at most " << d.caps.total << ", " << d.caps.per_pid << " per process\n";
  if (open_fds >= 0 && limit > 0 && uint64_t(open_fds) * 10 >= limit * 8) {
    out << "WARNING: the broker is near its descriptor limit (" << open_fds << " of " << limit
        << "): new clients may be refused; raise `ulimit -n` for the broker, or "
        << "find the program holding many connections (the program lines below)\n";
  }
  const LoadCounters& l = d.load;
  uint64_t refused = l.refused_fd_limit + l.refused_cap + l.refused_pid_cap + l.refused_other_uid;
  out << "refused clients: " << refused << " since start (descriptor limit " << l.refused_fd_limit
      << ", client cap " << l.refused_cap << ", per-process cap " << l.refused_pid_cap
      << ", other uid " << l.refused_other_uid << ")\n";
  out << "backpressure: " << l.backpressure_events
      << " time(s) a client's unread replies or connects stopped the broker reading its "
         "requests; "
      << d.paused_clients << " client(s) paused now; " << d.log_lines_suppressed
      << " log line(s) suppressed\n";
}

void JsonOverlays(const StatusData& d, Json& j) {
  j.Key("overlays").BeginArray();
  for (const StatusData::Overlay& o : d.overlays) {
    j.BeginObject().Key("id").String(o.id).Key("kind").String(o.kind);
    std::string_view settings = o.settings;
    if (!settings.empty() && settings.front() == ' ') settings.remove_prefix(1);
    j.Key("settings").String(settings).Key("available").Bool(o.available);
    j.Key("error").StringOrNull(o.available ? "" : o.error);
    j.Key("connects_ok").Int(int64_t(o.connects_ok));
    j.Key("connects_failed").Int(int64_t(o.connects_failed));
    j.Key("lines").Strings(o.lines).EndObject();
  }
  j.EndArray();
  j.Key("sessions").BeginArray();
  for (const StatusData::Session& s : d.sessions) {
    j.BeginObject().Key("token_prefix").String(s.token_prefix).Key("network").String(s.network);
    j.Key("clients").Int(int64_t(s.clients)).Key("detached").Bool(s.detached);
    j.Key("heirs").Int(int64_t(s.heirs)).Key("strict").Bool(s.strict).Key("audit").Bool(s.audit);
    j.Key("refused_by_kind").BeginObject();
    for (const auto& [kind, n] : s.refused) j.Key(kind).Int(int64_t(n));
    j.EndObject().EndObject();
  }
  j.EndArray();
  j.Key("listeners").BeginArray();
  for (const StatusData::Listener& l : d.listeners) {
    j.BeginObject().Key("overlay").String(l.overlay).Key("bound").String(l.bound);
    j.Key("address").StringOrNull(l.address).Key("accepted").Int(int64_t(l.accepted));
    j.Key("owner").String(l.owner).EndObject();
  }
  j.EndArray();
  j.Key("listeners_draining").Int(int64_t(d.listeners_draining));
}

void JsonLoad(const StatusData& d, Json& j) {
  j.Key("load").BeginObject();
  j.Key("open_descriptors").Int(d.open_descriptors);
  j.Key("descriptor_limit").Int(int64_t(d.descriptor_limit));
  j.Key("max_clients").Int(int64_t(d.caps.total));
  j.Key("max_clients_per_process").Int(int64_t(d.caps.per_pid));
  j.Key("max_connects_in_flight").Int(int64_t(d.caps.ops));
  j.Key("refused").BeginObject();
  j.Key("descriptor_limit").Int(int64_t(d.load.refused_fd_limit));
  j.Key("client_cap").Int(int64_t(d.load.refused_cap));
  j.Key("per_process_cap").Int(int64_t(d.load.refused_pid_cap));
  j.Key("other_uid").Int(int64_t(d.load.refused_other_uid));
  j.EndObject();
  j.Key("backpressure_events").Int(int64_t(d.load.backpressure_events));
  j.Key("paused_clients").Int(int64_t(d.paused_clients));
  j.Key("log_lines_suppressed").Int(int64_t(d.log_lines_suppressed));
  j.EndObject();
}

}  // namespace

std::string RenderStatusText(const StatusData& d) {
  std::ostringstream out;
  TextHeader(d, out);
  out << "listeners: " << d.listeners.size();
  if (d.listeners_draining != 0) out << " (and " << d.listeners_draining << " closed, draining)";
  out << "\n";
  for (const StatusData::Listener& l : d.listeners) {
    out << "listener " << l.overlay << " " << l.bound << " "
        << (l.address.empty() ? "(not ready)" : l.address) << " accepted=" << l.accepted << " "
        << l.owner << "\n";
  }
  out << "clients: " << d.clients << ", connects in flight: " << d.connects_in_flight << "\n";
  TextLoad(d, out);
  for (const StatusData::Program& p : d.programs) out << ProgramLine(p) << "\n";
  out << "fake addresses: " << d.fake_names << " names (pool " << d.fake_ipv4 << ", " << d.fake_ipv6
      << ")\n";
  return out.str();
}

std::string RenderStatusJson(const StatusData& d) {
  Json j;
  j.BeginObject();
  j.Key("broker").BeginObject().Key("pid").Int(d.pid).Key("config").String(d.config);
  j.Key("fingerprint").String(d.fingerprint).Key("socket").String(d.socket);
  j.Key("program_rules").Int(int64_t(d.program_rules)).Key("policies").Int(int64_t(d.policies));
  j.Key("uptime_s").Int(d.uptime_s).EndObject();
  JsonOverlays(d, j);
  j.Key("clients").Int(int64_t(d.clients));
  j.Key("connects_in_flight").Int(int64_t(d.connects_in_flight));
  JsonLoad(d, j);
  j.Key("programs").BeginArray();
  for (const StatusData::Program& p : d.programs) {
    j.BeginObject().Key("pid").Int(p.pid).Key("exe").String(p.exe);
    j.Key("network").String(p.network);
    if (p.refused) {
      j.Key("origin").Null().Key("error").String(p.error);
    } else {
      j.Key("origin").String(p.origin).Key("error").Null();
    }
    j.EndObject();
  }
  j.EndArray();
  j.Key("fake_addresses").BeginObject().Key("names").Int(int64_t(d.fake_names));
  j.Key("ipv4").String(d.fake_ipv4).Key("ipv6").String(d.fake_ipv6).EndObject();
  j.EndObject();
  return j.str();
}

StatusService::StatusService(BrokerContext* ctx, const ConnectService* connects,
                             const ListenerService* listeners)
    : Service(ctx), connects_(connects), listeners_(listeners), started_ms_(NowMs()) {}

void StatusService::HandleStatus(Client& c, const wire::Message& m) {
  wire::Field f;
  uint32_t flags = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&flags);
  const StatusData d = Collect();
  std::vector<uint8_t> buf(wire::kMaxMessage);
  wire::Writer w(buf.data(), buf.size(), wire::kStatus | wire::kReplyBit, m.id());
  w.PutU32(wire::kTagErrno, 0);
  if ((flags & wire::kFlagStatusJson) != 0) {
    // Never cut: a JSON document that does not fit is an EMSGSIZE error (ClientSink::Reply).
    w.PutString(wire::kTagJson, RenderStatusJson(d));
  } else {
    std::string text = RenderStatusText(d);
    w.PutString(wire::kTagText, std::string_view(text).substr(0, 60000));
  }
  Reply(c, w);
}

StatusData StatusService::Collect() const {
  StatusData d;
  d.pid = getpid();
  d.config = config().source;
  d.fingerprint = config().fingerprint;
  d.program_rules = config().programs.size();
  d.policies = config().policies.size();
  d.socket = ctx_->options->socket_path;
  d.uptime_s = (NowMs() - started_ms_) / 1000;
  CollectOverlays(&d);
  CollectSessions(&d);
  CollectListeners(&d);
  d.clients = clients().clients().size();
  d.connects_in_flight = connects_->in_flight();
  CollectLoad(&d);
  CollectPrograms(&d);
  d.fake_names = pool()->size();
  d.fake_ipv4 = pool()->v4_cidr();
  d.fake_ipv6 = pool()->v6_cidr();
  return d;
}

void StatusService::CollectOverlays(StatusData* d) const {
  for (const auto& [id, st] : ctx_->overlays->all()) {
    StatusData::Overlay o;
    o.id = id;
    o.kind = st->overlay->kind_name;
    o.settings = overlays::EntrySummary(*st->overlay, config().service);
    o.available = st->instance != nullptr;
    o.error = st->error.message();
    o.connects_ok = st->ok;
    o.connects_failed = st->failed;
    if (st->instance) {
      std::ostringstream lines;
      st->instance->AppendStatus(lines);
      std::istringstream in(lines.str());
      for (std::string line; std::getline(in, line);) o.lines.push_back(line);
    }
    d->overlays.push_back(std::move(o));
  }
}

void StatusService::CollectSessions(StatusData* d) const {
  for (const auto& [token, s] : sessions().sessions()) {
    StatusData::Session out;
    out.token_prefix = token.substr(0, 8);
    out.network = s.network;
    for (const auto& [cid, cl] : clients().clients()) out.clients += cl->session == token;
    out.detached = s.detached();
    out.heirs = s.heirs.size();
    out.strict = s.strict;
    out.audit = s.audit;
    out.refused.assign(s.refused.begin(), s.refused.end());
    d->sessions.push_back(std::move(out));
  }
}

void StatusService::CollectListeners(StatusData* d) const {
  for (const auto& [lid, e] : listeners_->listeners()) {
    d->listeners.push_back({e.overlay->overlay->id, AddrText(e.bound, true),
                            e.listener ? e.listener->address() : "", e.accepted, e.owner});
  }
  d->listeners_draining = listeners_->draining();
}

void StatusService::CollectLoad(StatusData* d) const {
  d->open_descriptors = OpenDescriptors();
  rlimit rl{};
  d->descriptor_limit =
      getrlimit(RLIMIT_NOFILE, &rl) == 0 ? uint64_t(rl.rlim_cur) : ctx_->nofile_limit;
  d->caps = ctx_->caps;
  d->load = ctx_->load;
  for (const auto& [cid, cl] : clients().clients()) d->paused_clients += cl->conn.paused();
  d->log_lines_suppressed = ctx_->noisy.dropped();
}

void StatusService::CollectPrograms(StatusData* d) const {
  // One per program (not per thread), in the order of their lines, as many as 200.
  std::map<std::string, StatusData::Program> programs;
  for (const auto& [cid, cl] : clients().clients()) {
    if (!cl->greeted || cl->control) continue;
    StatusData::Program p;
    p.pid = cl->pid();
    p.exe = ExePath(p.pid);
    p.network = cl->network;
    p.refused = !cl->hello_error.ok();
    p.origin = cl->origin;
    p.error = cl->hello_error.message();
    if (programs.size() < 200) programs.emplace(ProgramLine(p), std::move(p));
  }
  for (auto& [line, p] : programs) d->programs.push_back(std::move(p));
}

}  // namespace via::broker
