// Sockets the shim routed, so getpeername can answer with the destination the program asked for
// (the fake address of a name) instead of the proxy's address.
#include <pthread.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

#include "shim/shim.h"

namespace via::shim {

namespace {

struct Entry {
  dev_t dev = 0;
  ino_t ino = 0;  // 0 = empty
  wire::Addr dest;
};

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
Entry* g_table = nullptr;  // indexed by fd
int g_size = 0;

bool Identity(int fd, dev_t* dev, ino_t* ino) {
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return true;
}

}  // namespace

void RememberRouted(int fd, const wire::Addr& dest) {
  dev_t dev;
  ino_t ino;
  if (fd < 0 || fd > (1 << 22) || !Identity(fd, &dev, &ino)) return;
  pthread_mutex_lock(&g_mu);
  if (fd >= g_size) {
    int size = g_size == 0 ? 256 : g_size;
    while (size <= fd) size *= 2;
    auto* grown = static_cast<Entry*>(realloc(g_table, sizeof(Entry) * size));
    if (grown == nullptr) {
      pthread_mutex_unlock(&g_mu);
      return;
    }
    for (int i = g_size; i < size; ++i) grown[i] = Entry{};
    g_table = grown;
    g_size = size;
  }
  g_table[fd] = Entry{dev, ino, dest};
  pthread_mutex_unlock(&g_mu);
}

bool LookupRouted(int fd, wire::Addr* dest) {
  if (fd < 0) return false;
  pthread_mutex_lock(&g_mu);
  bool in_table = fd < g_size && g_table[fd].ino != 0;
  Entry e = in_table ? g_table[fd] : Entry{};
  pthread_mutex_unlock(&g_mu);
  if (!in_table) return false;
  dev_t dev;
  ino_t ino;
  // The fd number may have been closed and reused for another socket since.
  if (!Identity(fd, &dev, &ino) || dev != e.dev || ino != e.ino) return false;
  *dest = e.dest;
  return true;
}

}  // namespace via::shim
