// Strict mode's resolver: the namespace's queries, answered through the broker with fake
// addresses (strict_supervisor.h).
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "broker/dns_message.h"
#include "common/proxy_connect.h"
#include "tools/strict_supervisor.h"

namespace via::tools::strict {

namespace {

constexpr int64_t kPairMs = 1000;  // an AAAA this long after its A, from one socket, is a pair

wire::Addr WithoutPort(const wire::Addr& addr) {
  wire::Addr a = wire::Unmapped(addr);
  a.port = 0;
  return a;
}

// Whether `answer`, the broker's response to a question that ends at `question_end` (copied
// from the query: the bytes must match), carries at least one A record and only fake ones (in
// `nets`). Reads only within `answer`; anything else, or anything it does not follow, is no.
bool OnlyFakeA(std::string_view answer, std::string_view query, size_t question_end,
               const std::vector<wire::Addr>& nets) {
  if (answer.size() < question_end || question_end < 12 ||
      answer.substr(12, question_end - 12) != query.substr(12, question_end - 12)) {
    return false;
  }
  auto u16 = [&](size_t at) {
    return uint16_t((uint8_t(answer[at]) << 8) | uint8_t(answer[at + 1]));
  };
  if ((u16(2) & 0x000f) != 0) return false;  // RCODE
  size_t at = question_end;
  int fakes = 0;
  for (uint16_t i = 0, count = u16(6); i < count; ++i) {
    for (;;) {  // the owner name: labels up to the root, or ending in a compression pointer
      if (at >= answer.size()) return false;
      const uint8_t len = uint8_t(answer[at]);
      if ((len & 0xc0) == 0xc0) {
        at += 2;
        break;
      }
      if ((len & 0xc0) != 0) return false;
      at += 1 + len;
      if (len == 0) break;
    }
    if (at + 10 > answer.size()) return false;
    const uint16_t type = u16(at), rdlength = u16(at + 8);
    at += 10;
    if (at + rdlength > answer.size()) return false;
    if (type == broker::kDnsA) {
      wire::Addr a;
      a.family = 4;
      if (rdlength != 4) return false;
      std::memcpy(a.bytes, answer.data() + at, 4);
      if (std::none_of(nets.begin(), nets.end(),
                       [&](const wire::Addr& net) { return wire::InPrefix(net, a); })) {
        return false;
      }
      ++fakes;
    }
    at += rdlength;
  }
  return fakes > 0;
}

}  // namespace

// A thread of its own, blocked in recvfrom: a query wakes exactly this thread, with no poll
// before the read (on the main thread, the poll also watched the command's exit).
void Supervisor::ServeDns() {
  for (;;) {
    char q[4096];
    sockaddr_storage from{};
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(dns_.get(), q, sizeof q, 0, reinterpret_cast<sockaddr*>(&from), &fl);
    if (n < 0 && errno != EINTR) return;
    if (n > 0) OnDnsQuery(q, size_t(n), from, fl);
  }
}

void Supervisor::OnDnsQuery(const char* q, size_t n, const sockaddr_storage& from, socklen_t fl) {
  const std::string_view packet(q, n);
  const std::string source(reinterpret_cast<const char*>(&from), fl);
  broker::DnsParseError perr;
  std::optional<broker::DnsQuery> query = broker::ParseDnsQuery(packet, &perr);
  auto reply = [&](const std::string& answer) {
    sendto(dns_.get(), answer.data(), answer.size(), MSG_DONTWAIT,
           reinterpret_cast<const sockaddr*>(&from), fl);
  };
  // glibc's getaddrinfo (AF_UNSPEC) sends A, then AAAA, from one socket, and sorts two answers
  // (RFC 6724) by connecting a UDP socket to each and reading its name: in the namespace, four
  // notifications per lookup. The AAAA of a name whose A this socket was just given only fake
  // addresses for is answered with no address (NODATA): one address, nothing to sort. The name
  // reaches the overlay all the same (a fake address of either family stands for it); an AAAA
  // asked alone (an AF_INET6 lookup, Go's resolver on its own socket) gets the fake IPv6
  // address, and real addresses (remote_resolve) are never held back.
  const std::string pair_key = query ? source + '\0' + query->name : std::string();
  if (query && query->qtype == broker::kDnsAaaa) {
    if (auto it = a_answered_.find(pair_key); it != a_answered_.end()) {
      const bool paired = it->second > proxy::MonotonicMs();
      a_answered_.erase(it);
      if (paired) return reply(broker::BuildDnsAnswer(*query, packet, broker::kDnsNoError, {}, 60));
    }
  }
  auto paired_a = [&] {
    if (a_answered_.size() > 4096) a_answered_.clear();
    a_answered_[pair_key] = proxy::MonotonicMs() + kPairMs;
  };
  if (session_->plan) {
    // A/AAAA with the fake addresses RESOLVE promises: via run can then run the SOCKS5
    // handshake by name itself (Connect). Anything else as DNS_QUERY answers it.
    bool looked_up = false;
    if (std::optional<std::string> mine = AnswerFromResolve(packet, &looked_up)) {
      if (looked_up && query && query->qtype == broker::kDnsA) paired_a();
      return reply(*mine);
    }
  }
  auto answer = dns_client_->DnsQuery(q, n);
  if (!answer.ok()) {
    if (!quiet_) Complain("strict: DNS query: " + answer.status().message());
    if (auto c = Open(); c.ok()) dns_client_.emplace(std::move(*c));
    return;
  }
  if (answer->empty()) return;
  const std::string_view got(reinterpret_cast<const char*>(answer->data()), answer->size());
  if (query && query->qtype == broker::kDnsA &&
      OnlyFakeA(got, packet, query->question_end, fake_nets_)) {
    paired_a();
  }
  reply(std::string(got));
}

// The answer to an A or AAAA query built from RESOLVE (broker/dns_message.h's policy, as the
// broker's DNS_QUERY builds it), remembering each fake address's name while the broker
// promises it; nullopt when the query is anything else or the answer would not be two fake
// addresses with a promise (the caller then asks DNS_QUERY).
std::optional<std::string> Supervisor::AnswerFromResolve(std::string_view packet, bool* looked_up) {
  broker::DnsParseError perr;
  std::optional<broker::DnsQuery> query = broker::ParseDnsQuery(packet, &perr);
  if (!query || (query->qtype != broker::kDnsA && query->qtype != broker::kDnsAaaa)) {
    return std::nullopt;
  }
  bool usable = true;
  broker::DnsPolicy policy;
  policy.lookup = [&](const std::string& name) -> std::pair<wire::Addr, wire::Addr> {
    *looked_up = true;
    // A repeat within half the promise: answered here, as the shim's name cache does (a
    // program that resolves before every connect pays no broker round trip).
    if (auto it = answers_.find(name); it != answers_.end()) {
      if (it->second.until > proxy::MonotonicMs()) return {it->second.v4, it->second.v6};
      answers_.erase(it);
    }
    uint32_t hold_ms = 0;
    auto addrs = dns_client_->Resolve(name, &hold_ms);
    wire::Addr v4, v6;
    for (const wire::Addr& a : addrs.ok() ? *addrs : std::vector<wire::Addr>{}) {
      if (a.family == 4 && v4.family == 0) v4 = a;
      if (a.family == 6 && v6.family == 0) v6 = a;
    }
    if (hold_ms == 0 || !socks5::InFakeRange(*session_->plan, v4) ||
        !socks5::InFakeRange(*session_->plan, v6)) {
      usable = false;
    } else {
      Remember(v4, name, hold_ms);
      Remember(v6, name, hold_ms);
      if (answers_.size() > 4096) answers_.clear();
      answers_[name] = {v4, v6, proxy::MonotonicMs() + hold_ms / 2};
    }
    return {v4, v6};
  };
  policy.reverse = [](const wire::Addr&) { return std::optional<std::string>(); };
  std::string summary;
  std::optional<std::string> answer = broker::AnswerDnsQuery(packet, policy, &summary);
  if (!usable) return std::nullopt;
  return answer;
}

// A fake address's name, kept for half of the broker's promise (as the shim's name cache).
void Supervisor::Remember(const wire::Addr& fake, const std::string& name, uint32_t hold_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  if (names_.size() > 4096) names_.clear();
  names_[AddrText(WithoutPort(fake))] = {name, proxy::MonotonicMs() + hold_ms / 2};
}

std::optional<std::string> Supervisor::NameOf(const wire::Addr& fake) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = names_.find(AddrText(WithoutPort(fake)));
  if (it == names_.end() || it->second.second < proxy::MonotonicMs()) return std::nullopt;
  return it->second.first;
}

}  // namespace via::tools::strict
