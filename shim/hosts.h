// Local names (hosts.cc): localhost and /etc/hosts, answered without a resolver.
#pragma once

#include <cstddef>

#include "common/wire.h"

namespace via::shim {

// Answers `name` locally if it is "localhost" (and friends) or listed in /etc/hosts: fills up to
// `cap` addresses of `family` (0 any, AF_INET, AF_INET6) and returns how many (possibly 0 when
// the name is listed only with the other family). Returns -1 when the name is not local.
int LocalLookup(const char* name, int family, wire::Addr* out, int cap);
// Is this address listed in /etc/hosts (for reverse lookups)? Copies the first name.
bool HostsReverse(const wire::Addr& addr, char* name, size_t namecap);
// Numeric host strings that libc parses without any lookup (inet_aton forms, IPv6 literals).
bool IsNumericHost(const char* name);

}  // namespace via::shim
