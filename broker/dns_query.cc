// Server::HandleDnsQuery: DNS queries a program sent itself (a raw UDP socket, dig, c-ares),
// handed over by the shim instead of reaching any resolver. Answered from the fake-address
// table (broker/dns_message.h); the shim delivers the answer on the program's socket.
#include <utility>

#include "broker/dns_message.h"
#include "broker/server.h"

namespace via::broker {

void Server::HandleDnsQuery(Client& c, const wire::Message& m) {
  const uint16_t reply = wire::kDnsQuery | wire::kReplyBit;
  wire::Field f;
  if (!m.Find(wire::kTagDnsPacket, &f)) {
    return ReplyError(c, reply, m.id(), EINVAL, "DNS_QUERY needs DNS_PACKET");
  }
  if (c.overlay == nullptr) {
    return ReplyError(c, reply, m.id(), EPERM,
                      "DNS_QUERY is answered only under an overlay (this connection is direct)");
  }
  DnsPolicy policy;
  policy.lookup = [this](const std::string& name) {
    FakeAddressPool::Pair p = pool_->Lookup(name);
    return std::make_pair(p.v4, p.v6);
  };
  policy.reverse = [this](const wire::Addr& a) { return pool_->Reverse(a); };
  std::string summary;
  std::optional<std::string> answer = AnswerDnsQuery(f.str(), policy, &summary);
  log_->info("dns query via {}: {} ({})", c.overlay->overlay->id, summary, PeerText(c));
  uint8_t buf[kMaxDnsPacket + 1024];
  wire::Writer w(buf, sizeof buf, reply, m.id());
  w.PutU32(wire::kTagErrno, 0);
  if (answer) w.PutBytes(wire::kTagDnsPacket, answer->data(), answer->size());
  w.PutString(wire::kTagMessage, summary.substr(0, 512));
  Reply(c, w);
}

}  // namespace via::broker
