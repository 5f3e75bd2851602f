// Strict mode (`via run --strict`): the command runs in a network namespace of its own that has
// only `lo`, so nothing it does can reach the network by itself, whatever it is (Go, static,
// raw system calls). A seccomp filter hands each connect(2) to `via run` (user notification);
// for a TCP connect, `via run` creates a socket in its own namespace, has the broker connect it
// through the overlay (CONNECT, as for the shim), and puts it on the program's descriptor
// number (SECCOMP_IOCTL_NOTIF_ADDFD with SETFD). Payload bytes never pass through via. Names:
// the namespace's resolv.conf names 127.0.0.1, where `via run` answers DNS queries from the
// broker's fake-address table (DNS_QUERY): nothing is resolved locally.
//
// The namespace is the guarantee; the filter only adds routing. What the filter does not take
// (UDP to anywhere but the resolver, ICMP, raw sockets, io_uring) has no route out of the
// namespace and fails. docs/architecture.md, "Strict mode".
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "common/wire.h"

namespace via::tools::strict {

// In the command's process, before exec: enters the namespaces (a user namespace first when not
// root: the uid and gid map to themselves), brings `lo` up, bind-mounts `resolv_conf` over
// /etc/resolv.conf, binds the resolver socket, installs the filter and sends its listener and
// the resolver socket to `via run` over `channel`. On failure sends the reason instead and
// returns false (the caller must not exec: never unprotected). The filter always takes
// connect and listen; with `listeners` (an overlay of the configuration can serve listeners)
// also accept, accept4 and getsockname, which the listeners it places need.
bool EnterSandbox(int channel, const std::string& resolv_conf, bool audit, bool listeners);

// In `via run`: receives what EnterSandbox sent, then serves the command's connects and DNS
// queries through the broker at `socket` (HELLO with the session `token`: the session's network)
// until `command` exits; a failed connect or query is one line on stderr unless `quiet`. With
// `audit`, also records every attempt that would have left outside the overlay (sends with an
// address on sockets via does not place, io_uring) and prints them, by process, at the end
// (EnterSandbox's filter must have been installed with `audit` too; `listeners` as given
// to EnterSandbox: without it, a listen the overlay would serve is refused). Returns
// its wait status, or -1 after printing why the sandbox could not be set up (the command was
// then never run).
// `fake_nets`: the configuration's fake-address ranges, used when the broker's HELLO names none.
int Supervise(int channel, pid_t command, const std::string& socket, const std::string& token,
              bool quiet, bool audit, bool listeners, const std::vector<wire::Addr>& fake_nets);

// "198.18.0.0/15" or "fd76:6961:ff00::/64" -> the address with the prefix length as its port
// (as HELLO's FAKE_NET); nullopt when it is not one.
std::optional<wire::Addr> ParseCidr(const std::string& cidr);

// The file EnterSandbox mounts: "nameserver 127.0.0.1". Written by `via run` before the fork
// into `dir`; "" after printing an error.
std::string WriteResolvConf(const std::string& dir);

}  // namespace via::tools::strict
