"""The exec guard's environment side, under a routed session: what a program passes to exec
(however long, whatever it names "libvia.so", whatever it empties) never crashes the program and
never lets a child run unrouted; libc's own shell spawns (system, popen, wordexp) and execveat
are guarded as execve is. Each case asserts what the far side saw: the target's record of peers
(a direct connection comes from 127.0.0.1, a routed one from the proxy's 127.0.0.2) and the
proxy's log."""
import os
import shutil
import subprocess

import harness

SPAWNER = r"""
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
/* spawner MODE PRELOAD_FILE PROG ARGS...: runs PROG with the environment {LD_PRELOAD=<file's
   contents>, PATH} (no VIA_* variables), by vfork+execve, fork+execve or posix_spawn. */
int main(int argc, char** argv) {
  FILE* f = fopen(argv[2], "r");
  static char value[1 << 20];
  size_t n = fread(value, 1, sizeof value - 1, f);
  value[n] = 0;
  char* ldp = malloc(n + 16);
  sprintf(ldp, "LD_PRELOAD=%s", value);
  char* env[] = {ldp, "PATH=/usr/bin:/bin", NULL};
  pid_t pid;
  if (strcmp(argv[1], "vfork") == 0) {
    pid = vfork();
    if (pid == 0) { execve(argv[3], argv + 3, env); _exit(126); }
  } else if (strcmp(argv[1], "fork") == 0) {
    pid = fork();
    if (pid == 0) { execve(argv[3], argv + 3, env); _exit(126); }
  } else {
    int err = posix_spawn(&pid, argv[3], NULL, NULL, argv + 3, env);
    if (err != 0) { fprintf(stderr, "posix_spawn: %s\n", strerror(err)); return 125; }
  }
  int status;
  if (waitpid(pid, &status, 0) < 0) { perror("waitpid"); return 124; }
  if (WIFSIGNALED(status)) { fprintf(stderr, "child killed by signal %d\n", WTERMSIG(status)); return 123; }
  return WEXITSTATUS(status);
}
"""

# A library of the program's own: proves that its LD_PRELOAD entries reached the child whole.
MARKER_LIB = r"""
#include <stdio.h>
__attribute__((constructor)) static void mark(void) {
  FILE* f = fopen(MARK_FILE, "a");
  if (f != NULL) { fputs("loaded\n", f); fclose(f); }
}
"""

SHELL_USER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wordexp.h>
/* shell-user URL: clearenv(), then curl URL/system, URL/popen and URL/wordexp through libc's
   own shell spawns. */
int main(int argc, char** argv) {
  char cmd[512];
  clearenv();
  snprintf(cmd, sizeof cmd, "/usr/bin/curl -sS %s/system >/dev/null", argv[1]);
  printf("system=%d\n", system(cmd));
  snprintf(cmd, sizeof cmd, "/usr/bin/curl -sS %s/popen", argv[1]);
  FILE* p = popen(cmd, "r");
  if (p == NULL) { perror("popen"); } else {
    char buf[256];
    while (fgets(buf, sizeof buf, p) != NULL) {}
    printf("pclose=%d\n", pclose(p));
  }
  snprintf(cmd, sizeof cmd, "$(/usr/bin/curl -sS -o /dev/null %s/wordexp)", argv[1]);
  wordexp_t we;
  printf("wordexp=%d\n", wordexp(cmd, &we, 0));
  return 0;
}
"""

EXECVEAT = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
/* execveat MODE BINARY ARGS...: MODE fd (AT_EMPTY_PATH), dirfd (relative to the binary's
   directory) or cwd (AT_FDCWD). Prints the errno when the exec fails. */
extern char** environ;
int main(int argc, char** argv) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", argv[2]);
  const char* base = strrchr(argv[2], '/') + 1;
  int rc;
  if (strcmp(argv[1], "fd") == 0) {
    int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
    rc = execveat(fd, "", argv + 2, environ, AT_EMPTY_PATH);
  } else if (strcmp(argv[1], "dirfd") == 0) {
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
    rc = execveat(dfd, base, argv + 2, environ, 0);
  } else {
    rc = execveat(AT_FDCWD, argv[2], argv + 2, environ, AT_SYMLINK_NOFOLLOW);
  }
  printf("execveat=%d errno=%s\n", rc, strerror(errno));
  return 3;
}
"""

SPAWN_CHDIR = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
extern char** environ;
/* spawn-chdir MODE DIR NAME ARGS...: posix_spawn("NAME") after addchdir_np(DIR) (MODE chdir) or
   addfchdir_np(open(DIR)) (MODE fchdir), from the root directory. */
int main(int argc, char** argv) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addclose(&fa, 1000);
  if (strcmp(argv[1], "chdir") == 0) {
    posix_spawn_file_actions_addchdir_np(&fa, argv[2]);
  } else {
    posix_spawn_file_actions_addfchdir_np(&fa, open(argv[2], O_RDONLY | O_DIRECTORY));
  }
  if (chdir("/") != 0) return 4;
  pid_t pid;
  int err = posix_spawn(&pid, argv[3], &fa, NULL, argv + 3, environ);
  if (err != 0) { printf("posix_spawn=%s\n", strerror(err)); return 3; }
  int st;
  waitpid(pid, &st, 0);
  printf("status=%d\n", WEXITSTATUS(st));
  return 0;
}
"""

STATIC_CLIENT = harness.read_text(os.path.join(harness.HERE, "data", "static_client.c"))


class ExecEnv(harness.ViaCase):
    def setUp(self):
        super().setUp()
        if shutil.which("cc") is None:
            self.skipTest("no C compiler (cc) to build the test programs")
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        # Loopback is routed, so that a direct connection and a routed one differ in the peer
        # the target records (127.0.0.1 / the proxy's 127.0.0.2).
        self.write_config([self.socks5_entry("tor", self.proxy_port)],  # the verdict as a refusal
                          service={"loopback": "overlay", "unrouted_exec": "refuse"})
        self.url = f"http://127.0.0.1:{self.port}"

    def build(self, name, source, *flags):
        src = os.path.join(self.dir, name + ".c")
        out = os.path.join(self.dir, name)
        with open(src, "w") as f:
            f.write(source)
        built = subprocess.run(["cc", "-O1", "-o", out, src, *flags], capture_output=True,
                               text=True)
        if built.returncode != 0:
            if "-static" in flags:
                self.skipTest("cannot link statically (libc.a missing?): " + built.stderr[-200:])
            self.fail(f"cc {name}: {built.stderr}")
        return out

    def marker_lib(self, path):
        mark = os.path.join(self.dir, os.path.basename(path) + ".marks")
        lib = self.build(os.path.basename(path).replace(".", "_"), MARKER_LIB, "-shared",
                         "-fPIC", f'-DMARK_FILE="{mark}"')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.move(lib, path)
        return mark

    def peers(self):
        return [(r["path"], r["peer"]) for r in self.records(self.record)]

    def assertRouted(self, paths):
        """The target saw exactly `paths`, each through the proxy, and the proxy made them."""
        self.assertEqual(sorted(self.peers()), sorted((p, harness.PROXY_OUT) for p in paths))
        self.assertEqual(harness.microsocks_destinations(self.proxy_log).count(
            f"127.0.0.1:{self.port}"), len(paths), harness.read_text(self.proxy_log))

    # ---- cause 7: a long LD_PRELOAD ----------------------------------------------------------
    def long_preload(self, length):
        """An LD_PRELOAD of about `length` characters without the shim: libc.so.6 (already
        loaded: the loader maps it once) repeated, then a library of the program's own last."""
        own = os.path.join(self.dir, "own", "libown.so")
        mark = self.marker_lib(own)
        filler = "libc.so.6:" * ((length - len(own)) // len("libc.so.6:"))
        value = filler + own
        self.assertGreaterEqual(len(value), length - 16)
        path = os.path.join(self.dir, f"preload-{length}")
        with open(path, "w") as f:
            f.write(value)
        return path, mark

    def test_long_preload_through_vfork_fork_and_posix_spawn(self):
        spawner = self.build("spawner", SPAWNER)
        curl = shutil.which("curl")
        paths = []
        for length in (10000, 60000, 120000):
            preload, mark = self.long_preload(length)
            for mode in ("vfork", "fork", "spawn"):
                path = f"/{mode}-{length}"
                proc = self.run_via("app:tor", spawner, mode, preload, curl, "-sS", "-o",
                                    "/dev/null", self.url + path)
                self.assertOk(proc, f"{mode} with an LD_PRELOAD of {length} characters")
                paths.append(path)
                # The program's own library, last in its list, was loaded: nothing was cut.
                self.assertEqual(harness.read_lines(mark).count("loaded"), 1, (mode, length))
                os.remove(mark)
        self.assertRouted(paths)

    def test_long_preload_through_python_posix_spawn(self):
        curl = shutil.which("curl")
        preload, mark = self.long_preload(60000)
        code = ("import os, sys\n"
                f"value = open({preload!r}).read()\n"
                f"pid = os.posix_spawn({curl!r}, ['curl', '-sS', '-o', '/dev/null', "
                f"{self.url + '/py-spawn'!r}], {{'LD_PRELOAD': value, 'PATH': '/usr/bin'}})\n"
                "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertEqual(harness.read_lines(mark).count("loaded"), 1)
        self.assertRouted(["/py-spawn"])

    # ---- cause 3: the shim's identity in LD_PRELOAD ------------------------------------------
    def test_a_fake_libvia_in_preload_does_not_pass_for_the_shim(self):
        fake = os.path.join(self.dir, "evil", "libvia.so")
        mark = self.marker_lib(fake)
        curl = shutil.which("curl")
        code = ("import subprocess, sys\n"
                f"sys.exit(subprocess.call([{curl!r}, '-sS', '-o', '/dev/null', "
                f"{self.url + '/fake'!r}], env={{'LD_PRELOAD': {fake!r}}}))\n")
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertEqual(harness.read_lines(mark).count("loaded"), 1)  # kept, after the shim
        self.assertRouted(["/fake"])

    # ---- cause 3: an emptied VIA_NETWORK -------------------------------------------------------
    def test_emptied_network_does_not_unguard_exec(self):
        static = self.build("static-client", STATIC_CLIENT, "-static")
        # In place (sh's exec: the process itself asks the broker) and from a vfork child
        # (Python's subprocess: a detached HELLO).
        proc = self.run_via("app:tor", "sh", "-c",
                            f"VIA_NETWORK= exec sh -c '{static} {self.port} inplace; "
                            "echo status=$?'")
        self.assertIn("status=126", proc.stdout, proc.stderr)
        self.assertIn("it is statically linked", proc.stderr)
        # Every variable that says where the broker and the session are, emptied: exec puts
        # them back, and the shell's child still asks the broker.
        proc = self.run_via("app:tor", "env", "VIA_NETWORK=", "VIA_SESSION=", "VIA_SOCKET=",
                            "VIA_CONFIG=", "sh", "-c", f"{static} {self.port} all; echo status=$?")
        self.assertIn("status=126", proc.stdout, proc.stderr)
        self.assertIn("it is statically linked", proc.stderr)
        code = ("import subprocess, sys\n"
                f"sys.exit(subprocess.call([{static!r}, '{self.port}', 'vfork']))\n")
        proc = self.run_via("app:tor", "env", "VIA_NETWORK=", harness.PYTHON, "-c", code)
        self.assertFailed(proc)
        self.assertIn("PermissionError", proc.stderr)
        self.assertIn("it is statically linked", proc.stderr)
        self.assertEqual(self.peers(), [])

    # ---- cause 3: VIA_UNROUTED_EXEC is the broker's to say -------------------------------------
    def test_a_program_cannot_allow_unrouted_exec_for_itself(self):
        # The config does not allow unrouted exec; the program sets the variable via run sets
        # when it does. The shim asks the broker, which says no: refused, nothing direct.
        static = self.build("static-client", STATIC_CLIENT, "-static")
        proc = self.run_via("app:tor", "env", "VIA_UNROUTED_EXEC=allow", "sh", "-c",
                            f"{static} {self.port} self-allowed; echo status=$?")
        self.assertIn("status=126", proc.stdout, proc.stderr)
        self.assertIn("it is statically linked", proc.stderr)
        self.assertEqual(self.peers(), [])
        # The control: the config allows it, and the broker tells the shim so (the program
        # then connects directly, as documented for unrouted_exec: allow).
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay", "unrouted_exec": "allow"})
        proc = self.run_via("app:tor", "env", "-u", "VIA_UNROUTED_EXEC", "sh", "-c",
                            f"{static} {self.port} config-allowed; echo status=$?")
        self.assertIn("status=0", proc.stdout, proc.stderr)
        self.assertEqual(self.peers(), [("/config-allowed", harness.DIRECT_PEER)])

    def test_emptied_network_in_a_direct_session_still_runs_a_static_binary(self):
        # The control: the broker's answer decides, and for a direct session it says direct.
        static = self.build("static-client", STATIC_CLIENT, "-static")
        proc = self.run_via("direct", "sh", "-c",
                            f"VIA_NETWORK= exec sh -c '{static} {self.port} direct'")
        self.assertOk(proc)
        self.assertEqual(self.peers(), [("/direct", harness.DIRECT_PEER)])

    def test_preloaded_deployment_asks_the_broker_before_a_static_binary(self):
        # No via run, no VIA_NETWORK, no VIA_SOCKET: LD_PRELOAD and VIA_CONFIG, as the README's
        # preloaded deployment. A via.program rule routes sh-tor (a copy of dash); its child
        # has not asked the broker yet when it execs, and must not be taken for unrouted.
        static = self.build("static-client", STATIC_CLIENT, "-static")
        sh_tor = os.path.join(self.dir, "bin", "sh-tor")
        os.makedirs(os.path.dirname(sh_tor))
        shutil.copy2(os.path.realpath(shutil.which("dash") or "/bin/sh"), sh_tor)
        self.write_config([self.socks5_entry("tor", self.proxy_port),
                           ["name: sh_tor", "kind: via.program", f"match: {{exe: {sh_tor}}}",
                            "network: app:tor"]],
                          service={"loopback": "overlay", "unrouted_exec": "refuse"})
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_CONFIG=self.config)
        proc = subprocess.run([sh_tor, "-c", f"{static} {self.port} preloaded; echo status=$?"],
                              env=env, capture_output=True, text=True, timeout=60)
        self.assertIn("status=126", proc.stdout, proc.stderr)
        self.assertIn("it is statically linked", proc.stderr)
        self.assertEqual(self.peers(), [])
        # The control: a shell no rule routes gets "direct" from the broker and runs it.
        proc = subprocess.run(["/bin/sh", "-c", f"{static} {self.port} unrouted; echo status=$?"],
                              env=env, capture_output=True, text=True, timeout=60)
        self.assertIn("status=0", proc.stdout, proc.stderr)
        self.assertEqual(self.peers(), [("/unrouted", harness.DIRECT_PEER)])

    def test_posix_spawn_of_a_relative_path_is_checked_where_the_child_runs_it(self):
        # posix_spawn_file_actions_addchdir_np / addfchdir_np: "static-client" is resolved in
        # the directory the child changes to, not in the caller's (the root, where no such file
        # exists).
        static = self.build("static-client", STATIC_CLIENT, "-static")
        prog = self.build("spawn-chdir", SPAWN_CHDIR)
        for mode in ("chdir", "fchdir"):
            proc = self.run_via("app:tor", prog, mode, self.dir, "./static-client",
                                str(self.port), mode)
            self.assertIn("posix_spawn=Operation not permitted", proc.stdout, (mode, proc.stderr))
            self.assertIn("it is statically linked", proc.stderr)
        self.assertEqual(self.peers(), [])
        # The control: outside via the same spawn runs it (and it connects directly).
        proc = subprocess.run([prog, "chdir", self.dir, "./static-client", str(self.port),
                               "control"], env=self.env, capture_output=True, text=True)
        self.assertIn("status=0", proc.stdout, proc.stderr)
        self.assertEqual(self.peers(), [("/control", harness.DIRECT_PEER)])

    # ---- cause 3: libc's own shell spawns after clearenv() -----------------------------------
    def test_system_popen_wordexp_after_clearenv_are_routed(self):
        prog = self.build("shell-user", SHELL_USER)
        proc = self.run_via("app:tor", prog, self.url)
        self.assertOk(proc)
        self.assertIn("system=0", proc.stdout, proc.stderr)
        self.assertIn("pclose=0", proc.stdout, proc.stderr)
        self.assertIn("wordexp=0", proc.stdout, proc.stderr)
        self.assertRouted(["/system", "/popen", "/wordexp"])

    # ---- cause 3: execveat -------------------------------------------------------------------
    def test_execveat_of_a_static_binary_is_refused(self):
        static = self.build("static-client", STATIC_CLIENT, "-static")
        prog = self.build("execveat", EXECVEAT)
        for mode in ("fd", "dirfd", "cwd"):
            proc = self.run_via("app:tor", prog, mode, static, str(self.port), mode)
            self.assertIn("execveat=-1 errno=Operation not permitted", proc.stdout,
                          (mode, proc.stderr))
            self.assertIn("it is statically linked", proc.stderr)
        self.assertEqual(self.peers(), [])
        # The control: outside via the same calls run the binary (and it connects directly).
        proc = subprocess.run([prog, "fd", static, str(self.port), "control"], env=self.env,
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual(self.peers(), [("/control", harness.DIRECT_PEER)])


if __name__ == "__main__":
    harness.main()
