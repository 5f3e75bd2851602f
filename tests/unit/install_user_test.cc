// The flags the shell completions offer come from each command's help text (FlagsFromHelp), so
// that they are not written twice; and `via --help` lists no hidden command.
#include "tools/install_user.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tools/command_table.h"

namespace via::tools {
namespace {

TEST(FlagsFromHelpTest, ReadsTheOptionsSectionOnly) {
  const std::string help =
      "Usage: via x [--not-an-option]\n"
      "\n"
      "Text that mentions --neither.\n"
      "\n"
      "Options:\n"
      "  -c, --config PATH    configuration\n"
      "      --direct         no overlay; continued\n"
      "                       --daemon mentioned in a continuation line\n"
      "  -h, --help           show this help\n"
      "\n"
      "Examples:\n"
      "  via x --example\n";
  EXPECT_EQ(FlagsFromHelp(help),
            (std::vector<std::string>{"-c", "--config", "--direct", "-h", "--help"}));
}

TEST(FlagsFromHelpTest, EveryCommandWithHelpHasFlagsAndHelp) {
  for (const Command& c : Commands()) {
    if (c.help == nullptr) continue;
    std::vector<std::string> flags = FlagsFromHelp(c.help);
    EXPECT_NE(std::find(flags.begin(), flags.end(), "--help"), flags.end()) << c.name;
  }
  EXPECT_EQ(FlagsFromHelp(FindCommand("install")->help),
            (std::vector<std::string>{"--user", "-c", "--config", "--uninstall", "-h", "--help"}));
}

TEST(CommandTableTest, MainHelpHidesTheCompletionHelper) {
  ASSERT_NE(FindCommand("__complete"), nullptr);
  EXPECT_EQ(MainHelp().find("__complete"), std::string::npos);
  EXPECT_NE(MainHelp().find("  install  "), std::string::npos);
}

}  // namespace
}  // namespace via::tools
