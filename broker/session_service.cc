#include "broker/session_service.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <utility>

namespace via::broker {

namespace {

bool Alive(pid_t pid, uint64_t start) {
  ProcessInfo p = ReadProcess(pid);
  return p.ok && p.start == start;
}

// Records, for every process of the chain, the groups it has now (docs/configuration.md,
// "Program rules, policy and precedence"): they stay with it across exec and argv changes.
void RecordChainGroups(SessionTable& table, const std::vector<ProcessInfo>& chain,
                       const Selection& sel) {
  for (size_t i = 0; i < chain.size() && i < sel.chain_groups.size(); ++i) {
    const RecordedGroups& g = sel.chain_groups[i];
    if (chain[i].pid > 0 && !g.groups.empty()) {
      table.RecordGroups(chain[i].pid, chain[i].start, g.groups, g.reasons, Alive);
    }
  }
}

}  // namespace

SessionService::~SessionService() {
  if (prune_timer_ != 0) loop()->CancelTimer(prune_timer_);
}

void SessionService::HandleHello(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kHello | wire::kReplyBit;
  wire::Field f;
  uint16_t version = wire::kVersion;
  if (m.Find(wire::kTagVersion, &f) && (!f.u16(&version) || version != wire::kVersion)) {
    c.greeted = false;
    return ReplyError(c, reply, m.id(), EPROTO,
                      "protocol version " + std::to_string(version) +
                          " is not supported (this broker speaks version " +
                          std::to_string(wire::kVersion) + ")");
  }
  uint32_t hello_flags = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&hello_flags);
  if ((hello_flags & wire::kFlagExecHello) != 0) return HandleExecHello(c, m);
  c.has_claim = m.Find(wire::kTagNetwork, &f) && f.len > 0;
  c.claim = c.has_claim ? std::string(f.str()) : std::string();
  c.token = m.Find(wire::kTagSession, &f) ? std::string(f.str()) : std::string();
  c.control = (hello_flags & wire::kFlagControl) != 0;
  c.greeted = true;
  ApplyHello(c);
  std::vector<uint8_t> buf(16384);  // MESSAGE and ORIGIN are capped well below this
  wire::Writer w(buf.data(), buf.size(), reply, m.id());
  w.PutU32(wire::kTagErrno, uint32_t(c.hello_error.code()));
  if (!c.hello_error.ok()) {
    w.PutString(wire::kTagMessage, std::string_view(c.hello_error.message()).substr(0, 2500));
  }
  w.PutString(wire::kTagNetwork, std::string_view(c.network).substr(0, 512));
  // The shim reads HELLO replies into 4 KiB (its stack): MESSAGE (2500) + ORIGIN (500) + the
  // rest fit.
  w.PutString(wire::kTagOrigin, std::string_view(c.origin).substr(0, 500));
  w.PutString(wire::kTagFingerprint, config().fingerprint);
  uint32_t flags = HelloFlags(c);
  c.shim_plan = ShimPlan(c, &w);
  if (!c.shim_plan.empty()) {
    flags |= wire::kFlagShimSocks5;
    const auto plan = c.overlay->instance->program_socks5(c.who);
    if (plan->isolate_streams) flags |= wire::kFlagIsolate;
    if (!plan->destination_prefix.empty()) flags |= wire::kFlagIsolateDestination;
    if (plan->pipeline) flags |= wire::kFlagPipeline;
    if (plan->optimistic_data) flags |= wire::kFlagOptimistic;
    if (log()->should_log(spdlog::level::debug)) flags |= wire::kFlagReportEach;
  }
  if (c.routes != nullptr && !c.routes->empty()) {
    flags |= wire::kFlagRoutes;
    if (c.shim_plan.empty()) {  // a shim plan carries them already
      w.PutAddr(wire::kTagFakeNet, pool()->V4Range());
      w.PutAddr(wire::kTagFakeNet, pool()->V6Range());
    }
    // The shim reads a HELLO reply into 4 KiB: routes get at most 2000 bytes of it. More
    // routes than that are sent as "everything": every name and address asks the broker, which
    // has them all (correct, only slower for a direct program).
    size_t bytes = 0;
    for (const config::Route& r : *c.routes) bytes += 4 + (r.has_cidr ? 20 : r.name.size());
    if (bytes > 2000) {
      w.PutString(wire::kTagRouteName, "*");
      wire::Addr all4, all6;
      all4.family = 4;
      all6.family = 6;
      w.PutAddr(wire::kTagRouteNet, all4);
      w.PutAddr(wire::kTagRouteNet, all6);
    } else {
      for (const config::Route& r : *c.routes) {
        if (!r.has_cidr) {
          w.PutString(wire::kTagRouteName, r.name);
          continue;
        }
        wire::Addr a;
        a.family = r.cidr.family;
        a.port = uint16_t(r.cidr.prefix);
        std::memcpy(a.bytes, r.cidr.bytes, a.addr_len());
        w.PutAddr(wire::kTagRouteNet, a);
      }
    }
  }
  w.PutU32(wire::kTagFlags, flags);
  w.PutU32(wire::kTagWaitMs, OverlayWaitMs(c));
  Reply(c, w);
}

void SessionService::HandleExecHello(Client& c, const wire::Message& m) {
  // A process about to exec in place: record the groups it has now, and nothing else.
  c.greeted = false;
  SelectRequest req = MakeRequest(Ancestry(c.pid()));
  Selection sel = Select(config(), req);
  RecordChainGroups(sessions(), req.chain, sel);
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, wire::kHello | wire::kReplyBit, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutU32(wire::kTagFlags, sel.groups.empty() ? 0 : wire::kFlagHasGroups);
  Reply(c, w);
}

uint32_t SessionService::HelloFlags(const Client& c) const {
  uint32_t flags = 0;
  if (c.hello_error.ok() && c.overlay == nullptr) flags |= wire::kFlagDirect;
  if (config().service.loopback == config::LoopbackPolicy::kOverlay) {
    flags |= wire::kFlagLoopbackRoute;
  }
  if (config().service.loopback == config::LoopbackPolicy::kRefuse ||
      (c.overlay != nullptr && c.overlay->none)) {
    flags |= wire::kFlagLoopbackRefuse;  // under none, the host's own services are refused too
  }
  if (config().service.unrouted_exec_allowed) flags |= wire::kFlagUnroutedExecAllow;
  const SessionTable::Session* s = c.session.empty() ? nullptr : sessions().Find(c.session);
  if (s != nullptr && s->strict) flags |= wire::kFlagStrict;
  return flags;
}

uint32_t SessionService::OverlayWaitMs(const Client& c) const {
  int64_t ms = -1;
  if (c.overlay != nullptr && c.overlay->instance) ms = c.overlay->instance->wait_bound_ms();
  // A route may send any request of this client through its overlay: the longest of theirs.
  if (c.routes != nullptr) {
    for (const config::Route& r : *c.routes) {
      auto it = ctx_->overlays->all().find(r.network);
      if (it != ctx_->overlays->all().end() && it->second->instance) {
        ms = std::max(ms, it->second->instance->wait_bound_ms());
      }
    }
  }
  if (ms < 0) return 0;
  return uint32_t(std::min<int64_t>(ms + 1000, 24 * 3600 * 1000));
}

std::string SessionService::ShimPlan(const Client& c, wire::Writer* w) const {
  if (!c.hello_error.ok() || c.overlay == nullptr || !c.overlay->instance ||
      !config().service.handshake_in_program || c.control) {
    return "";
  }
  const overlays::Overlay& o = *c.overlay->instance;
  const std::optional<overlays::Overlay::ProgramSocks5> plan = o.program_socks5(c.who);
  if (!plan) return "";
  const overlays::Overlay::ProgramSocks5& s = *plan;
  std::string key = c.overlay->overlay->id;
  for (const overlays::Endpoint& e : o.endpoints()) {
    wire::Addr a;
    if (!wire::AddrFromSockaddr(reinterpret_cast<const sockaddr*>(&e.addr), e.len, &a)) continue;
    if (w != nullptr) w->PutAddr(wire::kTagProxy, a);
    key += " " + e.text;
  }
  if (!s.destination_prefix.empty()) {
    if (w != nullptr) w->PutString(wire::kTagUsername, s.destination_prefix);
    key += " destination " + s.destination_prefix;
  } else if (!s.isolate_streams && (!s.username.empty() || !s.password.empty())) {
    if (w != nullptr) {
      w->PutString(wire::kTagUsername, s.username);
      w->PutString(wire::kTagPassword, s.password);
    }
    key += " user " + s.username + " " + s.password;
  }
  if (s.isolate_streams) key += " isolate";
  if (s.pipeline) key += " pipeline";  // a reload that changes it reaches running shims
  if (s.optimistic_data) key += " optimistic";
  const uint32_t timeout = uint32_t(o.connect_timeout_ms());
  key += " " + std::to_string(timeout);
  if (w != nullptr) {
    w->PutU32(wire::kTagTimeoutMs, timeout);
    w->PutAddr(wire::kTagFakeNet, pool()->V4Range());
    w->PutAddr(wire::kTagFakeNet, pool()->V6Range());
  }
  return key;
}

void SessionService::HandleOpenSession(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kOpenSession | wire::kReplyBit;
  // `via run` opens one session per connection; a client that opens more and more would grow
  // the table without bound (its sessions end only with its connection).
  constexpr size_t kMaxSessionsPerClient = 16;
  if (c.sessions_opened >= kMaxSessionsPerClient) {
    return ReplyError(c, reply, m.id(), EAGAIN,
                      "this connection already opened " + std::to_string(c.sessions_opened) +
                          " sessions (at most " + std::to_string(kMaxSessionsPerClient) +
                          " per connection; `via run` opens one)");
  }
  std::vector<ProcessInfo> opener = Ancestry(c.pid());
  if (opener.empty()) {
    return ReplyError(c, reply, m.id(), ESRCH,
                      "cannot read /proc for pid " + std::to_string(c.pid()));
  }
  ProcessInfo command;
  SelectRequest req = CommandRequest(m, opener, &command);
  Selection sel = Select(config(), req);
  RecordChainGroups(sessions(), req.chain, sel);
  if (!sel.error.ok()) {
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kSession, &suppressed)) {
      log()->warn("session refused for {} (command {}): {}{}", PeerText(c), Describe(command),
                  sel.error.message(), SuppressedText(suppressed));
    }
    return ReplyError(c, reply, m.id(), sel.error.code(), sel.error.message());
  }
  std::shared_ptr<OverlayState> st;
  std::string id;
  if (Status s = ctx_->overlays->Select(sel.network, &st, &id); !s.ok()) {
    return ReplyError(c, reply, m.id(), s.code(), s.message());
  }
  if (st != nullptr && st->instance) st->instance->Start();  // `via run`: ahead of its program
  std::vector<config::Route> routes;
  if (Status s = SessionRoutes(m, sel, &routes); !s.ok()) {
    if (uint64_t suppressed = 0; LogAllowed(Noisy::kSession, &suppressed)) {
      log()->warn("session refused for {} (command {}): {}{}", PeerText(c), Describe(command),
                  s.message(), SuppressedText(suppressed));
    }
    return ReplyError(c, reply, m.id(), s.code(), s.message());
  }
  auto session = sessions().Open(id, c.id, NowMs());
  if (!session.ok()) {
    return ReplyError(c, reply, m.id(), session.status().code(), session.status().message());
  }
  sessions().FindMutable((*session)->token)->routes = std::move(routes);
  SessionOpened(c, m, (*session)->token, id, opener, sel);
}

// The session's `via run --route` specs (ROUTE, in order), each checked against security.policy
// as an explicit selection of its network would be, for the groups of the command and its
// opener: a group that may not select a network cannot reach it by a route either. `block`
// takes a destination away and is always allowed.
Status SessionService::SessionRoutes(const wire::Message& m, const Selection& sel,
                                     std::vector<config::Route>* out) const {
  std::vector<std::string> specs;
  m.ForEach([&](const wire::Field& f) {
    if (f.tag == wire::kTagRoute) specs.emplace_back(f.str());
  });
  constexpr size_t kMaxSessionRoutes = 64;
  if (specs.size() > kMaxSessionRoutes) {
    return Status::Error(EINVAL, "at most " + std::to_string(kMaxSessionRoutes) + " --route");
  }
  std::vector<std::string> groups = sel.groups;
  groups.insert(groups.end(), sel.selector_groups.begin(), sel.selector_groups.end());
  for (const std::string& spec : specs) {
    Result<config::Route> r = config::ParseRouteSpec(spec, config());
    if (!r.ok()) return Status::Error(EINVAL, r.status().message());
    if (r->network != config::kBlockNetwork) {
      config::PolicyVerdict v = config::CheckSelect(config().policies, groups, r->network);
      if (!v.allowed) {
        return Status::Error(EACCES, "--route " + spec + " refused: network.select of " +
                                         r->network + " is denied by security.policy " +
                                         v.policy->id + " (" + v.policy->where() + ")" +
                                         (v.group.empty() ? std::string(" (it applies to every "
                                                                        "process)")
                                                          : " for group " + v.group));
      }
    }
    out->push_back(std::move(*r));
  }
  return Status::Ok();
}

SelectRequest SessionService::CommandRequest(const wire::Message& m,
                                             const std::vector<ProcessInfo>& opener,
                                             ProcessInfo* command) const {
  wire::Field f;
  if (m.Find(wire::kTagExe, &f)) command->exe = std::string(f.str());
  m.ForEach([&](const wire::Field& af) {
    if (af.tag == wire::kTagArgv) command->argv.emplace_back(af.str());
  });
  command->ok = true;
  std::vector<ProcessInfo> chain{*command};
  chain.insert(chain.end(), opener.begin(), opener.end());
  SelectRequest req = MakeRequest(std::move(chain));
  req.has_claim = m.Find(wire::kTagNetwork, &f) && f.len > 0;
  if (req.has_claim) req.claim = std::string(f.str());
  uint32_t flags = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&flags);
  req.force_explicit = req.has_claim && (flags & wire::kFlagSessionExplicit) != 0;
  req.selected_by_parent = true;  // the opener selects for the command it starts
  return req;
}

void SessionService::SessionOpened(Client& c, const wire::Message& m, const std::string& token,
                                   const std::string& id, const std::vector<ProcessInfo>& opener,
                                   const Selection& sel) {
  ++c.sessions_opened;
  SessionTable::Session* s = sessions().FindMutable(token);
  s->explicit_sel = sel.explicit_sel;
  s->root = opener[0].pid;
  s->root_start = opener[0].start;
  s->groups = sel.selector_groups;
  if (!sel.chain_groups.empty()) {
    s->command_groups = sel.chain_groups[0].groups;
    s->command_reasons = sel.chain_groups[0].reasons;
  }
  if (uint64_t suppressed = 0; LogAllowed(Noisy::kSession, &suppressed)) {
    log()->info("session {} opened for {} by {}: {}{}", s->token.substr(0, 8), id, PeerText(c),
                sel.origin, SuppressedText(suppressed));
  }
  std::vector<uint8_t> buf(8192);
  wire::Writer w(buf.data(), buf.size(), wire::kOpenSession | wire::kReplyBit, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutString(wire::kTagSession, s->token);
  w.PutString(wire::kTagNetwork, id);
  w.PutString(wire::kTagOrigin, std::string_view(sel.origin).substr(0, kMaxMessageText));
  Reply(c, w);
  clients().UpdateIdle();
}

void SessionService::HandleSessionChild(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kSessionChild | wire::kReplyBit;
  wire::Field f;
  uint32_t pid = 0;
  if (!m.Find(wire::kTagSession, &f)) {
    return ReplyError(c, reply, m.id(), EINVAL, "SESSION_CHILD needs SESSION and PID");
  }
  SessionTable::Session* s = sessions().FindMutable(f.str());
  if (s == nullptr || s->owner != c.id) {
    return ReplyError(c, reply, m.id(), EPERM, "SESSION_CHILD: not a session of this connection");
  }
  if (!m.Find(wire::kTagPid, &f) || !f.u32(&pid) || pid == 0) {
    return ReplyError(c, reply, m.id(), EINVAL, "SESSION_CHILD needs SESSION and PID");
  }
  if (s->child != 0) return ReplyError(c, reply, m.id(), EEXIST, "the session has its command");
  ProcessInfo p = ReadProcess(pid_t(pid));
  if (!p.ok || p.ppid != s->root) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "pid " + std::to_string(pid) + " is not a child of the session's opener");
  }
  s->child = p.pid;
  s->child_start = p.start;
  uint32_t flags = 0;
  if (m.Find(wire::kTagFlags, &f)) f.u32(&flags);
  s->strict = (flags & wire::kFlagSessionStrict) != 0;
  s->audit = s->strict && (flags & wire::kFlagSessionAudit) != 0;
  // It waits for this reply before it execs: its groups are recorded before it can shed them.
  sessions().RecordGroups(p.pid, p.start, s->command_groups, s->command_reasons, Alive);
  ReplyOk(c, reply, m.id());
}

void SessionService::HandleSessionDetach(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kSessionDetach | wire::kReplyBit;
  wire::Field f;
  if (!m.Find(wire::kTagSession, &f)) {
    return ReplyError(c, reply, m.id(), EINVAL, "SESSION_DETACH needs SESSION");
  }
  SessionTable::Session* s = sessions().FindMutable(f.str());
  if (s == nullptr || s->owner != c.id) {
    return ReplyError(c, reply, m.id(), EPERM, "SESSION_DETACH: not a session of this connection");
  }
  // Only the opener's own children, as /proc says now.
  std::vector<std::pair<pid_t, uint64_t>> heirs;
  m.ForEach([&](const wire::Field& pf) {
    uint32_t pid = 0;
    if (pf.tag != wire::kTagPid || !pf.u32(&pid) || pid == 0 || heirs.size() >= 4096) return;
    if (pid_t(pid) == getpid()) return;  // a broker daemonized inside the session: not an heir
    ProcessInfo p = ReadProcess(pid_t(pid));
    if (p.ok && p.ppid == s->root) heirs.emplace_back(p.pid, p.start);
  });
  if (heirs.empty())
    return ReplyError(c, reply, m.id(), ESRCH, "none of them is the opener's child");
  log()->info("session {} carried on by {} process(es) after {} exits", s->token.substr(0, 8),
              heirs.size(), PeerText(c));
  sessions().Detach(s, std::move(heirs));
  ReplyOk(c, reply, m.id());
  PruneDetached();
}

void SessionService::PruneDetached() {
  if (prune_timer_ != 0) loop()->CancelTimer(prune_timer_);
  prune_timer_ = 0;
  size_t ended = sessions().PruneDetached([](pid_t pid, uint64_t start) {
    ProcessInfo p = ReadProcess(pid);
    return p.ok && p.start == start;
  });
  if (ended > 0) log()->info("{} detached session(s) ended: their processes are gone", ended);
  if (sessions().detached_count() > 0) {
    prune_timer_ = loop()->AddTimer(2000, [this] {
      prune_timer_ = 0;
      PruneDetached();
    });
  }
  clients().UpdateIdle();
}

SelectRequest SessionService::MakeRequest(std::vector<ProcessInfo> chain) const {
  SelectRequest req;
  req.chain = std::move(chain);
  // Copies: the selector must not hold pointers into the table past this call.
  auto view = [](const SessionTable::Session& s) {
    SessionInfo v;
    v.token = s.token;
    v.network = s.network;
    v.explicit_sel = s.explicit_sel;
    v.root = s.root;
    v.root_start = s.root_start;
    v.child = s.child;
    v.child_start = s.child_start;
    v.groups = s.groups;
    v.heirs = s.heirs;
    return v;
  };
  auto holder = std::make_shared<std::vector<SessionInfo>>();
  holder->reserve(sessions().size());
  for (const auto& [token, s] : sessions().sessions()) holder->push_back(view(s));
  req.session_rooted_at = [holder](const ProcessInfo& p) -> const SessionInfo* {
    const SessionInfo* best = nullptr;
    for (const SessionInfo& s : *holder) {
      if (p.pid != 0 && (s.IsRoot(p) || s.IsHeir(p))) best = &s;
    }
    return best;
  };
  req.session_by_token = [holder](std::string_view token) -> const SessionInfo* {
    for (const SessionInfo& s : *holder) {
      if (s.token == token) return &s;
    }
    return nullptr;
  };
  auto recorded = std::make_shared<std::map<std::pair<pid_t, uint64_t>, RecordedGroups>>();
  for (const ProcessInfo& p : req.chain) {
    if (const auto* r = sessions().FindGroups(p.pid, p.start)) {
      (*recorded)[{p.pid, p.start}] = RecordedGroups{r->first, r->second};
    }
  }
  req.recorded_groups = [recorded](const ProcessInfo& p) -> const RecordedGroups* {
    auto it = recorded->find({p.pid, p.start});
    return it == recorded->end() ? nullptr : &it->second;
  };
  return req;
}

void SessionService::ApplyHello(Client& c) {
  c.generation = ctx_->overlays->generation();
  c.overlay.reset();
  c.session.clear();
  c.hello_error = Status::Ok();
  if (c.control) {
    c.network = "direct";
    c.origin = "control connection";
    return;
  }
  SelectRequest req = MakeRequest(SelectionChain(c));
  req.has_claim = c.has_claim;
  req.claim = c.claim;
  req.token = c.token;
  Selection sel = Select(config(), req);
  RecordChainGroups(sessions(), req.chain, sel);
  c.origin = sel.origin;
  c.who = overlays::Requester{c.pid(), 0, "", ""};
  if (!req.chain.empty()) {
    c.who.pid = req.chain[0].pid;  // the STRICT_PROCESS, when there is one
    c.who.start = req.chain[0].start;
    c.who.exe = req.chain[0].exe;
  }
  if (sel.error.ok()) {
    c.hello_error = ctx_->overlays->Select(sel.network, &c.overlay, &c.network);
    if (!c.token.empty()) c.session = c.token;
    c.who.session = c.session;
    // The first program selecting an overlay starts what it needs before its first connect
    // (Overlay::Start, e.g. a session that takes 20 s); overlays nobody selects never contact
    // their far side.
    if (c.hello_error.ok() && c.overlay != nullptr && c.overlay->instance) {
      c.overlay->instance->Start();
    }
  } else {
    c.hello_error = sel.error;
    c.network = sel.network;
  }
  c.routes.reset();
  if (c.hello_error.ok() && (c.overlay == nullptr || !c.overlay->none)) {
    // Routes apply to every process the shim serves, ahead of its own network; the network none
    // takes everything away, routes included.
    const SessionTable::Session* s = c.session.empty() ? nullptr : sessions().Find(c.session);
    auto routes = std::make_shared<std::vector<config::Route>>(
        config::EffectiveRoutes(config(), s != nullptr ? s->routes : std::vector<config::Route>{}));
    for (config::Route& r : ctx_->overlays->LearnedRoutes()) routes->push_back(std::move(r));
    if (!routes->empty()) c.routes = std::move(routes);
  }
  if (!c.hello_error.ok()) {
    std::string key = std::to_string(c.pid()) + " " + c.hello_error.message();
    if (logged_network_errors_.size() < 10000 && logged_network_errors_.insert(key).second) {
      log()->warn("HELLO from {}: {}", PeerText(c), c.hello_error.message());
    }
  } else {
    log()->debug("HELLO from {}: network {} ({})", PeerText(c), c.network, c.origin);
  }
}

}  // namespace via::broker
