#include "overlays/handshake.h"

#include <string>

#include "common/wire.h"

namespace via::overlays {

std::string Target::ToString() const {
  if (!name.empty()) return name + ":" + std::to_string(port);
  wire::Addr a = addr;
  a.port = port;
  char buf[80];
  return wire::FormatAddr(a, buf, sizeof buf);
}

}  // namespace via::overlays
