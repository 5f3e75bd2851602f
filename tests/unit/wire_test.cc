// The wire codec: round trips and one test per class of malformed input.
#include "common/wire.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vector>

namespace via::wire {
namespace {

class WireTest : public ::testing::Test {
 protected:
  // Keeps the bytes alive: a Message is a view.
  ParseError Parse(std::vector<uint8_t> bytes) {
    bytes_ = std::move(bytes);
    return msg_.Parse(bytes_.data(), bytes_.size());
  }
  std::vector<uint8_t> Hello() {
    uint8_t buf[256];
    Writer w(buf, sizeof buf, kHello, 7);
    w.PutString(kTagNetwork, "app:tor");
    w.PutU32(kTagPid, 42);
    return std::vector<uint8_t>(buf, buf + w.size());
  }
  std::vector<uint8_t> bytes_;
  Message msg_;
};

TEST_F(WireTest, RoundTripsFields) {
  ASSERT_EQ(Parse(Hello()), ParseError::kOk);
  EXPECT_EQ(msg_.type(), kHello);
  EXPECT_EQ(msg_.id(), 7u);
  Field f;
  ASSERT_TRUE(msg_.Find(kTagNetwork, &f));
  EXPECT_EQ(f.str(), "app:tor");
  uint32_t pid = 0;
  ASSERT_TRUE(msg_.Find(kTagPid, &f) && f.u32(&pid));
  EXPECT_EQ(pid, 42u);
}

TEST_F(WireTest, RoundTripsAddresses) {
  uint8_t buf[128];
  Writer w(buf, sizeof buf, kConnect, 1);
  Addr a;
  a.family = 6;
  a.port = 8080;
  a.bytes[15] = 1;
  w.PutAddr(kTagAddr, a);
  ASSERT_EQ(msg_.Parse(buf, w.size()), ParseError::kOk);
  Field f;
  Addr back;
  ASSERT_TRUE(msg_.Find(kTagAddr, &f) && f.addr(&back));
  EXPECT_TRUE(back == a);
}

TEST_F(WireTest, TruncatedHeader) {
  auto m = Hello();
  m.resize(15);
  EXPECT_EQ(Parse(m), ParseError::kTruncatedHeader);
}

TEST_F(WireTest, BadMagic) {
  auto m = Hello();
  m[0] = 'X';
  EXPECT_EQ(Parse(m), ParseError::kBadMagic);
}

TEST_F(WireTest, LengthMismatch) {
  auto m = Hello();
  m.push_back(0);
  EXPECT_EQ(Parse(m), ParseError::kLengthMismatch);
}

TEST_F(WireTest, TooLarge) {
  std::vector<uint8_t> m(kMaxMessage + 1);
  EXPECT_EQ(Parse(m), ParseError::kTooLarge);
}

TEST_F(WireTest, TruncatedField) {
  auto m = Hello();
  m[kHeaderSize + 2] = 0xff;  // first field claims 255+ bytes
  EXPECT_EQ(Parse(m), ParseError::kTruncatedField);
}

TEST_F(WireTest, FieldHeaderCutShort) {
  auto m = Hello();
  m.push_back(1);  // a lone byte where a 4-byte field header should be
  PutLE32(m.data() + 12, uint32_t(m.size() - kHeaderSize));
  EXPECT_EQ(Parse(m), ParseError::kTruncatedField);
}

TEST_F(WireTest, MalformedAddrIsRejected) {
  Field f;
  uint8_t bad[8] = {5, 0, 0, 80, 1, 2, 3, 4};  // family 5
  f.data = bad;
  f.len = 8;
  Addr a;
  EXPECT_FALSE(f.addr(&a));
  bad[0] = 6;  // IPv6 needs 20 bytes
  EXPECT_FALSE(f.addr(&a));
}

TEST_F(WireTest, WriterRefusesOverflow) {
  uint8_t buf[32];
  Writer w(buf, sizeof buf, kResolve, 1);
  w.PutString(kTagName, std::string(64, 'a'));
  EXPECT_FALSE(w.ok());
}

TEST_F(WireTest, LoopbackAndMapped) {
  Addr a;
  a.family = 6;
  a.bytes[10] = a.bytes[11] = 0xff;
  a.bytes[12] = 127;
  a.bytes[15] = 1;
  EXPECT_TRUE(IsLoopback(a));
  EXPECT_EQ(Unmapped(a).family, 4);
}

TEST_F(WireTest, MappedIsTheInverseOfUnmapped) {
  Addr v4;
  v4.family = 4;
  v4.port = 80;
  v4.bytes[0] = 192;
  v4.bytes[3] = 7;
  Addr m = Mapped(v4);
  const uint8_t want[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 0, 7};
  EXPECT_EQ(m.family, 6);
  EXPECT_EQ(m.port, 80);
  EXPECT_EQ(std::memcmp(m.bytes, want, 16), 0);
  Addr back = Unmapped(m);
  EXPECT_EQ(back.family, 4);
  EXPECT_EQ(std::memcmp(back.bytes, v4.bytes, 4), 0);
  EXPECT_EQ(std::memcmp(Mapped(m).bytes, want, 16), 0) << "an IPv6 address stays as it is";
}

TEST_F(WireTest, ReceiveDatagramTakesEveryAttachedDescriptor) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  ASSERT_EQ(SendDatagram(sv[0], "hi", 2, pipefd[0]), 2);
  char buf[16];
  int fds[4];
  size_t nfds = 0;
  int flags = -1;
  ASSERT_EQ(ReceiveDatagram(sv[1], buf, sizeof buf, MSG_CMSG_CLOEXEC, fds, &nfds, &flags), 2);
  ASSERT_EQ(nfds, 1u);
  EXPECT_EQ(flags & (MSG_TRUNC | MSG_CTRUNC), 0);
  struct stat a, b;
  ASSERT_EQ(fstat(fds[0], &a), 0);
  ASSERT_EQ(fstat(pipefd[0], &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino) << "the descriptor received is the pipe sent";
  EXPECT_NE(fcntl(fds[0], F_GETFD) & FD_CLOEXEC, 0);
  for (int fd : {fds[0], pipefd[0], pipefd[1], sv[0], sv[1]}) close(fd);
}

TEST_F(WireTest, ReceiveDatagramReportsATruncatedMessage) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  ASSERT_EQ(SendDatagram(sv[0], "too long", 8, -1), 8);
  char buf[4];
  int fds[1];
  size_t nfds = 7;
  int flags = 0;
  EXPECT_EQ(ReceiveDatagram(sv[1], buf, sizeof buf, 0, fds, &nfds, &flags), 4);
  EXPECT_EQ(nfds, 0u);
  EXPECT_NE(flags & MSG_TRUNC, 0);
  close(sv[0]);
  close(sv[1]);
}

}  // namespace
}  // namespace via::wire
