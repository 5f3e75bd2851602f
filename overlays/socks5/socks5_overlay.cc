#include "overlays/socks5/socks5_overlay.h"

#include <sstream>
#include <string_view>
#include <utility>

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

std::optional<Overlay::ProgramSocks5> Socks5Overlay::program_socks5() const {
  ProgramSocks5 p;
  p.username = settings_.username;
  p.password = settings_.password;
  p.isolate_streams = settings_.isolate_streams;
  p.pipeline = settings_.pipeline;
  return p;
}

Result<std::unique_ptr<ResolveHandshake>> Socks5Overlay::MakeHandshake(const Target& target,
                                                                       uint8_t command) const {
  std::string username = settings_.username;
  std::string password = settings_.password;
  if (settings_.isolate_streams) {
    Result<std::string> cred = RandomIsolationCredential();
    if (!cred.ok()) return cred.status();
    username = password = *cred;
  }
  if (Status st = Socks5Handshake::Validate(target, username, password); !st.ok()) return st;
  return std::unique_ptr<ResolveHandshake>(new Socks5Handshake(
      target, std::move(username), std::move(password), command, settings_.pipeline));
}

}  // namespace via::overlays
