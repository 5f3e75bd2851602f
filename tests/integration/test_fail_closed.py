"""Fail closed: when the overlay cannot be used, connects fail; nothing ever goes direct.

In every test a direct connection would succeed and be seen: the target listens on 127.0.0.1
and dnsmasq would answer the test names with 127.0.0.1. So "the target saw nothing" and "DNS
saw nothing" really mean nothing leaked.
"""
import os
import signal
import subprocess
import time

import harness


class FailClosed(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.start_dns()
        self.port, self.record = self.start_target()
        self.url = f"http://example.test:{self.port}/"
        self.loop_url = f"http://127.0.0.1:{self.port}/"

    def failure_lines(self, network="app:tor"):
        return [l for l in self.broker_log() if network in l and "failed" in l]

    def assertNothingLeaked(self):
        self.assertTargetSawNothing(self.record)
        self.assertEqual(self.dns_queries(".test"), [])

    def test_proxy_down_fails_with_one_log_line(self):
        dead = harness.closed_port()
        self.write_config([self.socks5_entry("tor", dead)])
        proc = self.run_via("app:tor", "curl", "-4", "-sS", self.url)
        self.assertFailed(proc, codes=(7,))  # curl: couldn't connect
        self.assertIn(f"127.0.0.1:{dead}", proc.stderr)  # the shim's one line
        self.assertNothingLeaked()
        lines = self.failure_lines()  # one connect (-4: one address), one line
        self.assertEqual(len(lines), 1, "\n".join(self.broker_log()))
        self.assertIn(f"example.test:{self.port}", lines[0])
        self.assertIn(f"127.0.0.1:{dead}", lines[0])
        self.assertIn("Connection refused", lines[0])

    def test_quiet_mode_prints_nothing_but_still_fails(self):
        self.write_config([self.socks5_entry("tor", harness.closed_port())])
        proc = self.via("run", "-q", "--network", "app:tor", "--", "curl", "-s", self.url)
        self.assertFailed(proc, codes=(7,))
        self.assertEqual(proc.stderr, "")
        self.assertNothingLeaked()

    def test_refusal_from_the_proxy_becomes_econnrefused(self):
        proxy_port, proxy_log = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)])
        closed = harness.closed_port()
        code = f"""
import socket, errno
try:
    socket.create_connection(('example.test', {closed}), timeout=10)
    print('connected?!')
except OSError as e:
    print(errno.errorcode[e.errno])
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertEqual(proc.stdout.strip(), "ECONNREFUSED", proc.stderr)
        self.assertRegex(proc.stderr, r"SOCKS5 proxy replied 0x0[15]")
        self.assertEqual(self.dns_queries(".test"), [])

    def test_proxy_down_loopback_overlay_does_not_fall_back(self):
        self.write_config([self.socks5_entry("tor", harness.closed_port())],
                          service={"loopback": "overlay"})
        proc = self.run_via("app:tor", "curl", "-sS", self.loop_url)
        self.assertFailed(proc, codes=(7,))
        self.assertTargetSawNothing(self.record)
        # Control: the very same request without via does reach the target.
        subprocess.run(["curl", "-sSf", self.loop_url], env=self.env, check=True,
                       capture_output=True, timeout=30)
        self.assertEqual([r["peer"] for r in self.records(self.record)], ["127.0.0.1"])

    def test_broker_killed_during_a_session(self):
        proxy_port, proxy_log = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)],
                          service={"loopback": "overlay"})
        go, out = os.path.join(self.dir, "go"), os.path.join(self.dir, "out")
        os.mkfifo(go)
        script = f"""
curl -sSf -o /dev/null {self.loop_url}before
{harness.PYTHON} -c "import socket; print(socket.gethostbyname('example.test'))" > {out}.fake
cat {go} >/dev/null
curl -sS {self.loop_url}after-loopback; echo "loopback $?" >> {out}
curl -sS {self.url}after-name; echo "name $?" >> {out}
curl -sS http://$(cat {out}.fake):{self.port}/after-fake; echo "fake $?" >> {out}
"""
        err = open(os.path.join(self.dir, "session.err"), "w")
        run = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                                "--", "sh", "-c", script], env=self.env,
                               stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        self.addCleanup(lambda: run.poll() is None and (run.kill(), run.wait()))
        self.assertTrue(harness.wait_for(lambda: os.path.exists(out + ".fake") and
                                         harness.read_lines(out + ".fake"), timeout=30),
                        "the session did not get going")
        self.assertReachedThroughProxy(self.record, "127.0.0.1", path="/before")  # control
        pids = self.broker_pids()
        self.assertEqual(len(pids), 1, self.broker_log())
        os.kill(pids[0], signal.SIGKILL)
        self.assertTrue(harness.wait_for(lambda: not harness.alive(pids[0]), timeout=10))
        with open(go, "w") as f:
            f.write("go\n")
        run.wait(60)
        results = dict(l.split() for l in harness.read_lines(out))
        self.assertEqual(set(results), {"loopback", "name", "fake"}, results)
        self.assertTrue(all(code != "0" for code in results.values()), results)
        self.assertIn("not reachable", harness.read_text(os.path.join(self.dir, "session.err")))
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/before"])
        self.assertEqual(self.dns_queries(".test"), [])

    def test_via_socket_pointing_nowhere(self):
        proxy_port, proxy_log = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)],
                          service={"loopback": "overlay"})
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_NETWORK="app:tor",
                   VIA_CONFIG=self.config, VIA_SOCKET=os.path.join(self.dir, "nowhere.sock"))
        for url in (self.loop_url, self.url):
            proc = subprocess.run(["curl", "-sS", url], env=env, capture_output=True,
                                  text=True, timeout=30)
            self.assertFailed(proc, msg=url)
        self.assertNothingLeaked()
        self.assertEqual(harness.microsocks_destinations(proxy_log), [])

    def test_hung_proxy_times_out(self):
        port, hung_log = self.start_hung_proxy()
        self.write_config([self.socks5_entry("tor", port, "connect_timeout: 1s")])
        start = time.monotonic()
        proc = self.run_via("app:tor", "curl", "-4", "-sS", "--max-time", "60", self.url)
        elapsed = time.monotonic() - start
        self.assertFailed(proc, codes=(28,))  # curl: ETIMEDOUT from connect()
        self.assertIn("within 1000 ms", proc.stderr)
        self.assertLess(elapsed, 8, "the overlay's connect_timeout was not applied")
        self.assertTrue(harness.read_lines(hung_log), "the hung proxy was never contacted")
        self.assertTrue(self.failure_lines(), self.broker_log())
        self.assertNothingLeaked()

    def test_hung_proxy_nonblocking_connect_fails_rather_than_hangs(self):
        port, hung_log = self.start_hung_proxy()
        self.write_config([self.socks5_entry("tor", port, "connect_timeout: 1s")])
        code = f"""
import asyncio, errno, re
async def main():
    try:
        await asyncio.wait_for(asyncio.open_connection('example.test', {self.port}), 60)
        print('connected')
    except OSError as e:  # in 3.11 asyncio.TimeoutError is TimeoutError, an OSError
        # One error per address when each failed differently worded (a non-blocking connect's
        # message names the address): "Multiple exceptions: [Errno 110] ..., [Errno 110] ...".
        codes = {{e.errno}} if e.errno is not None else set(
            int(c) for c in re.findall(r"Errno (\d+)", str(e)))
        print('hung' if not codes else 'error ' + ','.join(errno.errorcode[c] for c in codes))
asyncio.run(main())
"""
        start = time.monotonic()
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code, timeout=90)
        elapsed = time.monotonic() - start
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "error ETIMEDOUT", proc.stderr)
        self.assertLess(elapsed, 10)
        self.assertTrue(harness.read_lines(hung_log), "the hung proxy was never contacted")
        self.assertNothingLeaked()

    def test_overlay_whose_driver_cannot_start_is_refused_before_running(self):
        self.write_config([["name: tailnet", "kind: network.tailscale",
                            "auth_key_env: VIA_TEST_UNSET_TS_KEY"]])
        env = dict(self.env)
        env.pop("VIA_TEST_UNSET_TS_KEY", None)
        marker = os.path.join(self.dir, "ran")
        proc = self.run_via("app:tailnet", "touch", marker, env=env)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("overlay app:tailnet: auth_key_env VIA_TEST_UNSET_TS_KEY is not set in the "
                      "broker's environment", proc.stderr)
        self.assertFalse(os.path.exists(marker))

    def test_bare_preload_with_an_unknown_overlay_fails_the_connect(self):
        proxy_port, proxy_log = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)],
                          service={"loopback": "overlay"})
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_NETWORK="app:typo",
                   VIA_CONFIG=self.config)
        for url in (self.url, self.loop_url):
            proc = subprocess.run(["curl", "-sS", url], env=env, capture_output=True,
                                  text=True, timeout=60)
            self.assertFailed(proc, msg=url)
            self.assertIn('unknown overlay "app:typo"', proc.stderr)
        self.assertNothingLeaked()
        self.assertEqual(harness.read_lines(proxy_log), [])


if __name__ == "__main__":
    harness.main()
