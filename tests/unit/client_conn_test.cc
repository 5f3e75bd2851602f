// ClientConn (broker/client_conn.h) over a socketpair: what the broker's end of a client
// connection receives (datagrams with descriptors, oversized ones), queues and flushes, when it
// stops reading requests, and the refusal a client gets. No broker, no loop.
#include "broker/client_conn.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "common/wire.h"

namespace via::broker {
namespace {

class ClientConnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    conn_ = std::make_unique<ClientConn>(UniqueFd(sv[0]), getpid());
    peer_.reset(sv[1]);
    buf_.resize(wire::kMaxMessage + 1);
  }
  // A message of `size` bytes (header included) from the client.
  std::vector<uint8_t> Message(uint16_t type, uint32_t id, size_t size = wire::kHeaderSize) {
    std::vector<uint8_t> out(size, 0);
    wire::Writer w(out.data(), out.size(), type, id);
    if (size > wire::kHeaderSize + 4) {
      w.PutBytes(wire::kTagMessage, std::string(size - wire::kHeaderSize - 4, 'x').data(),
                 size - wire::kHeaderSize - 4);
    }
    out.resize(w.size());
    return out;
  }
  // Reads one datagram on the client's side; its type, or -1 when none waits.
  int PeerReadType(uint32_t* id = nullptr) {
    uint8_t in[wire::kMaxMessage];
    ssize_t n = recv(peer_.get(), in, sizeof in, MSG_DONTWAIT);
    if (n < ssize_t(wire::kHeaderSize)) return -1;
    if (id != nullptr) *id = wire::GetLE32(in + 8);
    return wire::GetLE16(in + 4);
  }
  // Sends replies until the socket is full and one is queued; returns how many went out.
  size_t FillSocket() {
    std::vector<uint8_t> reply = Message(wire::kStatus | wire::kReplyBit, 0, 4096);
    size_t sent = 0;
    while (!conn_->Send(reply.data(), reply.size())) ++sent;
    return sent;
  }

  std::unique_ptr<ClientConn> conn_;
  UniqueFd peer_;
  std::vector<uint8_t> buf_;
  size_t n_ = 0;
  std::vector<UniqueFd> fds_;
  std::string why_;
};

TEST_F(ClientConnTest, ReceivesADatagramWithItsDescriptors) {
  std::vector<uint8_t> m = Message(wire::kConnect, 7);
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  ASSERT_GT(wire::SendDatagram(peer_.get(), m.data(), m.size(), pipefd[0]), 0);
  close(pipefd[0]);
  close(pipefd[1]);
  EXPECT_EQ(conn_->Receive(buf_, &n_, &fds_, &why_), ClientConn::Received::kMessage);
  EXPECT_EQ(n_, m.size());
  ASSERT_EQ(fds_.size(), 1u);
  EXPECT_NE(fcntl(fds_[0].get(), F_GETFD) & FD_CLOEXEC, 0);  // received close-on-exec
  EXPECT_EQ(conn_->Receive(buf_, &n_, &fds_, &why_), ClientConn::Received::kAgain);
}

TEST_F(ClientConnTest, AnOversizedMessageIsTruncatedAndSaysSo) {
  std::vector<uint8_t> big(wire::kMaxMessage + 100, 0);
  ASSERT_GT(send(peer_.get(), big.data(), big.size(), 0), 0);
  EXPECT_EQ(conn_->Receive(buf_, &n_, &fds_, &why_), ClientConn::Received::kTruncated);
  EXPECT_EQ(why_, wire::ParseErrorText(wire::ParseError::kTooLarge));
}

TEST_F(ClientConnTest, APeerThatHungUpIsClosed) {
  peer_.reset();
  EXPECT_EQ(conn_->Receive(buf_, &n_, &fds_, &why_), ClientConn::Received::kClosed);
}

TEST_F(ClientConnTest, RepliesQueueOnceTheSocketIsFullAndFlushInOrder) {
  size_t sent = FillSocket();
  ASSERT_GT(sent, 0u);
  EXPECT_EQ(conn_->outbox().size(), 1u);
  // Once one waits, the next is queued behind it even if there is room.
  std::vector<uint8_t> last = Message(wire::kHello | wire::kReplyBit, 99);
  EXPECT_TRUE(conn_->Send(last.data(), last.size()));
  EXPECT_EQ(conn_->WantedEvents(), ClientConn::kRequestEvents | EPOLLOUT);
  int type = 0;
  uint32_t id = 0;
  while (conn_->outbox().size() > 0) {
    while (PeerReadType() >= 0) {
    }
    ASSERT_TRUE(conn_->Flush());
  }
  while ((type = PeerReadType(&id)) >= 0 && type != (wire::kHello | wire::kReplyBit)) {
  }
  EXPECT_EQ(type, wire::kHello | wire::kReplyBit);
  EXPECT_EQ(id, 99u);
  EXPECT_EQ(conn_->WantedEvents(), ClientConn::kRequestEvents);
}

TEST_F(ClientConnTest, StopsReadingRequestsWhileItsRepliesOrConnectsAreAtTheBound) {
  EXPECT_FALSE(conn_->UpdatePaused(kMaxOpsPerClient - 1));
  EXPECT_TRUE(conn_->UpdatePaused(kMaxOpsPerClient));  // just paused: counted and logged once
  EXPECT_FALSE(conn_->UpdatePaused(kMaxOpsPerClient));
  EXPECT_TRUE(conn_->paused());
  EXPECT_EQ(conn_->WantedEvents(), 0u);
  EXPECT_FALSE(conn_->UpdatePaused(0));
  EXPECT_FALSE(conn_->paused());

  FillSocket();
  std::vector<uint8_t> reply = Message(wire::kStatus | wire::kReplyBit, 0, 64);
  while (!conn_->outbox().Full()) conn_->Send(reply.data(), reply.size());
  EXPECT_TRUE(conn_->UpdatePaused(0));
  EXPECT_EQ(conn_->WantedEvents(), uint32_t(EPOLLOUT));
}

TEST_F(ClientConnTest, AFlushToAPeerThatIsGoneFails) {
  FillSocket();
  peer_.reset();
  EXPECT_FALSE(conn_->Flush());
}

TEST_F(ClientConnTest, KnowsItsPeerAndServesOnlyItsOwnUid) {
  Result<ucred> cred = PeerCredentials(conn_->fd());
  ASSERT_TRUE(cred.ok()) << cred.status().message();
  EXPECT_EQ(cred->pid, getpid());
  EXPECT_EQ(cred->uid, geteuid());
  EXPECT_TRUE(PeerUidAllowed(*cred));
  ucred other = *cred;
  other.uid = geteuid() + 1;
  EXPECT_FALSE(PeerUidAllowed(other));
}

TEST_F(ClientConnTest, ARefusalIsAnErrorReplyWithIdZeroAndDrainsTheRequest) {
  std::vector<uint8_t> hello = Message(wire::kHello, 1);
  ASSERT_GT(send(peer_.get(), hello.data(), hello.size(), 0), 0);
  SendRefusal(conn_->fd(), "at the cap");
  uint8_t in[1024];
  ssize_t n = recv(peer_.get(), in, sizeof in, MSG_DONTWAIT);
  wire::Message m;
  ASSERT_EQ(m.Parse(in, size_t(n)), wire::ParseError::kOk);
  EXPECT_EQ(m.type(), wire::kReplyBit);
  EXPECT_EQ(m.id(), 0u);
  wire::Field f;
  uint32_t err = 0;
  ASSERT_TRUE(m.Find(wire::kTagErrno, &f) && f.u32(&err));
  EXPECT_EQ(err, uint32_t(EAGAIN));
  ASSERT_TRUE(m.Find(wire::kTagMessage, &f));
  EXPECT_EQ(f.str(), "at the cap");
  EXPECT_EQ(conn_->Receive(buf_, &n_, &fds_, &why_), ClientConn::Received::kAgain);
}

}  // namespace
}  // namespace via::broker
