// The parts of the command line that need no broker, config or network: argument parsing,
// LD_PRELOAD composition, URL parsing and the probe's IP extraction. Self-contained (no
// dependencies beyond the standard library) so that tests/unit/cli_test.cc can compile it in.
#include <cstdlib>
#include <string>

#include "tools/cli.h"
#include "tools/probe.h"

namespace via::tools {

Result<Args> ParseArgs(const std::string& command, int argc, char** argv,
                       const std::map<std::string, bool>& spec,
                       const std::map<std::string, std::string>& aliases, bool stop_at_operand) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      for (++i; i < argc; ++i) args.rest.push_back(argv[i]);
      break;
    }
    if (a.size() > 1 && a[0] == '-') {
      std::string name = a, value;
      bool inline_value = false;
      if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
      if (auto al = aliases.find(name); al != aliases.end()) name = al->second;
      auto it = spec.find(name);
      if (it == spec.end()) {
        return Status::Invalid("unknown option " + a + " for '" + command + "'; try 'via " +
                               command + " --help'");
      }
      if (it->second && !inline_value) {
        if (i + 1 >= argc) {
          return Status::Invalid("option " + a + " needs a value; try 'via " + command +
                                 " --help'");
        }
        value = argv[++i];
      } else if (!it->second && inline_value) {
        return Status::Invalid("option " + name + " takes no value; try 'via " + command +
                               " --help'");
      }
      args.values[name] = value;
      args.all[name].push_back(value);
      continue;
    }
    args.rest.push_back(a);
    if (stop_at_operand) {
      for (++i; i < argc; ++i) args.rest.push_back(argv[i]);
      break;
    }
  }
  return args;
}

std::string PreloadWithShim(const std::string& existing, const std::string& shim) {
  std::string out = shim;
  size_t start = 0;
  while (start <= existing.size()) {
    size_t end = existing.find_first_of(": ", start);
    if (end == std::string::npos) end = existing.size();
    std::string item = existing.substr(start, end - start);
    bool ours = item == shim || item == "libvia.so" ||
                (item.size() > 10 && item.compare(item.size() - 10, 10, "/libvia.so") == 0);
    if (!item.empty() && !ours) out += ":" + item;
    start = end + 1;
  }
  return out;
}

Result<Url> ParseUrl(const std::string& url) {
  Url u;
  std::string rest;
  if (url.rfind("https://", 0) == 0) {
    u.https = true;
    u.port = 443;
    rest = url.substr(8);
  } else if (url.rfind("http://", 0) == 0) {
    u.port = 80;
    rest = url.substr(7);
  } else {
    return Status::Invalid("URL must start with http:// or https://: " + url);
  }
  size_t slash = rest.find_first_of("/?");
  std::string hostport = rest.substr(0, slash);
  u.path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (u.path[0] == '?') u.path = "/" + u.path;
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string::npos) return Status::Invalid("bad IPv6 host in URL: " + url);
    u.host = hostport.substr(1, close - 1);
    hostport = hostport.substr(close + 1);
    if (!hostport.empty() && hostport[0] == ':')
      hostport = "x" + hostport;
    else
      hostport.clear();
  }
  size_t colon = hostport.rfind(':');
  if (colon != std::string::npos) {
    if (u.host.empty()) u.host = hostport.substr(0, colon);
    char* end = nullptr;
    long p = std::strtol(hostport.c_str() + colon + 1, &end, 10);
    if (*end != 0 || p < 1 || p > 65535) return Status::Invalid("bad port in URL: " + url);
    u.port = uint16_t(p);
  } else if (u.host.empty()) {
    u.host = hostport;
  }
  if (u.host.empty()) return Status::Invalid("no host in URL: " + url);
  return u;
}

std::string ExtractIp(const std::string& body) {
  // A minimal extractor for {"ip": "<address>"}: the key, optional blanks, ':', blanks, then a
  // string without escapes (an address never has any).
  auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  for (size_t k = body.find("\"ip\""); k != std::string::npos; k = body.find("\"ip\"", k + 1)) {
    size_t i = k + 4;
    while (i < body.size() && blank(body[i])) ++i;
    if (i >= body.size() || body[i] != ':') continue;
    ++i;
    while (i < body.size() && blank(body[i])) ++i;
    if (i >= body.size() || body[i] != '"') continue;
    size_t end = body.find('"', i + 1);
    if (end == std::string::npos) break;
    std::string ip = body.substr(i + 1, end - i - 1);
    if (ip.find('\\') == std::string::npos) return ip;
  }
  size_t b = body.find_first_not_of(" \t\r\n");
  size_t e = body.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : body.substr(b, e - b + 1);
}

}  // namespace via::tools
