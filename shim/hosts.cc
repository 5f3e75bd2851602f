// Names answered locally under an overlay: localhost and /etc/hosts. Everything else goes to the
// broker, so the system resolver never learns a remote name.
#include "shim/hosts.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <pthread.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace via::shim {

namespace {

// /etc/hosts, re-read when its inode, size or mtime change.
pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
char* g_text = nullptr;
size_t g_len = 0;
ino_t g_ino = 0;
off_t g_size = -1;
timespec g_mtime{};

constexpr size_t kMaxHosts = 1 << 20;

void Refresh() {
  struct stat st;
  if (stat("/etc/hosts", &st) != 0) {
    free(g_text);
    g_text = nullptr;
    g_len = 0;
    g_size = -1;
    return;
  }
  if (g_text != nullptr && st.st_ino == g_ino && st.st_size == g_size &&
      st.st_mtim.tv_sec == g_mtime.tv_sec && st.st_mtim.tv_nsec == g_mtime.tv_nsec) {
    return;
  }
  int fd = open("/etc/hosts", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  size_t cap = st.st_size > 0 && static_cast<size_t>(st.st_size) < kMaxHosts
                   ? static_cast<size_t>(st.st_size)
                   : 0;
  char* text = static_cast<char*>(malloc(cap + 1));
  size_t len = 0;
  while (text != nullptr && len < cap) {
    ssize_t r = read(fd, text + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += static_cast<size_t>(r);
  }
  close(fd);
  if (text == nullptr) return;
  text[len] = 0;
  free(g_text);
  g_text = text;
  g_len = len;
  g_ino = st.st_ino;
  g_size = st.st_size;
  g_mtime = st.st_mtim;
}

bool ParseAddr(const char* s, size_t n, wire::Addr* a) {
  char tmp[64];
  if (n == 0 || n >= sizeof tmp) return false;
  std::memcpy(tmp, s, n);
  tmp[n] = 0;
  char* pct = std::strchr(tmp, '%');
  if (pct != nullptr) *pct = 0;
  *a = wire::Addr{};
  if (inet_pton(AF_INET, tmp, a->bytes) == 1) {
    a->family = 4;
    return true;
  }
  if (inet_pton(AF_INET6, tmp, a->bytes) == 1) {
    a->family = 6;
    return true;
  }
  return false;
}

bool SameName(const char* tok, size_t n, const char* name, size_t name_len) {
  if (n > 0 && tok[n - 1] == '.') --n;
  return n == name_len && strncasecmp(tok, name, n) == 0;
}

bool FamilyOk(const wire::Addr& a, int family) {
  return family == 0 || (family == AF_INET && a.family == 4) ||
         (family == AF_INET6 && a.family == 6);
}

// Calls fn(addr, name_token, len) for each (address, name) pair of /etc/hosts. Stops when fn
// returns false. Caller holds g_mu.
template <typename Fn>
void ForEachHostsPair(Fn fn) {
  const char* p = g_text;
  const char* end = g_text + g_len;
  while (p != nullptr && p < end) {
    const char* eol = static_cast<const char*>(std::memchr(p, '\n', end - p));
    if (eol == nullptr) eol = end;
    const char* hash = static_cast<const char*>(std::memchr(p, '#', eol - p));
    const char* stop = hash != nullptr ? hash : eol;
    const char* tok[64];
    size_t len[64];
    int ntok = 0;
    const char* q = p;
    while (q < stop && ntok < 64) {
      while (q < stop && std::isspace(static_cast<unsigned char>(*q))) ++q;
      const char* t = q;
      while (q < stop && !std::isspace(static_cast<unsigned char>(*q))) ++q;
      if (q > t) {
        tok[ntok] = t;
        len[ntok++] = static_cast<size_t>(q - t);
      }
    }
    wire::Addr a;
    if (ntok >= 2 && ParseAddr(tok[0], len[0], &a)) {
      for (int i = 1; i < ntok; ++i) {
        if (!fn(a, tok[i], len[i])) return;
      }
    }
    p = eol + 1;
  }
}

bool IsLocalhostName(const char* name, size_t n) {
  if (n > 0 && name[n - 1] == '.') --n;
  static const char* const kNames[] = {"localhost", "localhost.localdomain", "ip6-localhost",
                                       "ip6-loopback"};
  for (const char* k : kNames) {
    if (std::strlen(k) == n && strncasecmp(name, k, n) == 0) return true;
  }
  return n > 10 && strncasecmp(name + n - 10, ".localhost", 10) == 0;
}

// The kernel's host name (uname), or its first label.
bool IsOwnHostname(const char* name, size_t n) {
  utsname u;
  if (n == 0 || uname(&u) != 0) return false;
  const char* host = u.nodename;
  size_t len = strnlen(host, sizeof u.nodename);
  if (len == 0) return false;
  if (len == n && strncasecmp(host, name, n) == 0) return true;
  const char* dot = static_cast<const char*>(std::memchr(host, '.', len));
  return dot != nullptr && size_t(dot - host) == n && strncasecmp(host, name, n) == 0;
}

}  // namespace

bool ParseNumericHost(const char* name, wire::Addr* out) {
  // As getaddrinfo parses a numeric host (__inet_aton_exact, inet_pton before a '%' scope):
  // inet_aton alone also accepts "1.2.3.4 anything", which libc's resolvers take for a name.
  size_t n = std::strlen(name);
  bool v4chars = n > 0;
  for (size_t i = 0; i < n && v4chars; ++i) {
    const char c = name[i];
    v4chars = c == '.' || c == 'x' || c == 'X' || std::isxdigit(static_cast<unsigned char>(c));
  }
  in_addr v4;
  if (v4chars && inet_aton(name, &v4) != 0) {  // libc accepts "127.1", "0x7f.1" without lookup
    *out = wire::Addr{};
    out->family = 4;
    std::memcpy(out->bytes, &v4, 4);
    return true;
  }
  char tmp[64];
  if (n == 0 || n >= sizeof tmp) return false;
  std::memcpy(tmp, name, n + 1);
  char* pct = std::strchr(tmp, '%');
  if (pct != nullptr) *pct = 0;
  in6_addr v6;
  if (inet_pton(AF_INET6, tmp, &v6) != 1) return false;
  *out = wire::Addr{};
  out->family = 6;
  std::memcpy(out->bytes, &v6, 16);
  return true;
}

bool IsNumericHost(const char* name) {
  wire::Addr a;
  return ParseNumericHost(name, &a);
}

int LocalLookup(const char* name, int family, wire::Addr* out, int cap) {
  size_t name_len = std::strlen(name);
  // "name." is the absolute form of "name": the same entry (case is ignored, as by libc).
  if (name_len > 1 && name[name_len - 1] == '.') --name_len;
  int count = 0;
  auto loopback = [&] {
    if ((family == 0 || family == AF_INET) && count < cap) {
      out[count] = wire::Addr{};
      out[count].family = 4;
      out[count].bytes[0] = 127;
      out[count].bytes[3] = 1;
      ++count;
    }
    if ((family == 0 || family == AF_INET6) && count < cap) {
      out[count] = wire::Addr{};
      out[count].family = 6;
      out[count].bytes[15] = 1;
      ++count;
    }
    return count;
  };
  if (IsLocalhostName(name, name_len)) return loopback();
  bool listed = false;
  pthread_mutex_lock(&g_mu);
  Refresh();
  ForEachHostsPair([&](const wire::Addr& a, const char* tok, size_t n) {
    if (!SameName(tok, n, name, name_len)) return true;
    listed = true;
    for (int i = 0; i < count; ++i) {
      if (out[i] == a) return true;
    }
    if (FamilyOk(a, family) && count < cap) out[count++] = a;
    return count < cap;
  });
  pthread_mutex_unlock(&g_mu);
  // A name listed only with the other family is still local: answer "no address" rather than
  // asking the broker (which would route it remotely).
  if (listed) return count;
  // The machine's own name, when /etc/hosts lacks it (libc would ask nss-myhostname or DNS):
  // loopback, rather than telling the overlay's far end what this host is called.
  if (IsOwnHostname(name, name_len)) return loopback();
  return -1;
}

bool HostsReverse(const wire::Addr& addr, char* name, size_t namecap) {
  bool found = false;
  pthread_mutex_lock(&g_mu);
  Refresh();
  ForEachHostsPair([&](const wire::Addr& a, const char* tok, size_t n) {
    wire::Addr x = a, y = addr;
    x.port = y.port = 0;
    if (!(x == y)) return true;
    if (n >= namecap) n = namecap - 1;
    std::memcpy(name, tok, n);
    name[n] = 0;
    found = true;
    return false;
  });
  pthread_mutex_unlock(&g_mu);
  return found;
}

}  // namespace via::shim
