// A table of per-socket facts the shim keeps, indexed by descriptor number and validated by the
// socket's inode: a number the program closed and reused for another socket is never mistaken
// for the one the fact is about. Constant-initialized (no constructor runs at load time), grown
// with realloc under a mutex; Get takes no lock until the first Put.
#pragma once

#include <pthread.h>
#include <sys/stat.h>

#include <cstdlib>

namespace via::shim {

template <typename V>
class FdTable {
 public:
  explicit constexpr FdTable(int initial_size) : initial_size_(initial_size) {}

  // Stores `v` for `fd`. keep(old, v) is asked when `fd` already holds a value for the same
  // socket: true leaves the old value in place.
  template <typename Keep>
  void Put(int fd, const V& v, Keep keep) {
    struct stat st;
    if (fd < 0 || fd > kMaxFd || fstat(fd, &st) != 0) return;
    pthread_mutex_lock(&mu_);
    if (fd >= size_ && !Grow(fd)) {
      pthread_mutex_unlock(&mu_);
      return;
    }
    Entry& e = table_[fd];
    if (!(e.ino == st.st_ino && e.dev == st.st_dev && keep(e.value, v))) {
      e = Entry{st.st_dev, st.st_ino, v};
    }
    __atomic_store_n(&used_, true, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&mu_);
  }
  void Put(int fd, const V& v) {
    Put(fd, v, [](const V&, const V&) { return false; });
  }

  // The value stored for `fd`, if `fd` is still the same socket.
  bool Get(int fd, V* out) {
    if (fd < 0 || !__atomic_load_n(&used_, __ATOMIC_ACQUIRE)) return false;
    pthread_mutex_lock(&mu_);
    bool in_table = fd < size_ && table_[fd].ino != 0;
    Entry e = in_table ? table_[fd] : Entry{};
    pthread_mutex_unlock(&mu_);
    if (!in_table) return false;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_dev != e.dev || st.st_ino != e.ino) return false;
    *out = e.value;
    return true;
  }

 private:
  static constexpr int kMaxFd = 1 << 22;
  struct Entry {
    dev_t dev = 0;
    ino_t ino = 0;  // 0 = empty
    V value{};
  };

  bool Grow(int fd) {
    int size = size_ == 0 ? initial_size_ : size_;
    while (size <= fd) size *= 2;
    auto* grown = static_cast<Entry*>(realloc(table_, sizeof(Entry) * size));
    if (grown == nullptr) return false;
    for (int i = size_; i < size; ++i) grown[i] = Entry{};
    table_ = grown;
    size_ = size;
    return true;
  }

  pthread_mutex_t mu_ = PTHREAD_MUTEX_INITIALIZER;
  Entry* table_ = nullptr;
  int size_ = 0;
  bool used_ = false;
  int initial_size_;
};

}  // namespace via::shim
