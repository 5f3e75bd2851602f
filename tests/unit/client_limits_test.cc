// The bookkeeping behind the broker's per-client limits (broker/client_limits.h): the reply
// queue's bound, the client caps derived from the descriptor limit, the log rate limit.
#include "broker/client_limits.h"

#include <gtest/gtest.h>

#include <vector>

namespace via::broker {
namespace {

TEST(OutboxTest, FullAtTheCountBoundAndEmptiesInOrder) {
  Outbox q;
  uint8_t msg[3] = {1, 2, 3};
  for (size_t i = 0; i + 1 < Outbox::kMaxCount; ++i) {
    msg[0] = uint8_t(i);
    q.Push(msg, sizeof msg);
    EXPECT_FALSE(q.Full()) << i;
  }
  q.Push(msg, sizeof msg);
  EXPECT_TRUE(q.Full());
  EXPECT_EQ(q.bytes(), Outbox::kMaxCount * 3);
  for (size_t i = 0; i + 1 < Outbox::kMaxCount; ++i) {
    EXPECT_EQ(q.front()[0], uint8_t(i));
    q.Pop();
  }
  EXPECT_FALSE(q.Full());
  q.Pop();
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.bytes(), 0u);
}

TEST(OutboxTest, FullAtTheByteBound) {
  Outbox q;
  std::vector<uint8_t> big(65536, 7);  // the largest message
  size_t pushed = 0;
  while (!q.Full()) {
    q.Push(big.data(), big.size());
    ++pushed;
  }
  EXPECT_EQ(pushed, Outbox::kMaxBytes / 65536);
  EXPECT_LT(q.size(), Outbox::kMaxCount);
  q.Pop();
  EXPECT_FALSE(q.Full());
}

TEST(ClientCapsTest, LeaveDescriptorsForConnectsAndNeverExceedTheLimit) {
  for (uint64_t nofile : {20u, 48u, 64u, 96u, 256u, 1024u, 4096u, 65536u}) {
    ClientCaps c = ClientCaps::ForDescriptorLimit(nofile);
    SCOPED_TRACE(nofile);
    EXPECT_GE(c.total, 4u);
    EXPECT_GE(c.per_pid, 1u);
    EXPECT_LE(c.per_pid, c.total);
    EXPECT_GE(c.ops, 8u);
    if (nofile >= 96) {
      // Clients, connects in flight and the broker's own descriptors fit in the limit.
      EXPECT_LE(c.total + c.ops + 16, nofile);
      EXPECT_LT(c.per_pid, c.total);  // one process cannot take every connection
    }
  }
  EXPECT_EQ(ClientCaps::ForDescriptorLimit(1024).per_pid, 189u);
}

TEST(LogLimiterTest, BurstThenRateAndCountsWhatWasDropped) {
  LogLimiter l(3, 60);  // 3 at once, then one a second
  uint64_t suppressed = 99;
  int64_t t = 1000;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(l.Allow(t, &suppressed));
    EXPECT_EQ(suppressed, 0u);
  }
  int allowed = 0;
  for (int i = 0; i < 1000; ++i) allowed += l.Allow(t, &suppressed);  // a flood, same instant
  EXPECT_EQ(allowed, 0);
  EXPECT_FALSE(l.Allow(t + 500, &suppressed));
  EXPECT_TRUE(l.Allow(t + 1000, &suppressed));
  EXPECT_EQ(suppressed, 1001u);  // said in the line that is written
  EXPECT_EQ(l.dropped(), 1001u);
  // Ten minutes of a flood of 1,000 a second: about one line a second gets through.
  allowed = 0;
  for (int ms = 0; ms < 600000; ++ms) allowed += l.Allow(t + 2000 + ms, nullptr);
  EXPECT_LE(allowed, 605);
  EXPECT_GE(allowed, 595);
  EXPECT_EQ(SuppressedText(0), "");
  EXPECT_EQ(SuppressedText(2), " (2 similar lines suppressed: too many)");
}

}  // namespace
}  // namespace via::broker
