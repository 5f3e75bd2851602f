#include "broker/dns_message.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>

#include "broker/fake_address_pool.h"

namespace via::broker {

namespace {

constexpr size_t kHeaderSize = 12;
constexpr uint16_t kFlagQr = 0x8000;
constexpr uint16_t kFlagRd = 0x0100;
constexpr uint16_t kFlagRa = 0x0080;
constexpr size_t kMaxWireName = 255;

uint16_t Get16(std::string_view p, size_t off) {
  return uint16_t((uint8_t(p[off]) << 8) | uint8_t(p[off + 1]));
}

void Put16(std::string* out, uint16_t v) {
  out->push_back(char(v >> 8));
  out->push_back(char(v & 0xff));
}

void Put32(std::string* out, uint32_t v) {
  Put16(out, uint16_t(v >> 16));
  Put16(out, uint16_t(v));
}

// Reads an uncompressed name at *off. Printable text of the name into *text (labels joined by
// '.', bytes outside [A-Za-z0-9-_] as \DDD), *host whether it is a plain host name.
bool ReadName(std::string_view p, size_t* off, std::string* text, bool* host, std::string* why) {
  size_t pos = *off;
  size_t wire_len = 0;
  text->clear();
  *host = true;
  while (true) {
    if (pos >= p.size()) {
      *why = "name runs past the end of the packet";
      return false;
    }
    uint8_t len = uint8_t(p[pos]);
    if ((len & 0xc0) == 0xc0) {
      *why = "compression pointer in a query name";
      return false;
    }
    if ((len & 0xc0) != 0) {
      *why = "unknown label type";
      return false;
    }
    wire_len += 1 + len;
    if (wire_len > kMaxWireName) {
      *why = "name longer than 255 bytes";
      return false;
    }
    ++pos;
    if (len == 0) break;
    if (p.size() - pos < len) {
      *why = "label runs past the end of the packet";
      return false;
    }
    if (!text->empty()) text->push_back('.');
    for (size_t i = 0; i < len; ++i) {
      unsigned char c = static_cast<unsigned char>(p[pos + i]);
      if (std::isalnum(c) || c == '-' || c == '_') {
        text->push_back(char(std::tolower(c)));
      } else {
        *host = false;
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\%03u", unsigned(c));
        *text += esc;
      }
    }
    pos += len;
  }
  *off = pos;
  return true;
}

std::string TypeText(uint16_t t) {
  switch (t) {
    case kDnsA:
      return "A";
    case kDnsAaaa:
      return "AAAA";
    case kDnsPtr:
      return "PTR";
    default:
      return "TYPE" + std::to_string(t);
  }
}

std::string AddrText(const wire::Addr& a) {
  char buf[INET6_ADDRSTRLEN] = "?";
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, buf, sizeof buf);
  return buf;
}

// A host name in wire format (for PTR rdata).
std::string WireName(const std::string& name) {
  std::string out;
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    out.push_back(char(dot - start));
    out.append(name, start, dot - start);
    start = dot + 1;
  }
  out.push_back(0);
  return out;
}

}  // namespace

std::optional<DnsQuery> ParseDnsQuery(std::string_view p, DnsParseError* error) {
  *error = DnsParseError{};
  auto fail = [&](DnsRcode rcode, std::string why) -> std::optional<DnsQuery> {
    error->rcode = rcode;
    error->why = std::move(why);
    return std::nullopt;
  };
  if (p.size() < kHeaderSize) {
    error->drop = true;
    return fail(kDnsFormErr, "packet of " + std::to_string(p.size()) + " bytes (a header has 12)");
  }
  if (p.size() > kMaxDnsPacket) {
    return fail(kDnsFormErr, "packet of " + std::to_string(p.size()) + " bytes (at most " +
                                 std::to_string(kMaxDnsPacket) + ")");
  }
  DnsQuery q;
  q.id = Get16(p, 0);
  q.flags = Get16(p, 2);
  if (q.flags & kFlagQr) {
    error->drop = true;
    return fail(kDnsFormErr, "the packet is a response, not a query");
  }
  const unsigned opcode = (q.flags >> 11) & 0xf;
  if (opcode != 0) return fail(kDnsNotImp, "opcode " + std::to_string(opcode) + " (only QUERY)");
  const uint16_t qd = Get16(p, 4), an = Get16(p, 6), ns = Get16(p, 8), ar = Get16(p, 10);
  if (qd != 1) return fail(kDnsFormErr, std::to_string(qd) + " questions (exactly 1 allowed)");
  if (an != 0 || ns != 0) return fail(kDnsFormErr, "a query with answer or authority records");
  if (ar > 1) return fail(kDnsFormErr, std::to_string(ar) + " additional records (at most 1)");
  size_t off = kHeaderSize;
  std::string why;
  if (!ReadName(p, &off, &q.name, &q.host_name, &why)) return fail(kDnsFormErr, "question: " + why);
  if (p.size() - off < 4) return fail(kDnsFormErr, "question: type/class run past the end");
  q.qtype = Get16(p, off);
  q.qclass = Get16(p, off + 2);
  off += 4;
  q.question_end = off;
  if (ar == 1) {
    std::string opt_name;
    bool opt_host;
    if (!ReadName(p, &off, &opt_name, &opt_host, &why)) {
      return fail(kDnsFormErr, "additional record: " + why);
    }
    if (p.size() - off < 10) return fail(kDnsFormErr, "additional record runs past the end");
    const uint16_t type = Get16(p, off);
    const uint16_t rdlen = Get16(p, off + 8);
    off += 10;
    if (type != kDnsOpt || !opt_name.empty()) {
      return fail(kDnsFormErr, "the additional record is not an EDNS0 OPT record at the root");
    }
    if (p.size() - off < rdlen) return fail(kDnsFormErr, "OPT record data runs past the end");
    off += rdlen;
  }
  if (off != p.size()) {
    return fail(kDnsFormErr, std::to_string(p.size() - off) + " bytes after the last record");
  }
  return q;
}

std::string BuildDnsAnswer(const DnsQuery& q, std::string_view packet, DnsRcode rcode,
                           const std::vector<DnsRecord>& records, uint32_t ttl) {
  std::string out;
  Put16(&out, q.id);
  Put16(&out, uint16_t(kFlagQr | (q.flags & kFlagRd) | kFlagRa | rcode));
  Put16(&out, 1);
  Put16(&out, uint16_t(records.size()));
  Put16(&out, 0);
  Put16(&out, 0);
  out.append(packet.substr(kHeaderSize, q.question_end - kHeaderSize));
  for (const DnsRecord& r : records) {
    Put16(&out, 0xc000 | kHeaderSize);  // the question's name
    Put16(&out, r.type);
    Put16(&out, kDnsClassIn);
    Put32(&out, ttl);
    Put16(&out, uint16_t(r.rdata.size()));
    out += r.rdata;
  }
  return out;
}

std::string BuildDnsError(std::string_view packet, DnsRcode rcode) {
  std::string out;
  Put16(&out, packet.size() >= 2 ? Get16(packet, 0) : 0);
  uint16_t flags = packet.size() >= 4 ? Get16(packet, 2) : 0;
  Put16(&out, uint16_t(kFlagQr | (flags & (0x7800 | kFlagRd)) | kFlagRa | rcode));
  for (int i = 0; i < 4; ++i) Put16(&out, 0);
  return out;
}

std::optional<wire::Addr> ParseReverseName(std::string_view name) {
  auto ends = [&](std::string_view suffix) {
    return name.size() > suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  };
  wire::Addr a;
  if (ends(".in-addr.arpa")) {
    std::string_view rest = name.substr(0, name.size() - 13);
    uint8_t b[4];
    for (int i = 0; i < 4; ++i) {
      size_t dot = rest.find('.');
      if ((dot == std::string_view::npos) != (i == 3)) return {};  // exactly four labels
      std::string_view part = rest.substr(0, dot);
      rest = dot == std::string_view::npos ? std::string_view() : rest.substr(dot + 1);
      if (part.empty() || part.size() > 3 || (part.size() > 1 && part[0] == '0')) return {};
      unsigned v = 0;
      for (char c : part) {
        if (c < '0' || c > '9') return {};
        v = v * 10 + unsigned(c - '0');
      }
      if (v > 255) return {};
      b[3 - i] = uint8_t(v);
    }
    a.family = 4;
    std::memcpy(a.bytes, b, 4);
    return a;
  }
  if (ends(".ip6.arpa")) {
    std::string_view rest = name.substr(0, name.size() - 9);
    if (rest.size() != 63) return {};
    a.family = 6;
    for (int i = 0; i < 32; ++i) {
      char c = rest[size_t(i) * 2];
      if (i < 31 && rest[size_t(i) * 2 + 1] != '.') return {};
      int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (v < 0) return {};
      // Nibble i (from the start of the name) is the (31 - i)th nibble of the address.
      int nib = 31 - i;
      a.bytes[nib / 2] |= uint8_t(nib % 2 == 0 ? v << 4 : v);
    }
    return a;
  }
  return {};
}

std::optional<std::string> AnswerDnsQuery(std::string_view packet, const DnsPolicy& policy,
                                          std::string* summary) {
  DnsParseError err;
  std::optional<DnsQuery> q = ParseDnsQuery(packet, &err);
  if (!q) {
    *summary = "malformed query (" + err.why + ")";
    if (err.drop) {
      *summary += ": not answered";
      return std::nullopt;
    }
    *summary += err.rcode == kDnsNotImp ? ": NOTIMP" : ": FORMERR";
    return BuildDnsError(packet, err.rcode);
  }
  const std::string what = TypeText(q->qtype) + " " + (q->name.empty() ? "." : q->name);
  auto answer = [&](DnsRcode rcode, std::vector<DnsRecord> records, const std::string& text) {
    *summary = what + " -> " + text;
    return BuildDnsAnswer(*q, packet, rcode, records, policy.ttl);
  };
  if (policy.refuse) return answer(kDnsRefused, {}, "REFUSED (no network: network none)");
  if (q->qclass != kDnsClassIn) return answer(kDnsRefused, {}, "REFUSED (class is not IN)");
  if (q->name.empty() || !q->host_name || !NormalizeName(q->name).ok()) {
    return answer(kDnsRefused, {}, "REFUSED (not a host name)");
  }
  if (q->qtype == kDnsPtr) {
    std::optional<wire::Addr> a = ParseReverseName(q->name);
    std::optional<std::string> name = a ? policy.reverse(*a) : std::nullopt;
    if (!name) return answer(kDnsNxDomain, {}, "NXDOMAIN (not a fake address)");
    return answer(kDnsNoError, {{kDnsPtr, WireName(*name)}}, *name);
  }
  if (q->qtype != kDnsA && q->qtype != kDnsAaaa) {
    return answer(kDnsNoError, {}, "no records (only A, AAAA and PTR are answered)");
  }
  wire::Addr addr;
  if (q->name == "localhost" || q->name.ends_with(".localhost")) {
    addr.family = q->qtype == kDnsA ? 4 : 6;
    if (addr.family == 4) {
      addr.bytes[0] = 127;
      addr.bytes[3] = 1;
    } else {
      addr.bytes[15] = 1;
    }
  } else {
    auto pair = policy.lookup(q->name);
    addr = q->qtype == kDnsA ? pair.first : pair.second;
  }
  std::string rdata(reinterpret_cast<const char*>(addr.bytes), addr.addr_len());
  return answer(kDnsNoError, {{q->qtype, rdata}}, AddrText(addr));
}

}  // namespace via::broker
