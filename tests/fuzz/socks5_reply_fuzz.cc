// Fuzz target for the SOCKS5 client state machine (common/socks5_client.h), the one the broker's
// ConnectOp and the shim both drive: arbitrary proxy bytes (method reply, RFC 1929 status,
// CONNECT/RESOLVE reply with IPv4, domain and IPv6 BND.ADDR), fed in pieces split at arbitrary
// points.
//
// Input: 5 bytes of set-up, then what the proxy sends.
//   [0] flags: bit 0 credentials; bits 1-2 the target (name, IPv4, IPv6, IPv4-mapped IPv6);
//       bits 3-4 the command (CONNECT, Tor RESOLVE, Tor RESOLVE_PTR); bit 5 SetInvalid;
//       bit 6 the output is taken in small pieces
//   [1] seed of the read sizes (1..WantRead())
//   [2] name length, [3] username length, [4] password length (0..255 each)
// Invariants (abort on a break): WantRead() never asks for a byte past the end of the reply, as
// an independent reading of RFC 1928/1929 computes it; the machine finishes (Done) exactly when
// that reading says the exchange succeeded and it got all of it; a failure has a message; the
// request it sends is the one RFC 1928 prescribes; BoundAddr/BoundName are the reply's bytes.
//
// With clang (-DVIA_FUZZ=ON, CXX=clang++) a libFuzzer target, else a standalone driver that
// replays the corpus and deterministic mutations (standalone_main.h); docs/fuzzing.md.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/socks5_client.h"

namespace {

namespace socks5 = via::socks5;

void Check(bool ok) {
  if (!ok) std::abort();
}

// The proxy bytes a successful exchange consumes, read straight from RFC 1928/1929: 0 when the
// exchange fails (or the input ends first), with *failed_at telling the failure from a short
// input. Also the offset of the reply head (`head`).
size_t ReferenceLength(const uint8_t* p, size_t n, bool auth, bool invalid, bool* failed,
                       size_t* head) {
  *failed = false;
  if (n < 2) return 0;
  if (p[0] != 5) return *failed = true, 0;
  size_t off = 2;
  if (p[1] == 0x02 && auth) {
    if (invalid) return *failed = true, 0;
    if (n < 4) return 0;
    if (p[2] != 1 || p[3] != 0) return *failed = true, 0;
    off = 4;
  } else if (p[1] != 0x00 || invalid) {
    return *failed = true, 0;
  }
  *head = off;
  if (n < off + 5) return 0;
  const uint8_t* h = p + off;
  if (h[0] != 5 || h[1] != 0 || h[2] != 0) return *failed = true, 0;
  size_t addr;
  switch (h[3]) {
    case socks5::kAtypIpv4:
      addr = 4;
      break;
    case socks5::kAtypIpv6:
      addr = 16;
      break;
    case socks5::kAtypDomain:
      if (h[4] == 0) return *failed = true, 0;
      addr = 1 + size_t(h[4]);
      break;
    default:
      return *failed = true, 0;
  }
  size_t total = off + 4 + addr + 2;
  return n < total ? 0 : total;
}

// The request RFC 1928 prescribes for the target.
std::string ExpectedRequest(uint8_t command, const std::string& name, const via::wire::Addr& a,
                            uint16_t port) {
  std::string r{char(5), char(command), char(0)};
  via::wire::Addr u = via::wire::Unmapped(a);
  if (!name.empty()) {
    r += char(socks5::kAtypDomain);
    r += char(name.size());
    r += name;
  } else if (u.family == 4) {
    r += char(socks5::kAtypIpv4);
    r.append(reinterpret_cast<const char*>(u.bytes), 4);
  } else {
    r += char(socks5::kAtypIpv6);
    r.append(reinterpret_cast<const char*>(u.bytes), 16);
  }
  r += char(port >> 8);
  r += char(port & 0xff);
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  const uint8_t flags = data[0];
  uint32_t rng = data[1] * 2654435761u + 1;
  const bool auth = flags & 1;
  const int kind = (flags >> 1) & 3;
  static const uint8_t kCommands[] = {socks5::kCmdConnect, socks5::kCmdResolve,
                                      socks5::kCmdResolvePtr, socks5::kCmdConnect};
  const uint8_t command = kCommands[(flags >> 3) & 3];
  const bool invalid = flags & 0x20;
  const bool trickle = flags & 0x40;
  std::string name = kind == 0 ? std::string(data[2], 'n') : std::string();
  if (!name.empty()) name[0] = 'x';
  std::string user = auth ? std::string(data[3], 'u') : std::string();
  std::string pass = auth ? std::string(data[4], 'p') : std::string();
  const bool uses_auth = !user.empty() || !pass.empty();
  via::wire::Addr addr;
  if (kind == 1) {
    addr.family = 4;
    std::memcpy(addr.bytes, "\x0a\x01\x02\x03", 4);
  } else if (kind == 2) {
    addr.family = 6;
    std::memcpy(addr.bytes, "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 16);
  } else {
    addr.family = 6;  // ::ffff:10.1.2.3, sent as IPv4; also the address beside an empty name
    std::memcpy(addr.bytes, "\0\0\0\0\0\0\0\0\0\0\xff\xff\x0a\x01\x02\x03", 16);
  }
  const uint16_t port = 0x1f90;
  const uint8_t* in = data + 5;
  const size_t n = size - 5;

  static socks5::Client c;  // about 2 KiB: not on the stack of every run
  c.Start(name.empty() ? nullptr : name.c_str(), addr, port, user.data(), user.size(), pass.data(),
          pass.size(), command);
  if (invalid) c.SetInvalid(EINVAL, "fuzz: the request cannot be carried");

  std::string sent;
  size_t i = 0;
  int err = 0;
  for (int steps = 0; steps < 10000; ++steps) {
    while (c.output_len() > 0) {
      size_t take = trickle ? 1 + (rng >> 16) % c.output_len() : c.output_len();
      rng = rng * 1103515245u + 12345u;
      sent.append(reinterpret_cast<const char*>(c.output()), take);
      c.Consumed(take);
    }
    const size_t want = c.WantRead();
    if (want == 0 || i == n) break;
    Check(want <= 5 + 255 + 2);
    size_t chunk = 1 + (rng >> 16) % want;
    rng = rng * 1103515245u + 12345u;
    if (chunk > n - i) chunk = n - i;
    err = c.Feed(in + i, chunk);
    i += chunk;
    if (err != 0) break;
  }

  bool ref_failed = false;
  size_t head = 0;
  const size_t ref = ReferenceLength(in, n, uses_auth, invalid, &ref_failed, &head);
  // What it sent: the greeting, [RFC 1929 request], then the request (once the proxy let it).
  std::string greeting{char(5), char(1), char(uses_auth ? 2 : 0)};
  Check(sent.compare(0, 3, greeting) == 0);
  if (c.Done()) {
    Check(err == 0 && ref != 0 && i == ref && c.WantRead() == 0 && c.output_len() == 0);
    std::string request = ExpectedRequest(command, name, addr, port);
    Check(sent.size() >= 3 + request.size());
    Check(sent.compare(sent.size() - request.size(), request.size(), request) == 0);
    if (head == 4) {
      std::string rfc1929{char(1), char(user.size())};
      rfc1929 += user;
      rfc1929 += char(pass.size());
      rfc1929 += pass;
      Check(sent == greeting + rfc1929 + request);
    } else {
      Check(sent == greeting + request);
    }
    const uint8_t* h = in + head;
    size_t len = 0;
    const char* bound = c.BoundName(&len);
    via::wire::Addr b = c.BoundAddr();
    if (h[3] == socks5::kAtypDomain) {
      Check(len == h[4] && std::memcmp(bound, h + 5, len) == 0 && b.family == 0);
    } else {
      Check(len == 0 && b.family == (h[3] == socks5::kAtypIpv4 ? 4 : 6));
      Check(std::memcmp(b.bytes, h + 4, b.addr_len()) == 0);
    }
    // Fed after it finished: an error, never a read.
    Check(c.Feed(in, 0) != 0);
  } else if (err != 0) {
    Check(ref == 0 && ref_failed && c.error()[0] != 0 && c.WantRead() == 0);
    Check(std::strlen(c.error()) < 160 + 2 * socks5::kMaxField);
  } else {
    // Neither: the input ended first.
    Check(i == n && ref == 0 && !ref_failed);
    // Offered more than it asked for, it takes none of it and fails.
    static socks5::Client copy;
    copy = c;
    static const uint8_t kMore[5 + 255 + 2 + 1] = {};
    const size_t want = copy.WantRead();
    if (want > 0) Check(copy.Feed(kMore, want + 1) == EPROTO && copy.WantRead() == 0);
  }
  return 0;
}

#define VIA_FUZZ_NAME "socks5_reply_fuzz"
#include "tests/fuzz/standalone_main.h"
