// Routed sockets (routed.cc): the destination a routed socket was connected to, so getpeername
// can answer with the address the program asked for (the fake address of a name) instead of
// the proxy's. Keyed by fd and validated by inode (shim/fd_table.h), so that a closed-and-reused
// fd number is never mistaken for the routed socket.
#pragma once

#include "common/wire.h"

namespace via::shim {

void RememberRouted(int fd, const wire::Addr& dest);
bool LookupRouted(int fd, wire::Addr* dest);

}  // namespace via::shim
