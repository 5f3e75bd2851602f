// Running SOCKS5 CONNECT outside the broker, as a HELLO reply with kFlagShimSocks5 allows
// (docs/protocol.md, "The shim's own handshake"): the plan the reply carries, and the connect
// itself on one socket in the calling thread, with the state machine of common/socks5_client.h
// and the engine of common/proxy_connect.h. Used by the shim (on the program's socket, with
// libc's real connect) and by `via run --strict` (on the socket it places for the program).
// Header-only, libc only, no heap.
#pragma once

#include <fcntl.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "common/proxy_connect.h"
#include "common/socks5_client.h"
#include "common/wire.h"

namespace via {

struct Socks5Plan {
  char overlay[256];  // the overlay's id, for messages
  wire::Addr proxies[4];
  int nproxies;
  char username[256], password[256];
  size_t username_len, password_len;
  bool isolate;          // a fresh random credential per connect
  bool per_destination;  // username is a prefix: DestinationCredential per target
  bool pipeline;         // greeting, credentials and request in one write (kFlagPipeline)
  // The program's data may follow the request before the reply (kFlagOptimistic). Only the
  // shim acts on it (shim/optimistic.h); ConnectBlocking (and so `via run --strict`) ignores it.
  bool optimistic;
  uint32_t timeout_ms;
  wire::Addr fake[2];  // the fake-address ranges, the port field their prefix length
  int nfake;
  uint32_t broker;  // the broker's pid (whose fake addresses and name cache entries)
};

namespace socks5 {

// The plan of a HELLO reply `m` whose FLAGS were `flags`, from the broker `broker` (its pid).
// False when a field is missing or does not fit: then every connect goes through the broker.
inline bool ReadPlan(const wire::Message& m, uint32_t flags, uint32_t broker, Socks5Plan* out) {
  Socks5Plan& p = *out;
  p = Socks5Plan{};
  p.broker = broker;
  p.isolate = (flags & wire::kFlagIsolate) != 0;
  p.per_destination = (flags & wire::kFlagIsolateDestination) != 0;
  p.pipeline = (flags & wire::kFlagPipeline) != 0;
  p.optimistic = (flags & wire::kFlagOptimistic) != 0;
  bool ok = true;
  auto copy = [&](const wire::Field& f, char* dst, size_t cap, size_t* len) {
    if (f.len >= cap) return false;
    std::memcpy(dst, f.data, f.len);
    dst[f.len] = 0;
    if (len != nullptr) *len = f.len;
    return true;
  };
  m.ForEach([&](const wire::Field& f) {
    wire::Addr a;
    switch (f.tag) {
      case wire::kTagNetwork:
        ok = ok && copy(f, p.overlay, sizeof p.overlay, nullptr);
        break;
      case wire::kTagProxy:
        if (f.addr(&a) && p.nproxies < 4) p.proxies[p.nproxies++] = a;
        break;
      case wire::kTagUsername:
        ok = ok && copy(f, p.username, sizeof p.username, &p.username_len);
        break;
      case wire::kTagPassword:
        ok = ok && copy(f, p.password, sizeof p.password, &p.password_len);
        break;
      case wire::kTagTimeoutMs:
        ok = ok && f.u32(&p.timeout_ms);
        break;
      case wire::kTagFakeNet:
        if (f.addr(&a) && p.nfake < 2) p.fake[p.nfake++] = a;
        break;
      default:
        break;
    }
  });
  return ok && p.nproxies > 0 && p.nfake == 2 && p.timeout_ms > 0 && p.broker != 0;
}

// Whether `addr` lies in one of the broker's fake-address ranges.
inline bool InFakeRange(const Socks5Plan& plan, const wire::Addr& addr) {
  for (int i = 0; i < plan.nfake; ++i) {
    if (wire::InPrefix(plan.fake[i], addr)) return true;
  }
  return false;
}

namespace plan_detail {

// The proxy endpoint this socket can reach (as ConnectOp::PickEndpoint): one of its own family,
// or an IPv4 one through its mapped address from an IPv6 socket that is not IPV6_V6ONLY.
// `text` gets "proxy ADDR", as the engine's messages name it.
inline int PickEndpoint(int fd, const Socks5Plan& plan, sockaddr_storage* ss, socklen_t* len,
                        char* text, size_t textcap, char* msg, size_t msgcap) {
  int domain = 0;
  bool v6only = false;
  proxy::SocketFamily(fd, 0, &domain, &v6only);
  for (int i = 0; i < plan.nproxies; ++i) {
    sockaddr_storage ep;
    socklen_t ep_len = wire::AddrToSockaddr(plan.proxies[i], &ep);
    if (!proxy::ReachAs(domain, v6only, ep, ep_len, ss, len)) continue;
    char addr[64];
    wire::FormatAddr(plan.proxies[i], addr, sizeof addr);
    std::snprintf(text, textcap, "proxy %s", addr);
    return 0;
  }
  proxy::NoEndpointText(domain, plan.nproxies > 0, "proxy", msg, msgcap);
  return EAFNOSUPPORT;
}

}  // namespace plan_detail

// Starts `hs` for `name` (or `dest` when nullptr), port dest.port, with the credentials `plan`
// asks for: 0, or EIO with the cause in `why` (no isolation credential: nothing may be sent; hs
// still names the target for the message).
inline int StartClient(const Socks5Plan& plan, const char* name, const wire::Addr& dest, Client* hs,
                       char* why, size_t whycap) {
  char cred[17] = {};
  const int cred_err = plan.isolate ? IsolationCredential(cred, getrandom) : 0;
  if (plan.isolate) {
    hs->Start(name, dest, dest.port, cred, 16, cred, 16, kCmdConnect, plan.pipeline);
  } else if (plan.per_destination) {
    char target[300], dcred[sizeof plan.username + 18];
    FormatTarget(name, name == nullptr ? 0 : std::strlen(name), dest, dest.port, target,
                 sizeof target);
    const size_t n =
        DestinationCredential(plan.username, plan.username_len, target, dcred, sizeof dcred);
    hs->Start(name, dest, dest.port, dcred, n, dcred, n, kCmdConnect, plan.pipeline);
  } else {
    hs->Start(name, dest, dest.port, plan.username, plan.username_len, plan.password,
              plan.password_len, kCmdConnect, plan.pipeline);
  }
  if (cred_err == 0) return 0;
  std::snprintf(why, whycap, "socks5: failed to generate isolation credential: %s",
                std::strerror(cred_err));
  return EIO;
}

// Connects `fd` through the proxy of `plan` to `name` (or `dest` when nullptr), port dest.port,
// with `connect` (the shim passes libc's real one: its own is a hook), in this thread: 0, or an
// errno with the cause in `why` (for REPORT) and "<target> via <overlay>: <why>" in `msg` (as
// the broker words a failed CONNECT). The socket's file status flags are restored.
// `optimistic` (the shim under `optimistic_data: true`): non-null to return 0 as soon as the
// CONNECT request is written, the replies left unread on the socket; *optimistic then gets the
// machine, which reads them (shim/optimistic.h).
template <typename ConnectFn>
int ConnectBlocking(int fd, const Socks5Plan& plan, const char* name, const wire::Addr& dest,
                    ConnectFn&& connect, char* why, size_t whycap, char* msg, size_t msgcap,
                    Client* optimistic = nullptr) {
  Client local;
  Client& hs = optimistic != nullptr ? *optimistic : local;
  int err = StartClient(plan, name, dest, &hs, why, whycap);
  int flags = -1;
  if (err == 0) err = proxy::MakeNonBlocking(fd, &flags, why, whycap);
  if (err == 0) {
    sockaddr_storage ss;
    socklen_t len = 0;
    char ep[80];
    err = plan_detail::PickEndpoint(fd, plan, &ss, &len, ep, sizeof ep, why, whycap);
    // A connector that can hand over a socket the proxy was greeted on (the shim in a strict
    // session) makes the handshake send its request only.
    auto connect_fn = [&](int s, const sockaddr* a, socklen_t l) {
      const int r = connect(s, a, l);
      if constexpr (requires { connect.greeted(); }) {
        const int saved = errno;
        if ((r == 0 || saved == EINPROGRESS) && connect.greeted()) hs.SkipGreeting();
        errno = saved;
      }
      return r;
    };
    if (err == 0) {
      err = proxy::RunBlocking(fd, hs, connect_fn, reinterpret_cast<sockaddr*>(&ss), len, ep,
                               plan.timeout_ms, why, whycap, optimistic != nullptr);
      if (err == ETIMEDOUT) {
        const size_t used = std::strlen(why);
        std::snprintf(why + used, whycap - used, "%s", hs.StallHint());
      }
    }
    if ((flags & O_NONBLOCK) == 0) fcntl(fd, F_SETFL, flags);
  }
  if (err != 0) std::snprintf(msg, msgcap, "%s via %s: %s", hs.target(), plan.overlay, why);
  return err;
}

}  // namespace socks5
}  // namespace via
