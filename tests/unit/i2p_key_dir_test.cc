// Where an I2P entry's listener keys live: one directory per entry, below <state_dir>/i2p/,
// whatever its name contains.
#include <gtest/gtest.h>

#include <string>

#include "overlays/i2p/i2p_overlay.h"

namespace via::overlays {
namespace {

config::Overlay Entry(const std::string& ns, const std::string& name) {
  config::Overlay o;
  o.ns = ns;
  o.name = name;
  o.id = ns + ":" + name;
  return o;
}

TEST(I2pKeyDir, PlainNamesKeepTheirDirectory) {
  EXPECT_EQ(I2pKeyDirName(Entry("app", "i2p")), "app.i2p");
  EXPECT_EQ(I2pKeyDirName(Entry("my-app", "eep_site2")), "my-app.eep_site2");
}

TEST(I2pKeyDir, NamesThatWouldLeaveTheDirectoryAreEscaped) {
  const std::string dir = I2pKeyDirName(Entry("app", "../../etc"));
  EXPECT_EQ(dir.find('/'), std::string::npos) << dir;
  EXPECT_NE(dir, "..");
  EXPECT_NE(dir, ".");
  EXPECT_NE(dir.substr(0, 1), ".");
}

TEST(I2pKeyDir, DottedNamesNeverShareADirectory) {
  EXPECT_NE(I2pKeyDirName(Entry("a.b", "c")), I2pKeyDirName(Entry("a", "b.c")));
  // Nor does an escaped name meet a plain one.
  EXPECT_NE(I2pKeyDirName(Entry("a", "b.c")), I2pKeyDirName(Entry("a", "b")));
}

}  // namespace
}  // namespace via::overlays
