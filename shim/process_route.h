// Whether this process is routed, as the broker decided it (process_route.cc): for the connect
// and name hooks (NetworkDirect) and for the exec guard (ExecUnguarded, ExecRouted). Above the
// broker link: these ask it.
#pragma once

#include <cstddef>

#include "shim/export.h"

namespace via::shim {

// Turns the shim off in this process (the `via` binary calls it: its own sockets are its own).
VIA_EXPORT void via_shim_set_passthrough(void);
bool Passthrough();  // from the environment only (the exec hooks: no broker round trip)
// Whether this thread's traffic goes direct, as the broker decided for this process (HELLO
// reply flag). False when the broker cannot be asked: the routed path then reports the error
// (fail closed). True without asking when the shim is turned off, and when nothing asked for an
// overlay (no VIA_NETWORK, no VIA_SESSION) and no configuration exists anywhere.
bool NetworkDirect();
// Whether the broker's HELLO said that routes by destination exist for this process
// (wire::kFlagRoutes): then even a direct process sends names and some connects to the broker.
// Ask after NetworkDirect (no round trip of its own when that one greeted).
bool RoutesApply();
// Whether exec needs no guard (the unrouted-binary check, the environment restore): the shim is
// off, or no broker can route this process: no VIA_NETWORK overlay, no VIA_SESSION, VIA_SOCKET
// or VIA_CONFIG, and no broker answer in this process that said "an overlay" or refused it.
// No system call.
bool ExecUnguarded();
// Once the exec guard found a binary that would run without the shim: whether this process is
// routed, as the broker says (ExecUnguarded() was false). True without asking under a
// VIA_NETWORK overlay or after a routed answer. `in_parent`: the caller runs in the process
// itself (posix_spawn), not in a child that may share its memory (vfork), where the thread's
// broker link must not be touched: a separate one-shot HELLO is used there. True (fail closed)
// with the reason in `why` when the broker cannot be asked.
bool ExecRouted(bool in_parent, char* why, size_t whycap, bool* allow_unrouted);
// Whether this process runs in a strict session (`via run --strict`): the broker's HELLO says
// so (kFlagStrict), and the kernel agrees (the process's network namespace has only `lo`). The
// shim then handles only TCP through a SOCKS5 overlay it may speak itself, on a socket the broker
// made (PROXY_SOCKET); every other call is left to the kernel, the session's seccomp filter and
// the namespace. The exec guard and the dlopen gate let every binary through.
bool StrictHere();
// Whether the broker says network_service.unrouted_exec is "allow" (one HELLO, cached): the
// dlopen gate and the loaded-objects check ask it only once they found Go code. Not for vfork
// children.
bool BrokerAllowsUnrouted();

}  // namespace via::shim
