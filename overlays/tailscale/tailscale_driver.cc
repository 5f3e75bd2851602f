#include "overlays/tailscale/tailscale_driver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "overlays/socks5/socks5.h"

namespace via::overlays {

const std::string& HelperMessage::Get(const std::string& key) const {
  static const std::string kEmpty;
  auto it = fields.find(key);
  return it == fields.end() ? kEmpty : it->second;
}

Result<HelperMessage> ParseHelperMessage(std::string_view data) {
  HelperMessage m;
  size_t nl = data.find('\n');
  std::string_view verb = data.substr(0, nl);
  if (verb.empty()) return Status::Error(EPROTO, "helper message without a verb");
  for (char ch : verb) {
    if (!((ch >= 'A' && ch <= 'Z') || ch == '_')) {
      return Status::Error(EPROTO, "helper message with a malformed verb");
    }
  }
  m.verb = std::string(verb);
  while (nl != std::string_view::npos) {
    data = data.substr(nl + 1);
    nl = data.find('\n');
    std::string_view line = data.substr(0, nl);
    size_t eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return Status::Error(EPROTO, "helper message " + m.verb + ": a line is not key=value");
    }
    std::string_view key = line.substr(0, eq);
    for (char ch : key) {
      if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) {
        return Status::Error(EPROTO, "helper message " + m.verb + ": malformed key");
      }
    }
    m.fields[std::string(key)] = std::string(line.substr(eq + 1));
  }
  return m;
}

std::string FormatHelperMessage(std::string_view verb,
                                const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out(verb);
  for (const auto& [k, v] : fields) {
    out += "\n" + k + "=";
    for (char ch : v) out += (ch == '\n' || ch == '\r') ? ' ' : ch;
  }
  return out;
}

Result<std::unique_ptr<TailscaleDriver>> TailscaleDriver::Create(const config::Overlay& overlay) {
  std::unique_ptr<TailscaleDriver> d(new TailscaleDriver());
  d->id_ = overlay.id;
  d->settings_ = overlay.tailscale;
  d->auth_key_ = overlay.tailscale.auth_key;
  if (!d->attached() && d->auth_key_.empty() && !overlay.tailscale.auth_key_env.empty()) {
    const char* v = getenv(overlay.tailscale.auth_key_env.c_str());
    if (v == nullptr || *v == '\0') {
      return Status::Error(EINVAL, "overlay " + overlay.id + ": auth_key_env " +
                                       overlay.tailscale.auth_key_env +
                                       " is not set in the broker's environment; export it "
                                       "before `via broker` starts, or set auth_key");
    }
    d->auth_key_ = v;
  }
  if (!d->attached() && d->auth_key_.empty()) {
    return Status::Error(EINVAL, "overlay " + overlay.id +
                                     ": no auth key: set auth_key or auth_key_env (or "
                                     "localapi_socket to use a running tailscaled)");
  }
  uint8_t raw[16];
  if (getrandom(raw, sizeof raw, 0) != ssize_t(sizeof raw)) {
    return Status::FromErrno("overlay " + overlay.id + ": getrandom for the helper's secret");
  }
  static const char kHex[] = "0123456789abcdef";
  for (uint8_t b : raw) {
    d->secret_ += kHex[b >> 4];
    d->secret_ += kHex[b & 15];
  }
  return d;
}

std::string TailscaleDriver::hostname() const {
  return settings_.hostname.empty() ? "wippy" : settings_.hostname;
}

bool TailscaleDriver::SetEndpoint(const std::string& host_port) {
  size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = host_port.substr(0, colon);
  char* end = nullptr;
  long port = strtol(host_port.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port <= 0 || port > 65535) return false;
  Endpoint e;
  auto* in = reinterpret_cast<sockaddr_in*>(&e.addr);
  in->sin_family = AF_INET;
  in->sin_port = htons(uint16_t(port));
  if (inet_pton(AF_INET, host.c_str(), &in->sin_addr) != 1) return false;
  if ((ntohl(in->sin_addr.s_addr) >> 24) != 127) return false;  // loopback only
  e.len = sizeof(sockaddr_in);
  e.text = host_port;
  endpoints_.assign(1, e);
  return true;
}

Result<std::unique_ptr<Handshake>> TailscaleDriver::NewHandshake(const Target& target) {
  if (endpoints_.empty()) {
    return Status::Error(ENETUNREACH, "tailscale node " + id_ + " is not running");
  }
  return std::unique_ptr<Handshake>(new Socks5Handshake(target, "via", secret_));
}

}  // namespace via::overlays
