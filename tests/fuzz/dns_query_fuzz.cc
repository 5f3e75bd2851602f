// Fuzz target for the broker's DNS message parser (broker/dns_message.cc): one raw DNS packet as
// a program sends it to a DNS_SOCKET responder or inside DNS_QUERY, through AnswerDnsQuery with
// a fake-address pool behind it, as broker/dns_query.cc does.
//
// Invariants (abort on a break): a parsed query has exactly one question that ends inside the
// packet and a name of at most 255 bytes; the answer (when there is one) is a response (QR set)
// with the query's id, carries the question as it came, and is no larger than the packet plus
// one record; a packet that is dropped is too short or itself a response; ParseReverseName
// inverts the reverse names of the addresses it returns.
//
// With clang (-DVIA_FUZZ=ON, CXX=clang++) a libFuzzer target, else a standalone driver that
// replays the corpus and deterministic mutations (standalone_main.h); docs/fuzzing.md.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "broker/dns_message.h"
#include "broker/fake_address_pool.h"

namespace {

namespace wire = via::wire;
namespace broker = via::broker;

void Check(bool ok) {
  if (!ok) std::abort();
}

uint16_t Get16(std::string_view s, size_t off) {
  return uint16_t((uint8_t(s[off]) << 8) | uint8_t(s[off + 1]));
}

std::string ReverseName(const wire::Addr& a) {
  std::string s;
  char b[8];
  if (a.family == 4) {
    for (int i = 3; i >= 0; --i) {
      std::snprintf(b, sizeof b, "%u.", a.bytes[i]);
      s += b;
    }
    return s + "in-addr.arpa";
  }
  for (int i = 15; i >= 0; --i) {
    std::snprintf(b, sizeof b, "%x.%x.", a.bytes[i] & 0xf, a.bytes[i] >> 4);
    s += b;
  }
  return s + "ip6.arpa";
}

broker::FakeAddressPool& Pool() {
  static broker::FakeAddressPool* pool = [] {
    auto p = broker::FakeAddressPool::Create("198.18.0.0/29", "fd76:6961:ff00::/120", 4);
    Check(p.ok());
    auto* heap = new broker::FakeAddressPool(std::move(*p));
    heap->Lookup("example.com");
    return heap;
  }();
  return *pool;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view packet(reinterpret_cast<const char*>(data), size);
  broker::DnsParseError err;
  std::optional<broker::DnsQuery> q = broker::ParseDnsQuery(packet, &err);
  if (q) {
    Check(q->question_end > 12 && q->question_end <= size);
    Check(q->name.size() <= 4 * 255);  // \DDD escapes at most quadruple the wire bytes
    Check((q->flags & 0x8000) == 0);
    if (std::optional<wire::Addr> a = broker::ParseReverseName(q->name)) {
      Check(a->family == 4 || a->family == 6);
      Check(ReverseName(*a) == q->name);
    }
  } else if (err.drop) {
    Check(size < 12 || (data[2] & 0x80) != 0 || size > broker::kMaxDnsPacket);
  }

  broker::DnsPolicy policy;
  policy.lookup = [](const std::string& name) {
    broker::FakeAddressPool::Pair p = Pool().Lookup(name);
    return std::make_pair(p.v4, p.v6);
  };
  policy.reverse = [](const wire::Addr& a) { return Pool().Reverse(a); };
  std::string summary;
  std::optional<std::string> answer = broker::AnswerDnsQuery(packet, policy, &summary);
  Check(!summary.empty());
  if (!answer) {
    Check(!q && err.drop);
    return 0;
  }
  Check(answer->size() >= 12 && (uint8_t((*answer)[2]) & 0x80) != 0);
  if (size >= 2) Check(Get16(*answer, 0) == Get16(packet, 0));
  if (q) {
    const size_t question = q->question_end - 12;
    Check(answer->size() <= 12 + question + 12 + 2 + 255);
    Check(answer->compare(12, question, packet.substr(12, question)) == 0);
    Check(Get16(*answer, 4) == 1 && Get16(*answer, 6) <= 1);
  } else {
    Check(answer->size() == 12);
  }
  return 0;
}

#define VIA_FUZZ_NAME "dns_query_fuzz"
#include "tests/fuzz/standalone_main.h"
