// The connects waiting for an overlay to get ready (I2P's session, a Tailscale node).
#include "overlays/ready_waiters.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "loop/event_loop.h"

namespace via::overlays {
namespace {

class ReadyWaitersTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(loop_.Init().ok()); }
  // Runs the loop for `ms` milliseconds.
  void RunFor(int ms) {
    loop_.AddTimer(ms, [this] { loop_.Quit(); });
    loop_.Run();
  }
  ReadyWaiters::DoneFn Record() {
    return [this](const Status& s) { got_.push_back(s.ok() ? "ok" : s.message()); };
  }
  static std::function<Status()> Late(std::string why) {
    return [why] { return Status::Error(ETIMEDOUT, why); };
  }

  EventLoop loop_;
  std::vector<std::string> got_;
};

TEST_F(ReadyWaitersTest, FinishAllCallsEveryWaiterOnce) {
  ReadyWaiters w(&loop_);
  w.Add(Record(), 50, Late("late"));
  w.Add(Record(), 50, Late("late"));
  w.FinishAll(Status::Ok());
  RunFor(100);  // their timers were cancelled
  EXPECT_EQ(got_, (std::vector<std::string>{"ok", "ok"}));
}

TEST_F(ReadyWaitersTest, AWaiterThatTimesOutGetsTheStatusOfThatMoment) {
  ReadyWaiters w(&loop_);
  std::string why = "not yet";
  w.Add(Record(), 10, [&why] { return Status::Error(ETIMEDOUT, why); });
  why = "still not";
  RunFor(50);
  EXPECT_EQ(got_, (std::vector<std::string>{"still not"}));
  w.FinishAll(Status::Ok());  // it is gone
  EXPECT_EQ(got_.size(), 1u);
}

TEST_F(ReadyWaitersTest, ACancelledWaiterIsNeverCalled) {
  ReadyWaiters w(&loop_);
  uint64_t id = w.Add(Record(), 10, Late("late"));
  EXPECT_NE(id, 0u);
  w.Cancel(id);
  w.Cancel(id);  // twice, or unknown: ignored
  RunFor(50);
  w.FinishAll(Status::Ok());
  EXPECT_TRUE(got_.empty());
}

TEST_F(ReadyWaitersTest, AWaiterAddedWhileFinishingWaitsForTheNextTime) {
  ReadyWaiters w(&loop_);
  w.Add(
      [&](const Status&) {
        got_.push_back("first");
        w.Add(Record(), 1000, Late("late"));  // a retry
      },
      1000, Late("late"));
  w.FinishAll(Status::Error(ECONNRESET, "lost"));
  EXPECT_EQ(got_, (std::vector<std::string>{"first"}));
  w.FinishAll(Status::Ok());
  EXPECT_EQ(got_, (std::vector<std::string>{"first", "ok"}));
}

}  // namespace
}  // namespace via::overlays
