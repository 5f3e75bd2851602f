// NameService: names for programs. RESOLVE hands out fake addresses (the overlay resolves the
// name when a connect uses it), REVERSE maps them back; both go to the overlay's far side
// instead when it resolves remotely (ConnectService::StartRemoteResolve). DNS queries a program
// sent itself are answered from the same table: one at a time (DNS_QUERY), or by a responder
// socket per program DNS socket (DNS_SOCKET) that answers on loopback until the program closes
// its socket or the client connection closes.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "broker/connect_service.h"
#include "broker/context.h"
#include "broker/dns_message.h"
#include "common/unique_fd.h"
#include "common/wire.h"

namespace via::broker {

class NameService : public Service {
 public:
  // *remote must outlive the service.
  NameService(BrokerContext* ctx, ConnectService* remote) : Service(ctx), remote_(remote) {}
  NameService(const NameService&) = delete;
  NameService& operator=(const NameService&) = delete;

  void HandleResolve(Client& c, const wire::Message& m);
  void HandleReverse(Client& c, const wire::Message& m);
  void HandleDnsQuery(Client& c, const wire::Message& m);
  void HandleDnsSocket(Client& c, const wire::Message& m);
  // Closes the DNS responders the client asked for (its connection closed).
  void CloseResponders(uint64_t client_id);

 private:
  // A DNS responder: a loopback UDP socket connected to one program DNS socket.
  struct DnsResponder {
    UniqueFd fd;
    uint64_t client = 0;
    std::string overlay;  // for the log
    std::string peer;     // PeerText of the client, for the log
    uint64_t seq = 0;     // creation order
  };
  // Answers from the fake-address table.
  DnsPolicy Policy();
  // Drops the client's oldest responder when it has kMaxRespondersPerClient.
  void EvictOldestResponder(uint64_t client_id);
  // A UDP socket bound to loopback in `target`'s family and connected to `target` (the
  // program's socket); its own address goes to *bound.
  static Result<UniqueFd> OpenResponderSocket(const wire::Addr& target, wire::Addr* bound);
  void OnDnsResponder(int fd);

  ConnectService* remote_;
  uint64_t next_responder_ = 1;
  std::map<int, DnsResponder> responders_;  // by fd
};

}  // namespace via::broker
