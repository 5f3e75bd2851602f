// Inbound listeners (hook_listen.cc): a listen() under an overlay that accepts connections
// through it puts a socketpair in place of the program's socket.
#pragma once

#include "common/wire.h"

namespace via::shim {

// Whether `fd` is a listener the shim put in place of a program's socket; *bound gets the
// address the program bound (stateless: read from the socket's abstract name).
bool ViaListener(int fd, wire::Addr* bound);

}  // namespace via::shim
