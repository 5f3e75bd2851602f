#include "overlays/i2p/i2p_overlay.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>

#include "overlays/i2p/i2p_listener.h"
#include "overlays/i2p/sam.h"

namespace via::overlays {

// ---- I2pOverlay ------------------------------------------------------------------------------

I2pOverlay::I2pOverlay(const config::Overlay& overlay, const OverlayContext& context)
    : overlay_(overlay),
      service_(context.service),
      loop_(context.loop),
      log_(context.log),
      waiters_(context.loop) {}

Result<std::unique_ptr<I2pOverlay>> I2pOverlay::Create(const config::Overlay& overlay,
                                                       const OverlayContext& context) {
  std::unique_ptr<I2pOverlay> o(new I2pOverlay(overlay, context));
  auto endpoints = ResolveEndpoints(overlay.id, "SAM host", overlay.i2p.host, overlay.i2p.port);
  if (!endpoints.ok()) return endpoints.status();
  o->endpoints_ = std::move(*endpoints);
  return o;
}

Result<std::unique_ptr<Handshake>> I2pOverlay::NewHandshake(const Target& target) {
  if (target.name.empty() || !sam::IsI2pName(target.name)) {
    return Status::Error(ENETUNREACH, "I2P reaches only .i2p names (" + target.ToString() +
                                          " is not one; SAM has no outproxy)");
  }
  if (session_.empty()) return Status::Error(ENETUNREACH, "no SAM session is up");
  // The port is dropped, as Wippy does: i2pd's SAM has no TO_PORT.
  return sam::NewConnectHandshake(session_, target.name);
}

int64_t I2pOverlay::wait_bound_ms() const {
  // An I2P listener waits for a SAM session of its own.
  return std::max<int64_t>(Overlay::wait_bound_ms(),
                           SamSession::kCreateTimeoutMs + connect_timeout_ms());
}

namespace {

bool PlainWord(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace

std::string I2pKeyDirName(const config::Overlay& overlay) {
  if (PlainWord(overlay.ns) && PlainWord(overlay.name)) return overlay.ns + "." + overlay.name;
  return config::TailscaleDirName(overlay.id);
}

std::string I2pOverlay::KeyPath(uint16_t port) const {
  return service_->state_dir + "/i2p/" + I2pKeyDirName(overlay_) + "/listen-" +
         std::to_string(port) + ".keys";
}

std::string I2pOverlay::NewSessionId(const std::string& what) {
  return overlay_.i2p.session_name + "-" + what + std::to_string(getpid()) + "-" +
         std::to_string(next_session_++);
}

void I2pOverlay::Start() {
  // Once per broker unless the session is lost or failed: then the next program retries.
  if (!outbound_ && (last_error_.ok() || NowMs() - failed_ms_ > 1000)) CreateOutbound();
}

void I2pOverlay::CreateOutbound() {
  if (outbound_) return;
  outbound_ = std::make_unique<SamSession>(loop_, this, overlay_.i2p.options, NewSessionId(""),
                                           "TRANSIENT");
  created_ms_ = NowMs();
  log_->info("{}: creating SAM session {} at {}", id(), outbound_->id(),
             endpoints_.empty() ? "?" : endpoints_[0].text);
  outbound_->Start([this](const Status& s) { OnOutboundCreated(s); },
                   [this](const Status& s) { OnOutboundLost(s); });
}

void I2pOverlay::OnOutboundCreated(const Status& s) {
  if (!s.ok()) {
    last_error_ = s;
    failed_ms_ = NowMs();
    log_->warn("{}: SAM session {} could not be created: {}", id(),
               outbound_ ? outbound_->id() : "?", s.message());
    // Destroyed later: this callback runs inside the session's ConnectOp.
    loop_->Post([dead = std::shared_ptr<SamSession>(std::move(outbound_))] {});
    set_session("");
    return waiters_.FinishAll(Status::Error(s.code(), "no SAM session: " + s.message()));
  }
  last_error_ = Status::Ok();
  set_session(outbound_->id());
  log_->info("{}: SAM session {} ready after {} ms", id(), outbound_->id(), NowMs() - created_ms_);
  waiters_.FinishAll(Status::Ok());
}

void I2pOverlay::OnOutboundLost(const Status& s) {
  last_error_ = s;
  log_->warn("{}: SAM session {} lost: {}; the next connect creates a new one", id(),
             outbound_ ? outbound_->id() : "?", s.message());
  set_session("");
  loop_->Post([dead = std::shared_ptr<SamSession>(std::move(outbound_))] {});
}

uint64_t I2pOverlay::WhenReady(std::function<void(const Status&)> done) {
  if (outbound_ && outbound_->ready()) {
    done(Status::Ok());
    return 0;
  }
  const int ms = connect_timeout_ms();
  uint64_t wait = waiters_.Add(std::move(done), ms, [ms] {
    return Status::Error(ETIMEDOUT, "the SAM session was not ready within " + std::to_string(ms) +
                                        " ms (connect_timeout)");
  });
  CreateOutbound();  // no-op while one is being created
  return wait;
}

void I2pOverlay::CancelWait(uint64_t wait) { waiters_.Cancel(wait); }

Result<std::unique_ptr<InboundListener>> I2pOverlay::Listen(uint16_t port, const std::string& owner,
                                                            InboundListener::Events events) {
  if (ports_.count(port) != 0) {
    return Status::Error(EADDRINUSE,
                         id() + " already has a listener on port " + std::to_string(port));
  }
  return StartI2pListener(this, port, owner, std::move(events));
}

void I2pOverlay::AppendStatus(std::ostream& out) const {
  out << "i2p " << id() << " outbound session ";
  if (outbound_ && outbound_->ready()) {
    out << outbound_->id() << " ready";
  } else if (outbound_) {
    out << outbound_->id() << " being created (" << (NowMs() - created_ms_) / 1000 << "s)";
  } else {
    out << "down";
    if (!last_error_.ok()) out << ": " << last_error_.message();
  }
  out << "\n";
}

}  // namespace via::overlays
