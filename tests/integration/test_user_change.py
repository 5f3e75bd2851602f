"""Sessions survive a change of user (docs/configuration.md, "Sessions across a change of user").

A process that descends from a via session and changes uid (setpriv, runuser, a daemon dropping
root, apt's `_apt` download methods) cannot enter the broker's 0700 directory: it reaches the
broker's abstract socket, where the broker admits it by the process tree alone and it keeps the
session's overlay. A process of another user outside every session is refused there, and its
connect fails instead of going direct. Needs root (to change user) and the test namespace."""
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

import harness

NOBODY = 65534
# Only system binaries: the users the tests switch to cannot read root's home (pyenv's python).
SYS_PYTHON = "/usr/bin/python3"


def abstract_name(socket_path):
    """The broker's abstract address for `socket_path` (common/broker_address.h)."""
    h = 1469598103934665603
    for b in socket_path.encode():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "\0via-broker-%016x" % h


class UserChange(harness.ViaCase):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root: the tests change user (setpriv, runuser, _apt)")
        self.require_namespace()
        for tool in ("setpriv", "runuser"):
            if shutil.which(tool) is None:
                self.skipTest(f"{tool} (util-linux) is not installed")
        if not os.path.exists(SYS_PYTHON):
            self.skipTest(f"{SYS_PYTHON} is not installed")
        self.dns_log = self.start_dns()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        self.url = f"http://target.test:{self.port}/"

    def assertRouted(self, count=1, uid=NOBODY, proc=None):
        self.assertTrue(harness.wait_for(lambda: len(self.records(self.record)) >= count),
                        "the target saw nothing" + (f"; stderr: {proc.stderr}" if proc else ""))
        self.assertReachedThroughProxy(self.record, "target.test", count=count)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log),
                         [f"target.test:{self.port}"] * count)
        self.assertEqual(self.dns_queries("target.test"), [], "a lookup went direct")
        self.assertTrue(any(f"admitted uid {uid} " in l for l in self.broker_log()),
                        "\n".join(self.broker_log()))

    def test_setpriv_to_nobody_is_routed(self):
        proc = self.run_via("app:tor", "setpriv", "--reuid=nobody", "--regid=nogroup",
                            "--clear-groups", "curl", "-sSf", self.url)
        self.assertOk(proc)
        self.assertRouted()

    def test_runuser_to_nobody_is_routed(self):
        proc = self.run_via("app:tor", "runuser", "-u", "nobody", "--", "curl", "-sSf", self.url)
        self.assertOk(proc)
        self.assertRouted()

    def test_daemon_that_outlives_via_run_and_drops_root_is_routed(self):
        # The parent exits at once; the child waits until it was re-parented to `via run` and
        # `via run` has exited too (it then carries the session on), drops root and fetches.
        code = f"""
import os, sys, time
parent, via_run = os.getpid(), os.getppid()
if os.fork():
    sys.exit(0)
for _ in range(200):
    if os.getppid() not in (parent, via_run):
        break
    time.sleep(0.05)
else:
    sys.exit('via run did not exit')
os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
os.execv('/usr/bin/curl', ['curl', '-sSf', '-o', '/dev/null', '{self.url}'])
"""
        proc = self.run_via("app:tor", SYS_PYTHON, "-c", code)
        self.assertOk(proc)
        self.assertRouted(proc=proc)

    def test_exec_after_the_change_is_refused_when_the_new_user_cannot_read_the_shim(self):
        # A shim in a directory only root can enter (a build tree in root's home): the loader
        # would skip it for nobody and curl would run unrouted, so setpriv's exec is refused.
        private = os.path.join(self.dir, "private")
        os.mkdir(private, 0o700)
        shim = os.path.join(private, "libvia.so")
        shutil.copy(harness.SHIM, shim)
        env = dict(self.env, VIA_SHIM=shim)
        proc = self.run_via("app:tor", "setpriv", "--reuid=nobody", "--regid=nogroup",
                            "--clear-groups", "curl", "-sSf", self.url, env=env)
        self.assertFailed(proc)
        self.assertIn("cannot read the shim", proc.stderr)
        self.assertIn(shim, proc.stderr)
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])
        self.assertEqual(self.dns_queries("target.test"), [], "a lookup went direct")

    def test_other_user_outside_a_session_is_refused(self):
        ensure = self.via("broker", "--ensure")
        self.assertOk(ensure)
        sock = ensure.stdout.strip()
        # A live session, so that the broker has something the outsider could claim.
        session = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                                    "--", "sleep", "60"], env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (session.kill(), session.wait()))
        self.assertTrue(harness.wait_for(lambda: any(
            "session" in l and "opened" in l for l in self.broker_log())))
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_SOCKET=sock, VIA_NETWORK="app:tor")
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               "curl", "-sS", "--max-time", "20", self.url],
                              env=env, capture_output=True, text=True, timeout=60)
        self.assertFailed(proc)
        self.assertIn("descends from no session", proc.stderr)
        # By hand, on the abstract socket: the reason, then the end of the connection.
        client = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            "s.connect(sys.argv[1].replace('@', '\\0', 1))\n"
            "s.settimeout(10)\n"
            "try:\n"
            "    s.send(b'VIA1' + bytes(12))\n"
            "    reply = s.recv(4096)\n"
            "    print('refused' if b'descends from no session' in reply else reply)\n"
            "except (ConnectionResetError, BrokenPipeError):\n"
            "    print('closed')\n")
        raw = subprocess.run(["runuser", "-u", "nobody", "--", SYS_PYTHON, "-c", client,
                              "@" + abstract_name(sock)[1:]],
                             capture_output=True, text=True, timeout=30)
        self.assertOk(raw)
        self.assertIn(raw.stdout.strip(), ("refused", "closed"))
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])
        self.assertEqual(self.dns_queries("target.test"), [], "a lookup went direct")
        refused = [l for l in self.broker_log()
                   if f"refused connection from uid {NOBODY}" in l and "abstract socket" in l]
        self.assertGreaterEqual(len(refused), 2, "\n".join(self.broker_log()))
        self.assertFalse(any(f"admitted uid {NOBODY}" in l for l in self.broker_log()))

    def test_abstract_name_taken_by_another_user_fails_closed(self):
        # nobody binds the broker's abstract name before the broker starts, and would answer
        # "direct": the broker says it cannot serve changed-user processes, and their shim will
        # not talk to a listener of another uid.
        ensure = self.via("broker", "--ensure")
        self.assertOk(ensure)
        sock = ensure.stdout.strip()
        self.assertOk(self.via("stop"))
        squatter = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            "s.bind(sys.argv[1].replace('@', '\\0', 1)); s.listen(16)\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    c, _ = s.accept(); print('accepted', flush=True); c.close()\n")
        _, squat_log = self.spawn(["runuser", "-u", "nobody", "--", SYS_PYTHON, "-c", squatter,
                                   "@" + abstract_name(sock)[1:]], "squatter.log")
        self.assertTrue(harness.wait_for(lambda: "ready" in harness.read_text(squat_log)))
        proc = self.run_via("app:tor", "setpriv", "--reuid=nobody", "--regid=nogroup",
                            "--clear-groups", "curl", "-sS", "--max-time", "20", self.url)
        self.assertFailed(proc)
        self.assertIn(f"is held by uid {NOBODY}, not by the broker's user", proc.stderr)
        self.assertTrue(any("Address already in use: processes of a session that change user "
                            "cannot reach this broker" in l for l in self.broker_log()),
                        "\n".join(self.broker_log()))
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])
        self.assertEqual(self.dns_queries("target.test"), [], "a lookup went direct")

    def test_changed_user_may_route_but_not_control_the_broker(self):
        # Inside the session as nobody, by hand on the abstract socket: HELLO is answered, STATUS
        # (like SHUTDOWN, RELOAD and the session requests) is refused with EPERM.
        client = """
import os, socket, struct
h = 1469598103934665603
for b in os.environ['VIA_SOCKET'].encode():
    h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect('\\0via-broker-%016x' % h)
s.settimeout(10)
def call(kind, rid):
    s.send(b'VIA1' + struct.pack('<HHII', kind, 0, rid, 0))
    reply = s.recv(65536)
    body, err = reply[16:], None
    while len(body) >= 4:
        tag, n = struct.unpack('<HH', body[:4])
        if tag == 7:
            err = struct.unpack('<I', body[4:8])[0]
        body = body[4 + n:]
    return err
print(call(1, 1), call(6, 2))
"""
        proc = self.run_via("app:tor", "setpriv", "--reuid=nobody", "--regid=nogroup",
                            "--clear-groups", SYS_PYTHON, "-c", client)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.split(), ["0", str(1)], proc.stderr)  # 1: EPERM
        self.assertTrue(any(f"admitted uid {NOBODY} " in l for l in self.broker_log()))


class AptUnderVia(harness.ViaCase):
    """apt-get update and download through the overlay, apt's methods sandboxed as `_apt`."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root: apt drops to its _apt sandbox user only as root")
        self.require_namespace()
        if shutil.which("apt-get") is None:
            self.skipTest("apt-get is not installed")
        try:
            import pwd
            pwd.getpwnam("_apt")
        except KeyError:
            self.skipTest("there is no _apt user")
        self.dns_log = self.start_dns()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        # apt's sandbox user must reach its lists directory, so this one is not under the test's
        # private directory.
        self.apt_dir = tempfile.mkdtemp(prefix="via-apt-")
        self.addCleanup(shutil.rmtree, self.apt_dir, True)
        os.chmod(self.apt_dir, 0o755)
        self.repo = os.path.join(self.dir, "repo")
        self.make_repo(self.repo)
        self.port, self.record = self.start_target(docroot=self.repo, only_files=True)
        self.write_config([self.socks5_entry("tor", self.proxy_port)])

    def make_repo(self, root):
        """A minimal Debian repository: dists/via/{Release,main/binary-ARCH/Packages} and one
        package in pool/ (what apt-ftparchive would write, by hand, so that the test does not
        need it)."""
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                              text=True).stdout.strip() or "amd64"
        self.arch = arch
        pkg = os.path.join(self.dir, "pkg")
        os.makedirs(os.path.join(pkg, "DEBIAN"))
        with open(os.path.join(pkg, "DEBIAN", "control"), "w") as f:
            f.write("Package: via-test-pkg\nVersion: 1.0\nArchitecture: all\n"
                    "Maintainer: via <via@example.test>\nDescription: a test package\n")
        os.makedirs(os.path.join(root, "pool"))
        deb = os.path.join(root, "pool", "via-test-pkg_1.0_all.deb")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", pkg, deb],
                       check=True, capture_output=True)
        with open(deb, "rb") as f:
            deb_data = f.read()
        packages = ("Package: via-test-pkg\nVersion: 1.0\nArchitecture: all\n"
                    "Maintainer: via <via@example.test>\nFilename: pool/via-test-pkg_1.0_all.deb\n"
                    f"Size: {len(deb_data)}\nSHA256: {hashlib.sha256(deb_data).hexdigest()}\n"
                    "Description: a test package\n")
        rel = f"main/binary-{arch}/Packages"
        os.makedirs(os.path.join(root, "dists", "via", "main", f"binary-{arch}"))
        with open(os.path.join(root, "dists", "via", rel), "w") as f:
            f.write(packages)
        data = packages.encode()
        date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
        with open(os.path.join(root, "dists", "via", "Release"), "w") as f:
            f.write(f"Origin: via-test\nLabel: via-test\nSuite: via\nCodename: via\n"
                    f"Date: {date}\nArchitectures: {arch}\nComponents: main\nSHA256:\n"
                    f" {hashlib.sha256(data).hexdigest()} {len(data)} {rel}\n")

    def apt(self, *args, cwd=None):
        """apt-get ARGS under `via run --network app:tor`, with its lists, cache and sources in
        self.apt_dir and the _apt sandbox on."""
        sources = os.path.join(self.apt_dir, "sources.list")
        with open(sources, "w") as f:
            f.write(f"deb [trusted=yes] http://target.test:{self.port}/ via main\n")
        lists = os.path.join(self.apt_dir, "lists")
        os.makedirs(os.path.join(lists, "partial"), exist_ok=True)
        cache = os.path.join(self.apt_dir, "cache")
        os.makedirs(cache, exist_ok=True)
        argv = ["apt-get", *args,
                "-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
                "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}",
                "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
                "-o", "Acquire::Languages=none", "-o", "Acquire::http::Proxy=DIRECT",
                "-o", f"APT::Architectures={self.arch}", "-o", "APT::Sandbox::User=_apt",
                "-o", "APT::Update::Post-Invoke-Success::=", "-o", "Debug::NoLocking=1"]
        proc = subprocess.run([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                               "--", *argv], env=self.env, capture_output=True, text=True,
                              timeout=120, cwd=cwd)
        self.assertOk(proc)
        out = proc.stdout + proc.stderr
        for bad in ("unsandboxed", "Temporary failure resolving", "Err:", "via:"):
            self.assertNotIn(bad, out)
        return lists, out

    def assertAllThroughTheProxy(self):
        recs = self.records(self.record)
        self.assertTrue(recs)
        for r in recs:
            self.assertEqual(r["peer"], harness.PROXY_OUT, f"not through the proxy: {r}")
            self.assertEqual(r["host"], f"target.test:{self.port}", r)
        dests = harness.microsocks_destinations(self.proxy_log)
        self.assertTrue(dests and all(d == f"target.test:{self.port}" for d in dests), dests)
        self.assertEqual(self.dns_queries("target.test"), [], "a lookup went direct")
        # From the sandbox: the broker admitted apt's methods as _apt (uid 42 on Debian).
        import pwd
        apt_uid = pwd.getpwnam("_apt").pw_uid
        self.assertTrue(any(f"admitted uid {apt_uid} " in l for l in self.broker_log()),
                        "\n".join(self.broker_log()))
        return [r["path"] for r in recs]

    def test_apt_get_update_and_download_are_routed_from_the_sandbox(self):
        lists, out = self.apt("update")
        # The index arrived (stored compressed, per the system's apt.conf.d).
        self.assertTrue(any("_Packages" in n for n in os.listdir(lists)),
                        f"{os.listdir(lists)}\n{out}")
        paths = self.assertAllThroughTheProxy()
        self.assertTrue(any(p.endswith("/dists/via/InRelease") for p in paths), paths)
        self.assertTrue(any(p.endswith(f"binary-{self.arch}/Packages") for p in paths), paths)
        # `apt-get download` writes into the current directory, which _apt must be able to.
        downloads = os.path.join(self.apt_dir, "downloads")
        os.mkdir(downloads)
        shutil.chown(downloads, user="_apt")
        self.apt("download", "via-test-pkg", cwd=downloads)
        with open(os.path.join(self.repo, "pool", "via-test-pkg_1.0_all.deb"), "rb") as f:
            want = f.read()
        with open(os.path.join(downloads, "via-test-pkg_1.0_all.deb"), "rb") as f:
            self.assertEqual(f.read(), want)
        paths = self.assertAllThroughTheProxy()
        self.assertIn("/pool/via-test-pkg_1.0_all.deb", paths)


if __name__ == "__main__":
    harness.main()
