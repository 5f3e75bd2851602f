// Sockets the shim routed, so getpeername can answer with the destination the program asked for
// (the fake address of a name) instead of the proxy's address.
#include "shim/routed.h"

#include "shim/fd_table.h"

namespace via::shim {

namespace {

constinit FdTable<wire::Addr> g_routed(256);

}  // namespace

void RememberRouted(int fd, const wire::Addr& dest) { g_routed.Put(fd, dest); }

bool LookupRouted(int fd, wire::Addr* dest) { return g_routed.Get(fd, dest); }

}  // namespace via::shim
