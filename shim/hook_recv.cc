// recvfrom, recvmsg, recvmmsg: the answers to DNS queries the broker answered for a program's
// own UDP socket come from loopback; the receive hooks show the resolver's address as their
// source instead (DnsRewriteSource, dns_socket.cc). A socket whose SOCKS5 replies are unread
// under optimistic data has them taken off first (optimistic.h). Everything else passes through.
#include <sys/socket.h>
#include <sys/types.h>

#include "shim/dns_socket.h"
#include "shim/export.h"
#include "shim/optimistic.h"
#include "shim/pending_connect.h"
#include "shim/real.h"

using namespace via::shim;

VIA_EXPORT ssize_t recvfrom(int fd, void* buf, size_t n, int flags, sockaddr* addr,
                            socklen_t* len) {
  if (PendingIoBlocked(fd, flags)) return -1;
  if (OptimisticAny() && OptimisticBeforeRead(fd, flags) != 0) return -1;
  ssize_t r = Real().recvfrom(fd, buf, n, flags, addr, len);
  if (r >= 0) DnsRewriteSource(fd, addr, len);
  return r;
}

VIA_EXPORT ssize_t recvmsg(int fd, msghdr* msg, int flags) {
  if (PendingIoBlocked(fd, flags)) return -1;
  if (OptimisticAny() && OptimisticBeforeRead(fd, flags) != 0) return -1;
  ssize_t r = Real().recvmsg(fd, msg, flags);
  if (r >= 0 && msg != nullptr) {
    DnsRewriteSource(fd, static_cast<sockaddr*>(msg->msg_name), &msg->msg_namelen);
  }
  return r;
}

VIA_EXPORT int recvmmsg(int fd, mmsghdr* vec, unsigned int vlen, int flags,
                        struct timespec* timeout) {
  // MSG_WAITFORONE and the timeout concern the messages after the first; the replies come first.
  if (PendingIoBlocked(fd, flags)) return -1;
  if (OptimisticAny() && OptimisticBeforeRead(fd, flags & ~MSG_WAITFORONE) != 0) return -1;
  int r = Real().recvmmsg(fd, vec, vlen, flags, timeout);
  for (int i = 0; i < r; ++i) {
    DnsRewriteSource(fd, static_cast<sockaddr*>(vec[i].msg_hdr.msg_name),
                     &vec[i].msg_hdr.msg_namelen);
  }
  return r;
}
