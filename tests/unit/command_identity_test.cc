// tools/command_identity.cc: what the broker will see for a command line (PATH search, symbolic
// links resolved, #! scripts).
#include "tools/command_identity.h"

#include <gtest/gtest.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace via::tools {
namespace {

class CommandIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/via-cmd-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { ASSERT_EQ(system(("rm -rf '" + dir_ + "'").c_str()), 0); }
  std::string Write(const std::string& name, const std::string& text, mode_t mode) {
    std::string path = dir_ + "/" + name;
    FILE* f = fopen(path.c_str(), "w");
    fputs(text.c_str(), f);
    fclose(f);
    chmod(path.c_str(), mode);
    return path;
  }
  static std::string Real(const std::string& p) {
    char buf[PATH_MAX];
    return realpath(p.c_str(), buf) != nullptr ? buf : p;
  }
  std::string dir_;
};

TEST_F(CommandIdentityTest, PathSearchAndSymlinksResolved) {
  auto p = PredictCommand({"sh", "-c", "true"});
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->exe, Real("/bin/sh"));
  EXPECT_EQ(p->argv, (std::vector<std::string>{"sh", "-c", "true"}));
  EXPECT_TRUE(p->note.empty());
}

TEST_F(CommandIdentityTest, ScriptIsRunByItsInterpreter) {
  std::string script = Write("tool", "#!/bin/sh -e\necho hi\n", 0755);
  auto p = PredictCommand({script, "arg"});
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->exe, Real("/bin/sh"));
  EXPECT_EQ(p->argv, (std::vector<std::string>{"/bin/sh", "-e", script, "arg"}));
  EXPECT_NE(p->note.find("#! script"), std::string::npos);
}

TEST_F(CommandIdentityTest, Failures) {
  auto missing = PredictCommand({"no-such-command-via-test"});
  EXPECT_EQ(missing.status().code(), ENOENT);
  EXPECT_EQ(missing.status().message(), "command not found in PATH");
  auto not_exec = PredictCommand({Write("data", "x", 0644)});
  EXPECT_EQ(not_exec.status().code(), EACCES);
  EXPECT_EQ(PredictCommand({dir_ + "/nope"}).status().code(), ENOENT);
  EXPECT_EQ(PredictCommand({}).status().code(), ENOENT);
}

}  // namespace
}  // namespace via::tools
