// Pieces of `via probe` that unit tests use.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace via::tools {

struct Url {
  bool https = false;
  std::string host;
  uint16_t port = 0;
  std::string path;
};

// http:// and https:// URLs, with optional port and [IPv6] hosts.
Result<Url> ParseUrl(const std::string& url);

// The "ip" string of a JSON body like {"ip":"1.2.3.4"}, else the trimmed body.
std::string ExtractIp(const std::string& body);

// GETs `u` over the connected socket `fd` and returns the IP the server reports.
Result<std::string> FetchIp(int fd, const Url& u, const std::string& cafile, int timeout_ms);

}  // namespace via::tools
