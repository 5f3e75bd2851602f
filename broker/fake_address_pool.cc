#include "broker/fake_address_pool.h"

#include <arpa/inet.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace via::broker {

namespace {

bool ParseCidr(const std::string& cidr, int af, uint8_t* bytes, int* prefix) {
  auto slash = cidr.find('/');
  if (slash == std::string::npos) return false;
  std::string addr = cidr.substr(0, slash);
  char* end = nullptr;
  long p = std::strtol(cidr.c_str() + slash + 1, &end, 10);
  if (*end != 0 || p < 0 || p > (af == AF_INET ? 32 : 128)) return false;
  *prefix = int(p);
  return inet_pton(af, addr.c_str(), bytes) == 1;
}

}  // namespace

Result<FakeAddressPool> FakeAddressPool::Create(const std::string& v4_cidr,
                                                const std::string& v6_cidr, size_t max_names) {
  FakeAddressPool pool;
  pool.v4_cidr_ = v4_cidr;
  pool.v6_cidr_ = v6_cidr;
  uint8_t b4[4];
  if (!ParseCidr(v4_cidr, AF_INET, b4, &pool.v4_prefix_) || pool.v4_prefix_ < 8 ||
      pool.v4_prefix_ > 30) {
    return Status::Invalid("fake IPv4 pool \"" + v4_cidr + "\" is not a usable IPv4 network");
  }
  if (!ParseCidr(v6_cidr, AF_INET6, pool.v6_base_, &pool.v6_prefix_) || pool.v6_prefix_ < 16 ||
      pool.v6_prefix_ > 120) {
    return Status::Invalid("fake IPv6 pool \"" + v6_cidr + "\" is not a usable IPv6 network");
  }
  uint32_t mask = pool.v4_prefix_ == 0 ? 0 : ~uint32_t(0) << (32 - pool.v4_prefix_);
  pool.v4_base_ =
      (uint32_t(b4[0]) << 24 | uint32_t(b4[1]) << 16 | uint32_t(b4[2]) << 8 | b4[3]) & mask;
  // Zero the host part of the IPv6 base.
  for (int bit = pool.v6_prefix_; bit < 128; ++bit) {
    pool.v6_base_[bit / 8] &= uint8_t(~(0x80 >> (bit % 8)));
  }
  uint64_t hosts = (uint64_t(1) << (32 - pool.v4_prefix_)) - 2;  // no network/broadcast
  uint64_t v6_hosts = pool.v6_prefix_ >= 96 ? (uint64_t(1) << (128 - pool.v6_prefix_)) - 2 : hosts;
  pool.capacity_ = size_t(std::min(hosts, v6_hosts));
  if (max_names != 0 && max_names < pool.capacity_) pool.capacity_ = max_names;
  return pool;
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
  for (int i = 0; i < 4; ++i) p.v6.bytes[15 - i] |= uint8_t(index >> (8 * i));
  return p;
}

bool FakeAddressPool::IndexOf(const wire::Addr& addr, uint32_t* index) const {
  wire::Addr a = wire::Unmapped(addr);
  if (a.family == 4) {
    uint32_t v = uint32_t(a.bytes[0]) << 24 | uint32_t(a.bytes[1]) << 16 |
                 uint32_t(a.bytes[2]) << 8 | a.bytes[3];
    uint32_t mask = ~uint32_t(0) << (32 - v4_prefix_);
    if ((v & mask) != v4_base_) return false;
    *index = v - v4_base_;
    return true;
  }
  for (int bit = 0; bit < v6_prefix_; ++bit) {
    uint8_t m = uint8_t(0x80 >> (bit % 8));
    if ((a.bytes[bit / 8] & m) != (v6_base_[bit / 8] & m)) return false;
  }
  // Indexes live in the low 32 bits; anything above them in the host part is not ours.
  for (int i = v6_prefix_ / 8 + (v6_prefix_ % 8 != 0); i < 12; ++i) {
    if (a.bytes[i] != v6_base_[i]) return false;
  }
  *index = uint32_t(a.bytes[12]) << 24 | uint32_t(a.bytes[13]) << 16 | uint32_t(a.bytes[14]) << 8 |
           a.bytes[15];
  return true;
}

bool FakeAddressPool::Contains(const wire::Addr& addr) const {
  uint32_t index;
  return IndexOf(addr, &index);
}

FakeAddressPool::Pair FakeAddressPool::Lookup(const std::string& name) {
  auto it = by_name_.find(name);
  if (it != by_name_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return AddressesOf(it->second->index);
  }
  uint32_t index;
  if (by_name_.size() < capacity_) {
    index = next_index_++;
  } else {
    // Recycle the least recently used name's index.
    Entry& victim = lru_.back();
    index = victim.index;
    by_name_.erase(victim.name);
    by_index_.erase(index);
    lru_.pop_back();
  }
  lru_.push_front(Entry{name, index});
  by_name_[name] = lru_.begin();
  by_index_[index] = lru_.begin();
  return AddressesOf(index);
}

const std::string* FakeAddressPool::Reverse(const wire::Addr& addr) {
  uint32_t index;
  if (!IndexOf(addr, &index)) return nullptr;
  auto it = by_index_.find(index);
  if (it == by_index_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second);
  return &it->second->name;
}

Result<std::string> NormalizeName(std::string_view name) {
  std::string n(name);
  if (!n.empty() && n.back() == '.') n.pop_back();
  if (n.empty() || n.size() > 253) {
    return Status::Invalid("invalid host name \"" + std::string(name) + "\" (length)");
  }
  size_t label = 0;
  for (char& c : n) {
    c = char(std::tolower(static_cast<unsigned char>(c)));
    if (c == '.') {
      if (label == 0)
        return Status::Invalid("invalid host name \"" + std::string(name) + "\" (empty label)");
      label = 0;
      continue;
    }
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) {
      return Status::Invalid("invalid host name \"" + std::string(name) + "\"");
    }
    if (++label > 63)
      return Status::Invalid("invalid host name \"" + std::string(name) + "\" (label over 63)");
  }
  return n;
}

}  // namespace via::broker
