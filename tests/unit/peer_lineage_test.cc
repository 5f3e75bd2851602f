// Tests for broker/peer_lineage.h: which session a peer of another uid belongs to, on made-up
// process trees (a fake /proc of stat files).
#include "broker/peer_lineage.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "common/wire.h"

namespace via::broker {
namespace {

class PeerLineageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/via-lineage-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    proc_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(proc_); }

  // Process `pid`, child of `ppid`, started at `start` (clock ticks).
  void Process(pid_t pid, pid_t ppid, uint64_t start) {
    std::string dir = proc_ + "/" + std::to_string(pid);
    mkdir(dir.c_str(), 0700);
    FILE* f = std::fopen((dir + "/stat").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fprintf(f, "%d (a (odd) name) S %d 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 %llu 0 0\n",
                 int(pid), int(ppid), static_cast<unsigned long long>(start));
    std::fclose(f);
  }

  // A session opened by (root, start).
  SessionTable::Session* Session(pid_t root, uint64_t start) {
    auto s = sessions_.Open("app:tor", ++owner_, 0);
    EXPECT_TRUE(s.ok());
    SessionTable::Session* m = sessions_.FindMutable((*s)->token);
    m->root = root;
    m->root_start = start;
    return m;
  }

  LineageVerdict Check(pid_t pid) { return SessionLineage(pid, sessions_, proc_); }

  std::string proc_;
  SessionTable sessions_;
  uint64_t owner_ = 0;
};

TEST_F(PeerLineageTest, DescendantOfTheOpenerIsAdmitted) {
  Process(1, 0, 1);
  Process(100, 1, 50);    // via run
  Process(101, 100, 60);  // apt-get
  Process(102, 101, 70);  // its _apt method
  Session(100, 50);
  LineageVerdict v = Check(102);
  EXPECT_TRUE(v.admitted) << v.why;
  EXPECT_NE(v.why.find("through pid 100, its opener"), std::string::npos) << v.why;
}

TEST_F(PeerLineageTest, HeirAfterTheOpenerExitedIsAdmitted) {
  Process(1, 0, 1);
  Process(200, 1, 80);  // a daemon, re-parented to init when via run exited
  Process(201, 200, 90);
  SessionTable::Session* s = Session(100, 50);
  sessions_.Detach(s, {{200, 80}});
  LineageVerdict v = Check(201);
  EXPECT_TRUE(v.admitted) << v.why;
  EXPECT_NE(v.why.find("carry it on"), std::string::npos) << v.why;
}

TEST_F(PeerLineageTest, ProcessOutsideEverySessionIsRefused) {
  Process(1, 0, 1);
  Process(100, 1, 50);
  Process(300, 1, 55);
  Session(100, 50);
  LineageVerdict v = Check(300);
  EXPECT_FALSE(v.admitted);
  EXPECT_EQ(v.why, "it descends from no session of this broker");
}

TEST_F(PeerLineageTest, OpenerPidWithAnotherStartTimeIsNotTheOpener) {
  // pid 100 exited and was reused: same pid, later start.
  Process(1, 0, 1);
  Process(100, 1, 500);
  Process(101, 100, 600);
  Session(100, 50);
  EXPECT_FALSE(Check(101).admitted);
}

TEST_F(PeerLineageTest, ParentThatStartedAfterItsChildCutsTheChain) {
  // The child's parent exited and its pid was reused by a process of the session while the
  // broker read: a parent never starts after its child.
  Process(1, 0, 1);
  Process(100, 1, 50);    // via run
  Process(150, 100, 90);  // the reused pid: a process of the session, started late
  Process(400, 150, 70);  // the outsider, whose real parent had pid 150
  Session(100, 50);
  LineageVerdict v = Check(400);
  EXPECT_FALSE(v.admitted);
  EXPECT_NE(v.why.find("started after it"), std::string::npos) << v.why;
}

TEST_F(PeerLineageTest, GoneProcessIsRefused) {
  Session(100, 50);
  LineageVerdict v = Check(999);
  EXPECT_FALSE(v.admitted);
  EXPECT_EQ(v.why, "the process is gone");
}

TEST_F(PeerLineageTest, ForeignPeersMaySendOnlyWhatAShimSends) {
  for (uint16_t t : std::initializer_list<uint16_t>{
           wire::kHello, wire::kConnect, wire::kResolve, wire::kReverse, wire::kDnsQuery,
           wire::kDnsSocket, wire::kListen, wire::kReport}) {
    EXPECT_TRUE(ForeignPeerMay(t)) << t;
  }
  for (uint16_t t : std::initializer_list<uint16_t>{
           wire::kOpenSession, wire::kStatus, wire::kShutdown, wire::kReload, wire::kSessionChild,
           wire::kSessionDetach, uint16_t(0x7777)}) {
    EXPECT_FALSE(ForeignPeerMay(t)) << t;
  }
}

}  // namespace
}  // namespace via::broker
