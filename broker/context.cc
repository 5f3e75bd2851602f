#include "broker/context.h"

#include <arpa/inet.h>

#include <string_view>

namespace via::broker {

void ClientSink::ReplyError(Client& c, uint16_t type, uint32_t id, int err,
                            const std::string& msg) {
  uint8_t buf[4096];
  wire::Writer w(buf, sizeof buf, type, id);
  w.PutU32(wire::kTagErrno, uint32_t(err));
  w.PutString(wire::kTagMessage, std::string_view(msg).substr(0, kMaxMessageText));
  Reply(c, w);
}

void ClientSink::ReplyOk(Client& c, uint16_t type, uint32_t id) {
  uint8_t buf[64];
  wire::Writer w(buf, sizeof buf, type, id);
  w.PutU32(wire::kTagErrno, 0);
  Reply(c, w);
}

std::string AddrText(const wire::Addr& a, bool with_port) {
  char buf[80];
  if (with_port) return wire::FormatAddr(a, buf, sizeof buf);
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, buf, sizeof buf);
  return buf;
}

bool BrokerContext::LogAllowed(Noisy kind, uint64_t* suppressed) {
  uint64_t ignored = 0;
  return noisy.Allow(kind, NowMs(), suppressed != nullptr ? suppressed : &ignored);
}

}  // namespace via::broker
