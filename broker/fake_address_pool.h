// FakeAddressPool: hands out addresses from reserved ranges for names the overlay resolves, and
// maps them back. One table per broker, so a name resolved in one process connects from any
// other process of the session (fork, exec). When the range is exhausted the least recently used
// name is recycled.
//
// Name number i (i >= 1) gets v4 = base4 + i and v6 = base6 + i. Numbers whose IPv4 address
// ends in .0 or .255 are skipped: some programs treat those as network/broadcast addresses.
// Every operation is O(1) (hash maps plus an LRU list).
//
// A table outlives its broker (docs/architecture.md, "Names"): OpenJournal loads it from a file
// beside the broker's socket and appends every new assignment to it, so a broker that restarts
// gives each address the name it had; a program that resolved a name before the restart still
// reaches that name. A new table (no file, or one for other ranges) starts at a random number,
// so that even if its file was lost an old address most likely lies where nothing was handed out
// and is refused as unknown.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/status.h"
#include "common/unique_fd.h"
#include "common/wire.h"

namespace via::broker {

class FakeAddressPool {
 public:
  // `v4_cidr` like "198.18.0.0/15" (/8../30), `v6_cidr` like "fd76:6961:ff00::/64" (/16../120).
  // `max_names` (0 = as many as the ranges allow) caps the table, for tests of recycling.
  static Result<FakeAddressPool> Create(const std::string& v4_cidr, const std::string& v6_cidr,
                                        size_t max_names = 0);

  struct Pair {
    wire::Addr v4;  // port 0
    wire::Addr v6;  // port 0
  };
  // The addresses of `name` (already normalized, see NormalizeName), allocating them if the name
  // is new (recycling the least recently used name when full). Marks the name recently used.
  // A journal write that fails leaves the name in memory only (journal_error() says why).
  Pair Lookup(const std::string& name);
  // As Lookup, and promises that the name keeps these addresses until now_ms + hold_ms: a full
  // table recycles only names whose promise has run out, else fails with EAGAIN (every name was
  // handed out within the last hold_ms). The shim caches answers for that long (kTagHoldMs).
  // A new name that cannot be written to the journal is not handed out (EIO).
  Result<Pair> LookupHeld(const std::string& name, int64_t now_ms, int64_t hold_ms);
  // The name behind a fake address (IPv4, IPv6 or IPv4-mapped IPv6; the port is ignored), or
  // nullopt if nothing is mapped there. Marks the name recently used.
  std::optional<std::string> Reverse(const wire::Addr& addr);
  // Is `addr` inside either range, mapped or not? IPv4-mapped IPv6 addresses count as IPv4.
  bool Contains(const wire::Addr& addr) const;

  // The two ranges as network address + prefix length (in the port field), for the shim
  // (kTagFakeNet): it must tell a fake address from a real one without asking.
  wire::Addr V4Range() const;
  wire::Addr V6Range() const;

  // Loads the table kept in `path` (if it exists and was made for the same ranges and size),
  // rewrites the file compactly (mode 0600), and from then on appends each new assignment to it.
  // Without a usable file the table starts empty at a random number. `restored` gets the number
  // of names loaded. Call once, on an empty pool, by the broker that owns the socket.
  Status OpenJournal(const std::string& path, size_t* restored = nullptr);
  // Where the table would start a new name next; for tests of a fresh table.
  void StartAt(uint32_t index);
  const Status& journal_error() const { return journal_error_; }
  const std::string& table_id() const { return table_id_; }

  size_t size() const { return by_name_.size(); }
  size_t capacity() const { return capacity_; }
  const std::string& v4_cidr() const { return v4_cidr_; }
  const std::string& v6_cidr() const { return v6_cidr_; }

 private:
  struct Entry {
    std::string name;
    uint32_t index;
    int64_t held_until_ms = 0;  // LookupHeld's promise
  };
  using Lru = std::list<Entry>;  // front = most recently used

  FakeAddressPool() = default;
  bool Usable(uint64_t index) const;
  uint32_t NextUsable(uint32_t index) const;
  // The next usable number after `index` that no name holds, wrapping around (the table is not
  // full).
  uint32_t NextFree(uint32_t index) const;
  // Gives `index` to `name` (taking it from whoever held it), most recently used.
  void Assign(const std::string& name, uint32_t index);
  // The number a new name would get now (recycling the LRU name when full).
  uint32_t Candidate() const;
  Result<Pair> Allocate(const std::string& name, bool must_journal);
  Status Append(const std::string& name, uint32_t index);
  Status Compact();
  std::string Header() const;
  Pair AddressesOf(uint32_t index) const;
  // The name number behind `addr` if it lies in a range at a position a name could have.
  bool IndexOf(const wire::Addr& addr, uint32_t* index) const;
  bool InV4(const wire::Addr& a) const;  // `a` already unmapped
  bool InV6(const wire::Addr& a) const;

  std::string v4_cidr_, v6_cidr_;
  uint32_t v4_base_ = 0;  // host order, host part zero
  int v4_prefix_ = 0;
  uint8_t v6_base_[16] = {};  // host part zero
  int v6_prefix_ = 0;
  uint64_t max_index_ = 0;  // largest number whose addresses both lie inside the ranges
  size_t capacity_ = 0;
  uint32_t next_index_ = 0;  // the number the next new name gets while not full
  Lru lru_;
  std::unordered_map<std::string, Lru::iterator> by_name_;
  std::unordered_map<uint32_t, Lru::iterator> by_index_;
  std::string journal_path_;
  UniqueFd journal_fd_;  // O_APPEND
  size_t journal_lines_ = 0;
  Status journal_error_;
  std::string table_id_;  // random, written in the file's header
};

// Lower-cases, strips one trailing dot, and checks a host name (1..253 characters of letters,
// digits, '-', '_', '.', labels 1..63). Returns the normalized name or EINVAL.
Result<std::string> NormalizeName(std::string_view name);

}  // namespace via::broker
