// The shim's per-socket table (shim/fd_table.h): values keyed by descriptor number and
// validated by the socket's inode, so that a number the program closed and reused is never
// taken for the socket a value was stored for.
#include "shim/fd_table.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/unique_fd.h"

namespace via::shim {
namespace {

class FdTableTest : public ::testing::Test {
 protected:
  static UniqueFd Socket() { return UniqueFd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)); }
  // The value stored for `fd`, or -1.
  int Get(int fd) {
    int v = -1;
    return table_.Get(fd, &v) ? v : -1;
  }

  FdTable<int> table_{4};
};

TEST_F(FdTableTest, AnEmptyTableHasNothing) {
  UniqueFd a = Socket();
  EXPECT_EQ(Get(a.get()), -1);
  EXPECT_EQ(Get(-1), -1);
}

TEST_F(FdTableTest, RemembersAValuePerSocket) {
  UniqueFd a = Socket(), b = Socket();
  table_.Put(a.get(), 7);
  table_.Put(b.get(), 8);
  EXPECT_EQ(Get(a.get()), 7);
  EXPECT_EQ(Get(b.get()), 8);
}

TEST_F(FdTableTest, AReusedNumberIsAnotherSocket) {
  UniqueFd a = Socket();
  const int number = a.get();
  table_.Put(number, 7);
  a.reset();
  UniqueFd b = Socket();
  ASSERT_EQ(dup2(b.get(), number), number);  // the program's new socket on the old number
  UniqueFd reused(number);
  EXPECT_EQ(Get(number), -1);
}

TEST_F(FdTableTest, ValuesAreKeptPerNumber) {
  UniqueFd a = Socket();
  table_.Put(a.get(), 7);
  UniqueFd dup(fcntl(a.get(), F_DUPFD_CLOEXEC, 0));
  EXPECT_EQ(Get(dup.get()), -1) << "a duplicate under another number is not known";
  table_.Put(dup.get(), 9);
  EXPECT_EQ(Get(a.get()), 7);
  EXPECT_EQ(Get(dup.get()), 9);
}

TEST_F(FdTableTest, GrowsPastItsInitialSize) {
  UniqueFd low = Socket();
  table_.Put(low.get(), 1);
  UniqueFd high(fcntl(low.get(), F_DUPFD_CLOEXEC, 300));
  ASSERT_GE(high.get(), 300);
  table_.Put(high.get(), 2);
  EXPECT_EQ(Get(high.get()), 2);
  EXPECT_EQ(Get(low.get()), 1) << "entries survive the table's growth";
}

TEST_F(FdTableTest, KeepDecidesWhetherAnOldValueStays) {
  UniqueFd a = Socket();
  table_.Put(a.get(), 1);
  table_.Put(a.get(), 2, [](const int& old, const int&) { return old == 1; });
  EXPECT_EQ(Get(a.get()), 1);
  table_.Put(a.get(), 3, [](const int&, const int&) { return false; });
  EXPECT_EQ(Get(a.get()), 3);
}

TEST_F(FdTableTest, ClosedAndNegativeDescriptorsAreNotStored) {
  UniqueFd a = Socket();
  const int number = a.get();
  a.reset();
  table_.Put(number, 7);
  table_.Put(-1, 7);
  EXPECT_EQ(Get(number), -1);
  EXPECT_EQ(Get(-1), -1);
}

}  // namespace
}  // namespace via::shim
