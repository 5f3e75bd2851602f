// The exec guard's file parsing (shim/binary_check.cc) on crafted files: `#!` lines as the
// kernel reads them, ELF program interpreters, Go's marks, the dynamic loader's command line.
#include "shim/binary_check.h"

#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace via::shim {
namespace {

struct Shebang {
  int rc;
  std::string name, arg;
};

Shebang Parse(const std::string& line) {
  char name[256] = {}, arg[256] = {};
  int rc = ParseShebang(reinterpret_cast<const unsigned char*>(line.data()), line.size(), name,
                        sizeof name, arg, sizeof arg);
  return {rc, name, arg};
}

TEST(ShebangTest, ParsesLikeBinfmtScript) {
  EXPECT_EQ(Parse("#!/bin/sh\necho").name, "/bin/sh");
  Shebang s = Parse("#!  /usr/bin/env  python3 -u \t\nrest");
  EXPECT_EQ(s.rc, 1);
  EXPECT_EQ(s.name, "/usr/bin/env");
  EXPECT_EQ(s.arg, "python3 -u");  // one argument: the rest of the line, trimmed
  // The kernel ends the name at space, tab or NUL only: a CR stays part of it.
  EXPECT_EQ(Parse("#!/bin/sh\r\n").name, "/bin/sh\r");
  EXPECT_EQ(Parse("#!/a\tb c\n").arg, "b c");
  EXPECT_EQ(Parse("#!/no/newline").rc, -1);  // name runs to the end of the buffer: ENOEXEC
  EXPECT_EQ(Parse("#!/short arg-without-newline").name, "/short");
  EXPECT_EQ(Parse("#!   \t \n").rc, -1);
  EXPECT_EQ(Parse("#!").rc, -1);
  EXPECT_EQ(Parse("!#/bin/sh\n").rc, 0);
  // Only the first 256 bytes count: a long argument is cut there, a long name is refused.
  Shebang long_arg = Parse("#!/bin/sh " + std::string(400, 'x'));
  EXPECT_EQ(long_arg.rc, 1);
  EXPECT_EQ(long_arg.arg.size(), 256u - 10u);
  EXPECT_EQ(Parse("#!/" + std::string(400, 'n') + "\n").rc, -1);
}

TEST(LoaderCommandLineTest, FindsTheProgramAfterTheOptions) {
  auto at = [](std::vector<const char*> args) {
    return LoaderProgramIndex(args.data(), int(args.size()));
  };
  EXPECT_EQ(at({"./prog", "x"}), 0);
  EXPECT_EQ(at({"--argv0", "name", "--inhibit-cache", "./prog"}), 3);
  EXPECT_EQ(at({"--library-path", "/l", "--preload", "/p.so", "--list", "./prog"}), 5);
  EXPECT_EQ(at({"--glibc-hwcaps-mask", "x", "--inhibit-rpath", "y", "-x"}), 4);
  EXPECT_EQ(at({"--audit", "/a.so", "./prog"}), -3);  // audit libraries: refused
  EXPECT_EQ(at({"--bogus", "./prog"}), -2);           // unknown to the check: refused
  EXPECT_EQ(at({"--", "./prog"}), -2);                // glibc 2.36 rejects "--" too
  EXPECT_EQ(at({"--library-path"}), -2);              // no value: "unrecognized option"
  EXPECT_EQ(at({"--version", "./prog"}), -1);         // prints and exits
  EXPECT_EQ(at({"--list"}), -1);                      // usage: nothing runs
  EXPECT_EQ(at({}), -1);
}

// A minimal ELF64 file: header, program headers, optional section headers, contents.
class ElfFile {
 public:
  explicit ElfFile(uint16_t type = ET_DYN) {
    data_.resize(4096);
    Elf64_Ehdr eh{};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = type;
    eh.e_machine = EM_X86_64;
    eh.e_phoff = sizeof eh;
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_ehsize = sizeof eh;
    std::memcpy(data_.data(), &eh, sizeof eh);
  }
  Elf64_Ehdr& eh() { return *reinterpret_cast<Elf64_Ehdr*>(data_.data()); }
  // Adds a program header whose contents are `bytes`, placed at `offset`.
  void AddSegment(uint32_t type, uint32_t flags, size_t offset, const std::string& bytes) {
    Elf64_Phdr ph{};
    ph.p_type = type;
    ph.p_flags = flags;
    ph.p_offset = offset;
    ph.p_filesz = bytes.size();
    ph.p_memsz = bytes.size();
    Put(offset, bytes);
    std::memcpy(data_.data() + sizeof(Elf64_Ehdr) + eh().e_phnum * sizeof ph, &ph, sizeof ph);
    eh().e_phnum++;
  }
  // Section headers at `offset`: a null section, the names table, then one per name.
  void AddSections(size_t offset, const std::vector<std::string>& names) {
    std::string strtab(1, '\0');
    std::vector<uint32_t> at;
    for (const auto& n : names) {
      at.push_back(uint32_t(strtab.size()));
      strtab += n + '\0';
    }
    uint32_t strtab_name = uint32_t(strtab.size());
    strtab += std::string(".shstrtab") + '\0';
    size_t strtab_off = offset - 512;
    Put(strtab_off, strtab);
    std::vector<Elf64_Shdr> sh(names.size() + 2);
    sh[1].sh_name = strtab_name;
    sh[1].sh_type = SHT_STRTAB;
    sh[1].sh_offset = strtab_off;
    sh[1].sh_size = strtab.size();
    for (size_t i = 0; i < names.size(); ++i) {
      sh[i + 2].sh_name = at[i];
      sh[i + 2].sh_type = SHT_PROGBITS;
    }
    Put(offset, std::string(reinterpret_cast<const char*>(sh.data()), sh.size() * sizeof sh[0]));
    eh().e_shoff = offset;
    eh().e_shentsize = sizeof(Elf64_Shdr);
    eh().e_shnum = uint16_t(sh.size());
    eh().e_shstrndx = 1;
  }
  void Put(size_t offset, const std::string& bytes) {
    if (data_.size() < offset + bytes.size()) data_.resize(offset + bytes.size());
    std::memcpy(data_.data() + offset, bytes.data(), bytes.size());
  }
  // Writes the file at `path`.
  void Save(const std::string& path) const {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0755);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, data_.data(), data_.size()), ssize_t(data_.size()));
    close(fd);
  }
  // Writes the file; returns an open descriptor (the file is already unlinked).
  int Open() const {
    char path[] = "/tmp/via-elf-XXXXXX";
    int fd = mkstemp(path);
    EXPECT_GE(fd, 0);
    unlink(path);
    EXPECT_EQ(write(fd, data_.data(), data_.size()), ssize_t(data_.size()));
    return fd;
  }

 private:
  std::vector<char> data_;
};

ElfKind Classify(const ElfFile& f, std::string* interp = nullptr) {
  int fd = f.Open();
  char buf[4096] = {};
  ElfKind k = ClassifyElf(fd, buf, sizeof buf);
  close(fd);
  if (interp != nullptr) *interp = buf;
  return k;
}

bool IsGo(const ElfFile& f) {
  int fd = f.Open();
  bool go = IsGoFile(fd);
  close(fd);
  return go;
}

TEST(ElfTest, TellsStaticFromDynamicByPtInterp) {
  ElfFile f;
  f.AddSegment(PT_LOAD, PF_R | PF_X, 0, "");
  EXPECT_EQ(Classify(f), ElfKind::kStatic);
  f.AddSegment(PT_INTERP, PF_R, 1024, std::string("/tmp/not-a-loader") + '\0');
  std::string interp;
  EXPECT_EQ(Classify(f, &interp), ElfKind::kDynamic);
  EXPECT_EQ(interp, "/tmp/not-a-loader");
}

TEST(ElfTest, RefusesWhatTheKernelRefuses) {
  ElfFile unterminated;
  unterminated.AddSegment(PT_INTERP, PF_R, 1024, "/lib64/ld");  // no NUL: ENOEXEC
  EXPECT_EQ(Classify(unterminated), ElfKind::kBad);
  ElfFile relocatable(ET_REL);
  EXPECT_EQ(Classify(relocatable), ElfKind::kBad);
  ElfFile far_headers;
  far_headers.eh().e_phoff = 1 << 30;  // beyond the file
  far_headers.eh().e_phnum = 1;
  EXPECT_EQ(Classify(far_headers), ElfKind::kBad);
  ElfFile script;
  script.Put(0, "#!/bin/sh\n");
  EXPECT_EQ(Classify(script), ElfKind::kNotElf);
}

TEST(ElfTest, RecognisesGoBySectionsNotesOrBuildInfo) {
  ElfFile plain;
  plain.AddSegment(PT_LOAD, PF_R | PF_W, 2048, std::string(64, 'x'));
  plain.AddSections(8192, {".text", ".data", ".go"});
  EXPECT_FALSE(IsGo(plain));
  for (const char* name : {".go.buildinfo", ".gopclntab", ".note.go.buildid", ".go.module"}) {
    ElfFile go;
    go.AddSections(8192, {".text", name, ".data"});
    EXPECT_TRUE(IsGo(go)) << name;
  }
  // Go's build-ID note in a PT_NOTE segment (namesz 4, type 4, "Go").
  std::string note("\x04\0\0\0\x04\0\0\0\x04\0\0\0Go\0\0abcd", 20);
  ElfFile noted;
  noted.AddSegment(PT_NOTE, PF_R, 1024, note);
  EXPECT_TRUE(IsGo(noted));
  // No section headers at all: the build-information magic in a writable segment.
  ElfFile sectionless;
  sectionless.AddSegment(PT_LOAD, PF_R | PF_W, 4096,
                         std::string(32, '\0') + "\xff Go buildinf:" + std::string(18, '\0'));
  EXPECT_TRUE(IsGo(sectionless));
  ElfFile misaligned;  // the magic is 16-byte aligned in real binaries
  misaligned.AddSegment(PT_LOAD, PF_R | PF_W, 4096,
                        std::string(33, '\0') + "\xff Go buildinf:" + std::string(17, '\0'));
  EXPECT_FALSE(IsGo(misaligned));
}

TEST(ElfTest, RealBinaries) {
  int fd = open("/bin/true", O_RDONLY);
  ASSERT_GE(fd, 0);
  char interp[4096];
  EXPECT_EQ(ClassifyElf(fd, interp, sizeof interp), ElfKind::kDynamic);
  EXPECT_FALSE(IsGoFile(fd));
  close(fd);
}

// The whole check on files in a temporary directory: what the kernel would run.
class UnroutedReasonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/via-check-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ElfFile stat;
    stat.AddSegment(PT_LOAD, PF_R | PF_X, 0, "");
    stat.Save(dir_ + "/static");
  }
  void TearDown() override { (void)!system(("rm -rf " + dir_).c_str()); }
  void Script(const std::string& name, const std::string& text) {
    int fd = open((dir_ + "/" + name).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0755);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, text.data(), text.size()), ssize_t(text.size()));
    close(fd);
  }
  std::string Reason(const std::string& path, std::vector<const char*> argv = {}) {
    argv.insert(argv.begin(), path.c_str());
    argv.push_back(nullptr);
    char detail[4096];
    const char* r = UnroutedReason(path.c_str(), const_cast<char* const*>(argv.data()), detail,
                                   sizeof detail);
    if (r == nullptr) return "";
    return std::string(r) + (detail[0] != 0 ? std::string(" | ") + detail : "");
  }
  std::string dir_;
};

TEST_F(UnroutedReasonTest, FollowsInterpreterChainsToTheElfFile) {
  EXPECT_EQ(Reason("/bin/true"), "");
  EXPECT_EQ(Reason(dir_ + "/static"), "it is statically linked");
  Script("s1", "#!" + dir_ + "/static -x\n");
  Script("s2", "#!" + dir_ + "/s1\n");
  Script("s3", "#! " + dir_ + "/s2\n");
  EXPECT_EQ(Reason(dir_ + "/s3"), "it is statically linked | " + dir_ + "/static");
  Script("ok", "#!/bin/sh\necho\n");
  Script("ok2", "#!" + dir_ + "/ok\n");
  EXPECT_EQ(Reason(dir_ + "/ok2"), "");
  // The kernel runs c4 (five scripts, then /bin/sh) but not c5 or c6 (ELOOP); the check agrees.
  Script("c0", "#!/bin/sh\n");
  for (int i = 1; i <= 6; ++i) {
    Script("c" + std::to_string(i), "#!" + dir_ + "/c" + std::to_string(i - 1) + "\n");
  }
  EXPECT_EQ(Reason(dir_ + "/c4"), "");
  EXPECT_EQ(Reason(dir_ + "/c5"), "it nests more interpreters than the check follows | " + dir_ +
                                      "/c0");
  EXPECT_NE(Reason(dir_ + "/c6").find("nests more interpreters"), std::string::npos);
  EXPECT_EQ(Reason(dir_ + "/missing"), "");  // the kernel says ENOENT
}

TEST_F(UnroutedReasonTest, ForeignProgramInterpreterIsRefused) {
  ElfFile odd;
  odd.AddSegment(PT_INTERP, PF_R, 1024, dir_ + "/static" + '\0');
  odd.Save(dir_ + "/odd");
  EXPECT_EQ(Reason(dir_ + "/odd"),
            "its program interpreter is not this process's dynamic loader (which loads the shim) "
            "| " + dir_ + "/static");
}

TEST_F(UnroutedReasonTest, TheLoaderAsACommandIsJudgedByItsProgram) {
  // This test program's own loader (its PT_INTERP), by whatever name.
  int fd = open("/proc/self/exe", O_RDONLY);
  ASSERT_GE(fd, 0);
  char loader[4096];
  ASSERT_EQ(ClassifyElf(fd, loader, sizeof loader), ElfKind::kDynamic);
  close(fd);
  std::string link = dir_ + "/innocent-name";
  ASSERT_EQ(symlink(loader, link.c_str()), 0);
  std::string stat = dir_ + "/static";
  EXPECT_EQ(Reason(link, {stat.c_str()}),
            "the dynamic loader would run it, and it is statically linked | " + stat);
  EXPECT_EQ(Reason(loader, {"--argv0", "x", "--inhibit-cache", stat.c_str()}),
            "the dynamic loader would run it, and it is statically linked | " + stat);
  EXPECT_EQ(Reason(loader, {"/bin/true"}), "");
  EXPECT_EQ(Reason(loader, {"--version"}), "");
  EXPECT_EQ(Reason(loader, {"true"}),
            "the dynamic loader would search for the program it runs | true");
  EXPECT_NE(Reason(loader, {"--audit", "/x.so", "/bin/true"}).find("audit"), std::string::npos);
  // Through a #! line: the script's path and argument become the loader's arguments.
  Script("via-ld", "#!" + std::string(loader) + " " + stat + "\n");
  EXPECT_EQ(Reason(dir_ + "/via-ld"),
            "the dynamic loader would run it, and it is statically linked | " + stat);
  // A copy of the loader is another file: it has no PT_INTERP, so it is a static program.
  ASSERT_EQ(system(("cp " + std::string(loader) + " " + dir_ + "/ld-copy").c_str()), 0);
  EXPECT_EQ(Reason(dir_ + "/ld-copy", {"/bin/true"}), "it is statically linked");
}

}  // namespace
}  // namespace via::shim
