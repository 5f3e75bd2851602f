// via probe: the seed's probe. Fetches an IP-echo URL directly and through an overlay and prints
// "direct IP: ..." / "<name> IP: ..." (or the error of that line).
#include "tools/probe.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/paths.h"
#include "common/unique_fd.h"
#include "tools/broker_client.h"
#include "tools/cli.h"
#include "tools/command_table.h"

namespace via::tools {

namespace {

// One fetch's time budget: every blocking send/recv gets what is left of it, so a server that
// trickles bytes cannot stretch the fetch beyond --timeout.
class Deadline {
 public:
  explicit Deadline(int timeout_ms)
      : end_(std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms)) {}
  // Sets SO_RCVTIMEO/SO_SNDTIMEO on `fd` to the time left; false once it has passed.
  bool Arm(int fd) const {
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(
                    end_ - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) return false;
    timeval tv{time_t(left / 1000000), suseconds_t(left % 1000000)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return true;
  }

 private:
  std::chrono::steady_clock::time_point end_;
};

bool IsTimeout(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == ETIMEDOUT; }

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

constexpr size_t kMaxResponse = 1 << 20;

// The GET request for `u`, closing the connection after the response.
std::string RequestText(const Url& u) {
  return "GET " + u.path + " HTTP/1.1\r\nHost: " +
         (u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host) +
         ((u.https && u.port == 443) || (!u.https && u.port == 80) ? ""
                                                                   : ":" + std::to_string(u.port)) +
         "\r\nUser-Agent: via-probe/" VIA_VERSION "\r\nAccept: */*\r\nConnection: close\r\n\r\n";
}

Status TimedOut() { return Status::Error(ETIMEDOUT, "timed out"); }

// Plain HTTP: sends `req` and reads the response until the server closes (or kMaxResponse).
Result<std::string> ExchangePlain(int fd, const std::string& req, const Deadline& deadline) {
  size_t sent = 0;
  while (sent < req.size()) {
    if (!deadline.Arm(fd)) return TimedOut();
    ssize_t r = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return IsTimeout(errno) ? TimedOut() : Status::FromErrno("sending the request");
    sent += size_t(r);
  }
  std::string resp;
  char buf[8192];
  while (resp.size() < kMaxResponse) {
    if (!deadline.Arm(fd)) return TimedOut();
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return IsTimeout(errno) ? TimedOut() : Status::FromErrno("reading the response");
    if (r == 0) break;
    resp.append(buf, size_t(r));
  }
  return resp;
}

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using SslPtr = std::unique_ptr<SSL, SslFree>;

// A TLS 1.2+ client context that verifies the server against `cafile` (or the system's CAs).
Result<SslCtxPtr> NewTlsContext(const std::string& cafile) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (ctx == nullptr) return Status::Error(EIO, SslError());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
  SSL_CTX_set_options(ctx.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);  // many servers just close
#endif
  bool loaded = cafile.empty()
                    ? SSL_CTX_set_default_verify_paths(ctx.get()) == 1
                    : SSL_CTX_load_verify_locations(ctx.get(), cafile.c_str(), nullptr) == 1;
  if (!loaded) {
    return Status::Error(EIO, "cannot load CA certificates" +
                                  (cafile.empty() ? "" : " from " + cafile) + ": " + SslError());
  }
  return ctx;
}

// A TLS connection over `fd` that checks the certificate against u.host.
Result<SslPtr> NewTlsConnection(SSL_CTX* ctx, int fd, const Url& u) {
  SslPtr ssl(SSL_new(ctx));
  if (ssl == nullptr) return Status::Error(EIO, SslError());
  SSL_set_fd(ssl.get(), fd);
  // An address literal is checked against the certificate's IP SANs and sent without SNI.
  in6_addr any_addr;
  bool literal = inet_pton(AF_INET, u.host.c_str(), &any_addr) == 1 ||
                 inet_pton(AF_INET6, u.host.c_str(), &any_addr) == 1;
  if (literal) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), u.host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl.get(), u.host.c_str());
    SSL_set1_host(ssl.get(), u.host.c_str());
  }
  return ssl;
}

// What a failed TLS call (`rc`) of `what` means: a timeout, or the library's (or the system's)
// error.
Status TlsError(SSL* ssl, int rc, const char* what) {
  int e = SSL_get_error(ssl, rc);
  if ((e == SSL_ERROR_SYSCALL || e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) &&
      IsTimeout(errno)) {
    return TimedOut();
  }
  std::string detail = ERR_peek_error() != 0                  ? SslError()
                       : e == SSL_ERROR_SYSCALL && errno != 0 ? std::string(std::strerror(errno))
                                                              : "connection closed";
  return Status::Error(EIO, std::string(what) + ": " + detail);
}

// HTTPS: the handshake (with the certificate check), `req`, and the response until the server
// closes (or kMaxResponse).
Result<std::string> ExchangeTls(SSL* ssl, int fd, const std::string& req,
                                const Deadline& deadline) {
  if (!deadline.Arm(fd)) return TimedOut();
  if (int rc = SSL_connect(ssl); rc != 1) {
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
      return Status::Error(
          EIO, std::string("TLS certificate check failed: ") + X509_verify_cert_error_string(v));
    }
    return TlsError(ssl, rc, "TLS handshake failed");
  }
  if (!deadline.Arm(fd)) return TimedOut();
  if (int rc = SSL_write(ssl, req.data(), int(req.size())); rc != int(req.size())) {
    return TlsError(ssl, rc, "TLS write failed");
  }
  std::string resp;
  char buf[8192];
  while (resp.size() < kMaxResponse) {
    if (!deadline.Arm(fd)) return TimedOut();
    int r = SSL_read(ssl, buf, sizeof buf);
    if (r > 0) {
      resp.append(buf, size_t(r));
      continue;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) break;
    return TlsError(ssl, r, "TLS read failed");
  }
  return resp;
}

// Sends the request and reads the whole response over `fd` (TLS when u.https).
Result<std::string> Exchange(int fd, const Url& u, const std::string& cafile,
                             const Deadline& deadline) {
  std::string req = RequestText(u);
  if (!u.https) return ExchangePlain(fd, req, deadline);
  auto ctx = NewTlsContext(cafile);
  if (!ctx.ok()) return ctx.status();
  auto ssl = NewTlsConnection(ctx->get(), fd, u);
  if (!ssl.ok()) return ssl.status();
  return ExchangeTls(ssl->get(), fd, req, deadline);
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
  Deadline deadline(timeout_ms);
  auto resp = Exchange(fd, u, cafile, deadline);
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

// The overlay line: a broker for the config, HELLO with the overlay, then CONNECT of our own
// socket by name (never resolved here); after the broker's handshake it is a plain stream.
Result<std::string> FetchThroughOverlay(const config::Config& cfg, const config::Overlay& overlay,
                                        const Url& url, const std::string& cafile, int timeout_ms) {
  auto socket = SocketFor(Args{}, cfg);
  if (!socket.ok()) return socket.status();
  if (Status s = EnsureBroker(cfg, *socket); !s.ok()) return s;
  auto client = BrokerClient::Connect(*socket);
  if (!client.ok()) return client.status();
  if (auto h = client->Hello(overlay.id); !h.ok()) return h.status();
  auto start = std::chrono::steady_clock::now();
  auto fd = OverlayConnect(*client, url);
  if (!fd.ok()) return Status::Error(fd.status().code(), "dial: " + fd.status().message());
  auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - start)
                   .count();
  return FetchIp(fd->get(), url, cafile, std::max<int>(1, timeout_ms - int(spent)));
}

namespace {

// --timeout: positive seconds ("15" or "15s", as in the seed's options), in milliseconds; -1
// after an error.
int ParseTimeoutMs(const Args& args) {
  if (!args.Has("--timeout")) return 15000;
  const std::string v = args.Get("--timeout");
  char* end = nullptr;
  double t = std::strtod(v.c_str(), &end);
  if (end != v.c_str() && *end == 's') ++end;
  if (v.empty() || *end != 0 || !(t > 0) || t > 86400) {
    Error("probe: --timeout takes a positive number of seconds, not \"" + v +
          "\"; try 'via probe --help'");
    return -1;
  }
  return std::max(1, int(t * 1000));
}

// The overlay to probe: --network, else network_service.default_network, else the only SOCKS5
// overlay. nullptr after an error.
const config::Overlay* ProbedOverlay(const Args& args, const config::Config& cfg) {
  auto known = [&] {
    std::string k;
    for (const auto& o : cfg.overlays) k += (k.empty() ? "" : ", ") + o.id;
    return k.empty() ? std::string("none") : k;
  };
  std::string wanted = args.Has("--network") ? args.Get("--network") : cfg.service.default_network;
  if (!wanted.empty()) {
    const config::Overlay* overlay = cfg.Find(wanted);
    if (overlay == nullptr) {
      Error("unknown overlay \"" + wanted + "\" in " + cfg.source + " (known: " + known() + ")");
    }
    return overlay;
  }
  const config::Overlay* overlay = nullptr;
  int socks5 = 0;
  for (const auto& o : cfg.overlays) {
    if (o.kind != config::OverlayKind::kSocks5) continue;
    ++socks5;
    overlay = &o;
  }
  if (socks5 != 1) {
    Error(std::string(socks5 == 0 ? "no network.socks5 overlay" : "several overlays") + " in " +
          cfg.source + " and no network_service.default_network; choose one with --network " +
          "(known: " + known() + ")");
    return nullptr;
  }
  return overlay;
}

// One line per fetch, direct then through the overlay; true if both gave an address.
// --timeout covers each fetch as a whole: connecting, TLS, request and response.
bool ProbeBoth(const config::Config& cfg, const config::Overlay& overlay, const Url& url,
               const std::string& cafile, int timeout_ms) {
  bool all_ok = true;
  auto start = std::chrono::steady_clock::now();
  auto direct = DirectConnect(url, timeout_ms);
  auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - start)
                   .count();
  Result<std::string> dip =
      direct.ok() ? FetchIp(direct->get(), url, cafile, std::max<int>(1, timeout_ms - int(spent)))
                  : Result<std::string>(direct.status());
  if (dip.ok()) {
    std::printf("direct IP: %s\n", dip->c_str());
  } else {
    std::printf("direct failed: %s\n", dip.status().message().c_str());
    all_ok = false;
  }
  std::fflush(stdout);
  Result<std::string> oip = FetchThroughOverlay(cfg, overlay, url, cafile, timeout_ms);
  if (oip.ok()) {
    std::printf("%s IP: %s\n", overlay.name.c_str(), oip->c_str());
  } else {
    std::printf("%s failed: %s\n", overlay.name.c_str(), oip.status().message().c_str());
    all_ok = false;
  }
  return all_ok;
}

}  // namespace

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
  if (PrintHelpIfAsked(*args, "probe")) return kExitOk;
  if (HasOperands(*args, "probe")) return kExitUsage;
  auto url = ParseUrl(args->Get("--url", "https://api.ipify.org?format=json"));
  if (!url.ok()) {
    Error(url.status().message());
    return kExitUsage;
  }
  int timeout_ms = ParseTimeoutMs(*args);
  if (timeout_ms < 0) return kExitUsage;
  auto cfg = LoadConfigOrComplain(*args);
  if (!cfg) return kExitUsage;
  const config::Overlay* overlay = ProbedOverlay(*args, *cfg);
  if (overlay == nullptr) return kExitUsage;
  return ProbeBoth(*cfg, *overlay, *url, args->Get("--cafile"), timeout_ms) ? kExitOk
                                                                              : kExitFailure;
}

}  // namespace via::tools
