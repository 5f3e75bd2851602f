// FakeAddressPool: allocation in both families, reverse lookup, LRU recycling, Contains, scale.
#include "broker/fake_address_pool.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

namespace via::broker {
namespace {

wire::Addr Ip(const char* text, uint16_t port = 0) {
  wire::Addr a;
  a.port = port;
  if (inet_pton(AF_INET, text, a.bytes) == 1) {
    a.family = 4;
  } else {
    EXPECT_EQ(inet_pton(AF_INET6, text, a.bytes), 1) << text;
    a.family = 6;
  }
  return a;
}

std::string Text(const wire::Addr& a) {
  char buf[INET6_ADDRSTRLEN];
  inet_ntop(a.family == 4 ? AF_INET : AF_INET6, a.bytes, buf, sizeof buf);
  return buf;
}

class FakeAddressPoolTest : public ::testing::Test {
 protected:
  FakeAddressPool Make(const char* v4 = "198.18.0.0/15", const char* v6 = "fd76:6961:ff00::/64",
                       size_t max_names = 0) {
    auto p = FakeAddressPool::Create(v4, v6, max_names);
    EXPECT_TRUE(p.ok()) << p.status().message();
    return std::move(*p);
  }
};

TEST_F(FakeAddressPoolTest, FirstNameGetsTheFirstAddressOfBothRanges) {
  FakeAddressPool pool = Make();
  auto p = pool.Lookup("example.test");
  EXPECT_EQ(Text(p.v4), "198.18.0.1");
  EXPECT_EQ(Text(p.v6), "fd76:6961:ff00::1");
  EXPECT_EQ(p.v4.port, 0);
  EXPECT_EQ(Text(pool.Lookup("second.test").v4), "198.18.0.2");
}

TEST_F(FakeAddressPoolTest, SameNameSameAddress) {
  FakeAddressPool pool = Make();
  auto a = pool.Lookup("example.test");
  pool.Lookup("other.test");
  auto b = pool.Lookup("example.test");
  EXPECT_EQ(a.v4, b.v4);
  EXPECT_EQ(a.v6, b.v6);
  EXPECT_EQ(pool.size(), 2u);
}

TEST_F(FakeAddressPoolTest, ReverseFindsTheNameFromEitherFamily) {
  FakeAddressPool pool = Make();
  auto p = pool.Lookup("example.test");
  EXPECT_EQ(pool.Reverse(p.v4).value_or(""), "example.test");
  EXPECT_EQ(pool.Reverse(p.v6).value_or(""), "example.test");
  EXPECT_EQ(pool.Reverse(Ip("::ffff:198.18.0.1")).value_or(""), "example.test");
  EXPECT_EQ(pool.Reverse(Ip("198.18.0.1", 443)).value_or(""), "example.test");  // port ignored
}

TEST_F(FakeAddressPoolTest, ReverseOfUnmappedAddressIsEmpty) {
  FakeAddressPool pool = Make();
  pool.Lookup("example.test");
  EXPECT_FALSE(pool.Reverse(Ip("198.18.0.9")));
  EXPECT_FALSE(pool.Reverse(Ip("10.0.0.1")));
  EXPECT_FALSE(pool.Reverse(Ip("fd76:6961:ff00::1:0:1")));  // above the 32-bit numbers
}

TEST_F(FakeAddressPoolTest, SkipsAddressesEndingInZeroOr255) {
  FakeAddressPool pool = Make();
  std::string last;
  for (int i = 0; i < 300; ++i) {
    auto p = pool.Lookup("n" + std::to_string(i) + ".test");
    EXPECT_NE(p.v4.bytes[3], 0) << Text(p.v4);
    EXPECT_NE(p.v4.bytes[3], 255) << Text(p.v4);
    last = Text(p.v4);
  }
  EXPECT_EQ(last, "198.18.1.46");  // 254 in 198.18.0.x, then 198.18.1.1..46
  EXPECT_EQ(pool.capacity(), 512u * 254u);
}

TEST_F(FakeAddressPoolTest, RecyclesTheLeastRecentlyUsedName) {
  FakeAddressPool pool = Make("198.18.0.0/30", "fd76:6961:ff00::/64");  // two usable addresses
  ASSERT_EQ(pool.capacity(), 2u);
  auto a = pool.Lookup("a.test");
  auto b = pool.Lookup("b.test");
  pool.Lookup("a.test");  // b is now the least recently used
  auto c = pool.Lookup("c.test");
  EXPECT_EQ(c.v4, b.v4);
  EXPECT_FALSE(pool.Reverse(b.v4) && *pool.Reverse(b.v4) == "b.test");
  EXPECT_EQ(pool.Reverse(c.v4).value_or(""), "c.test");
  EXPECT_EQ(pool.Reverse(a.v4).value_or(""), "a.test");
  EXPECT_EQ(pool.size(), 2u);
}

TEST_F(FakeAddressPoolTest, ReverseCountsAsUse) {
  FakeAddressPool pool = Make("198.18.0.0/15", "fd76:6961:ff00::/64", 2);
  auto a = pool.Lookup("a.test");
  pool.Lookup("b.test");
  pool.Reverse(a.v4);  // a connect touches a: b goes first
  pool.Lookup("c.test");
  EXPECT_EQ(pool.Reverse(a.v4).value_or(""), "a.test");
}

TEST_F(FakeAddressPoolTest, HeldNameIsNotRecycledUntilItsPromiseRunsOut) {
  FakeAddressPool pool = Make("198.18.0.0/30", "fd76:6961:ff00::/64");  // two usable addresses
  auto a = pool.LookupHeld("a.test", 1000, 2000);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(pool.LookupHeld("b.test", 1500, 2000).ok());
  auto c = pool.LookupHeld("c.test", 2999, 2000);  // a is held until 3000
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), EAGAIN);
  EXPECT_EQ(c.status().message(),
            "the fake address pool is exhausted: all 2 addresses were handed out within the last "
            "2000 ms; widen fake_ipv4/fake_ipv6 in the configuration");
  EXPECT_EQ(pool.Reverse(a->v4).value_or(""), "a.test");  // untouched by the refusal
  pool.LookupHeld("b.test", 2999, 2000);                  // a is the least recently used now
  auto d = pool.LookupHeld("d.test", 3000, 2000);         // a's promise has run out
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->v4, a->v4);
  EXPECT_EQ(pool.Reverse(d->v4).value_or(""), "d.test");
}

TEST_F(FakeAddressPoolTest, KnownNameIsAnsweredEvenWhenEveryNameIsHeld) {
  FakeAddressPool pool = Make("198.18.0.0/30", "fd76:6961:ff00::/64");
  auto a = pool.LookupHeld("a.test", 0, 2000);
  pool.LookupHeld("b.test", 0, 2000);
  auto again = pool.LookupHeld("a.test", 10, 2000);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->v4, a->v4);
}

TEST_F(FakeAddressPoolTest, ZeroHoldRecyclesAsLookupDoes) {
  FakeAddressPool pool = Make("198.18.0.0/30", "fd76:6961:ff00::/64");
  auto a = pool.LookupHeld("a.test", 0, 0);
  pool.LookupHeld("b.test", 0, 0);
  auto c = pool.LookupHeld("c.test", 0, 0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->v4, a->v4);
}

TEST_F(FakeAddressPoolTest, ContainsCoversBothRangesMappedOrNot) {
  FakeAddressPool pool = Make();
  EXPECT_TRUE(pool.Contains(Ip("198.18.0.9")));
  EXPECT_TRUE(pool.Contains(Ip("198.19.255.254")));
  EXPECT_TRUE(pool.Contains(Ip("::ffff:198.18.3.4")));
  EXPECT_TRUE(pool.Contains(Ip("fd76:6961:ff00::1234")));
  EXPECT_FALSE(pool.Contains(Ip("198.20.0.1")));
  EXPECT_FALSE(pool.Contains(Ip("127.0.0.1")));
  EXPECT_FALSE(pool.Contains(Ip("fd76:6961:ff01::1")));
  EXPECT_FALSE(pool.Contains(Ip("::1")));
}

TEST_F(FakeAddressPoolTest, RejectsBadRanges) {
  EXPECT_FALSE(FakeAddressPool::Create("198.18.0.0", "fd76:6961:ff00::/64").ok());
  EXPECT_FALSE(FakeAddressPool::Create("198.18.0.0/31", "fd76:6961:ff00::/64").ok());
  EXPECT_FALSE(FakeAddressPool::Create("fd76::/64", "fd76:6961:ff00::/64").ok());
  EXPECT_FALSE(FakeAddressPool::Create("198.18.0.0/15", "198.18.0.0/15").ok());
}

TEST_F(FakeAddressPoolTest, HundredThousandNamesAreCheap) {
  FakeAddressPool pool = Make();
  auto start = std::chrono::steady_clock::now();
  std::set<uint32_t> seen;
  for (int i = 0; i < 100000; ++i) {
    auto p = pool.Lookup("host" + std::to_string(i) + ".example");
    uint32_t v;
    std::memcpy(&v, p.v4.bytes, 4);
    seen.insert(v);
  }
  for (int i = 0; i < 100000; i += 997) {
    auto p = pool.Lookup("host" + std::to_string(i) + ".example");
    EXPECT_EQ(pool.Reverse(p.v6).value_or(""), "host" + std::to_string(i) + ".example");
  }
  EXPECT_EQ(seen.size(), 100000u);
  EXPECT_EQ(pool.size(), 100000u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
}

// ---- the journal: a table outlives its broker -------------------------------------------------

class FakeAddressJournalTest : public FakeAddressPoolTest {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/via-pool-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/broker.sock.names";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  // A broker starting: a new pool that loads the table.
  FakeAddressPool Restart(size_t* restored = nullptr, const char* v4 = "198.18.0.0/15",
                          size_t max_names = 0) {
    FakeAddressPool pool = Make(v4, "fd76:6961:ff00::/64", max_names);
    Status s = pool.OpenJournal(path_, restored);
    EXPECT_TRUE(s.ok()) << s.message();
    return pool;
  }
  std::string dir_, path_;
};

TEST_F(FakeAddressJournalTest, AnAddressKeepsItsNameAcrossRestarts) {
  std::map<std::string, std::string> meant;  // address -> the name it was handed out for
  for (int restart = 0; restart < 20; ++restart) {
    size_t restored = 0;
    FakeAddressPool pool = Restart(&restored);
    EXPECT_EQ(restored, meant.size() / 2);
    // Every address handed out by an earlier broker still means its name.
    for (const auto& [addr, name] : meant) {
      EXPECT_EQ(pool.Reverse(Ip(addr.c_str())).value_or("(none)"), name)
          << "restart " << restart << ": " << addr;
    }
    for (int i = 0; i < 25; ++i) {
      std::string name = "r" + std::to_string(restart) + "n" + std::to_string(i) + ".test";
      auto p = pool.LookupHeld(name, 0, 0);
      ASSERT_TRUE(p.ok()) << p.status().message();
      for (const wire::Addr& a : {p->v4, p->v6}) {
        auto [it, fresh] = meant.emplace(Text(a), name);
        EXPECT_TRUE(fresh) << Text(a) << " was " << it->second << ", now " << name;
      }
    }
  }
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(FakeAddressJournalTest, RecycledNumbersKeepTheirNewName) {
  std::string a_addr;
  {
    FakeAddressPool pool = Restart(nullptr, "198.18.0.0/15", 3);
    a_addr = Text(pool.Lookup("a.test").v4);
    pool.Lookup("b.test");
    pool.Lookup("c.test");
    EXPECT_EQ(Text(pool.Lookup("d.test").v4), a_addr);  // a was least recently used
  }
  size_t restored = 0;
  FakeAddressPool pool = Restart(&restored, "198.18.0.0/15", 3);
  EXPECT_EQ(restored, 3u);
  EXPECT_EQ(pool.Reverse(Ip(a_addr.c_str())).value_or(""), "d.test");
  // And the order of use survived: b is the next to go.
  pool.Lookup("e.test");
  EXPECT_EQ(pool.size(), 3u);
  EXPECT_EQ(pool.Reverse(pool.Lookup("c.test").v4).value_or(""), "c.test");
  EXPECT_NE(Text(pool.Lookup("e.test").v4), a_addr);
}

TEST_F(FakeAddressJournalTest, ATableForOtherRangesIsNotLoaded) {
  std::string id;
  {
    FakeAddressPool pool = Restart();
    pool.Lookup("a.test");
    id = pool.table_id();
  }
  size_t restored = 7;
  FakeAddressPool other = Restart(&restored, "10.64.0.0/16");
  EXPECT_EQ(restored, 0u);
  EXPECT_NE(other.table_id(), id);
  EXPECT_EQ(other.size(), 0u);
}

TEST_F(FakeAddressJournalTest, ALineCutShortIsIgnored) {
  std::string a;
  {
    FakeAddressPool pool = Restart();
    a = Text(pool.Lookup("a.test").v4);
  }
  {
    std::ofstream f(path_, std::ios::app);
    f << "12 cut.sh";  // no newline: a write that did not finish
  }
  size_t restored = 0;
  FakeAddressPool pool = Restart(&restored);
  EXPECT_EQ(restored, 1u);
  EXPECT_EQ(pool.Reverse(Ip(a.c_str())).value_or(""), "a.test");
}

TEST_F(FakeAddressJournalTest, ANewTableStartsAtARandomNumber) {
  // With its file lost, a new broker most likely hands out addresses no program holds: the old
  // ones are then refused as unknown rather than taken for another name.
  std::set<std::string> first;
  for (int i = 0; i < 4; ++i) {
    std::filesystem::remove(path_);
    FakeAddressPool pool = Restart();
    first.insert(Text(pool.Lookup("a.test").v4));
  }
  EXPECT_GT(first.size(), 1u);
}

TEST_F(FakeAddressJournalTest, CompactsWhenStaleLinesDominate) {
  FakeAddressPool pool = Restart(nullptr, "198.18.0.0/15", 10);
  for (int i = 0; i < 20000; ++i) pool.Lookup("n" + std::to_string(i) + ".test");
  EXPECT_LT(std::filesystem::file_size(path_), 200000u);
  size_t restored = 0;
  FakeAddressPool again = Restart(&restored, "198.18.0.0/15", 10);
  EXPECT_EQ(restored, 10u);
  EXPECT_EQ(again.Reverse(pool.Lookup("n19999.test").v4).value_or(""), "n19999.test");
}

TEST(NormalizeNameTest, LowercasesAndStripsOneTrailingDot) {
  EXPECT_EQ(*NormalizeName("Example.TEST."), "example.test");
  EXPECT_FALSE(NormalizeName("example.test..").ok());
  EXPECT_FALSE(NormalizeName("").ok());
  EXPECT_FALSE(NormalizeName(".").ok());
  EXPECT_FALSE(NormalizeName("bad name.test").ok());
  EXPECT_FALSE(NormalizeName(std::string(254, 'a')).ok());
  EXPECT_FALSE(NormalizeName(std::string(64, 'a') + ".test").ok());
  EXPECT_EQ(NormalizeName("bad name").status().code(), EINVAL);
}

}  // namespace
}  // namespace via::broker
