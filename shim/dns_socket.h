// Raw DNS sockets (dns_socket.cc). Under an overlay, a UDP socket's datagrams to port 53 (any
// address) are DNS queries: the shim hands them to the broker and delivers the answer on the
// program's socket (from a loopback address, shown to the program as the resolver's). See
// docs/architecture.md, "Raw DNS".
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>

#include "common/wire.h"

namespace via::shim {

// connect(fd, resolver:53) of a UDP socket: connects it to a responder of the broker instead
// (BrokerDnsSocket) and remembers the resolver.
int DnsConnect(int fd, const wire::Addr& resolver);
// A send on `fd` to `name` of the bytes in iov: returns 1 and sets *result (bytes "sent" or -1
// with errno) when this is a DNS query that was handled, 0 when the caller goes on as usual
// (always for name == nullptr: a connected DNS socket sends to the broker's responder itself).
int DnsInterceptSend(int fd, const sockaddr* name, socklen_t namelen, const iovec* iov,
                     size_t iovcnt, ssize_t* result);
// After a receive on `fd`: shows the resolver as the source of an answer we delivered.
void DnsRewriteSource(int fd, sockaddr* addr, socklen_t* len);
// getpeername of a connected DNS socket: the resolver.
bool DnsPeer(int fd, wire::Addr* resolver);
// A UDP (datagram, IPPROTO_UDP) socket?
bool IsUdpSocket(int fd);

}  // namespace via::shim
