"""When the overlay cannot be used, the connect fails; nothing ever goes direct."""
import os
import re
import signal
import socket
import threading
import time

import harness


class FailClosed(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.port, self.record = self.start_target()
        self.url = f"http://example.test:{self.port}/"

    def test_proxy_down_fails_and_the_broker_logs_overlay_and_cause(self):
        dead = harness.free_port()  # nothing listens there
        self.write_config([self.socks5_entry("tor", dead)])
        proc = self.run_via("app:tor", "curl", "-sS", self.url)
        self.assertEqual(proc.returncode, 7, proc.stderr)  # curl: couldn't connect
        self.assertIn(f"127.0.0.1:{dead}", proc.stderr)     # the shim's one line
        self.assertEqual(self.records(self.record), [])
        failures = [l for l in self.broker_log() if "failed" in l and "app:tor" in l]
        self.assertTrue(failures, self.broker_log())
        self.assertIn("Connection refused", failures[0])
        self.assertIn("example.test", failures[0])

    def test_quiet_mode_prints_nothing_but_still_fails(self):
        self.write_config([self.socks5_entry("tor", harness.free_port())])
        proc = self.via("run", "-q", "--network", "app:tor", "--", "curl", "-s", self.url)
        self.assertEqual(proc.returncode, 7)
        self.assertEqual(proc.stderr, "")
        self.assertEqual(self.records(self.record), [])

    def test_refusal_from_the_proxy_becomes_econnrefused(self):
        proxy_port, _ = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)])
        closed = harness.free_port()
        code = f"""
import socket, errno
try:
    socket.create_connection(('example.test', {closed}), timeout=10)
except OSError as e:
    print(errno.errorcode[e.errno])
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertEqual(proc.stdout.strip(), "ECONNREFUSED", proc.stderr)
        self.assertRegex(proc.stderr, r"SOCKS5 proxy replied 0x0[15]")

    def test_broker_killed_mid_session(self):
        proxy_port, _ = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)])
        flag = os.path.join(self.dir, "go")
        script = (f"while [ ! -e {flag} ]; do sleep 0.05; done; "
                  f"curl -sS {self.url}; echo curl=$?")
        import subprocess
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                              "--", "sh", "-c", script], env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(p.kill)
        deadline = time.time() + 10
        pid = None
        while time.time() < deadline and pid is None:
            st = self.via("status")
            m = re.search(r"broker pid (\d+)", st.stdout)
            pid = int(m.group(1)) if m else None
            time.sleep(0.05)
        self.assertIsNotNone(pid, "no broker")
        os.kill(pid, signal.SIGKILL)
        open(flag, "w").close()
        out, err = p.communicate(timeout=30)
        self.assertIn("curl=6", out, err)  # the name cannot even be mapped without the broker
        self.assertIn("not reachable", err)
        self.assertEqual(self.records(self.record), [])

    def _hung_proxy(self):
        """A TCP server that accepts and never answers: a proxy that hangs mid-handshake."""
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        held = []
        stop = threading.Event()

        def serve():
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(srv.accept()[0])
                except OSError:
                    pass
        t = threading.Thread(target=serve, daemon=True)
        t.start()

        def close():
            stop.set()
            t.join()
            for c in held:
                c.close()
            srv.close()
        self.addCleanup(close)
        return srv.getsockname()[1]

    def test_hung_proxy_times_out_blocking_and_nonblocking(self):
        port = self._hung_proxy()
        self.write_config([self.socks5_entry("tor", port, "connect_timeout: 1s")])
        start = time.time()
        proc = self.run_via("app:tor", "curl", "-sS", self.url, timeout=30)
        self.assertEqual(proc.returncode, 28, proc.stderr)  # curl: ETIMEDOUT
        self.assertIn("within 1000 ms", proc.stderr)
        code = f"""
import asyncio, errno
async def main():
    try:
        await asyncio.open_connection('example.test', {self.port})
        print('connected?!')
    except OSError as e:
        print(errno.errorcode[e.errno])
asyncio.run(main())
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code, timeout=30)
        self.assertIn("ETIMEDOUT", proc.stdout, proc.stderr)
        self.assertLess(time.time() - start, 20)
        self.assertEqual(self.records(self.record), [])

    def test_overlay_without_a_driver_is_refused_before_running(self):
        self.write_config([["name: tailnet", "kind: network.tailscale", "auth_key_env: TS_AUTHKEY"]])
        marker = os.path.join(self.dir, "ran")
        proc = self.run_via("app:tailnet", "touch", marker)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("not supported by this build", proc.stderr)
        self.assertFalse(os.path.exists(marker))

    def test_bare_preload_with_an_unknown_overlay_fails_the_connect(self):
        proxy_port, proxy_log = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)])
        import subprocess
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_NETWORK="app:typo",
                   VIA_CONFIG=self.config)
        proc = subprocess.run(["curl", "-sS", self.url], env=env, capture_output=True, text=True,
                              timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn('unknown overlay "app:typo"', proc.stderr)
        self.assertEqual(self.records(self.record), [])
        self.assertEqual(harness.read_lines(proxy_log), [])


if __name__ == "__main__":
    harness.main()
