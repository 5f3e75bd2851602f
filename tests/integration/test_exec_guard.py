"""exec under an overlay: binaries that would run without the shim are refused, and a scrubbed
environment gets the shim's variables back. Each case has its positive control: the same
program outside via (or with unrouted_exec: allow) does reach the target directly."""
import os
import shutil
import subprocess
import time

import harness

STATIC_CLIENT = harness.read_text(os.path.join(harness.HERE, "data", "static_client.c"))

# A program that forks and execs in the child, as shells and servers do: prints each child's exit
# status (100 + errno when its exec failed). argv: port, then "path:request-path" per child; a
# "rename:SRC:DST" argument renames between children instead.
FORK_EXEC = r"""
import os, sys
port = sys.argv[1]
for arg in sys.argv[2:]:
    if arg.startswith("rename:"):
        _, src, dst = arg.split(":")
        os.rename(src, dst)
        continue
    path, what = arg.rsplit(":", 1)
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(path, [path, port, what])
        except OSError as e:
            os._exit(100 + e.errno)
    print(what, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ExecGuard(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        # Loopback is routed here, so that "went through the proxy" is visible for 127.0.0.1.
        self.write_config([self.socks5_entry("tor", self.proxy_port)],  # the verdict as a refusal
                          service={"loopback": "overlay", "unrouted_exec": "refuse"})

    def static_client(self):
        if shutil.which("cc") is None:
            self.skipTest("no C compiler to build a static test binary")
        src = os.path.join(self.dir, "static.c")
        exe = os.path.join(self.dir, "static-client")
        with open(src, "w") as f:
            f.write(STATIC_CLIENT)
        built = subprocess.run(["cc", "-static", "-O1", "-o", exe, src], capture_output=True,
                               text=True)
        if built.returncode != 0:
            self.skipTest("cannot link statically (libc.a missing?): " + built.stderr[-200:])
        return exe

    def client(self, static):
        """The test client, linked statically or dynamically, 3 s old: the binary check caches
        verdicts only for files unchanged for 2 s (binary_check.cc, CachePut)."""
        exe = os.path.join(self.dir, "static-client" if static else "dynamic-client")
        if static:
            os.rename(self.static_client(), exe)
        else:
            src = os.path.join(self.dir, "dynamic.c")
            with open(src, "w") as f:
                f.write(STATIC_CLIENT)
            subprocess.run(["cc", "-O1", "-o", exe, src], check=True)
        old = time.time() - 3600
        os.utime(exe, (old, old))
        return exe

    def test_forked_children_share_verdicts_but_not_for_a_replaced_binary(self):
        # The children of a forking process share the binary check's verdicts (hook_exec.cc,
        # fork), so the second child finds the first one's. A verdict holds for its file only:
        # the same path replaced by a static binary is checked again, and refused.
        if shutil.which("strace") is None:
            self.skipTest("no strace (scripts/install-deps.sh installs it)")
        static, dynamic = self.client(True), self.client(False)
        path = os.path.join(self.dir, "client")
        shutil.copy2(dynamic, path)
        time.sleep(3.2)  # past the 2 s (whole seconds) in which a changed file is not cached
        trace = os.path.join(self.dir, "trace")
        proc = self.run_via("app:tor", "strace", "-f", "-qq", "-e", "trace=openat", "-o", trace,
                            harness.PYTHON, "-c", FORK_EXEC, str(self.port), f"{path}:one",
                            f"{path}:two", f"{path}:three", f"rename:{static}:{path}",
                            f"{path}:four")
        self.assertEqual(proc.stdout.split("\n")[:4], ["one 0", "two 0", "three 0", "four 101"],
                         proc.stderr)  # 101: EPERM
        self.assertIn("it is statically linked", proc.stderr)
        self.assertReachedThroughProxy(self.record, "static", count=3)
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/one", "/two", "/three"])
        # The dynamic binary was read once, by the first child; the other two used its verdict.
        opens = [l for l in harness.read_lines(trace) if f'"{path}"' in l]
        self.assertEqual(len(opens), 2, "\n".join(opens))  # the dynamic one, then the static one

    def test_static_binary_is_refused(self):
        exe = self.static_client()
        proc = self.run_via("app:tor", "sh", "-c", f"{exe} {self.port}; echo status=$?")
        self.assertIn("status=126", proc.stdout, proc.stderr)  # sh: Permission denied (EPERM)
        self.assertIn("it is statically linked", proc.stderr)
        self.assertEqual(self.records(self.record), [])

    def test_static_binary_allowed_by_config_escapes_as_documented(self):
        exe = self.static_client()
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay", "unrouted_exec": "allow"})
        self.assertOk(self.run_via("app:tor", exe, str(self.port)))
        # The control: nothing routed it, the target saw a direct connection.
        self.assertEqual([r["peer"] for r in self.records(self.record)], ["127.0.0.1"])

    def test_setuid_binary_is_refused(self):
        curl = shutil.which("curl")
        suid = os.path.join(self.dir, "curl-suid")
        shutil.copy(curl, suid)
        os.chmod(self.dir, 0o755)
        shutil.chown(suid, user="nobody")
        os.chmod(suid, 0o4755)
        url = f"http://127.0.0.1:{self.port}/suid"
        control = subprocess.run([suid, "-sS", url + "-control"], env=self.env, capture_output=True)
        self.assertEqual(control.returncode, 0)  # outside via the copy runs (and goes direct)
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/suid-control"])
        os.remove(self.record)
        proc = self.run_via("app:tor", "sh", "-c", f"{suid} -sS {url}; echo status=$?")
        self.assertIn("status=126", proc.stdout, proc.stderr)
        self.assertIn("it is setuid", proc.stderr)
        self.assertEqual(self.records(self.record), [])
        python = f"import subprocess; print(subprocess.call([{suid!r}, '-sS', {url!r}]))"
        proc = self.run_via("app:tor", harness.PYTHON, "-c", python)
        self.assertNotEqual(proc.returncode, 0)  # PermissionError from subprocess
        self.assertIn("PermissionError", proc.stderr)
        self.assertEqual(self.records(self.record), [])

    def test_unreadable_setuid_binary_is_refused_for_an_ordinary_user(self):
        # Mode 4711: an ordinary user can exec it but not open it, so the check must read the
        # setuid bit from the file's metadata (it opens the binary first; see hook_exec.cc).
        if subprocess.run(["id", "viatest"], capture_output=True).returncode != 0:
            self.skipTest("no viatest user (scripts/install-deps.sh creates it)")
        curl = shutil.which("curl")
        suid = os.path.join(self.dir, "curl-suid-unreadable")
        shutil.copy(curl, suid)
        os.chmod(self.dir, 0o755)
        shutil.chown(suid, user="nobody")
        os.chmod(suid, 0o4711)
        url = f"http://127.0.0.1:{self.port}/unreadable"
        as_user = ["setpriv", "--reuid=viatest", "--regid=viatest", "--clear-groups"]
        control = subprocess.run(as_user + [suid, "-sS", url + "-control"], env=self.env,
                                 capture_output=True, text=True)
        self.assertEqual(control.returncode, 0, control.stderr)  # outside via it runs, direct
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/unreadable-control"])
        os.remove(self.record)
        proc = self.run_via("app:tor", *as_user, "sh", "-c", f"{suid} -sS {url}; echo status=$?")
        self.assertIn("status=126", proc.stdout, proc.stderr)
        self.assertIn("it is setuid", proc.stderr)
        self.assertEqual(self.records(self.record), [])

    def test_scrubbed_environment_gets_the_shim_back(self):
        curl = shutil.which("curl")
        proc = self.run_via("app:tor", "env", "-i", "/usr/bin/printenv", "VIA_NETWORK")
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "app:tor")
        self.assertOk(self.run_via("app:tor", "env", "-i", curl, "-sSf",
                                   f"http://example.test:{self.port}/scrubbed"))
        self.assertReachedThroughProxy(self.record, "example.test", path="/scrubbed")

    def test_python_subprocess_with_empty_env_is_routed(self):
        code = (f"import subprocess, sys; sys.exit(subprocess.call(['{shutil.which('curl')}', "
                f"'-sSf', 'http://example.test:{self.port}/py'], env={{}}))")
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertReachedThroughProxy(self.record, "example.test", path="/py")


if __name__ == "__main__":
    harness.main()
