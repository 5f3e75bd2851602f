// FakeAddressPool: hands out addresses from reserved ranges for names the overlay resolves, and
// maps them back. One table per broker, so a name resolved in one process connects from any
// other process of the session (fork, exec). When the IPv4 range is exhausted the least recently
// used name is recycled.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>

#include "common/status.h"
#include "common/wire.h"

namespace via::broker {

class FakeAddressPool {
 public:
  // `v4_cidr` like "198.18.0.0/15", `v6_cidr` like "fd76:6961:ff00::/64". `max_names` (0 = the
  // range's size) caps the table, for tests of recycling.
  static Result<FakeAddressPool> Create(const std::string& v4_cidr, const std::string& v6_cidr,
                                        size_t max_names = 0);

  struct Pair {
    wire::Addr v4;
    wire::Addr v6;
  };
  // The addresses of `name` (already normalized), allocating if new. Marks it recently used.
  Pair Lookup(const std::string& name);
  // The name behind a fake address (IPv4, IPv6 or IPv4-mapped IPv6), or nullptr. Marks it used.
  const std::string* Reverse(const wire::Addr& addr);
  // Is `addr` inside either range (allocated or not)?
  bool Contains(const wire::Addr& addr) const;

  size_t size() const { return by_name_.size(); }
  size_t capacity() const { return capacity_; }
  const std::string& v4_cidr() const { return v4_cidr_; }
  const std::string& v6_cidr() const { return v6_cidr_; }

 private:
  struct Entry {
    std::string name;
    uint32_t index;
  };
  using Lru = std::list<Entry>;  // front = most recently used

  Pair AddressesOf(uint32_t index) const;
  bool IndexOf(const wire::Addr& addr, uint32_t* index) const;

  std::string v4_cidr_, v6_cidr_;
  uint32_t v4_base_ = 0;  // host order
  int v4_prefix_ = 0;
  uint8_t v6_base_[16] = {};
  int v6_prefix_ = 0;
  size_t capacity_ = 0;
  uint32_t next_index_ = 1;
  Lru lru_;
  std::unordered_map<std::string, Lru::iterator> by_name_;
  std::unordered_map<uint32_t, Lru::iterator> by_index_;
};

// Lower-cases, strips one trailing dot, and checks a host name (1..253 characters of letters,
// digits, '-', '_', '.', labels 1..63). Returns the normalized name or EINVAL.
Result<std::string> NormalizeName(std::string_view name);

}  // namespace via::broker
