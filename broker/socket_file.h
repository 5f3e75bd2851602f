// The broker's socket file: the private directory it must sit in, binding it (without
// disturbing a live broker on the same path), removing it at exit only if it is still ours, and
// the exec-hello markers next to it. Plain system calls, no loop.
#pragma once

#include <sys/stat.h>

#include <string>

#include "common/status.h"
#include "common/unique_fd.h"
#include "config/config.h"

namespace via::broker {

// The socket's directory must be a directory owned by this user with mode 0700.
Status CheckSocketDir(const std::string& socket_path);

// A listening, non-blocking SOCK_SEQPACKET socket bound at `socket_path` (mode 0600). A socket
// file left by a broker that died is replaced; a live broker answering there is EADDRINUSE.
// *bound is set once the file exists (to remove it at exit, even if listen fails), and *st gets
// the file's identity.
Result<UniqueFd> BindSocketFile(const std::string& socket_path, bool* bound, struct stat* st);

// Unlinks the socket file (and this broker's exec-hello marker) if it is still the file with
// identity `st`: never one a later broker bound after this one stopped answering.
void RemoveSocketFileIfOurs(const std::string& socket_path, const struct stat& st);

// `<socket>.exec-hello` (and `exec-hello` in its directory, which tells the shims to look for
// such markers) while the config has rules that give groups: shims then greet the broker before
// an exec in place (kFlagExecHello); without such rules they do not, at no cost.
void MarkExecHello(const std::string& socket_path, const config::Config& cfg);

}  // namespace via::broker
