// STRICT_PROCESS (docs/protocol.md): `via run --strict` serves the connects of every process of
// its command, from one process of its own, so SO_PEERCRED names `via run`, not the program.
// For program rules (via.program) to apply inside a strict session as they do for the shim's
// HELLO, `via run` names the process it asks for; the connection's next HELLO then selects for
// that process. Only a session's opener may, and only for its own descendants (processes it
// could trace anyway, whose seccomp listener it holds).
#include <cerrno>
#include <string>

#include "broker/process_info.h"
#include "broker/session_service.h"

namespace via::broker {

void SessionService::HandleStrictProcess(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kStrictProcess | wire::kReplyBit;
  wire::Field f;
  uint32_t pid = 0;
  if (!m.Find(wire::kTagPid, &f) || !f.u32(&pid) || pid == 0) {
    return ReplyError(c, reply, m.id(), EINVAL, "STRICT_PROCESS needs PID");
  }
  const SessionTable::Session* s = sessions().Find(c.token);
  const ProcessInfo opener = ReadProcess(c.pid());
  if (s == nullptr || !opener.ok || s->root != c.pid() || s->root_start != opener.start) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "STRICT_PROCESS: only the opener of the connection's session may ask");
  }
  const std::vector<ProcessInfo> chain = Ancestry(pid_t(pid));
  bool descendant = false;
  for (size_t i = 1; i < chain.size() && !descendant; ++i) {
    descendant = chain[i].pid == s->root && chain[i].start == s->root_start;
  }
  if (chain.empty() || !descendant) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "STRICT_PROCESS: pid " + std::to_string(pid) +
                          " is not a descendant of the session's opener");
  }
  c.act_for = pid_t(pid);
  c.act_for_start = chain[0].start;
  ReplyOk(c, reply, m.id());
}

std::vector<ProcessInfo> SessionService::SelectionChain(const Client& c) {
  if (c.act_for != 0) {
    std::vector<ProcessInfo> chain = Ancestry(c.act_for);
    if (!chain.empty() && chain[0].start == c.act_for_start) return chain;
  }
  return Ancestry(c.pid());
}

}  // namespace via::broker
