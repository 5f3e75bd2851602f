"""SOCKS5 isolation modes and `via newnym`, read from what the proxy saw.

danted with a PAM service that accepts any credentials logs the username of every connection
(harness.danted_users): connections that share a username share a Tor circuit (IsolateSOCKSAuth),
so the usernames show which connections each mode puts together. The shim runs the handshake
itself unless a test says otherwise; a child connecting to a fake address its parent resolved
goes through the broker's CONNECT, which must compute the same credential.
"""
import os
import re
import shutil
import subprocess
import time

import harness

# CONNECTS HOST... : one HTTP GET per host on a fresh connection, by name.
GETTER = r"""
import sys, urllib.request
for host in sys.argv[2:]:
    urllib.request.urlopen(f"http://{host}:{sys.argv[1]}/", timeout=30).read()
"""

# The parent resolves the name; a child process connects to the fake address it got.
PARENT_RESOLVES = r"""
import socket, subprocess, sys
port = int(sys.argv[1])
addr = socket.getaddrinfo("example.test", port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
child = ("import socket, sys\n"
         "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)\n"
         "s.sendall(b'GET / HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')\n"
         "while s.recv(4096): pass\n")
sys.exit(subprocess.run([sys.executable, "-c", child, addr, str(port)]).returncode)
"""

# Connects, waits for FLAG to exist, connects again: one process across a `via newnym`.
TWICE = r"""
import os, sys, time, urllib.request
url = f"http://example.test:{sys.argv[1]}/"
urllib.request.urlopen(url, timeout=30).read()
open(sys.argv[2] + ".ready", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
urllib.request.urlopen(url, timeout=30).read()
"""


class Isolation(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy, self.log = self.start_danted("pam.username", pam_service="via-test-sockd")
        self.port, self.record = self.start_target()
        self.getter = os.path.join(self.dir, "getter.py")
        with open(self.getter, "w") as f:
            f.write(GETTER)

    def use(self, mode, service=None, *extra):
        self.write_config([self.socks5_entry("tor", self.proxy, f"isolation: {mode}", *extra)],
                          service=service)

    def get(self, *hosts):
        self.assertOk(self.run_via("app:tor", harness.PYTHON, self.getter, str(self.port),
                                   *hosts))

    def users(self, count):
        """The usernames danted saw, waiting until there are `count` of them."""
        harness.wait_for(lambda: len(harness.danted_users(self.log)) >= count, timeout=10)
        names = harness.danted_users(self.log)
        self.assertEqual(len(names), count, names)
        return names

    def test_destination_shares_a_credential_per_host_and_port(self):
        self.use("destination")
        self.get("example.test", "example.test", "other.test")
        self.get("example.test")  # another process, the same destination
        a, b, c, d = self.users(4)
        self.assertEqual(a, b)
        self.assertEqual(a, d)
        self.assertNotEqual(a, c)
        self.assertRegex(a, r"^via\.d0\.[0-9a-f]{16}\.[0-9a-f]{16}$")

    def test_the_broker_computes_the_destination_credential_the_shim_does(self):
        self.use("destination")
        self.get("example.test")  # by name, the shim's handshake
        script = os.path.join(self.dir, "parent.py")
        with open(script, "w") as f:
            f.write(PARENT_RESOLVES)
        self.assertOk(self.run_via("app:tor", harness.PYTHON, script, str(self.port)))
        shim, broker = self.users(2)
        self.assertEqual(shim, broker)
        # The second went through the broker: the name reached danted, not a fake address.
        self.assertEqual([d for _, d in harness.danted_requests(self.log)],
                         [f"example.test.{self.port}"] * 2)

    def test_process_shares_a_credential_within_a_process_only(self):
        self.use("process")
        self.get("example.test", "other.test")
        self.get("example.test")
        a, b, c = self.users(3)
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        self.assertRegex(a, r"^via\.p0\.[0-9a-f]{16}$")

    def test_program_shares_a_credential_per_executable(self):
        self.use("program")
        self.get("example.test")
        self.get("other.test")
        self.assertOk(self.run_via("app:tor", "curl", "-sSf", f"http://example.test:{self.port}/"))
        a, b, c = self.users(3)
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        # The executable's path is hashed: the proxy does not learn it.
        self.assertNotIn("python", a + c)

    def test_session_shares_a_credential_per_via_run(self):
        self.use("session")
        # One session: python and a curl it starts.
        code = ("import subprocess, sys, urllib.request\n"
                f"urllib.request.urlopen('http://example.test:{self.port}/').read()\n"
                f"subprocess.run(['curl', '-sSf', 'http://other.test:{self.port}/'], check=True)\n")
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.get("example.test")  # another session
        a, b, c = self.users(3)
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_session_through_the_broker_handshake(self):
        self.use("session", {"handshake": "broker"})
        code = ("import subprocess, urllib.request\n"
                f"urllib.request.urlopen('http://example.test:{self.port}/').read()\n"
                f"subprocess.run(['curl', '-sSf', 'http://other.test:{self.port}/'], check=True)\n")
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.get("example.test")
        a, b, c = self.users(3)
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_newnym_gives_later_connections_new_credentials(self):
        self.use("program")
        self.get("example.test")
        self.get("example.test")
        flag = os.path.join(self.dir, "go")
        script = os.path.join(self.dir, "twice.py")
        with open(script, "w") as f:
            f.write(TWICE)
        # A program running across the newnym: its second connect gets the new credential.
        proc = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                                 "--", harness.PYTHON, script, str(self.port), flag],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        self.addCleanup(proc.kill)
        self.assertTrue(harness.wait_for(lambda: os.path.exists(flag + ".ready"), timeout=30))
        renew = self.via("newnym")
        self.assertOk(renew)
        self.assertIn("app:tor: new identity for later connections", renew.stdout)
        open(flag, "w").close()
        _, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.get("example.test")
        self.get("example.test")
        before1, before2, before3, after3, after1, after2 = self.users(6)
        self.assertEqual(len({before1, before2, before3}), 1)
        self.assertNotEqual(before1, after1)
        self.assertEqual(after1, after2)
        self.assertEqual(after1, after3)
        self.assertRegex(after1, r"^via\.g1\.")
        status = self.via("status")
        self.assertIn("identity 1 (via newnym at", status.stdout)
        self.assertIn("newnym: app:tor starts a new identity", "\n".join(self.broker_log()))

    def test_isolate_streams_true_is_connection(self):
        self.use("connection")
        self.get("example.test", "example.test")
        a, b = self.users(2)
        self.assertNotEqual(a, b)
        self.assertRegex(a, r"^[0-9a-f]{16}$")

    def test_contradicting_settings_are_a_config_error(self):
        self.use("session", None, "isolate_streams: true")
        p = self.via("check")
        self.assertFailed(p)
        self.assertIn("isolate_streams: contradicts isolation: session", p.stderr)
        self.use("tunnel")
        p = self.via("check")
        self.assertFailed(p)
        self.assertIn("isolation: must be connection, destination, process, program, session or "
                      "none, not \"tunnel\"", p.stderr)

    def test_newnym_without_a_broker_or_control_port(self):
        self.use("program")
        p = self.via("newnym")
        self.assertOk(p)
        self.assertIn("no broker running", p.stdout)
        # A control port nobody listens on: named, and the exit status says so.
        self.use("program", None, f"control_port: {harness.closed_port()}")
        p = self.via("newnym")
        self.assertFailed(p, codes=(1,))
        self.assertIn("Tor control 127.0.0.1:", p.stderr)
        self.assertIn("connect: Connection refused", p.stderr)


if __name__ == "__main__":
    harness.main()
