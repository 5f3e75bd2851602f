"""listen() under an overlay whose driver cannot carry inbound connections (SOCKS5).

A listen on a non-loopback address is refused with EOPNOTSUPP and one line on stderr, unless
`network_service.listen: local` explicitly lets the program listen on the host's interfaces;
loopback listens stay local. Proof that nothing listens: `ss` while the program is alive, and a
packet capture of a direct connection attempt (SYN answered by RST, never SYN-ACK).
"""
import os
import shutil
import signal
import socket
import subprocess
import time

import harness

LISTENER = """
import socket, sys, errno
family = socket.AF_INET6 if ":" in {host!r} else socket.AF_INET
srv = socket.socket(family)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(({host!r}, {port}))
try:
    srv.listen(5)
    print("listening", srv.getsockname()[:2], flush=True)
except OSError as e:
    # ENOTSUP and EOPNOTSUPP are one value on Linux; Python names it ENOTSUP.
    print("error", "EOPNOTSUPP" if e.errno == errno.EOPNOTSUPP else errno.errorcode[e.errno],
          flush=True)
    sys.stdin.readline()
    sys.exit(0)
srv.settimeout(30)
try:
    conn, peer = srv.accept()
    conn.sendall(b"hello " + peer[0].encode() + b"\\n")
    conn.close()
except OSError as e:
    print("accept error", e, flush=True)
sys.stdin.readline()
"""


class ListenPolicy(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()

    def start_listener(self, host, port, service=None):
        self.write_config([self.socks5_entry("tor", self.proxy_port)], service=service)
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor", "--",
                              harness.PYTHON, "-c", LISTENER.format(host=host, port=port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env)

        def stop():
            if p.poll() is None:
                p.kill()
            p.wait()
        self.addCleanup(stop)
        first = p.stdout.readline().strip()
        return p, first

    def finish(self, p):
        out, err = p.communicate("\n", timeout=30)
        return out, err

    def listening(self, port):
        return subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                              text=True).stdout.strip()

    def capture(self, port):
        """tcpdump on lo for TCP port `port`; returns a function giving the decoded lines."""
        if shutil.which("tcpdump") is None:
            self.skipTest("tcpdump is not installed")
        text = os.path.join(self.dir, f"port{port}.tcpdump")
        out = open(text, "w")
        p = subprocess.Popen(["tcpdump", "-i", "lo", "-l", "-n", f"tcp port {port}"],
                             stdout=out, stderr=subprocess.PIPE, text=True)
        out.close()
        p.stderr.readline()  # "verbose output suppressed"
        p.stderr.readline()  # "listening on lo": the capture runs

        def lines():
            time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            p.wait(10)
            return harness.read_lines(text)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        return lines

    def assertRefusedDirectly(self, port):
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

    def test_listen_on_all_interfaces_is_refused(self):
        self.require_namespace()
        port = harness.free_port()
        packets = self.capture(port)
        p, first = self.start_listener("0.0.0.0", port)
        self.assertEqual(first, "error EOPNOTSUPP")
        self.assertEqual(self.listening(port), "")  # the program is alive and listens nowhere
        self.assertRefusedDirectly(port)
        out, err = self.finish(p)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertEqual(
            lines[0],
            f"via: listen on 0.0.0.0:{port} refused: app:tor (network.socks5) cannot carry inbound connections; set network_service.listen: "
            "local to listen on the host's own interfaces instead")
        seen = packets()
        self.assertTrue(any(f"> 127.0.0.1.{port}: Flags [S]" in l for l in seen), seen)
        self.assertTrue(any(f"127.0.0.1.{port} >" in l and "Flags [R" in l for l in seen), seen)
        self.assertFalse(any(f"127.0.0.1.{port} >" in l and "Flags [S.]" in l for l in seen), seen)
        log = "\n".join(self.broker_log())
        self.assertIn("cannot carry inbound connections", log)

    def test_listen_on_ipv6_any_is_refused(self):
        port = harness.free_port()
        p, first = self.start_listener("::", port)
        self.assertEqual(first, "error EOPNOTSUPP")
        self.assertEqual(self.listening(port), "")
        self.finish(p)

    def test_loopback_listen_stays_local(self):
        port = harness.free_port()
        p, first = self.start_listener("127.0.0.1", port)
        self.assertEqual(first, f"listening ('127.0.0.1', {port})")
        self.assertIn(f"127.0.0.1:{port}", self.listening(port))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            self.assertEqual(s.makefile().readline(), "hello 127.0.0.1\n")
        out, err = self.finish(p)
        self.assertEqual(err, "")
        self.assertEqual(harness.read_lines(self.proxy_log), [])  # the proxy saw nothing

    def test_local_switch_allows_the_host_interfaces(self):
        port = harness.free_port()
        p, first = self.start_listener("0.0.0.0", port, service={"listen": "local"})
        self.assertEqual(first, f"listening ('0.0.0.0', {port})")
        self.assertIn(f"0.0.0.0:{port}", self.listening(port))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            self.assertEqual(s.makefile().readline(), "hello 127.0.0.1\n")
        out, err = self.finish(p)
        self.assertEqual(err, "")
        self.assertIn("stays on the host's interfaces (network_service.listen: local)",
                      "\n".join(self.broker_log()))

    def test_refuse_switch(self):
        port = harness.free_port()
        p, first = self.start_listener("0.0.0.0", port, service={"listen": "refuse"})
        self.assertEqual(first, "error EOPNOTSUPP")
        out, err = self.finish(p)
        self.assertIn("network_service.listen is refuse", err)
        self.assertEqual(self.listening(port), "")


if __name__ == "__main__":
    harness.main()
