// Tests for broker/selector.h (precedence, groups, policy, tokens, lineage) and
// broker/process_info.h (/proc/PID/stat parsing), on made-up process trees.
#include "broker/selector.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include "broker/process_info.h"

namespace via::broker {
namespace {

class SelectorTest : public ::testing::Test {
 protected:
  SelectorTest() {
    for (const char* id : {"app:tor", "app:other"}) {
      config::Overlay o;
      o.id = id;
      o.ns = "app";
      o.name = std::string(id).substr(4);
      cfg_.overlays.push_back(o);
    }
    Rule("app:git", "git", "app:tor", {});
    Rule("app:apt", "apt", "direct", {});
    Rule("app:untrusted", "/home/me/untrusted/*", "", {"untrusted"});
    config::SecurityPolicy p;
    p.id = "app:deny_network";
    p.file = "via.yaml";
    p.line = 30;
    p.actions = {"network.select"};
    p.resources = {"*"};
    p.effect = config::PolicyEffect::kDeny;
    p.groups = {"untrusted"};
    cfg_.policies.push_back(p);
  }

  void Rule(const std::string& id, const std::string& exe, const std::string& network,
            std::vector<std::string> groups) {
    config::ProgramRule r;
    r.id = id;
    r.file = "via.yaml";
    r.line = 10 + int(cfg_.programs.size());
    r.exe = exe;
    r.network = network;
    r.groups = std::move(groups);
    cfg_.programs.push_back(r);
  }

  // A process: pid, start time 1000+pid, parent, executable.
  static ProcessInfo P(pid_t pid, pid_t ppid, const std::string& exe) {
    ProcessInfo p;
    p.pid = pid;
    p.ppid = ppid;
    p.start = 1000 + uint64_t(pid);
    p.exe = exe;
    p.argv = {exe};
    p.ok = true;
    return p;
  }

  // A session opened by pid `root` (explicitly or not) whose command is pid `child`.
  SessionInfo& Session(const std::string& token, const std::string& network, pid_t root,
                       pid_t child, bool explicit_sel) {
    SessionInfo s;
    s.token = token;
    s.network = network;
    s.explicit_sel = explicit_sel;
    s.root = root;
    s.root_start = 1000 + uint64_t(root);
    s.child = child;
    s.child_start = child != 0 ? 1000 + uint64_t(child) : 0;
    sessions_.push_back(s);
    return sessions_.back();
  }

  Selection Run(std::vector<ProcessInfo> chain, const char* claim = nullptr,
                const std::string& token = "") {
    SelectRequest req;
    req.chain = std::move(chain);
    req.has_claim = claim != nullptr;
    if (claim != nullptr) req.claim = claim;
    req.token = token;
    req.session_rooted_at = [this](const ProcessInfo& p) -> const SessionInfo* {
      for (const SessionInfo& s : sessions_) {
        if (s.IsRoot(p) || s.IsHeir(p)) return &s;
      }
      return nullptr;
    };
    req.session_by_token = [this](std::string_view t) -> const SessionInfo* {
      for (const SessionInfo& s : sessions_) {
        if (s.token == t) return &s;
      }
      return nullptr;
    };
    req.recorded_groups = [this](const ProcessInfo& p) -> const RecordedGroups* {
      auto it = recorded_.find({p.pid, p.start});
      return it == recorded_.end() ? nullptr : &it->second;
    };
    Selection sel = Select(cfg_, req);
    // As the broker does: what each process has now is kept for its life.
    if (record_) {
      for (size_t i = 0; i < req.chain.size() && i < sel.chain_groups.size(); ++i) {
        if (!sel.chain_groups[i].groups.empty()) {
          recorded_[{req.chain[i].pid, req.chain[i].start}].Merge(sel.chain_groups[i]);
        }
      }
    }
    return sel;
  }

  config::Config cfg_;
  std::vector<SessionInfo> sessions_;
  std::map<std::pair<pid_t, uint64_t>, RecordedGroups> recorded_;
  bool record_ = true;  // false: as the broker before groups were recorded
  const ProcessInfo shell_ = P(10, 1, "/bin/bash");
  const ProcessInfo via_ = P(20, 10, "/usr/bin/via");
};

TEST_F(SelectorTest, NothingSelectedIsDirect) {
  Selection s = Run({P(30, 10, "/usr/bin/curl"), shell_});
  EXPECT_TRUE(s.error.ok());
  EXPECT_EQ(s.network, "direct");
  EXPECT_EQ(s.origin, "nothing selected a network");
}

TEST_F(SelectorTest, DefaultNetworkBeatsDirect) {
  cfg_.service.default_network = "app:other";
  EXPECT_EQ(Run({P(30, 10, "/usr/bin/curl"), shell_}).network, "app:other");
}

TEST_F(SelectorTest, InheritedSessionBeatsDefault) {
  cfg_.service.default_network = "app:other";
  Session("t1", "app:tor", 20, 30, true);
  Selection s =
      Run({P(40, 30, "/usr/bin/curl"), P(30, 20, "/bin/sh"), via_, shell_}, "app:tor", "t1");
  EXPECT_EQ(s.network, "app:tor");
  EXPECT_FALSE(s.explicit_sel);
}

TEST_F(SelectorTest, ProgramRuleBeatsInheritedSession) {
  Session("t1", "app:tor", 20, 30, true);
  Selection s = Run({P(40, 30, "/usr/bin/apt"), P(30, 20, "/bin/sh"), via_, shell_}, "app:tor");
  EXPECT_EQ(s.network, "direct");
  EXPECT_EQ(s.origin, "program rule app:apt (via.yaml:11) matches pid 40 /usr/bin/apt");
}

TEST_F(SelectorTest, OwnExplicitSelectionBeatsProgramRule) {
  Session("t1", "app:tor", 20, 30, true);
  Selection s = Run({P(40, 30, "/usr/bin/apt"), P(30, 20, "/bin/sh"), via_, shell_}, "app:other");
  EXPECT_TRUE(s.error.ok());
  EXPECT_EQ(s.network, "app:other");
  EXPECT_TRUE(s.explicit_sel);
}

TEST_F(SelectorTest, ExplicitViaRunBeatsTheCommandsRule) {
  Session("t1", "direct", 20, 30, true);
  Selection s = Run({P(30, 20, "/usr/bin/git"), via_, shell_}, "direct", "t1");
  EXPECT_EQ(s.network, "direct");
  EXPECT_TRUE(s.explicit_sel);
  // ...and what the command's children inherit.
  Selection child =
      Run({P(40, 30, "/usr/lib/git-core/git-remote-http"), P(30, 20, "/usr/bin/git"), via_, shell_},
          "direct", "t1");
  EXPECT_EQ(child.network, "direct");
  EXPECT_FALSE(child.explicit_sel);
}

TEST_F(SelectorTest, ARulesNetworkIsInheritedByChildren) {
  Selection s =
      Run({P(40, 30, "/usr/lib/git-core/git-remote-http"), P(30, 10, "/usr/bin/git"), shell_});
  EXPECT_EQ(s.network, "app:tor");
  EXPECT_EQ(s.origin,
            "inherited from pid 30 /usr/bin/git, which rule app:git (via.yaml:10) "
            "sends to app:tor");
}

TEST_F(SelectorTest, GroupsComeFromAncestorsToo) {
  Selection s = Run({P(40, 30, "/usr/bin/curl"), P(30, 10, "/home/me/untrusted/tool"), shell_});
  EXPECT_EQ(s.groups, std::vector<std::string>{"untrusted"});
  ASSERT_EQ(s.group_reasons.size(), 1u);
  EXPECT_EQ(s.group_reasons[0],
            "untrusted: rule app:untrusted (via.yaml:12) matches pid 30 /home/me/untrusted/tool");
}

TEST_F(SelectorTest, DeniedExplicitSelectionNamesThePolicy) {
  Session("t1", "app:tor", 20, 30, true);
  Selection s =
      Run({P(40, 30, "/usr/bin/curl"), P(30, 20, "/home/me/untrusted/tool"), via_, shell_},
          "direct", "t1");
  EXPECT_EQ(s.error.code(), EACCES);
  EXPECT_EQ(s.error.message(),
            "network.select of direct is denied by security.policy app:deny_network (via.yaml:30) "
            "for group untrusted (untrusted: rule app:untrusted (via.yaml:12) matches pid 30 "
            "/home/me/untrusted/tool)");
}

TEST_F(SelectorTest, InheritedSelectionIsNotRechecked) {
  Session("t1", "app:tor", 20, 30, true);
  Selection s =
      Run({P(40, 30, "/usr/bin/curl"), P(30, 20, "/home/me/untrusted/tool"), via_, shell_},
          "app:tor", "t1");
  EXPECT_TRUE(s.error.ok());
  EXPECT_EQ(s.network, "app:tor");
}

TEST_F(SelectorTest, ClaimEqualToWhatItGetsAnywayIsNotChecked) {
  cfg_.service.default_network = "app:tor";
  Selection s = Run({P(40, 30, "/usr/bin/curl"), P(30, 10, "/home/me/untrusted/tool"), shell_},
                    "tor");  // a bare name is completed
  EXPECT_TRUE(s.error.ok());
  EXPECT_FALSE(s.explicit_sel);
}

TEST_F(SelectorTest, UnknownOverlayClaim) {
  Selection s = Run({P(30, 10, "/usr/bin/curl"), shell_}, "app:nope");
  EXPECT_EQ(s.error.code(), ENOENT);
  EXPECT_EQ(s.error.message(), "unknown overlay \"app:nope\" (known: app:tor, app:other)");
}

TEST_F(SelectorTest, TokenOfAnotherTreeIsForged) {
  Session("t1", "direct", 20, 30, true);
  Selection s = Run({P(50, 10, "/usr/bin/curl"), shell_}, "direct", "t1");
  EXPECT_EQ(s.error.code(), EACCES);
  EXPECT_EQ(s.error.message(),
            "VIA_SESSION t1... belongs to the process tree of pid 20, and pid 50 /usr/bin/curl is "
            "not a descendant of it: a forged or stolen session token");
}

TEST_F(SelectorTest, TokenWithAReusedRootPidIsForged) {
  Session("t1", "direct", 20, 30, true);
  ProcessInfo impostor = P(20, 10, "/usr/bin/via");
  impostor.start = 5;  // same pid, another process
  EXPECT_EQ(Run({P(50, 20, "/usr/bin/curl"), impostor, shell_}, nullptr, "t1").error.code(),
            EACCES);
}

TEST_F(SelectorTest, UnknownTokenIsRefused) {
  Selection s = Run({P(50, 10, "/usr/bin/curl"), shell_}, nullptr, "ffff");
  EXPECT_EQ(s.error.code(), EACCES);
}

TEST_F(SelectorTest, SessionIsFoundWithoutAToken) {
  Session("t1", "app:tor", 20, 30, true);
  Selection s = Run({P(40, 30, "/usr/bin/curl"), P(30, 20, "/bin/sh"), via_, shell_});
  EXPECT_EQ(s.network, "app:tor");
}

TEST_F(SelectorTest, AdoptedProcessMayNotSelectExplicitly) {
  Session("t1", "app:tor", 20, 30, true);
  // pid 45's parent (an untrusted program) exited; it was re-parented to via run (20).
  std::vector<ProcessInfo> chain{P(46, 45, "/usr/bin/curl"), P(45, 20, "/bin/sh"), via_, shell_};
  Selection s = Run(chain, "direct");
  EXPECT_EQ(s.error.code(), EACCES);
  EXPECT_NE(s.error.message().find("pid 45 /bin/sh was re-parented to pid 20 /usr/bin/via"),
            std::string::npos)
      << s.error.message();
  EXPECT_EQ(Run(chain).network, "app:tor");  // it still gets the session
}

TEST_F(SelectorTest, CommandAboutToStartIsSelectedForByItsParent) {
  // OPEN_SESSION: `via run --direct -- untrusted` from a trusted shell is the shell's choice.
  ProcessInfo cmd;
  cmd.exe = "/home/me/untrusted/tool";
  cmd.ok = true;
  SelectRequest req;
  req.chain = {cmd, via_, shell_};
  req.has_claim = true;
  req.claim = "direct";
  req.force_explicit = true;
  req.selected_by_parent = true;
  Selection s = Select(cfg_, req);
  EXPECT_TRUE(s.error.ok()) << s.error.message();
  EXPECT_EQ(s.groups, std::vector<std::string>{"untrusted"});
  // From inside an untrusted program it is denied.
  req.chain = {P(0, 0, "/usr/bin/curl"), via_, P(10, 1, "/home/me/untrusted/tool")};
  EXPECT_EQ(Select(cfg_, req).error.code(), EACCES);
}

TEST_F(SelectorTest, LaunchedCommandThatChangedItsOwnNetworkIsExplicit) {
  Session("t1", "app:tor", 20, 30, true);
  Selection s = Run({P(30, 20, "/home/me/untrusted/tool"), via_, shell_}, "direct", "t1");
  EXPECT_EQ(s.error.code(), EACCES);
}

TEST_F(SelectorTest, HeirsCarryTheSessionAndItsGroups) {
  SessionInfo& s = Session("t1", "app:tor", 20, 30, true);
  s.groups = {"untrusted"};
  s.heirs = {{45, 1045}, {30, 1030}};
  // via run (20) has exited; 45 (not its command) and 30 (its command) were re-parented to init.
  Selection heir =
      Run({P(46, 45, "/usr/bin/curl"), P(45, 1, "/bin/sh"), P(1, 0, "/sbin/init")}, nullptr, "t1");
  EXPECT_TRUE(heir.error.ok()) << heir.error.message();
  EXPECT_EQ(heir.network, "app:tor");
  EXPECT_EQ(heir.groups, std::vector<std::string>{"untrusted"});
  Selection esc =
      Run({P(46, 45, "/usr/bin/curl"), P(45, 1, "/bin/sh"), P(1, 0, "/sbin/init")}, "direct");
  EXPECT_EQ(esc.error.code(), EACCES);
  // The command itself keeps its lineage, but its groups (from the session) still apply.
  Selection cmd =
      Run({P(31, 30, "/usr/bin/curl"), P(30, 1, "/bin/sh"), P(1, 0, "/sbin/init")}, "direct");
  EXPECT_EQ(cmd.error.code(), EACCES);
  EXPECT_NE(cmd.error.message().find("app:deny_network"), std::string::npos);
}

// ---- groups are kept for the life of a process --------------------------------------------

// An untrusted program (matched by its executable) asks the broker once, execs /bin/sh in place
// (same pid and start time), and that shell's child selects direct.
TEST_F(SelectorTest, ExecInPlaceDoesNotShedTheGroup) {
  Session("t1", "app:tor", 20, 30, true);  // via run --network app:tor -- untrusted/tool
  ASSERT_TRUE(Run({P(30, 20, "/home/me/untrusted/tool"), via_, shell_}).error.ok());
  Selection esc = Run({P(40, 30, "/usr/bin/curl"), P(30, 20, "/bin/sh"), via_, shell_}, "direct");
  EXPECT_EQ(esc.error.code(), EACCES);
  EXPECT_EQ(esc.error.message(),
            "network.select of direct is denied by security.policy app:deny_network (via.yaml:30) "
            "for group untrusted (untrusted: recorded for pid 30 /bin/sh since it started: rule "
            "app:untrusted (via.yaml:12) matches pid 30 /home/me/untrusted/tool)");
  EXPECT_EQ(esc.groups, std::vector<std::string>{"untrusted"});
}

TEST_F(SelectorTest, WithoutTheRecordTheExecShedsTheGroup) {
  // What the test above guards against: the chain as /proc shows it after the exec.
  record_ = false;
  Session("t1", "app:tor", 20, 30, true);
  ASSERT_TRUE(Run({P(30, 20, "/home/me/untrusted/tool"), via_, shell_}).error.ok());
  EXPECT_TRUE(
      Run({P(40, 30, "/usr/bin/curl"), P(30, 20, "/bin/sh"), via_, shell_}, "direct").error.ok());
}

TEST_F(SelectorTest, RewrittenArgvDoesNotShedTheGroup) {
  Rule("app:py_untrusted", "/usr/bin/python3", "", {"untrusted"});
  cfg_.programs.back().argv = {"*", "*/untrusted/*"};
  ProcessInfo py = P(30, 10, "/usr/bin/python3");
  py.argv = {"python3", "/home/me/untrusted/x.py"};
  ASSERT_EQ(Run({py, shell_}).groups, std::vector<std::string>{"untrusted"});
  py.argv = {"innocent"};  // written over its own argv (/proc/30/cmdline changes)
  Selection esc = Run({P(40, 30, "/usr/bin/curl"), py, shell_}, "app:other");
  EXPECT_EQ(esc.error.code(), EACCES);
  EXPECT_NE(esc.error.message().find("rule app:py_untrusted"), std::string::npos)
      << esc.error.message();
}

TEST_F(SelectorTest, RecordedGroupsOutliveTheAncestorThatGaveThem) {
  // 40 asked the broker while its untrusted parent lived; then the parent exited and 40 was
  // re-parented to init. Its children still have the group.
  ASSERT_TRUE(Run({P(40, 30, "/bin/sh"), P(30, 10, "/home/me/untrusted/tool"), shell_}).error.ok());
  Selection esc =
      Run({P(50, 40, "/usr/bin/curl"), P(40, 1, "/bin/sh"), P(1, 0, "/sbin/init")}, "app:tor");
  EXPECT_EQ(esc.error.code(), EACCES);
  EXPECT_NE(esc.error.message().find("matches pid 30 /home/me/untrusted/tool"), std::string::npos)
      << esc.error.message();
}

TEST_F(SelectorTest, ARecordBelongsToOneProcessNotToItsPidOrItsParent) {
  ASSERT_TRUE(Run({P(30, 10, "/home/me/untrusted/tool"), shell_}).error.ok());
  // The shell that started it keeps its own choice.
  EXPECT_TRUE(Run({shell_}, "app:tor").error.ok());
  // Another process that got pid 30 later (another start time) is not in the group.
  ProcessInfo reused = P(30, 10, "/bin/sh");
  reused.start = 99999;
  EXPECT_TRUE(Run({P(41, 30, "/usr/bin/curl"), reused, shell_}, "app:tor").error.ok());
  // The same process is.
  EXPECT_EQ(Run({P(41, 30, "/usr/bin/curl"), P(30, 10, "/bin/sh"), shell_}, "app:tor").error.code(),
            EACCES);
}

// ---- /proc ----------------------------------------------------------------------------------

TEST(ProcessInfoTest, ParseStatWithAnAwkwardComm) {
  pid_t ppid = 0;
  uint64_t start = 0;
  std::string stat = "123 (a) b (c) S 77 123 123 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 2";
  ASSERT_TRUE(ParseStat(stat, &ppid, &start));
  EXPECT_EQ(ppid, 77);
  EXPECT_EQ(start, 98765u);
  EXPECT_FALSE(ParseStat("123 (x) S", &ppid, &start));
  EXPECT_FALSE(ParseStat("garbage", &ppid, &start));
}

TEST(ProcessInfoTest, ReadsThisProcessAndItsAncestry) {
  ProcessInfo self = ReadProcess(getpid());
  ASSERT_TRUE(self.ok);
  EXPECT_EQ(self.ppid, getppid());
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf);
  ASSERT_GT(n, 0);
  EXPECT_EQ(self.exe, std::string(buf, size_t(n)));
  auto chain = Ancestry(getpid());
  ASSERT_GE(chain.size(), 2u);
  EXPECT_EQ(chain[1].pid, getppid());
  EXPECT_FALSE(ReadProcess(-5).ok);
}

}  // namespace
}  // namespace via::broker
