// `via install --user`: the user's login session preloads the shim with the user's config, so
// that via.program rules apply to programs started from menus, login shells and user services;
// `--uninstall` takes every change back. And the hidden `via __complete` for the completions.
//
// What it changes (docs/install.md says the same for users):
//   $XDG_CONFIG_HOME/environment.d/60-via.conf       (a file of its own; systemd's user manager)
//   a marked block in ~/.profile (and in ~/.bash_profile or ~/.bash_login, ~/.zprofile when
//   they exist, since a login bash or zsh then does not read ~/.profile)
//   $XDG_CONFIG_HOME/systemd/user/via-broker.service and its default.target.wants link
// Directories it had to create, files it created and newlines it had to add before a block are
// recorded in 60-via.conf's comments, so that --uninstall leaves the home directory as it was.
#include "tools/install_user.h"

#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/paths.h"
#include "common/unique_fd.h"
#include "config/config.h"
#include "tools/cli.h"
#include "tools/command_table.h"

extern char** environ;

namespace via::tools {

namespace {

constexpr const char* kBlockBegin = "# >>> via install --user >>>";
constexpr const char* kBlockEnd = "# <<< via install --user <<<";
// The first line of every file `via install --user` owns: only such a file is replaced or removed.
constexpr const char* kOwnedLine = "# Written by `via install --user`";
constexpr const char* kManifestPrefix = "# via-install: ";
constexpr const char* kUnitName = "via-broker.service";

// ---- files ------------------------------------------------------------------------------------

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

// The whole file; a missing file is an error with code ENOENT.
Result<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno("cannot read " + path);
  std::string text;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("cannot read " + path);
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

// Replaces `path` with `text` through a temporary file and rename(), so that a crash never
// leaves half a ~/.profile. A symbolic link (a dotfile manager's) is followed: its target is
// edited and the link stays.
Status WriteFile(const std::string& path, const std::string& text, mode_t mode) {
  std::string target = path;
  char real[PATH_MAX];
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    if (::realpath(path.c_str(), real) == nullptr) {
      return Status::FromErrno("cannot follow the link " + path);
    }
    target = real;
  }
  if (::stat(target.c_str(), &st) == 0) mode = st.st_mode & 07777;
  std::string tmp = target + ".via-install-tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd.valid()) return Status::FromErrno("cannot write " + tmp);
  // open() applied the umask; the file keeps the mode it had.
  if (::fchmod(fd.get(), mode) != 0) return Status::FromErrno("cannot chmod " + tmp);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::unlink(tmp.c_str());
      return Status::FromErrno("cannot write " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0 || ::rename(tmp.c_str(), target.c_str()) != 0) {
    Status s = Status::FromErrno("cannot replace " + target);
    ::unlink(tmp.c_str());
    return s;
  }
  return Status::Ok();
}

// Creates `dir` and its missing parents (mode 0700, as XDG asks for configuration directories),
// appending each one it created to `created`, outermost first.
Status MakeDirs(const std::string& dir, std::vector<std::string>* created) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i != dir.size() && dir[i] != '/') continue;
    std::string prefix = dir.substr(0, i);
    if (Exists(prefix)) continue;
    if (::mkdir(prefix.c_str(), 0700) != 0) return Status::FromErrno("cannot create " + prefix);
    created->push_back(prefix);
  }
  return Status::Ok();
}

bool Owned(const std::string& path) {
  auto text = ReadFile(path);
  return text.ok() && text->rfind(kOwnedLine, 0) == 0;
}

// ---- the record of what was created, kept in 60-via.conf's comments
// ------------------------------

struct Manifest {
  std::vector<std::string> created_dirs;   // outermost first
  std::vector<std::string> created_files;  // profiles that did not exist
  std::vector<std::string> newline_added;  // profiles that did not end with a newline

  static void AddOnce(std::vector<std::string>* list, const std::string& item) {
    if (std::find(list->begin(), list->end(), item) == list->end()) list->push_back(item);
  }
  static bool Has(const std::vector<std::string>& list, const std::string& item) {
    return std::find(list.begin(), list.end(), item) != list.end();
  }

  void Parse(const std::string& text) {
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      std::string line = text.substr(pos, nl - pos);
      pos = nl + 1;
      if (line.rfind(kManifestPrefix, 0) != 0) continue;
      line.erase(0, std::strlen(kManifestPrefix));
      size_t sp = line.find(' ');
      if (sp == std::string::npos) continue;
      std::string what = line.substr(0, sp), path = line.substr(sp + 1);
      if (what == "created-dir") AddOnce(&created_dirs, path);
      if (what == "created-file") AddOnce(&created_files, path);
      if (what == "newline-added") AddOnce(&newline_added, path);
    }
  }

  std::string Text() const {
    std::string out;
    for (const auto& d : created_dirs)
      out += std::string(kManifestPrefix) + "created-dir " + d + "\n";
    for (const auto& f : created_files) {
      out += std::string(kManifestPrefix) + "created-file " + f + "\n";
    }
    for (const auto& f : newline_added) {
      out += std::string(kManifestPrefix) + "newline-added " + f + "\n";
    }
    return out;
  }
};

// ---- the marked block in a shell profile -----------------------------------------------------

// Where the block starts and ends (end: past its last newline), or npos.
void FindBlock(const std::string& text, size_t* begin, size_t* end) {
  *begin = *end = std::string::npos;
  size_t b = 0;
  for (;;) {
    b = text.find(kBlockBegin, b);
    if (b == std::string::npos) return;
    if (b == 0 || text[b - 1] == '\n') break;
    ++b;
  }
  size_t e = text.find(kBlockEnd, b);
  if (e == std::string::npos) return;
  e += std::strlen(kBlockEnd);
  if (e < text.size() && text[e] == '\n') ++e;
  *begin = b;
  *end = e;
}

// `text` with `block` in place of its marked block, or appended. Sets *newline_added when the
// text did not end with a newline and one had to go before the block.
std::string PutBlock(const std::string& text, const std::string& block, bool* newline_added) {
  size_t b, e;
  FindBlock(text, &b, &e);
  if (b != std::string::npos) return text.substr(0, b) + block + text.substr(e);
  *newline_added = !text.empty() && text.back() != '\n';
  return text + (*newline_added ? "\n" : "") + block;
}

// `text` without its marked block, and without the newline that was added before it when the
// block is still last (text added after the block since then needs that line break).
std::string RemoveBlock(const std::string& text, bool newline_added, bool* found) {
  size_t b, e;
  FindBlock(text, &b, &e);
  *found = b != std::string::npos;
  if (!*found) return text;
  if (newline_added && e == text.size() && b > 0 && text[b - 1] == '\n') --b;
  return text.substr(0, b) + text.substr(e);
}

// ---- what is written ---------------------------------------------------------------------------

// Characters that need no quoting in environment.d, a shell's single quotes and a unit's
// ExecStart (no '%', '$', quotes, backslashes or white space).
bool PlainPath(const std::string& p) {
  for (unsigned char c : p) {
    if (!(std::isalnum(c) || std::strchr("/._-+,@:=~", c) != nullptr)) return false;
  }
  return !p.empty() && p[0] == '/';
}

std::string EnvironmentDText(const std::string& shim, const std::string& config,
                             const Manifest& m) {
  return std::string(kOwnedLine) +
         " (docs/install.md): systemd's user manager, and the\n"
         "# services and graphical session it starts, preload via's shim with this "
         "configuration,\n"
         "# so that its via.program rules apply. `via install --user --uninstall` removes this "
         "file\n"
         "# and every other change recorded here.\n" +
         m.Text() + "LD_PRELOAD=" + shim + "${LD_PRELOAD:+:$LD_PRELOAD}\nVIA_CONFIG=" + config +
         "\n";
}

std::string ProfileBlock(const std::string& shim, const std::string& config) {
  return std::string(kBlockBegin) +
         "\n"
         "# Login shells preload via's shim with this configuration, so that its via.program "
         "rules\n"
         "# apply (docs/install.md). `via install --user --uninstall` removes this block.\n"
         "if [ -r '" +
         shim +
         "' ]; then\n"
         "  case \":${LD_PRELOAD-}:\" in\n"
         "    *:" +
         shim +
         ":*) ;;\n"
         "    *) LD_PRELOAD=\"" +
         shim +
         "${LD_PRELOAD:+:$LD_PRELOAD}\" ;;\n"
         "  esac\n"
         "  VIA_CONFIG='" +
         config +
         "'\n"
         "  export LD_PRELOAD VIA_CONFIG\n"
         "fi\n" +
         kBlockEnd + "\n";
}

std::string UnitText(const std::string& via, const std::string& config) {
  return std::string(kOwnedLine) +
         " (docs/install.md); `via install --user --uninstall` removes it.\n"
         "[Unit]\n"
         "Description=via broker: routes programs through overlay networks\n"
         "Documentation=man:via(1) man:via.yaml(5)\n"
         "\n"
         "[Service]\n"
         "ExecStart=" +
         via + " broker -c " + config +
         "\n"
         "ExecReload=/bin/kill -HUP $MAINPID\n"
         "# The broker never routes its own sockets; keep the session's preload away from it.\n"
         "UnsetEnvironment=LD_PRELOAD\n"
         "Restart=on-failure\n"
         "RestartSec=5\n"
         "\n"
         "[Install]\n"
         "WantedBy=default.target\n";
}

// ---- where -------------------------------------------------------------------------------------

struct Places {
  std::string home;
  std::string config_home;  // $XDG_CONFIG_HOME or ~/.config
  std::string envd_dir, envd_file, unit_dir, unit_file, wants_dir, wants_link;
  // Profiles that get the block: ~/.profile, and those a login bash or zsh reads instead.
  std::vector<std::string> ProfilesToEdit() const {
    std::vector<std::string> out = {home + "/.profile"};
    // bash reads the first of these that exists, and then not ~/.profile.
    for (const char* f : {"/.bash_profile", "/.bash_login"}) {
      if (Exists(home + f)) {
        out.push_back(home + f);
        break;
      }
    }
    if (Exists(home + "/.zprofile")) out.push_back(home + "/.zprofile");
    return out;
  }
  std::vector<std::string> AllProfiles() const {
    return {home + "/.profile", home + "/.bash_profile", home + "/.bash_login",
            home + "/.zprofile"};
  }
};

Result<Places> FindPlaces() {
  Places p;
  const char* home = std::getenv("HOME");
  if (home != nullptr && home[0] == '/') {
    p.home = home;
  } else if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir[0] == '/') {
    p.home = pw->pw_dir;
  } else {
    return Status::Invalid("HOME is not set to an absolute path");
  }
  while (p.home.size() > 1 && p.home.back() == '/') p.home.pop_back();
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  p.config_home = (xdg != nullptr && xdg[0] == '/') ? xdg : p.home + "/.config";
  p.envd_dir = p.config_home + "/environment.d";
  p.envd_file = p.envd_dir + "/60-via.conf";
  p.unit_dir = p.config_home + "/systemd/user";
  p.unit_file = p.unit_dir + "/" + kUnitName;
  p.wants_dir = p.unit_dir + "/default.target.wants";
  p.wants_link = p.wants_dir + "/" + kUnitName;
  return p;
}

// Whether this user's systemd manager is running (then it is told about the unit).
bool UserManagerRunning() {
  const char* rt = std::getenv("XDG_RUNTIME_DIR");
  return rt != nullptr && rt[0] == '/' && Exists(std::string(rt) + "/systemd/private");
}

// Runs `systemctl --user ARGS...`; its failure is reported, never fatal (the files are what
// counts; the manager picks them up at the next login).
void Systemctl(std::vector<std::string> args) {
  args.insert(args.begin(), {"systemctl", "--user"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  int rc = ::posix_spawnp(&pid, "systemctl", nullptr, nullptr, argv.data(), environ);
  int status = 0;
  if (rc == 0) {
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  std::string cmd;
  for (size_t i = 0; i < args.size(); ++i) cmd += (i ? " " : "") + args[i];
  if (rc != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::printf("note: `%s` failed; the change applies at your next login\n", cmd.c_str());
  } else {
    std::printf("ran %s\n", cmd.c_str());
  }
}

// The symlink systemctl enable would make, pointing at our unit?
bool LinkIsOurs(const Places& p) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink(p.wants_link.c_str(), buf, sizeof buf - 1);
  if (n < 0) return false;
  buf[n] = 0;
  return std::string(buf) == p.unit_file || std::string(buf) == std::string("../") + kUnitName;
}

int Fail(const Status& s) {
  Error(s.message());
  return kExitFailure;
}

// ---- install / uninstall -----------------------------------------------------------------------

// Whether `via install --user` may write what it writes: the paths go into files unquoted, and
// nothing it writes may clobber a file it did not write.
Status CheckInstallable(const Places& p, const std::string& config, const std::string& shim,
                        const std::string& exe) {
  struct stat st;
  if (::stat(shim.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status::Invalid("the shim " + shim + " does not exist (set VIA_SHIM)");
  }
  for (const std::string& s : {config, shim, exe}) {
    if (!PlainPath(s)) {
      return Status::Invalid(
          "cannot write the path " + s +
          " into environment.d, a shell profile and a unit file unquoted; use a path without "
          "spaces, quotes, '$', '%' or '\\'");
    }
  }
  // Never clobber: every file it writes is either absent or its own.
  for (const std::string& f : {p.envd_file, p.unit_file}) {
    if (Exists(f) && !Owned(f)) {
      return Status::Error(EEXIST, f + " exists and was not written by `via install --user`; "
                                       "move it away first");
    }
  }
  if (Exists(p.wants_link) && !LinkIsOurs(p)) {
    return Status::Error(EEXIST, p.wants_link + " exists and is not a link to " + p.unit_file +
                                     "; move it away first");
  }
  return Status::Ok();
}

// Creates the directories of `dir` that are missing, and records them in `m`.
Status MakeDirsRecorded(const std::string& dir, Manifest* m) {
  std::vector<std::string> created;
  if (Status s = MakeDirs(dir, &created); !s.ok()) return s;
  for (const auto& d : created) Manifest::AddOnce(&m->created_dirs, d);
  return Status::Ok();
}

// Puts `block` in each shell profile to edit, recording in `m` what uninstall must undo.
Status WriteProfileBlocks(const Places& p, const std::string& block, Manifest* m) {
  for (const std::string& f : p.ProfilesToEdit()) {
    std::string text;
    auto old = ReadFile(f);
    if (old.ok()) {
      text = *old;
    } else if (old.status().code() == ENOENT && !Exists(f)) {
      Manifest::AddOnce(&m->created_files, f);
    } else {
      return old.status();
    }
    bool newline_added = false;
    std::string updated = PutBlock(text, block, &newline_added);
    if (newline_added) Manifest::AddOnce(&m->newline_added, f);
    if (updated == text && old.ok()) {
      std::printf("unchanged: the block in %s\n", f.c_str());
      continue;
    }
    if (Status s = WriteFile(f, updated, 0644); !s.ok()) return s;
    std::printf("%s %s: the block between \"%s\" and \"%s\"\n", old.ok() ? "edited" : "created",
                f.c_str(), kBlockBegin, kBlockEnd);
  }
  return Status::Ok();
}

// Writes the user unit that runs the broker, and enables it.
Status WriteUnit(const Places& p, const std::string& exe, const std::string& config, Manifest* m) {
  if (Status s = MakeDirsRecorded(p.wants_dir, m); !s.ok()) return s;
  if (Status s = WriteFile(p.unit_file, UnitText(exe, config), 0644); !s.ok()) return s;
  std::printf("wrote %s\n", p.unit_file.c_str());
  if (!Exists(p.wants_link)) {
    if (::symlink(p.unit_file.c_str(), p.wants_link.c_str()) != 0) {
      return Status::FromErrno("cannot create " + p.wants_link);
    }
    std::printf("enabled it: %s -> %s\n", p.wants_link.c_str(), p.unit_file.c_str());
  }
  return Status::Ok();
}

int Install(const Places& p, const Args& args) {
  // A config that does not load would make every program of the session fail its first
  // routed call: refuse it now, with its error.
  auto cfg = LoadConfigOrComplain(args);
  if (!cfg) return kExitUsage;
  const std::string config = cfg->source;  // absolute, links resolved
  const std::string shim = ShimPath();
  char exe[PATH_MAX];
  if (::realpath("/proc/self/exe", exe) == nullptr)
    return Fail(Status::FromErrno("/proc/self/exe"));
  if (Status s = CheckInstallable(p, config, shim, exe); !s.ok()) return Fail(s);
  Manifest m;
  if (Exists(p.envd_file)) {
    auto old = ReadFile(p.envd_file);
    if (old.ok()) m.Parse(*old);
  }
  if (Status s = MakeDirsRecorded(p.envd_dir, &m); !s.ok()) return Fail(s);
  if (Status s = WriteProfileBlocks(p, ProfileBlock(shim, config), &m); !s.ok()) return Fail(s);
  if (Status s = WriteUnit(p, exe, config, &m); !s.ok()) return Fail(s);
  // Written last: it holds the record of everything above.
  if (Status s = WriteFile(p.envd_file, EnvironmentDText(shim, config, m), 0644); !s.ok()) {
    return Fail(s);
  }
  std::printf("wrote %s\n", p.envd_file.c_str());
  if (UserManagerRunning()) {
    Systemctl({"daemon-reload"});
    Systemctl({"restart", kUnitName});
  }
  std::printf(
      "\nPrograms you start after your next login (menus, login shells, user services) get the\n"
      "rules of %s. cron does not read these files: put these two lines at the top of\n"
      "`crontab -e` (or start jobs with `via run --`):\n"
      "  LD_PRELOAD=%s\n"
      "  VIA_CONFIG=%s\n"
      "Undo everything with: via install --user --uninstall\n",
      config.c_str(), shim.c_str(), config.c_str());
  return kExitOk;
}

int Uninstall(const Places& p) {
  Manifest m;
  if (Exists(p.envd_file) && Owned(p.envd_file)) {
    auto text = ReadFile(p.envd_file);
    if (text.ok()) m.Parse(*text);
  }
  const bool unit_ours = Exists(p.unit_file) && Owned(p.unit_file);
  if (unit_ours && UserManagerRunning()) Systemctl({"stop", kUnitName});
  bool changed = false;
  if (LinkIsOurs(p)) {
    if (::unlink(p.wants_link.c_str()) != 0) return Fail(Status::FromErrno(p.wants_link));
    std::printf("removed %s\n", p.wants_link.c_str());
    changed = true;
  }
  for (const std::string& f : {p.unit_file, p.envd_file}) {
    if (Exists(f) && Owned(f)) {
      if (::unlink(f.c_str()) != 0) return Fail(Status::FromErrno("cannot remove " + f));
      std::printf("removed %s\n", f.c_str());
      changed = true;
    }
  }
  std::vector<std::string> profiles = p.AllProfiles();
  for (const auto& f : m.created_files) Manifest::AddOnce(&profiles, f);
  for (const std::string& f : profiles) {
    auto text = ReadFile(f);
    if (!text.ok()) continue;
    bool found = false;
    std::string rest = RemoveBlock(*text, Manifest::Has(m.newline_added, f), &found);
    if (!found) continue;
    changed = true;
    if (rest.empty() && Manifest::Has(m.created_files, f)) {
      if (::unlink(f.c_str()) != 0) return Fail(Status::FromErrno("cannot remove " + f));
      std::printf("removed %s (it held only the block)\n", f.c_str());
      continue;
    }
    if (Status s = WriteFile(f, rest, 0644); !s.ok()) return Fail(s);
    std::printf("removed the block from %s\n", f.c_str());
  }
  // Innermost first; a directory that now holds something else stays.
  for (auto it = m.created_dirs.rbegin(); it != m.created_dirs.rend(); ++it) {
    if (::rmdir(it->c_str()) == 0) std::printf("removed %s/\n", it->c_str());
  }
  if (unit_ours && UserManagerRunning()) Systemctl({"daemon-reload"});
  if (!changed) std::printf("nothing to undo: `via install --user` has not changed this home\n");
  return kExitOk;
}

}  // namespace

int CmdInstall(int argc, char** argv) {
  auto args =
      ParseArgs("install", argc, argv,
                {{"--user", false}, {"--config", true}, {"--uninstall", false}, {"--help", false}},
                {{"-c", "--config"}, {"-h", "--help"}}, false);
  if (!args.ok()) {
    Error(args.status().message());
    return kExitUsage;
  }
  if (PrintHelpIfAsked(*args, "install")) return kExitOk;
  if (HasOperands(*args, "install")) return kExitUsage;
  if (!args->Has("--user")) {
    Error(
        "install needs --user (only the user's own session is changed); try 'via install "
        "--help'");
    return kExitUsage;
  }
  if (args->Has("--uninstall") && args->Has("--config")) {
    Error("--uninstall takes no --config; try 'via install --help'");
    return kExitUsage;
  }
  auto places = FindPlaces();
  if (!places.ok()) return Fail(places.status());
  return args->Has("--uninstall") ? Uninstall(*places) : Install(*places, *args);
}

std::vector<std::string> FlagsFromHelp(const std::string& help) {
  std::vector<std::string> flags;
  bool in_options = false;
  size_t pos = 0;
  while (pos < help.size()) {
    size_t nl = help.find('\n', pos);
    if (nl == std::string::npos) nl = help.size();
    std::string line = help.substr(pos, nl - pos);
    pos = nl + 1;
    if (line == "Options:") {
      in_options = true;
      continue;
    }
    if (!in_options) continue;
    if (line.empty()) break;
    // "  -c, --config PATH   text" or "      --direct   text"; continuation lines are
    // indented further (and may start with a flag they mention).
    size_t i = line.find_first_not_of(' ');
    if (i == std::string::npos || i > 6) continue;
    while (i != std::string::npos && i < line.size() && line[i] == '-') {
      size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != ',') ++j;
      flags.push_back(line.substr(i, j - i));
      if (j < line.size() && line[j] == ',') ++j;
      i = line.find_first_not_of(' ', j);
      // Only a second flag follows a comma; a value name (PATH) ends the list.
      if (i == std::string::npos || j == 0 || line[j - 1] != ',') break;
    }
  }
  return flags;
}

int CmdComplete(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  if (what == "commands") {
    for (const Command& c : Commands()) {
      if (c.name[0] != '_') std::printf("%s\n", c.name);
    }
    return kExitOk;
  }
  if (what == "flags" && argc > 2) {
    const Command* c = FindCommand(argv[2]);
    if (c != nullptr && c->help != nullptr) {
      for (const auto& f : FlagsFromHelp(c->help)) std::printf("%s\n", f.c_str());
    }
    return kExitOk;
  }
  if (what == "networks") {
    std::string path =
        (argc > 3 && (std::strcmp(argv[2], "-c") == 0 || std::strcmp(argv[2], "--config") == 0))
            ? argv[3]
            : "";
    if (path.empty()) {
      auto found = config::FindConfig();
      if (!found.ok()) return kExitOk;
      path = *found;
    }
    auto cfg = config::LoadConfig(path);
    if (!cfg.ok()) return kExitOk;
    for (const auto& o : cfg->overlays) std::printf("%s\n", o.id.c_str());
    return kExitOk;
  }
  Error("usage: via __complete commands | flags COMMAND | networks [-c CONFIG]");
  return kExitUsage;
}

}  // namespace via::tools
