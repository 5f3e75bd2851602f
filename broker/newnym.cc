// Server::HandleNewnym: `via newnym` (docs/protocol.md, "NEWNYM"). Each selected overlay starts
// a new identity (Overlay::NewIdentity: for SOCKS5, a new epoch in every isolation credential);
// shims holding credentials of the old one are made to greet again. Tor's own SIGNAL NEWNYM
// goes to its control port from the CLI, not from here: the broker's loop never waits on it.
#include <cerrno>
#include <string>

#include "broker/server.h"

namespace via::broker {

void Server::HandleNewnym(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kNewnym | wire::kReplyBit;
  wire::Field f;
  std::string only;
  if (m.Find(wire::kTagNetwork, &f) && f.len > 0) {
    const config::Overlay* o = config_->Find(f.str());
    if (o == nullptr) {
      return ReplyError(c, reply, m.id(), ENOENT,
                        "NEWNYM: unknown overlay \"" + std::string(f.str()) + "\"");
    }
    only = o->id;
  }
  std::string text;
  uint32_t renewed = 0;
  for (auto& [id, st] : overlays_) {
    if (!only.empty() && id != only) continue;
    if (!st->instance) {
      text += id + ": unavailable (" + st->error.message() + ")\n";
      continue;
    }
    Status s = st->instance->NewIdentity();
    if (!s.ok()) {
      if (!only.empty() || s.code() != ENOTSUP) text += id + ": " + s.message() + "\n";
      continue;
    }
    ++renewed;
    size_t closed = CloseStalePlans(st.get(), "via newnym");
    text += id + ": new identity for later connections (" + std::to_string(closed) +
            " program link(s) told to greet again)\n";
    log_->info(
        "newnym: {} starts a new identity (requested by {}); {} program link(s) greet "
        "again",
        id, PeerText(c), closed);
  }
  uint8_t buf[8192];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  w.PutU32(wire::kTagCount, renewed);
  w.PutString(wire::kTagMessage, std::string_view(text).substr(0, 6000));
  Reply(c, w);
}

size_t Server::CloseStalePlans(const OverlayState* only, const char* why) {
  std::vector<uint64_t> stale;
  size_t count = 0;
  for (auto& [id, cl] : clients_) {
    if (!cl->greeted || cl->control || cl->overlay == nullptr) continue;
    if (only != nullptr && cl->overlay.get() != only) continue;
    if (cl->shim_plan == ShimPlan(*cl, nullptr)) continue;
    ++count;
    if (cl->ops.empty()) {
      stale.push_back(id);
    } else {
      cl->close_when_idle = true;
    }
  }
  for (uint64_t id : stale) {
    log_->debug("{}: closing the link of {}, so that it greets again", why,
                PeerText(*clients_[id]));
    CloseClient(id);
  }
  return count;
}

}  // namespace via::broker
