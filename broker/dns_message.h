// DNS queries that programs send themselves (dig, c-ares, a raw UDP socket), answered by the
// broker instead of any resolver: a strict parser for one query (RFC 1035 section 4.1) and the
// answer policy (fake addresses for A/AAAA, names of fake addresses for PTR). Pure functions on
// byte strings; the shim hands the packets over (wire type DNS_QUERY, docs/protocol.md).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/wire.h"

namespace via::broker {

constexpr size_t kMaxDnsPacket = 4096;  // larger queries are not answered

// DNS constants (RFC 1035, 3596, 6891).
enum DnsType : uint16_t { kDnsA = 1, kDnsPtr = 12, kDnsAaaa = 28, kDnsOpt = 41 };
constexpr uint16_t kDnsClassIn = 1;
enum DnsRcode : uint8_t {
  kDnsNoError = 0,
  kDnsFormErr = 1,
  kDnsServFail = 2,
  kDnsNxDomain = 3,
  kDnsNotImp = 4,
  kDnsRefused = 5,
};

// One well-formed query: header, exactly one question, no answer or authority records, and at
// most one additional record, which must be an EDNS0 OPT record with the root name.
struct DnsQuery {
  uint16_t id = 0;
  uint16_t flags = 0;      // header flags word (QR = 0)
  std::string name;        // lower-cased, without the trailing dot; "" for the root; bytes
                           // other than letters, digits, '-' and '_' written as \DDD
  bool host_name = false;  // every label only letters, digits, '-' and '_'
  uint16_t qtype = 0;
  uint16_t qclass = 0;
  size_t question_end = 0;  // offset just past the question section in the packet
};

// How a packet failed to parse. kDrop: no answer at all (too short to carry an id, or itself a
// response); the rest get an answer with the given rcode.
struct DnsParseError {
  bool drop = false;
  DnsRcode rcode = kDnsFormErr;
  std::string why;
};

// Parses `packet` strictly: every length is checked against the packet's end, labels are
// 1..63 bytes, names at most 255 bytes on the wire, no compression pointers (queries have
// nothing to point back to), no bytes after the last record. A query whose opcode is not
// QUERY fails with NOTIMP.
std::optional<DnsQuery> ParseDnsQuery(std::string_view packet, DnsParseError* error);

// Builds an answer to `q` (its question section copied from `packet`) with `rcode` and the
// given A/AAAA/PTR records (each rdata as it goes on the wire). RD is copied, RA set.
struct DnsRecord {
  uint16_t type = 0;
  std::string rdata;
};
std::string BuildDnsAnswer(const DnsQuery& q, std::string_view packet, DnsRcode rcode,
                           const std::vector<DnsRecord>& records, uint32_t ttl);
// A header-only answer (no question) for a query that could not be parsed.
std::string BuildDnsError(std::string_view packet, DnsRcode rcode);

// The answer policy, with the fake-address table behind two callbacks:
//   lookup(name)   -> the fake IPv4 and IPv6 address of a (valid, normalized) name;
//   reverse(addr)  -> the name behind a fake address, if any.
// A/AAAA of a host name: its fake address ("localhost": 127.0.0.1 / ::1). PTR of a fake
// address (in-addr.arpa / ip6.arpa): its name; of any other address: NXDOMAIN. Other types of
// a host name: no records (NOERROR). A name that is not a host name (see NormalizeName),
// the root, or a class other than IN: REFUSED. Returns the answer packet, or nullopt when
// nothing must be sent back; `summary` gets one line for the log ("A example.com -> ...").
struct DnsPolicy {
  std::function<std::pair<wire::Addr, wire::Addr>(const std::string&)> lookup;
  std::function<std::optional<std::string>(const wire::Addr&)> reverse;
  uint32_t ttl = 60;
  bool refuse = false;  // the network "none": every well-formed query is REFUSED
};
std::optional<std::string> AnswerDnsQuery(std::string_view packet, const DnsPolicy& policy,
                                          std::string* summary);

// "4.3.2.1.in-addr.arpa" / 32-nibble "ip6.arpa" names -> the address; nullopt otherwise.
std::optional<wire::Addr> ParseReverseName(std::string_view name);

}  // namespace via::broker
