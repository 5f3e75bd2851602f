// Fuzz target for the broker's request parser: one datagram as a program's shim (any local
// process) can send it, through wire::Message::Parse (common/wire.h) and then the field decoding
// of every request type as the broker's services (broker/*_service.cc) do it (the same
// accessors, NormalizeName, the fake-address pool, AnswerDnsQuery for DNS_QUERY), including the
// replies the broker builds from the decoded fields in the buffers it uses.
//
// The decoding lives in the services' handlers, which also touch sockets and /proc; it is
// mirrored here step by step (keep the two in step when a handler changes how it reads a field).
//
// Invariants (abort on a break): Parse accepts exactly the datagrams whose TLVs tile the body;
// ForEach visits only bytes inside the datagram and Find agrees with it; re-encoding the fields
// with wire::Writer gives back the same bytes; an accepted ADDR round-trips through sockaddr; a
// normalized name is 1..253 bytes; every reply built from request fields fits its buffer.
//
// With clang (-DVIA_FUZZ=ON, CXX=clang++) a libFuzzer target, else a standalone driver that
// replays the corpus and deterministic mutations (standalone_main.h); docs/fuzzing.md.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "broker/dns_message.h"
#include "broker/fake_address_pool.h"
#include "common/wire.h"

namespace {

namespace wire = via::wire;
using via::broker::FakeAddressPool;

void Check(bool ok) {
  if (!ok) std::abort();
}

const uint16_t kTags[] = {
    wire::kTagNetwork,
    wire::kTagSession,
    wire::kTagAddr,
    wire::kTagName,
    wire::kTagPort,
    wire::kTagFamily,
    wire::kTagErrno,
    wire::kTagMessage,
    wire::kTagFlags,
    wire::kTagPid,
    wire::kTagText,
    wire::kTagVersion,
    wire::kTagDnsPacket,
    wire::kTagHoldMs,
    wire::kTagExe,
    wire::kTagArgv,
    wire::kTagFingerprint,
    wire::kTagOrigin,
    wire::kTagProxy,
    wire::kTagUsername,
    wire::kTagPassword,
    wire::kTagTimeoutMs,
    wire::kTagFakeNet,
    wire::kTagCount,
    wire::kTagListenAddress,
    wire::kTagPeerName,
    0x22,  // reserved (BACKLOG): a tag the broker must ignore
};

// A decoded ADDR: the broker formats it, unmaps it, and asks whether it is loopback or fake.
void UseAddr(const wire::Addr& a, FakeAddressPool& pool) {
  Check(a.family == 4 || a.family == 6);
  char text[64];
  wire::FormatAddr(a, text, sizeof text);
  Check(std::strlen(text) < sizeof text);
  sockaddr_storage ss;
  socklen_t len = wire::AddrToSockaddr(a, &ss);
  wire::Addr back;
  Check(wire::AddrFromSockaddr(reinterpret_cast<sockaddr*>(&ss), len, &back) && back == a);
  wire::Addr u = wire::Unmapped(a);
  Check(u.port == a.port && (u.family == 4 || u.family == 6));
  (void)wire::IsLoopback(a);
  if (pool.Contains(a)) {
    std::optional<std::string> name = pool.Reverse(a);
    if (name) Check(!name->empty() && name->size() <= 253);
  } else {
    Check(!pool.Reverse(a).has_value());
  }
}

// Server::ParseTarget: ADDR, or NAME and PORT (CONNECT, REPORT).
void ParseTarget(const wire::Message& m, FakeAddressPool& pool) {
  wire::Field f;
  if (m.Find(wire::kTagAddr, &f)) {
    wire::Addr dest;
    if (f.addr(&dest)) UseAddr(dest, pool);
    return;
  }
  if (!m.Find(wire::kTagName, &f)) return;
  auto name = via::broker::NormalizeName(f.str());
  if (!name.ok()) return;
  Check(!name->empty() && name->size() <= 253);
  wire::Field pf;
  uint16_t port = 0;
  (void)(m.Find(wire::kTagPort, &pf) && pf.u16(&port));
}

void Decode(const wire::Message& m, FakeAddressPool& pool) {
  wire::Field f;
  switch (m.type()) {
    case wire::kHello: {
      uint16_t version = 0;
      if (m.Find(wire::kTagVersion, &f)) (void)f.u16(&version);
      std::string claim = m.Find(wire::kTagNetwork, &f) ? std::string(f.str()) : "";
      std::string token = m.Find(wire::kTagSession, &f) ? std::string(f.str()) : "";
      uint32_t flags = 0;
      if (m.Find(wire::kTagFlags, &f)) (void)f.u32(&flags);
      break;
    }
    case wire::kConnect:
      ParseTarget(m, pool);
      break;
    case wire::kReport: {
      uint32_t err = 0, count = 0;
      if (m.Find(wire::kTagErrno, &f)) (void)f.u32(&err);
      if (m.Find(wire::kTagCount, &f)) (void)f.u32(&count);
      ParseTarget(m, pool);
      std::string msg = m.Find(wire::kTagMessage, &f) ? std::string(f.str().substr(0, 2000)) : "";
      Check(msg.size() <= 2000);
      break;
    }
    case wire::kResolve: {
      if (!m.Find(wire::kTagName, &f)) break;
      auto name = via::broker::NormalizeName(f.str());
      if (!name.ok()) break;
      Check(!name->empty() && name->size() <= 253);
      uint8_t family = 0;
      if (m.Find(wire::kTagFamily, &f) && !f.u8(&family)) break;
      auto p = pool.LookupHeld(*name, 0, 0);
      Check(p.ok());
      Check(pool.Reverse(p->v4) == *name && pool.Reverse(p->v6) == *name);
      uint8_t buf[256];  // HandleResolve's reply
      wire::Writer w(buf, sizeof buf, wire::kResolve | wire::kReplyBit, m.id());
      w.PutU32(wire::kTagErrno, 0);
      w.PutAddr(wire::kTagAddr, p->v4);
      w.PutAddr(wire::kTagAddr, p->v6);
      w.PutU32(wire::kTagHoldMs, 2000);
      Check(w.ok());
      break;
    }
    case wire::kReverse: {
      wire::Addr a;
      if (!m.Find(wire::kTagAddr, &f) || !f.addr(&a)) break;
      UseAddr(a, pool);
      if (std::optional<std::string> name = pool.Reverse(a)) {
        uint8_t buf[512];  // HandleReverse's reply
        wire::Writer w(buf, sizeof buf, wire::kReverse | wire::kReplyBit, m.id());
        w.PutU32(wire::kTagErrno, 0);
        w.PutString(wire::kTagName, *name);
        Check(w.ok());
      }
      break;
    }
    case wire::kListen:
    case wire::kDnsSocket: {
      wire::Addr a;
      if (m.Find(wire::kTagAddr, &f) && f.addr(&a)) UseAddr(a, pool);
      break;
    }
    case wire::kDnsQuery: {
      if (!m.Find(wire::kTagDnsPacket, &f)) break;
      via::broker::DnsPolicy policy;
      policy.lookup = [&pool](const std::string& name) {
        FakeAddressPool::Pair p = pool.Lookup(name);
        return std::make_pair(p.v4, p.v6);
      };
      policy.reverse = [&pool](const wire::Addr& a) { return pool.Reverse(a); };
      std::string summary;
      std::optional<std::string> answer = via::broker::AnswerDnsQuery(f.str(), policy, &summary);
      uint8_t buf[via::broker::kMaxDnsPacket + 1024];  // HandleDnsQuery's reply
      wire::Writer w(buf, sizeof buf, wire::kDnsQuery | wire::kReplyBit, m.id());
      w.PutU32(wire::kTagErrno, 0);
      if (answer) w.PutBytes(wire::kTagDnsPacket, answer->data(), answer->size());
      w.PutString(wire::kTagMessage, summary.substr(0, 512));
      Check(w.ok());
      break;
    }
    case wire::kOpenSession: {
      std::string exe = m.Find(wire::kTagExe, &f) ? std::string(f.str()) : "";
      std::vector<std::string> argv;
      m.ForEach([&](const wire::Field& af) {
        if (af.tag == wire::kTagArgv) argv.emplace_back(af.str());
      });
      uint32_t flags = 0;
      if (m.Find(wire::kTagFlags, &f)) (void)f.u32(&flags);
      break;
    }
    case wire::kSessionChild:
    case wire::kSessionDetach: {
      std::string token = m.Find(wire::kTagSession, &f) ? std::string(f.str()) : "";
      size_t pids = 0;
      m.ForEach([&](const wire::Field& pf) {
        uint32_t pid = 0;
        if (pf.tag == wire::kTagPid && pf.u32(&pid) && pid != 0) ++pids;
      });
      break;
    }
    case wire::kStatus: {
      uint32_t flags = 0;  // kFlagStatusJson: JSON instead of TEXT
      if (m.Find(wire::kTagFlags, &f)) (void)f.u32(&flags);
      break;
    }
    default:
      break;  // SHUTDOWN, RELOAD carry no fields the broker reads; others: an error
  }
}

FakeAddressPool& Pool() {
  // One pool for every input, as one broker serves every request; small, so that recycling is
  // reached too. A few names are mapped so that ADDR fields can hit one.
  static FakeAddressPool* pool = [] {
    auto p = FakeAddressPool::Create("198.18.0.0/29", "fd76:6961:ff00::/120", 4);
    Check(p.ok());
    auto* heap = new FakeAddressPool(std::move(*p));
    heap->Lookup("example.com");
    heap->Lookup("x.onion");
    return heap;
  }();
  return *pool;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Past the fuzzer's input sizes: a datagram over 64 KiB is refused before any byte is read.
  static const bool kTooLargeChecked = [] {
    static uint8_t big[wire::kMaxMessage + 1];
    wire::Message m;
    Check(m.Parse(big, sizeof big) == wire::ParseError::kTooLarge);
    return true;
  }();
  (void)kTooLargeChecked;
  wire::Message m;
  wire::ParseError pe = m.Parse(data, size);
  if (pe != wire::ParseError::kOk) {
    Check(std::strlen(wire::ParseErrorText(pe)) > 0);
    // The reply to a malformed message (Server::Handle, broker/server.cc).
    uint8_t buf[256];
    wire::Writer w(buf, sizeof buf, wire::kReplyBit, 0);
    w.PutU32(wire::kTagErrno, EPROTO);
    w.PutString(wire::kTagMessage, wire::ParseErrorText(pe));
    Check(w.ok());
    return 0;
  }
  Check(size >= wire::kHeaderSize && size <= wire::kMaxMessage);

  // Fields tile the body exactly, and re-encode to the same bytes.
  static uint8_t out[wire::kMaxMessage];
  wire::Writer w(out, sizeof out, m.type(), m.id());
  size_t end = wire::kHeaderSize;
  m.ForEach([&](const wire::Field& f) {
    Check(f.data == data + end + 4 && f.data + f.len <= data + size);
    end += 4 + f.len;
    w.PutBytes(f.tag, f.data, f.len);
  });
  Check(end == size && w.ok() && w.size() == size);
  Check(std::memcmp(out, data, 6) == 0 && std::memcmp(out + 8, data + 8, size - 8) == 0);

  // Find is the first match of ForEach, for every tag; every accessor on every field.
  for (uint16_t tag : kTags) {
    wire::Field first, found;
    bool seen = false;
    m.ForEach([&](const wire::Field& f) {
      if (!seen && f.tag == tag) first = f, seen = true;
    });
    Check(m.Find(tag, &found) == seen);
    if (seen) Check(found.data == first.data && found.len == first.len);
  }
  m.ForEach([&](const wire::Field& f) {
    uint32_t u32;
    uint16_t u16;
    uint8_t u8;
    wire::Addr a;
    Check(f.u32(&u32) == (f.len == 4));
    Check(f.u16(&u16) == (f.len == 2));
    Check(f.u8(&u8) == (f.len == 1));
    if (f.addr(&a)) UseAddr(a, Pool());
    Check(f.str().size() == f.len);
  });

  Decode(m, Pool());
  return 0;
}

#define VIA_FUZZ_NAME "broker_request_fuzz"
#include "tests/fuzz/standalone_main.h"
