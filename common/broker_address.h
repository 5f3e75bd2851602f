// The broker's second address: an abstract Unix socket named after its socket path, for the
// processes of a session that changed user (docs/configuration.md, "Sessions across a change of
// user"). Header-only and libc-only: the shim uses it too.
//
// The name carries no secret and proves nothing: anyone in the network namespace can connect to
// it, or bind it first. The broker admits a peer there only when the kernel's process tree puts
// it inside a live session (broker/peer_lineage.h); the shim talks to it only when the peer's
// SO_PEERCRED uid is the broker's (AbstractPeerTrusted).
#pragma once

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace via {

// Fills *out with the abstract address (a NUL, then "via-broker-<16 hex of FNV-1a(path)>") of
// the broker listening on `socket_path`; returns the address length to pass to bind/connect.
// The hash keeps the name within sun_path for every path a socket can have.
inline socklen_t AbstractBrokerAddress(const char* socket_path, sockaddr_un* out) {
  uint64_t h = 1469598103934665603ull;
  for (const char* p = socket_path; *p != 0; ++p) {
    h ^= static_cast<unsigned char>(*p);
    h *= 1099511628211ull;
  }
  std::memset(out, 0, sizeof *out);
  out->sun_family = AF_UNIX;
  int n = std::snprintf(out->sun_path + 1, sizeof out->sun_path - 1, "via-broker-%016llx",
                        static_cast<unsigned long long>(h));
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + static_cast<size_t>(n));
}

// Whether the process answering on the abstract address may be trusted as the broker of
// `socket_path`: its uid (SO_PEERCRED, taken by the kernel when it listened) is root's, or that
// of the socket directory's owner when that directory can be looked at. Another user could have
// bound the name first; such a listener would otherwise be able to answer "direct".
inline bool AbstractPeerTrusted(const char* socket_path, uid_t peer_uid) {
  if (peer_uid == 0) return true;
  char dir[sizeof(sockaddr_un{}.sun_path)];
  std::snprintf(dir, sizeof dir, "%s", socket_path);
  char* slash = std::strrchr(dir, '/');
  if (slash == nullptr) return false;
  if (slash == dir)
    slash[1] = 0;
  else
    *slash = 0;
  struct stat st;
  return stat(dir, &st) == 0 && st.st_uid == peer_uid;
}

}  // namespace via
