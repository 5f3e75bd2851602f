// RequestClient (common/request_client.h), the one client of the broker protocol, against a
// scripted peer over a socketpair: the peer's replies are queued (or sent from a thread) before
// the call, and each test asserts what the client returned and what the peer received.
#include "common/request_client.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace via::wire {
namespace {

class RequestClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The client's end non-blocking, as the shim and the CLI open theirs.
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv_), 0);
    ASSERT_EQ(fcntl(sv_[1], F_SETFL, 0), 0);  // the peer's end blocks
    client_.set_fd(sv_[0]);
  }
  void TearDown() override {
    for (int fd : sv_) {
      if (fd >= 0) close(fd);
    }
  }

  // A reply from the peer: type HELLO|reply, `id`, ERRNO `err` and MESSAGE `text`.
  std::vector<uint8_t> ReplyBytes(uint32_t id, uint32_t err = 0, const std::string& text = "") {
    uint8_t buf[1024];
    Writer w(buf, sizeof buf, kHello | kReplyBit, id);
    w.PutU32(kTagErrno, err);
    if (!text.empty()) w.PutString(kTagMessage, text);
    return std::vector<uint8_t>(buf, buf + w.size());
  }
  // The peer sends `bytes` with `fds` attached.
  void PeerSends(const std::vector<uint8_t>& bytes, const std::vector<int>& fds = {}) {
    iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    if (!fds.empty()) {
      mh.msg_control = control.data();
      mh.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ASSERT_EQ(sendmsg(sv_[1], &mh, MSG_NOSIGNAL), ssize_t(bytes.size()));
  }
  // The next request the peer received: its id (0 when none arrived).
  uint32_t PeerReceivedId() {
    uint8_t buf[kMaxMessage];
    ssize_t n = recv(sv_[1], buf, sizeof buf, MSG_DONTWAIT);
    Message m;
    if (n <= 0 || m.Parse(buf, size_t(n)) != ParseError::kOk) return 0;
    return m.id();
  }
  void ClosePeer() {
    close(sv_[1]);
    sv_[1] = -1;
  }
  // One HELLO request from the client, its reply in reply_ (`fd_room` descriptors kept).
  int Call(int64_t timeout_ms = 2000, size_t fd_room = 0, size_t cap = sizeof reply_buf_) {
    uint8_t buf[256];
    Writer w(buf, sizeof buf, kHello, client_.NextId());
    w.PutU16(kTagVersion, kVersion);
    reply_ = Reply(reply_buf_, cap, fd_room);
    return client_.Call(w, -1, DeadlineInMs(timeout_ms), &reply_);
  }
  // Whether every write end of `pipefd` is closed: the client closed the copy it received.
  static bool WriteEndsClosed(int read_end) {
    char c;
    return read(read_end, &c, 1) == 0;
  }

  int sv_[2] = {-1, -1};
  RequestClient client_;
  uint8_t reply_buf_[4096];
  Reply reply_{reply_buf_, sizeof reply_buf_};
};

TEST_F(RequestClientTest, ReturnsTheReplyToItsRequest) {
  PeerSends(ReplyBytes(1, 0));
  ASSERT_EQ(Call(), 0) << reply_.error;
  EXPECT_EQ(reply_.message.id(), 1u);
  std::string_view text;
  EXPECT_EQ(ReplyErrno(reply_.message, &text), 0);
  EXPECT_EQ(text.data(), nullptr) << "no MESSAGE in the reply";
  EXPECT_EQ(PeerReceivedId(), 1u);
}

TEST_F(RequestClientTest, SkipsAStaleReplyAndClosesItsDescriptor) {
  client_.NextId();  // request 1 timed out earlier; its reply comes late, before request 2's
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC | O_NONBLOCK), 0);
  PeerSends(ReplyBytes(1, EHOSTUNREACH, "the answer to the earlier request"), {pipefd[1]});
  close(pipefd[1]);
  PeerSends(ReplyBytes(2, 0));
  ASSERT_EQ(Call(2000, /*fd_room=*/1), 0) << reply_.error;
  EXPECT_EQ(reply_.message.id(), 2u);
  EXPECT_EQ(reply_.nfds, 0u);
  EXPECT_TRUE(WriteEndsClosed(pipefd[0])) << "the stale reply's descriptor was closed";
  close(pipefd[0]);
}

TEST_F(RequestClientTest, TimesOutAtTheDeadline) {
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Call(/*timeout_ms=*/150), ETIMEDOUT);
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_STREQ(reply_.error, "no reply before the deadline");
  EXPECT_GE(waited, std::chrono::milliseconds(140));
  EXPECT_LT(waited, std::chrono::seconds(2));
  EXPECT_EQ(PeerReceivedId(), 1u) << "the request was sent";
}

TEST_F(RequestClientTest, APeerThatReadsNothingCannotBlockTheSend) {
  // The peer's receive queue full: the client's send would block.
  std::vector<uint8_t> filler(4096);
  while (send(sv_[0], filler.data(), filler.size(), MSG_DONTWAIT) > 0) {
  }
  ASSERT_EQ(errno, EAGAIN);
  EXPECT_EQ(Call(/*timeout_ms=*/100), ETIMEDOUT);
  EXPECT_STREQ(reply_.error, "no room to send the request before the deadline");
}

// A signal handler installed without SA_RESTART: poll returns EINTR.
void OnSignal(int) {}

TEST_F(RequestClientTest, ASignalDoesNotEndTheWait) {
  struct sigaction sa {
  }, old{};
  sa.sa_handler = OnSignal;
  ASSERT_EQ(sigaction(SIGUSR1, &sa, &old), 0);
  pthread_t waiter = pthread_self();
  std::thread peer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    pthread_kill(waiter, SIGUSR1);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    PeerSends(ReplyBytes(1, 0));
  });
  int err = Call();
  peer.join();
  sigaction(SIGUSR1, &old, nullptr);
  EXPECT_EQ(err, 0) << reply_.error;
}

TEST_F(RequestClientTest, APeerThatClosesWithoutReplyingIsAnError) {
  std::thread peer([&] {
    while (PeerReceivedId() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ClosePeer();
  });
  int err = Call();
  peer.join();
  EXPECT_EQ(err, ECONNRESET);
  EXPECT_STREQ(reply_.error, "the broker closed the connection");
}

TEST_F(RequestClientTest, APeerThatClosesMidReplyIsAMalformedReply) {
  // The header promises 20 bytes of body; the peer sends 4 of them and closes.
  std::vector<uint8_t> cut = ReplyBytes(1, 0, "sixteen bytes...");
  cut.resize(kHeaderSize + 4);
  std::thread peer([&] {
    while (PeerReceivedId() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    PeerSends(cut);
    ClosePeer();
  });
  int err = Call();
  peer.join();
  EXPECT_EQ(err, EPROTO);
  EXPECT_STREQ(reply_.error, "body length in header does not match message size");
}

TEST_F(RequestClientTest, ABrokerThatRefusedTheConnectionGivesItsReason) {
  // A broker at a cap answers with id 0 and closes before reading anything.
  PeerSends(ReplyBytes(0, EAGAIN, "the via broker is at its descriptor limit"));
  ClosePeer();
  ASSERT_EQ(Call(), 0) << reply_.error;
  std::string_view text;
  EXPECT_EQ(ReplyErrno(reply_.message, &text), EAGAIN);
  EXPECT_EQ(text, "the via broker is at its descriptor limit");
}

TEST_F(RequestClientTest, ReceivesTheDescriptorsAReplyCarries) {
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  PeerSends(ReplyBytes(1, 0), {pipefd[1]});
  close(pipefd[1]);
  ASSERT_EQ(Call(2000, /*fd_room=*/1), 0) << reply_.error;
  ASSERT_EQ(reply_.nfds, 1u);
  EXPECT_NE(fcntl(reply_.fds[0], F_GETFD) & FD_CLOEXEC, 0);
  ASSERT_EQ(write(reply_.fds[0], "x", 1), 1);
  char c = 0;
  ASSERT_EQ(read(pipefd[0], &c, 1), 1);
  EXPECT_EQ(c, 'x') << "the descriptor received is the pipe the peer sent";
  close(reply_.fds[0]);
  close(pipefd[0]);
}

TEST_F(RequestClientTest, ClosesDescriptorsTheCallerHasNoRoomFor) {
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC | O_NONBLOCK), 0);
  PeerSends(ReplyBytes(1, 0), {pipefd[1]});
  close(pipefd[1]);
  ASSERT_EQ(Call(2000, /*fd_room=*/0), 0) << reply_.error;
  EXPECT_EQ(reply_.nfds, 0u);
  EXPECT_TRUE(WriteEndsClosed(pipefd[0]));
  close(pipefd[0]);
}

TEST_F(RequestClientTest, RejectsAReplyWithMoreDescriptorsThanAReplyMayCarry) {
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC | O_NONBLOCK), 0);
  std::vector<int> many(Reply::kMaxFds + 1, pipefd[1]);
  PeerSends(ReplyBytes(1, 0), many);
  close(pipefd[1]);
  EXPECT_EQ(Call(2000, /*fd_room=*/Reply::kMaxFds), EPROTO);
  EXPECT_STREQ(reply_.error, "reply with more descriptors attached than a reply may carry");
  EXPECT_TRUE(WriteEndsClosed(pipefd[0])) << "the ones that arrived were closed";
  close(pipefd[0]);
}

TEST_F(RequestClientTest, RejectsAReplyLargerThanItsRoom) {
  PeerSends(ReplyBytes(1, EINVAL, std::string(200, 'm')));
  EXPECT_EQ(Call(2000, 0, /*cap=*/64), EPROTO);
  EXPECT_STREQ(reply_.error, "reply larger than the room for it");
}

TEST_F(RequestClientTest, RejectsAMalformedReply) {
  std::vector<uint8_t> bad = ReplyBytes(1, 0);
  bad[0] ^= 0xff;
  PeerSends(bad);
  EXPECT_EQ(Call(), EPROTO);
  EXPECT_STREQ(reply_.error, "bad magic (not a via protocol message)");
}

TEST_F(RequestClientTest, PostSendsWithoutWaiting) {
  uint8_t buf[64];
  Writer w(buf, sizeof buf, kReport, client_.NextId());
  w.PutU32(kTagCount, 3);
  EXPECT_TRUE(client_.Post(w));
  EXPECT_EQ(PeerReceivedId(), 1u);
}

// ConnectUntil against a real listening socket.
class ConnectUntilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sun_.sun_family = AF_UNIX;
    // Abstract: nothing on disk, unique per process.
    std::snprintf(sun_.sun_path + 1, sizeof sun_.sun_path - 1, "via-test-connect-%d", getpid());
    len_ = socklen_t(offsetof(sockaddr_un, sun_path) + 1 + std::strlen(sun_.sun_path + 1));
  }
  void TearDown() override {
    for (int fd : fds_) close(fd);
  }
  int NewClientSocket() {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    fds_.push_back(fd);
    return fd;
  }
  static int RealConnect(int fd, const sockaddr* a, socklen_t n) { return connect(fd, a, n); }

  sockaddr_un sun_{};
  socklen_t len_ = 0;
  std::vector<int> fds_;
};

TEST_F(ConnectUntilTest, ConnectsToAListeningBroker) {
  int listener = NewClientSocket();
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&sun_), len_), 0);
  ASSERT_EQ(listen(listener, 4), 0);
  EXPECT_EQ(ConnectUntil(NewClientSocket(), sun_, len_, DeadlineInMs(1000), RealConnect), 0);
}

TEST_F(ConnectUntilTest, NobodyListeningIsConnectsErrno) {
  EXPECT_EQ(ConnectUntil(NewClientSocket(), sun_, len_, DeadlineInMs(1000), RealConnect),
            ECONNREFUSED);
}

TEST_F(ConnectUntilTest, AFullBacklogIsTriedUntilTheDeadline) {
  int listener = NewClientSocket();
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&sun_), len_), 0);
  ASSERT_EQ(listen(listener, 0), 0);
  // Fill the backlog: nobody accepts.
  for (int i = 0; i < 16; ++i) {
    if (connect(NewClientSocket(), reinterpret_cast<sockaddr*>(&sun_), len_) != 0) {
      ASSERT_EQ(errno, EAGAIN);
      break;
    }
  }
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(ConnectUntil(NewClientSocket(), sun_, len_, DeadlineInMs(150), RealConnect), ETIMEDOUT);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(140));
}

}  // namespace
}  // namespace via::wire
