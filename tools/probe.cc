// via probe: the seed's probe. Fetches an IP-echo URL directly and through an overlay and prints
// "direct IP: ..." / "<name> IP: ..." (or the error of that line).
#include "tools/probe.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/paths.h"
#include "common/unique_fd.h"
#include "tools/broker_client.h"
#include "tools/cli.h"

namespace via::tools {

Result<Url> ParseUrl(const std::string& url) {
  Url u;
  std::string rest;
  if (url.rfind("https://", 0) == 0) {
    u.https = true;
    u.port = 443;
    rest = url.substr(8);
  } else if (url.rfind("http://", 0) == 0) {
    u.port = 80;
    rest = url.substr(7);
  } else {
    return Status::Invalid("URL must start with http:// or https://: " + url);
  }
  size_t slash = rest.find_first_of("/?");
  std::string hostport = rest.substr(0, slash);
  u.path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (u.path[0] == '?') u.path = "/" + u.path;
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string::npos) return Status::Invalid("bad IPv6 host in URL: " + url);
    u.host = hostport.substr(1, close - 1);
    hostport = hostport.substr(close + 1);
    if (!hostport.empty() && hostport[0] == ':')
      hostport = "x" + hostport;
    else
      hostport.clear();
  }
  size_t colon = hostport.rfind(':');
  if (colon != std::string::npos) {
    if (u.host.empty()) u.host = hostport.substr(0, colon);
    char* end = nullptr;
    long p = std::strtol(hostport.c_str() + colon + 1, &end, 10);
    if (*end != 0 || p < 1 || p > 65535) return Status::Invalid("bad port in URL: " + url);
    u.port = uint16_t(p);
  } else if (u.host.empty()) {
    u.host = hostport;
  }
  if (u.host.empty()) return Status::Invalid("no host in URL: " + url);
  return u;
}

std::string ExtractIp(const std::string& body) {
  size_t k = body.find("\"ip\"");
  if (k != std::string::npos) {
    size_t colon = body.find(':', k + 4);
    size_t q1 = colon == std::string::npos ? colon : body.find('"', colon);
    size_t q2 = q1 == std::string::npos ? q1 : body.find('"', q1 + 1);
    if (q2 != std::string::npos) return body.substr(q1 + 1, q2 - q1 - 1);
  }
  size_t b = body.find_first_not_of(" \t\r\n");
  size_t e = body.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : body.substr(b, e - b + 1);
}

namespace {

void SetTimeouts(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

Result<UniqueFd> DirectConnect(const Url& u, int timeout_ms) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string port = std::to_string(u.port);
  int rc = getaddrinfo(u.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0)
    return Status::Error(EHOSTUNREACH, "cannot resolve " + u.host + ": " + gai_strerror(rc));
  Status last = Status::Error(EHOSTUNREACH, "no address for " + u.host);
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) continue;
    if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = Status::FromErrno("connect to " + u.host + ":" + port);
      continue;
    }
    pollfd p{fd.get(), POLLOUT, 0};
    if (poll(&p, 1, timeout_ms) != 1) {
      last = Status::Error(ETIMEDOUT, "connect to " + u.host + ":" + port + " timed out");
      continue;
    }
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      last = Status::FromErrno("connect to " + u.host + ":" + port, err);
      continue;
    }
    int flags = fcntl(fd.get(), F_GETFL);
    fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    freeaddrinfo(res);
    return fd;
  }
  freeaddrinfo(res);
  return last;
}

Result<UniqueFd> OverlayConnect(BrokerClient& broker, const Url& u) {
  // A dual-stack socket reaches an IPv4 or IPv6 proxy; fall back to IPv4 without IPv6.
  UniqueFd fd(socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd) {
    int off = 0;
    setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  } else {
    fd.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  }
  if (!fd) return Status::FromErrno("socket");
  // The name goes to the overlay as it is: nothing resolves it here.
  if (Status s = broker.ConnectByName(fd.get(), u.host, u.port); !s.ok()) return s;
  return fd;
}

std::string SslError() {
  unsigned long e = ERR_get_error();
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return e == 0 ? "TLS error" : buf;
}

// Sends the request and reads the whole response over `fd` (TLS when u.https).
Result<std::string> Exchange(int fd, const Url& u, const std::string& cafile) {
  std::string req =
      "GET " + u.path + " HTTP/1.1\r\nHost: " + u.host +
      ((u.https && u.port == 443) || (!u.https && u.port == 80) ? ""
                                                                : ":" + std::to_string(u.port)) +
      "\r\nUser-Agent: via-probe/" VIA_VERSION "\r\nAccept: */*\r\nConnection: close\r\n\r\n";
  std::string resp;
  if (!u.https) {
    if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != ssize_t(req.size())) {
      return Status::FromErrno("sending the request");
    }
    char buf[8192];
    for (;;) {
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Status::FromErrno("reading the response");
      if (r == 0) break;
      resp.append(buf, size_t(r));
      if (resp.size() > (1 << 20)) break;
    }
    return resp;
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return Status::Error(EIO, SslError());
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  bool loaded = cafile.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                               : SSL_CTX_load_verify_locations(ctx, cafile.c_str(), nullptr) == 1;
  if (!loaded) {
    SSL_CTX_free(ctx);
    return Status::Error(EIO,
                         "cannot load CA certificates" + (cafile.empty() ? "" : " from " + cafile));
  }
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  SSL_set_tlsext_host_name(ssl, u.host.c_str());
  SSL_set1_host(ssl, u.host.c_str());
  Status result;
  if (SSL_connect(ssl) != 1) {
    long v = SSL_get_verify_result(ssl);
    result = Status::Error(EIO, v != X509_V_OK ? std::string("TLS certificate check failed: ") +
                                                     X509_verify_cert_error_string(v)
                                               : "TLS handshake failed: " + SslError());
  } else if (SSL_write(ssl, req.data(), int(req.size())) != int(req.size())) {
    result = Status::Error(EIO, "TLS write failed: " + SslError());
  } else {
    char buf[8192];
    for (;;) {
      int r = SSL_read(ssl, buf, sizeof buf);
      if (r <= 0) break;
      resp.append(buf, size_t(r));
      if (resp.size() > (1 << 20)) break;
    }
  }
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  if (!result.ok()) return result;
  return resp;
}

std::string Dechunk(const std::string& body) {
  std::string out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) break;
    size_t n = std::strtoul(body.substr(pos, eol - pos).c_str(), nullptr, 16);
    if (n == 0) break;
    out += body.substr(eol + 2, n);
    pos = eol + 2 + n + 2;
  }
  return out;
}

}  // namespace

Result<std::string> FetchIp(int fd, const Url& u, const std::string& cafile, int timeout_ms) {
  SetTimeouts(fd, timeout_ms);
  auto resp = Exchange(fd, u, cafile);
  if (!resp.ok()) return resp.status();
  size_t head_end = resp->find("\r\n\r\n");
  if (resp->rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos) {
    return Status::Error(EPROTO, resp->empty() ? "empty response" : "not an HTTP response");
  }
  int code = std::atoi(resp->c_str() + 9);
  std::string head = resp->substr(0, head_end);
  std::string body = resp->substr(head_end + 4);
  for (char& ch : head) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (head.find("transfer-encoding: chunked") != std::string::npos) body = Dechunk(body);
  if (code != 200) return Status::Error(EPROTO, "HTTP " + std::to_string(code));
  return ExtractIp(body);
}

int CmdProbe(int argc, char** argv) {
  auto args = ParseArgs("probe", argc, argv,
                        {{"--config", true},
                         {"--network", true},
                         {"--url", true},
                         {"--timeout", true},
                         {"--cafile", true},
                         {"--help", false}},
                        {{"-c", "--config"}, {"-n", "--network"}, {"-h", "--help"}}, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (args->Has("--help")) {
    std::fputs(kHelpProbe, stdout);
    return kExitOk;
  }
  auto url = ParseUrl(args->Get("--url", "https://api.ipify.org?format=json"));
  if (!url.ok()) {
    Error(url.status().message());
    return kExitUsage;
  }
  int timeout_ms = 15000;
  if (args->Has("--timeout")) {
    double t = std::atof(args->Get("--timeout").c_str());
    if (t <= 0) {
      Error("probe: --timeout takes a positive number of seconds");
      return kExitUsage;
    }
    timeout_ms = int(t * 1000);
  }
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;
  const config::Overlay* overlay = nullptr;
  if (args->Has("--network")) {
    overlay = cfg->Find(args->Get("--network"));
    if (overlay == nullptr) {
      Error("unknown overlay \"" + args->Get("--network") + "\" in " + cfg->source);
      return kExitUsage;
    }
  } else if (!cfg->service.default_network.empty()) {
    overlay = cfg->Find(cfg->service.default_network);
  } else {
    for (const auto& o : cfg->overlays) {
      if (o.kind != config::OverlayKind::kSocks5) continue;
      if (overlay != nullptr) {
        Error("probe: several overlays are configured; choose one with --network");
        return kExitUsage;
      }
      overlay = &o;
    }
  }
  if (overlay == nullptr) {
    Error("probe: no overlay to probe; add a network.socks5 entry or pass --network");
    return kExitUsage;
  }
  std::string cafile = args->Get("--cafile");
  bool all_ok = true;

  auto direct = DirectConnect(*url, timeout_ms);
  Result<std::string> dip = direct.ok() ? FetchIp(direct->get(), *url, cafile, timeout_ms)
                                        : Result<std::string>(direct.status());
  if (dip.ok()) {
    std::printf("direct IP: %s\n", dip->c_str());
  } else {
    std::printf("direct failed: %s\n", dip.status().message().c_str());
    all_ok = false;
  }
  std::fflush(stdout);

  Result<std::string> oip = Status::Error(EIO, "");
  auto socket = SocketFor(*args, *cfg);
  if (!socket.ok()) {
    oip = socket.status();
  } else if (Status s = EnsureBroker(*cfg, *socket); !s.ok()) {
    oip = s;
  } else if (auto client = BrokerClient::Connect(*socket); !client.ok()) {
    oip = client.status();
  } else if (auto h = client->Hello(overlay->id); !h.ok()) {
    oip = h.status();
  } else if (auto fd = OverlayConnect(*client, *url); !fd.ok()) {
    oip = Status::Error(fd.status().code(), "dial: " + fd.status().message());
  } else {
    oip = FetchIp(fd->get(), *url, cafile, timeout_ms);
  }
  if (oip.ok()) {
    std::printf("%s IP: %s\n", overlay->name.c_str(), oip->c_str());
  } else {
    std::printf("%s failed: %s\n", overlay->name.c_str(), oip.status().message().c_str());
    all_ok = false;
  }
  return all_ok ? kExitOk : kExitFailure;
}

}  // namespace via::tools
