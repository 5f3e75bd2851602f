#include "common/random.h"
#include "broker/fake_address_pool.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace via::broker {

namespace {

bool ParseCidr(const std::string& cidr, int af, uint8_t* bytes, int* prefix) {
  auto slash = cidr.find('/');
  if (slash == std::string::npos || slash + 1 == cidr.size()) return false;
  std::string addr = cidr.substr(0, slash);
  char* end = nullptr;
  long p = std::strtol(cidr.c_str() + slash + 1, &end, 10);
  if (*end != 0 || p < 0 || p > (af == AF_INET ? 32 : 128)) return false;
  *prefix = int(p);
  return inet_pton(af, addr.c_str(), bytes) == 1;
}

uint32_t V4Value(const wire::Addr& a) {
  return uint32_t(a.bytes[0]) << 24 | uint32_t(a.bytes[1]) << 16 | uint32_t(a.bytes[2]) << 8 |
         a.bytes[3];
}

uint32_t V4Mask(int prefix) { return prefix == 0 ? 0 : ~uint32_t(0) << (32 - prefix); }

}  // namespace

Result<FakeAddressPool> FakeAddressPool::Create(const std::string& v4_cidr,
                                                const std::string& v6_cidr, size_t max_names) {
  FakeAddressPool pool;
  pool.v4_cidr_ = v4_cidr;
  pool.v6_cidr_ = v6_cidr;
  uint8_t b4[4];
  if (!ParseCidr(v4_cidr, AF_INET, b4, &pool.v4_prefix_) || pool.v4_prefix_ < 8 ||
      pool.v4_prefix_ > 30) {
    return Status::Invalid("fake IPv4 pool \"" + v4_cidr +
                           "\" is not an IPv4 network between /8 and /30");
  }
  if (!ParseCidr(v6_cidr, AF_INET6, pool.v6_base_, &pool.v6_prefix_) || pool.v6_prefix_ < 16 ||
      pool.v6_prefix_ > 120) {
    return Status::Invalid("fake IPv6 pool \"" + v6_cidr +
                           "\" is not an IPv6 network between /16 and /120");
  }
  pool.v4_base_ = (uint32_t(b4[0]) << 24 | uint32_t(b4[1]) << 16 | uint32_t(b4[2]) << 8 | b4[3]) &
                  V4Mask(pool.v4_prefix_);
  for (int bit = pool.v6_prefix_; bit < 128; ++bit) {
    pool.v6_base_[bit / 8] &= uint8_t(~(0x80 >> (bit % 8)));
  }

  // The last IPv4 address of the range is its broadcast address; name numbers also stay within
  // the IPv6 range's host part.
  pool.max_index_ = (uint64_t(1) << (32 - pool.v4_prefix_)) - 2;
  if (pool.v6_prefix_ > 96) {
    pool.max_index_ = std::min(pool.max_index_, (uint64_t(1) << (128 - pool.v6_prefix_)) - 1);
  }
  uint64_t usable = 0;
  if ((pool.v4_base_ & 0xff) == 0) {
    // Every block of 256 numbers has 254 usable ones (x.x.x.1 .. x.x.x.254).
    uint64_t n = pool.max_index_ + 1;  // numbers 0..max_index_
    usable = n / 256 * 254 + std::min<uint64_t>(n % 256, 255) - (n % 256 > 0 ? 1 : 0);
  } else {
    for (uint64_t i = 1; i <= pool.max_index_; ++i) usable += pool.Usable(i);
  }
  pool.capacity_ = size_t(usable);
  if (max_names != 0 && max_names < pool.capacity_) pool.capacity_ = max_names;
  if (pool.capacity_ == 0) {
    return Status::Invalid("fake address pools " + v4_cidr + " and " + v6_cidr +
                           " leave no usable address");
  }
  pool.next_index_ = pool.NextUsable(0);
  return pool;
}

bool FakeAddressPool::Usable(uint64_t index) const {
  if (index < 1 || index > max_index_) return false;
  uint8_t last = uint8_t(v4_base_ + uint32_t(index));
  return last != 0 && last != 255;
}

uint32_t FakeAddressPool::NextUsable(uint32_t index) const {
  uint64_t i = uint64_t(index) + 1;
  while (i <= max_index_ && !Usable(i)) ++i;
  return uint32_t(i);
}

FakeAddressPool::Pair FakeAddressPool::AddressesOf(uint32_t index) const {
  Pair p;
  p.v4.family = 4;
  uint32_t v4 = v4_base_ + index;
  p.v4.bytes[0] = uint8_t(v4 >> 24);
  p.v4.bytes[1] = uint8_t(v4 >> 16);
  p.v4.bytes[2] = uint8_t(v4 >> 8);
  p.v4.bytes[3] = uint8_t(v4);
  p.v6.family = 6;
  std::memcpy(p.v6.bytes, v6_base_, 16);
  // The host part of the base is zero and index fits in it, so OR is addition.
  for (int i = 0; i < 4; ++i) p.v6.bytes[15 - i] |= uint8_t(index >> (8 * i));
  return p;
}

bool FakeAddressPool::InV4(const wire::Addr& a) const {
  return a.family == 4 && (V4Value(a) & V4Mask(v4_prefix_)) == v4_base_;
}

bool FakeAddressPool::InV6(const wire::Addr& a) const {
  if (a.family != 6) return false;
  for (int bit = 0; bit < v6_prefix_; ++bit) {
    uint8_t m = uint8_t(0x80 >> (bit % 8));
    if ((a.bytes[bit / 8] & m) != (v6_base_[bit / 8] & m)) return false;
  }
  return true;
}

bool FakeAddressPool::IndexOf(const wire::Addr& addr, uint32_t* index) const {
  wire::Addr a = wire::Unmapped(addr);
  uint64_t i = 0;
  if (InV4(a)) {
    i = V4Value(a) - v4_base_;
  } else if (InV6(a)) {
    // Numbers live in the low 32 bits; anything set above them is not an address we gave out.
    for (int b = v6_prefix_ / 8; b < 12; ++b) {
      if ((a.bytes[b] & ~v6_base_[b]) != 0) return false;
    }
    i = uint32_t(a.bytes[12]) << 24 | uint32_t(a.bytes[13]) << 16 | uint32_t(a.bytes[14]) << 8 |
        a.bytes[15];
  } else {
    return false;
  }
  if (!Usable(i)) return false;
  *index = uint32_t(i);
  return true;
}

wire::Addr FakeAddressPool::V4Range() const {
  wire::Addr a;
  a.family = 4;
  for (int i = 0; i < 4; ++i) a.bytes[i] = uint8_t(v4_base_ >> (24 - 8 * i));
  a.port = uint16_t(v4_prefix_);
  return a;
}

wire::Addr FakeAddressPool::V6Range() const {
  wire::Addr a;
  a.family = 6;
  std::memcpy(a.bytes, v6_base_, 16);
  a.port = uint16_t(v6_prefix_);
  return a;
}

bool FakeAddressPool::Contains(const wire::Addr& addr) const {
  wire::Addr a = wire::Unmapped(addr);
  return InV4(a) || InV6(a);
}

uint32_t FakeAddressPool::NextFree(uint32_t index) const {
  uint64_t i = index;
  for (uint64_t steps = 0; steps < max_index_; ++steps) {
    i = i >= max_index_ ? 1 : i + 1;
    if (Usable(i) && by_index_.find(uint32_t(i)) == by_index_.end()) return uint32_t(i);
  }
  return 0;  // full: not reached while size() < capacity()
}

void FakeAddressPool::StartAt(uint32_t index) {
  next_index_ = Usable(index) && by_index_.find(index) == by_index_.end() ? index : NextFree(index);
}

void FakeAddressPool::Assign(const std::string& name, uint32_t index) {
  if (auto it = by_name_.find(name); it != by_name_.end()) {
    by_index_.erase(it->second->index);
    lru_.erase(it->second);
    by_name_.erase(it);
  }
  if (auto it = by_index_.find(index); it != by_index_.end()) {
    by_name_.erase(it->second->name);
    lru_.erase(it->second);
    by_index_.erase(it);
  }
  lru_.push_front(Entry{name, index});
  by_name_.emplace(name, lru_.begin());
  by_index_.emplace(index, lru_.begin());
}

uint32_t FakeAddressPool::Candidate() const {
  // Full: the least recently used name gives up its number.
  return by_name_.size() < capacity_ ? next_index_ : lru_.back().index;
}

Result<FakeAddressPool::Pair> FakeAddressPool::Allocate(const std::string& name,
                                                        bool must_journal) {
  auto it = by_name_.find(name);
  if (it != by_name_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return AddressesOf(it->second->index);
  }
  const uint32_t index = Candidate();
  // Written before it is handed out: a broker killed right after still restarts with it.
  if (journal_fd_) {
    if (Status s = Append(name, index); !s.ok()) {
      if (must_journal) return s;
      journal_error_ = s;
    }
  }
  Assign(name, index);
  if (by_name_.size() < capacity_) next_index_ = NextFree(index);
  return AddressesOf(index);
}

FakeAddressPool::Pair FakeAddressPool::Lookup(const std::string& name) {
  return *Allocate(name, false);
}

Result<FakeAddressPool::Pair> FakeAddressPool::LookupHeld(const std::string& name, int64_t now_ms,
                                                          int64_t hold_ms) {
  auto it = by_name_.find(name);
  if (it == by_name_.end() && by_name_.size() >= capacity_ && lru_.back().held_until_ms > now_ms) {
    // The least recently used name is still promised, so every name is.
    return Status::Error(EAGAIN, "the fake address pool is exhausted: all " +
                                     std::to_string(capacity_) + " addresses were handed out " +
                                     "within the last " + std::to_string(hold_ms) +
                                     " ms; widen fake_ipv4/fake_ipv6 in the configuration");
  }
  auto p = Allocate(name, true);  // moves the name to the front
  if (!p.ok()) return p.status();
  Entry& e = lru_.front();
  e.held_until_ms = std::max(e.held_until_ms, now_ms + hold_ms);
  return *p;
}

// ---- the journal ------------------------------------------------------------------------------

namespace {

constexpr const char kJournalMagic[] = "via-fake-addresses 1";

bool JournalName(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (char c : name) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

Status WriteAll(int fd, const std::string& text, const std::string& path) {
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::FromErrno("cannot write the fake-address table " + path);
    off += size_t(n);
  }
  return Status::Ok();
}

}  // namespace

std::string FakeAddressPool::Header() const {
  return std::string(kJournalMagic) + " " + table_id_ + " " + v4_cidr_ + " " + v6_cidr_ + " " +
         std::to_string(capacity_) + "\n";
}

Status FakeAddressPool::Append(const std::string& name, uint32_t index) {
  if (!JournalName(name)) {
    return Status::Error(EINVAL, "the name \"" + name.substr(0, 64) +
                                     "\" cannot be recorded in the fake-address table");
  }
  if (Status s =
          WriteAll(journal_fd_.get(), std::to_string(index) + " " + name + "\n", journal_path_);
      !s.ok()) {
    return Status::Error(s.code() != 0 ? s.code() : EIO, s.message());
  }
  // Recycled numbers leave stale lines behind: rewrite the file when they dominate.
  if (++journal_lines_ > 2 * by_name_.size() + 4096) Compact();
  return Status::Ok();
}

Status FakeAddressPool::Compact() {
  const std::string tmp = journal_path_ + ".tmp";
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno("cannot create " + tmp);
  std::string text = Header();
  // Oldest first: loading replays the lines in order, so the order of use survives.
  for (auto it = lru_.rbegin(); it != lru_.rend(); ++it) {
    if (JournalName(it->name)) text += std::to_string(it->index) + " " + it->name + "\n";
  }
  if (Status s = WriteAll(fd.get(), text, tmp); !s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  if (rename(tmp.c_str(), journal_path_.c_str()) != 0) {
    Status s = Status::FromErrno("cannot rename " + tmp + " to " + journal_path_);
    unlink(tmp.c_str());
    return s;
  }
  journal_fd_ = std::move(fd);  // at the end of the file it now is
  journal_lines_ = by_name_.size();
  return Status::Ok();
}

Status FakeAddressPool::OpenJournal(const std::string& path, size_t* restored) {
  journal_path_ = path;
  size_t loaded = 0;
  std::string text;
  if (UniqueFd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC)); fd) {
    struct stat st;
    // Only a regular file of ours; anything else is replaced below.
    if (fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid()) {
      char buf[65536];
      for (;;) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        text.append(buf, size_t(n));
      }
    }
  } else if (errno != ENOENT) {
    return Status::FromErrno("cannot open the fake-address table " + path);
  }
  // Header: magic, table id, the two ranges and the capacity; a table made for other ranges
  // means nothing here.
  size_t eol = text.find('\n');
  std::string header = eol == std::string::npos ? "" : text.substr(0, eol + 1);
  const std::string magic = std::string(kJournalMagic) + " ";
  if (header.rfind(magic, 0) == 0) {
    size_t id_end = header.find(' ', magic.size());
    if (id_end != std::string::npos) {
      table_id_ = header.substr(magic.size(), id_end - magic.size());
      if (Header() != header) table_id_.clear();
    }
  }
  uint32_t last = 0;
  if (!table_id_.empty()) {
    size_t pos = eol + 1;
    // Complete lines only; a line that does not parse is skipped.
    for (size_t end; (end = text.find('\n', pos)) != std::string::npos; pos = end + 1) {
      std::string_view line(text.data() + pos, end - pos);
      size_t sp = line.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp > 10) continue;
      uint64_t index = 0;
      bool digits = true;
      for (char c : line.substr(0, sp)) {
        digits = digits && c >= '0' && c <= '9';
        index = index * 10 + uint64_t(c - '0');
      }
      std::string_view name = line.substr(sp + 1);
      if (!digits || !Usable(index) || !JournalName(name)) continue;
      Assign(std::string(name), uint32_t(index));
      last = uint32_t(index);
    }
    while (by_name_.size() > capacity_) {
      by_name_.erase(lru_.back().name);
      by_index_.erase(lru_.back().index);
      lru_.pop_back();
    }
    loaded = by_name_.size();
  }
  if (table_id_.empty()) {
    // A new table: a random id, and a random first number.
    uint8_t r[12];
    if (Status s = FillRandom(r, sizeof r); !s.ok()) return s;
    char hex[17];
    for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", r[i]);
    table_id_.assign(hex, 16);
    uint32_t start = uint32_t(r[8]) << 24 | uint32_t(r[9]) << 16 | uint32_t(r[10]) << 8 | r[11];
    StartAt(uint32_t(1 + start % max_index_));
  } else if (by_name_.size() < capacity_) {
    next_index_ = NextFree(last);
  }
  if (restored != nullptr) *restored = loaded;
  return Compact();
}

std::optional<std::string> FakeAddressPool::Reverse(const wire::Addr& addr) {
  uint32_t index;
  if (!IndexOf(addr, &index)) return std::nullopt;
  auto it = by_index_.find(index);
  if (it == by_index_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->name;
}

Result<std::string> NormalizeName(std::string_view name) {
  std::string n(name);
  if (!n.empty() && n.back() == '.') n.pop_back();
  if (n.empty() || n.size() > 253) {
    return Status::Invalid("invalid host name \"" + std::string(name) +
                           "\" (must be 1 to 253 characters)");
  }
  size_t label = 0;
  for (char& c : n) {
    c = char(std::tolower(static_cast<unsigned char>(c)));
    if (c == '.') {
      if (label == 0) {
        return Status::Invalid("invalid host name \"" + std::string(name) + "\" (empty label)");
      }
      label = 0;
      continue;
    }
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) {
      return Status::Invalid("invalid host name \"" + std::string(name) +
                             "\" (only letters, digits, '-', '_' and '.' are allowed)");
    }
    if (++label > 63) {
      return Status::Invalid("invalid host name \"" + std::string(name) +
                             "\" (a label is longer than 63 characters)");
    }
  }
  if (label == 0) {
    return Status::Invalid("invalid host name \"" + std::string(name) + "\" (empty label)");
  }
  return n;
}

}  // namespace via::broker
