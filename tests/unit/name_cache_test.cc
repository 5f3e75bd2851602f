// The shim's cache of RESOLVE answers (shim/name_cache.h): an answer is used only while half of
// the broker's promise lasts, only from the broker that gave it, and reverse lookups give the
// name as the broker normalizes it. The cache is process-wide: each test uses names of its own.
#include "shim/name_cache.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>

namespace via::shim {
namespace {

constexpr uint32_t kBroker = 4242;

wire::Addr Ip(const char* text) {
  wire::Addr a;
  a.family = std::strchr(text, ':') == nullptr ? 4 : 6;
  EXPECT_EQ(inet_pton(a.family == 4 ? AF_INET : AF_INET6, text, a.bytes), 1);
  return a;
}

// How many addresses a lookup of `name` finds (-1: a miss).
int Lookup(const char* name, int family = 4, uint32_t broker = kBroker, int cap = 4,
           wire::Addr* first = nullptr) {
  wire::Addr out[4];
  int n = 0;
  if (!NameCacheGet(name, family, broker, out, cap, &n)) return -1;
  if (first != nullptr && n > 0) *first = out[0];
  return n;
}

TEST(NameCacheTest, AnswersARepeatLookupFromTheSameBroker) {
  const wire::Addr a = Ip("198.18.1.1");
  NameCachePut("repeat.test", 4, kBroker, &a, 1, 60000);
  wire::Addr got;
  EXPECT_EQ(Lookup("repeat.test", 4, kBroker, 4, &got), 1);
  EXPECT_EQ(std::memcmp(got.bytes, a.bytes, 4), 0);
  EXPECT_EQ(Lookup("repeat.test", 4, kBroker + 1), -1) << "another broker's answer";
  EXPECT_EQ(Lookup("repeat.test", 6), -1) << "the family is part of the question";
  EXPECT_EQ(Lookup("other.test"), -1);
}

TEST(NameCacheTest, CopiesNoMoreThanTheCallerHasRoomFor) {
  const wire::Addr three[3] = {Ip("198.18.2.1"), Ip("198.18.2.2"), Ip("198.18.2.3")};
  NameCachePut("three.test", 0, kBroker, three, 3, 60000);
  EXPECT_EQ(Lookup("three.test", 0, kBroker, 2), 2);
  EXPECT_EQ(Lookup("three.test", 0, kBroker, 4), 3);
}

TEST(NameCacheTest, KeepsNothingWithoutAPromise) {
  const wire::Addr a = Ip("198.18.3.1");
  NameCachePut("nohold.test", 4, kBroker, &a, 1, 0);
  NameCachePut("nobroker.test", 4, 0, &a, 1, 60000);
  const wire::Addr five[5] = {a, a, a, a, a};
  NameCachePut("toomany.test", 4, kBroker, five, 5, 60000);
  EXPECT_EQ(Lookup("nohold.test"), -1);
  EXPECT_EQ(Lookup("nobroker.test", 4, 0), -1);
  EXPECT_EQ(Lookup("toomany.test"), -1);
}

TEST(NameCacheTest, AnAnswerLastsHalfThePromise) {
  const wire::Addr a = Ip("198.18.4.1");
  NameCachePut("expiring.test", 4, kBroker, &a, 1, 400);  // used for 200 ms
  EXPECT_EQ(Lookup("expiring.test"), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  EXPECT_EQ(Lookup("expiring.test"), -1);
}

TEST(NameCacheTest, ReverseGivesTheNameAsTheBrokerNormalizesIt) {
  const wire::Addr a = Ip("198.18.5.9");
  NameCachePut("Mixed.Example.TEST.", 4, kBroker, &a, 1, 60000);
  char name[64];
  ASSERT_TRUE(NameCacheReverse(a, kBroker, name, sizeof name));
  EXPECT_STREQ(name, "mixed.example.test");
  ASSERT_TRUE(NameCacheReverse(Ip("::ffff:198.18.5.9"), kBroker, name, sizeof name));
  EXPECT_STREQ(name, "mixed.example.test");
  EXPECT_FALSE(NameCacheReverse(a, kBroker + 1, name, sizeof name));
  EXPECT_FALSE(NameCacheReverse(a, kBroker, name, 5)) << "a name that does not fit";
  EXPECT_FALSE(NameCacheReverse(Ip("198.18.5.10"), kBroker, name, sizeof name));
}

}  // namespace
}  // namespace via::shim
