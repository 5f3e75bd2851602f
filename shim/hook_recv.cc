// recvfrom, recvmsg, recvmmsg: the answers to DNS queries the broker answered for a program's
// own UDP socket come from loopback; the receive hooks show the resolver's address as their
// source instead (DnsRewriteSource, dns_socket.cc). Everything else passes through.
#include <sys/socket.h>
#include <sys/types.h>

#include "shim/dns_socket.h"
#include "shim/export.h"
#include "shim/real.h"

using namespace via::shim;

VIA_EXPORT ssize_t recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr,
                            socklen_t* len) {
  ssize_t r = Real().recvfrom(fd, buf, n, flags, addr, len);
  if (r >= 0) DnsRewriteSource(fd, addr, len);
  return r;
}

VIA_EXPORT ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  ssize_t r = Real().recvmsg(fd, msg, flags);
  if (r >= 0 && msg != nullptr) {
    DnsRewriteSource(fd, static_cast<sockaddr*>(msg->msg_name), &msg->msg_namelen);
  }
  return r;
}

VIA_EXPORT int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags,
                        struct timespec* timeout) {
  int r = Real().recvmmsg(fd, vec, vlen, flags, timeout);
  for (int i = 0; i < r; ++i) {
    DnsRewriteSource(fd, static_cast<sockaddr*>(vec[i].msg_hdr.msg_name),
                     &vec[i].msg_hdr.msg_namelen);
  }
  return r;
}
