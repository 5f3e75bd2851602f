#include "overlays/socks5/socks5_overlay.h"

#include <openssl/sha.h>
#include <time.h>

#include <cstdio>
#include <sstream>
#include <string_view>
#include <utility>

#include "common/socks5_client.h"
#include "overlays/socks5/socks5_handshake.h"

namespace via::overlays {

namespace {

// Names that only the overlay can reach: an exit cannot resolve them.
bool OverlayOnlyName(const std::string& name) {
  for (const char* suffix : {".onion", ".i2p", ".exit"}) {
    std::string_view s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      return true;
    }
  }
  return false;
}

}  // namespace

Result<std::unique_ptr<Socks5Overlay>> Socks5Overlay::Create(const config::Overlay& overlay) {
  std::unique_ptr<Socks5Overlay> o(new Socks5Overlay());
  o->id_ = overlay.id;
  o->settings_ = overlay.socks5;
  auto endpoints =
      ResolveEndpoints(overlay.id, "proxy host", overlay.socks5.host, overlay.socks5.port);
  if (!endpoints.ok()) return endpoints.status();
  o->endpoints_ = std::move(*endpoints);
  Result<std::string> salt = RandomIsolationCredential();
  if (!salt.ok()) return salt.status();
  o->salt_ = *salt;
  return o;
}

std::string Socks5Overlay::Summary(const config::Overlay& overlay,
                                   const config::NetworkService& service) {
  const config::Socks5Settings& s = overlay.socks5;
  const bool v6 = s.host.find(':') != std::string::npos;
  std::ostringstream out;
  out << " " << (v6 ? "[" : "") << s.host << (v6 ? "]" : "") << ":" << s.port
      << " isolate_streams=" << (s.isolate_streams ? "true" : "false")
      << " handshake=" << (service.handshake_in_program ? "program" : "broker");
  if (s.isolation != config::Isolation::kNone && s.isolation != config::Isolation::kConnection) {
    out << " isolation=" << config::IsolationName(s.isolation);
  }
  return out.str();
}

Result<std::unique_ptr<Handshake>> Socks5Overlay::NewHandshake(const Target& target) {
  auto hs = MakeHandshake(target, Socks5Handshake::kCmdConnect);
  if (!hs.ok()) return hs.status();
  return std::unique_ptr<Handshake>(std::move(*hs));
}

Result<std::unique_ptr<ResolveHandshake>> Socks5Overlay::NewResolveHandshake(const Target& target) {
  if (!settings_.remote_resolve) return Overlay::NewResolveHandshake(target);
  return MakeHandshake(
      target, target.name.empty() ? Socks5Handshake::kCmdResolvePtr : Socks5Handshake::kCmdResolve);
}

bool Socks5Overlay::ResolvesRemotely(const Target& target) const {
  return settings_.remote_resolve && (target.name.empty() || !OverlayOnlyName(target.name));
}

std::optional<Overlay::ProgramSocks5> Socks5Overlay::program_socks5(const Requester& who) const {
  ProgramSocks5 p;
  switch (config::EffectiveIsolation(settings_)) {
    case config::Isolation::kNone:
      p.username = settings_.username;
      p.password = settings_.password;
      break;
    case config::Isolation::kConnection:
      p.isolate_streams = true;
      break;
    case config::Isolation::kDestination:
      p.destination_prefix = DestinationPrefix();
      break;
    case config::Isolation::kProcess:
    case config::Isolation::kProgram:
    case config::Isolation::kSession:
      p.username = p.password = KeyedCredential(who);
      break;
  }
  p.pipeline = settings_.pipeline;
  p.optimistic_data = settings_.optimistic_data;
  return p;
}

Status Socks5Overlay::NewIdentity() {
  ++epoch_;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  renewed_ms_ = int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
  return Status::Ok();
}

void Socks5Overlay::AppendStatus(std::ostream& out) const {
  if (epoch_ == 0) return;
  char when[32] = "?";
  time_t t = time_t(renewed_ms_ / 1000);
  tm parts;
  if (localtime_r(&t, &parts) != nullptr) strftime(when, sizeof when, "%H:%M:%S", &parts);
  out << "    identity " << epoch_ << " (via newnym at " << when << ")\n";
}

std::string Socks5Overlay::DestinationPrefix() const {
  return "via.d" + std::to_string(epoch_) + "." + salt_;
}

std::string Socks5Overlay::KeyedCredential(const Requester& who) const {
  std::string tag, key;
  switch (config::EffectiveIsolation(settings_)) {
    case config::Isolation::kProcess:
      tag = "p";
      key = std::to_string(who.pid) + " " + std::to_string(who.start);
      break;
    case config::Isolation::kProgram:
      tag = "g";
      key = who.exe;
      break;
    default:
      tag = "s";
      key = who.session.empty() ? "-" : who.session;
      break;
  }
  tag += std::to_string(epoch_);
  const std::string in = salt_ + "\n" + tag + "\n" + key;
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), md);
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
  return "via." + tag + "." + hex;
}

Result<std::unique_ptr<ResolveHandshake>> Socks5Overlay::MakeHandshake(const Target& target,
                                                                       uint8_t command) const {
  std::string username = settings_.username;
  std::string password = settings_.password;
  switch (config::EffectiveIsolation(settings_)) {
    case config::Isolation::kNone:
      break;
    case config::Isolation::kConnection: {
      Result<std::string> cred = RandomIsolationCredential();
      if (!cred.ok()) return cred.status();
      username = password = *cred;
      break;
    }
    case config::Isolation::kDestination: {
      const std::string prefix = DestinationPrefix();
      char text[300], cred[300];
      socks5::FormatTarget(target.name.data(), target.name.size(), target.addr, target.port, text,
                           sizeof text);
      size_t n =
          socks5::DestinationCredential(prefix.data(), prefix.size(), text, cred, sizeof cred);
      username = password = std::string(cred, n);
      break;
    }
    default:
      username = password = KeyedCredential(target.who);
      break;
  }
  if (Status st = Socks5Handshake::Validate(target, username, password); !st.ok()) return st;
  return std::unique_ptr<ResolveHandshake>(new Socks5Handshake(
      target, std::move(username), std::move(password), command, settings_.pipeline));
}

}  // namespace via::overlays
