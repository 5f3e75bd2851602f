"""Optimistic data (`optimistic_data: true` on a network.socks5 entry).

The shim's connect returns once the CONNECT request is written, the program's first bytes follow
it before the proxy has answered, and the proxy's replies are taken off the socket before the
program's first read, whichever call reads (read, recv, recvfrom, recvmsg, readv, recvmmsg; with
MSG_PEEK first; on a non-blocking socket; with the reply split in two). A refused CONNECT shows
up on that read (or on a write, once the refusal has come) as ECONNREFUSED/ECONNRESET, logged by
the broker. A recording relay (bench/delay_relay.py) in front of the proxy shows what the proxy
side received and whether it had answered yet; the target's record shows what reached it; the
program's output is compared byte for byte with the file served, so a stray SOCKS byte shows.
Tor's private network: test_tor.py (test_optimistic_data_through_tor), which has its fixture.
"""
import os
import shutil
import subprocess

import harness

MODES = ["read", "recv", "recvfrom", "recvmsg", "readv", "recvmmsg"]


def request(name, port):
    """The CONNECT request for `name`:`port` (ATYP 3), as hex."""
    return (bytes([5, 1, 0, 3, len(name)]) + name.encode() + port.to_bytes(2, "big")).hex()


# A SOCKS5 "proxy" for the split-reply case: answers the greeting, reads the request, connects,
# and writes the CONNECT reply in two pieces 300 ms apart (a reply arriving in two segments),
# then relays. Usage: split_proxy.py PORT
SPLIT_PROXY = r"""
import socket, sys, threading, time
port = int(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(16)
def exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d: raise EOFError
        b += d
    return b
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            b.sendall(d)
    except OSError: pass
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
def serve(c):
    try:
        exact(c, 3)
        c.sendall(b"\x05\x00")
        head = exact(c, 5)
        name = exact(c, head[4]).decode()
        port = int.from_bytes(exact(c, 2), "big")
        print("connect", name, port, flush=True)
        up = socket.create_connection(("127.0.0.1", port))
        reply = b"\x05\x00\x00\x03\x09split.bnd\x12\x34"
        c.sendall(reply[:6]); time.sleep(0.3); c.sendall(reply[6:])
        threading.Thread(target=pump, args=(up, c), daemon=True).start()
        pump(c, up)
    except (OSError, EOFError) as e:
        print("error", e, flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class OptimisticData(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.start_dns()
        self.docroot = os.path.join(self.dir, "www")
        os.mkdir(self.docroot)
        # Every byte value, SOCKS5 replies included, and longer than one read.
        self.page = bytes(range(256)) * 400 + b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50"
        with open(os.path.join(self.docroot, "page.bin"), "wb") as f:
            f.write(self.page)
        self.port, self.record = self.start_target(self.docroot)

    def reader(self):
        """data/optimistic_reader.c, built into this test's directory."""
        if shutil.which("cc") is None:
            self.skipTest("no C compiler")
        exe = os.path.join(self.dir, "optimistic_reader")
        built = subprocess.run(["cc", "-O1", "-o", exe,
                                os.path.join(harness.HERE, "data", "optimistic_reader.c")],
                               capture_output=True, text=True)
        if built.returncode != 0:
            self.skipTest("cannot build optimistic_reader: " + built.stderr[-300:])
        return exe

    def run_reader(self, *args, port=None):
        return subprocess.run([harness.VIA, "run", "-c", self.config, "--network", "app:tor", "--",
                               self.reader_exe, "example.test", str(port or self.port), *args],
                              env=self.env, capture_output=True, timeout=60)

    def body(self, raw):
        """The HTTP body of a response read whole; fails unless it starts with the status line
        (a stray SOCKS byte would come first)."""
        self.assertTrue(raw.startswith(b"HTTP/1.0 200 "), raw[:40])
        return raw.split(b"\r\n\r\n", 1)[1]

    def assertEarlyData(self, chunks, greeting_hex, path):
        """The client's writes before any answer from the proxy: the greeting and the request,
        then (in the same chunk or the next ones) the program's HTTP request."""
        conns = sorted({c["conn"] for c in chunks})
        self.assertTrue(conns, "the relay saw no write")
        first = [c for c in chunks if c["conn"] == conns[0]]
        early = "".join(c["hex"] for c in first if not c["answered"])
        prefix = greeting_hex + request("example.test", self.port)
        self.assertTrue(early.startswith(prefix), first)
        self.assertTrue(bytes.fromhex(early[len(prefix):]).startswith(b"GET " + path.encode()),
                        first)

    def optimistic(self, proxy, *extra):
        self.write_config([self.socks5_entry("tor", proxy, "optimistic_data: true", *extra)])

    # ---- the data goes before the reply ---------------------------------------------------
    def test_curl_sends_its_request_behind_the_connect_request_through_danted(self):
        proxy, log = self.start_danted(method="none")
        # 50 ms each way: the proxy cannot have answered before curl writes.
        relay, chunks = self.start_tap_relay(proxy, delay_ms=50)
        self.optimistic(relay, "pipeline: true")
        out = os.path.join(self.dir, "page.out")
        proc = self.run_via("app:tor", "curl", "-sS", "--max-time", "20", "-o", out,
                            f"http://example.test:{self.port}/page.bin")
        self.assertOk(proc)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), self.page)
        self.assertEarlyData(chunks(), "050100", "/page.bin")
        self.assertReachedThroughProxy(self.record, "example.test", path="/page.bin")
        self.assertEqual(harness.danted_requests(log), [(3, f"example.test.{self.port}")])
        self.assertEqual(self.dns_queries(".test"), [])

    def test_stepwise_with_credentials_the_request_and_data_follow_the_auth_answer(self):
        # pipeline: false: greeting and credentials take their round trips, then the request
        # and the program's bytes go together.
        proxy, log = self.start_danted(method="pam.username", pam_service="via-test-sockd")
        relay, chunks = self.start_tap_relay(proxy, delay_ms=50)
        self.optimistic(relay, "username: alice", "password: secret")
        self.reader_exe = self.reader()
        proc = self.run_reader("/page.bin", "recv")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.body(proc.stdout), self.page)
        got = chunks()
        conn = [c for c in got if c["conn"] == got[0]["conn"]]
        self.assertEqual(conn[0]["hex"], "050102", conn)
        after_auth = "".join(c["hex"] for c in conn[2:])
        self.assertTrue(after_auth.startswith(request("example.test", self.port)), conn)
        self.assertIn(b"GET /page.bin", bytes.fromhex(after_auth))
        self.assertIn("alice", harness.danted_users(log))

    def test_python_reads_the_page_through_every_read_call(self):
        proxy, _ = self.start_danted(method="none")
        relay, chunks = self.start_tap_relay(proxy, delay_ms=20)
        self.optimistic(relay, "pipeline: true")
        self.reader_exe = self.reader()
        for mode in MODES:
            for extra in ([], ["peek"], ["nonblock"]):
                with self.subTest(mode=mode, extra=extra):
                    proc = self.run_reader("/page.bin", mode, *extra)
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    self.assertEqual(self.body(proc.stdout), self.page)
                    if "peek" in extra:
                        self.assertIn(b"peeked " + b"HTTP/1.0 200 ".hex().encode(), proc.stderr)
        self.assertReachedThroughProxy(self.record, "example.test", count=3 * len(MODES),
                                       path="/page.bin")
        for c in chunks():
            if c["seq"] == 0:
                self.assertFalse(c["answered"], c)
                self.assertTrue(c["hex"].startswith("050100" + request("example.test",
                                                                        self.port)), c)

    def test_python_socket_gets_the_exact_body(self):
        proxy, _ = self.start_danted(method="none")
        self.optimistic(proxy, "pipeline: true")
        code = ("import socket,sys\n"
                f"s = socket.create_connection(('example.test', {self.port}))\n"
                "s.sendall(b'GET /page.bin HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')\n"
                "f = s.makefile('rb'); sys.stdout.buffer.write(f.read())\n")
        proc = subprocess.run([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                               "--", harness.PYTHON, "-c", code], env=self.env,
                              capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.body(proc.stdout), self.page)

    def test_a_reply_in_two_segments_is_taken_whole(self):
        port = harness.free_port()
        p, log = self.spawn([harness.PYTHON, "-c", SPLIT_PROXY, str(port)], "split.log")
        harness.wait_port(port, proc=p)
        self.optimistic(port, "pipeline: true")
        self.reader_exe = self.reader()
        for mode in MODES:
            for extra in ([], ["peek"], ["nonblock"], ["epollet"]):
                with self.subTest(mode=mode, extra=extra):
                    proc = self.run_reader("/page.bin", mode, *extra)
                    self.assertEqual(proc.returncode, 0, proc.stderr)
                    self.assertEqual(self.body(proc.stdout), self.page)
                    if extra in (["nonblock"], ["epollet"]):
                        # Half the reply was there: the read said EAGAIN, the poll went on.
                        self.assertIn(b"eagain", proc.stderr)
        self.assertEqual(harness.read_lines(log).count(f"connect example.test {self.port}"),
                         4 * len(MODES))

    def test_asyncio_reads_through_its_event_loop(self):
        # A non-blocking socket in an epoll loop: readiness may come for reply bytes alone, the
        # read then says EAGAIN and the loop waits again.
        proxy, _ = self.start_danted(method="none")
        relay, _ = self.start_tap_relay(proxy, delay_ms=20)
        self.optimistic(relay, "pipeline: true")
        code = ("import asyncio, sys\n"
                "async def main():\n"
                f"    r, w = await asyncio.open_connection('example.test', {self.port})\n"
                "    w.write(b'GET /page.bin HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')\n"
                "    sys.stdout.buffer.write(await r.read())\n"
                "asyncio.run(main())\n")
        proc = subprocess.run([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                               "--", harness.PYTHON, "-c", code], env=self.env,
                              capture_output=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.body(proc.stdout), self.page)

    # ---- a proxy that never answers -------------------------------------------------------------
    def test_a_silent_proxy_times_out_on_the_read(self):
        # connect returns at once (the pipelined request is written); SO_RCVTIMEO bounds a
        # blocking read as for any socket (EAGAIN), and connect_timeout bounds the handshake
        # (ETIMEDOUT). Nothing reaches the target.
        proxy, log = self.start_hung_proxy()
        self.optimistic(proxy, "pipeline: true", "connect_timeout: 2s")
        code = ("import socket, struct, sys, time\n"
                f"s = socket.create_connection(('example.test', {self.port}))\n"
                "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack('ll', 0, 300000))\n"
                "for i in range(2):\n"
                "    t = time.monotonic()\n"
                "    try:\n"
                "        s.recv(100)\n"
                "    except OSError as e:\n"
                "        print(e.__class__.__name__, e.errno, round(time.monotonic() - t, 1))\n"
                "    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack('ll', 0, 0))\n")
        proc = subprocess.run([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                               "--", harness.PYTHON, "-c", code], env=self.env,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = proc.stdout.splitlines()
        self.assertEqual(len(lines), 2, proc.stdout)
        name, err, took = lines[0].split()
        self.assertEqual((name, int(err)), ("BlockingIOError", 11), lines)  # EAGAIN
        self.assertLess(float(took), 1.0)
        name, err, took = lines[1].split()
        self.assertEqual((name, int(err)), ("TimeoutError", 110), lines)  # ETIMEDOUT
        self.assertIn("did not reply to CONNECT within connect_timeout", proc.stderr)
        self.assertTargetSawNothing(self.record)

    # ---- refusals -----------------------------------------------------------------------------
    def assertRefused(self, proc, call):
        self.assertEqual(proc.returncode, 3, proc.stderr)
        self.assertRegex(proc.stderr.decode(), f"{call} errno (ECONNREFUSED|ECONNRESET)")

    def test_a_refused_connect_is_the_first_reads_error_through_danted(self):
        proxy, log = self.start_danted(method="none")
        # The refusal comes 100 ms after the request: the program has written and is reading.
        relay, _ = self.start_tap_relay(proxy, delay_ms=50)
        self.optimistic(relay, "pipeline: true")
        self.reader_exe = self.reader()
        closed = harness.closed_port()
        for mode in MODES:
            with self.subTest(mode=mode):
                proc = self.run_reader("/refused", mode, port=closed)
                self.assertRefused(proc, mode)
                self.assertIn(b"failed (optimistic data: seen on the first read)", proc.stderr)
        self.assertTargetSawNothing(self.record)
        said = "\n".join(self.broker_log())
        self.assertIn(f"example.test:{closed}", said)

    def test_a_refusal_that_has_come_is_the_next_writes_error(self):
        proxy, _ = self.start_danted(method="none")
        self.optimistic(proxy, "pipeline: true")
        self.reader_exe = self.reader()
        proc = self.run_reader("/refused", "read", "writefirst", port=harness.closed_port())
        self.assertRefused(proc, "send")
        self.assertTargetSawNothing(self.record)

    def test_microsocks_refusal_reaches_the_program_on_read(self):
        # microsocks 1.0.3 cannot take pipelined requests, nor data that arrives with the request
        # (it drops what follows the first message of a recv: docs/configuration.md); its
        # refusal still reaches the program, on the first read.
        proxy, log = self.start_microsocks()
        relay, _ = self.start_tap_relay(proxy, delay_ms=50)
        self.optimistic(relay)
        self.reader_exe = self.reader()
        proc = self.run_reader("/refused", "recv", port=harness.closed_port())
        self.assertRefused(proc, "recv")
        self.assertTargetSawNothing(self.record)

    # ---- where it is ignored ------------------------------------------------------------------
    def test_the_broker_handshake_ignores_it(self):
        # handshake: broker hands the socket over after the reply: the program's bytes follow it.
        proxy, _ = self.start_danted(method="none")
        relay, chunks = self.start_tap_relay(proxy, delay_ms=20)
        self.write_config([self.socks5_entry("tor", relay, "pipeline: true",
                                             "optimistic_data: true")],
                          service={"handshake": "broker"})
        self.reader_exe = self.reader()
        proc = self.run_reader("/page.bin", "read")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.body(proc.stdout), self.page)
        conn = chunks()
        self.assertEqual(conn[0]["hex"], "050100" + request("example.test", self.port))
        self.assertTrue(conn[1]["answered"], conn)

    def test_strict_mode_ignores_it_for_a_static_program(self):
        # A static program's reads cannot be hooked: `via run --strict` reads the reply itself
        # before the program gets the socket, and the body arrives clean.
        self.require_namespace()
        exe = self.static_gai_client()
        proxy, _ = self.start_danted(method="none")
        relay, chunks = self.start_tap_relay(proxy, delay_ms=20)
        self.optimistic(relay, "pipeline: true")
        proc = self.via("run", "--strict", "--network", "app:tor", "--", exe, "example.test",
                        str(self.port), "page.bin")
        self.assertOk(proc)
        self.assertReachedThroughProxy(self.record, "example.test", path="/page.bin")
        conn = chunks()
        self.assertEqual(conn[0]["hex"], "050100" + request("example.test", self.port))
        self.assertTrue(conn[1]["answered"], conn)

    def test_without_optimistic_data_connect_waits_for_the_reply(self):
        proxy, _ = self.start_danted(method="none")
        relay, chunks = self.start_tap_relay(proxy, delay_ms=20)
        self.write_config([self.socks5_entry("tor", relay, "pipeline: true")])
        self.reader_exe = self.reader()
        proc = self.run_reader("/page.bin", "read")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.body(proc.stdout), self.page)
        conn = chunks()
        self.assertEqual(conn[0]["hex"], "050100" + request("example.test", self.port))
        self.assertTrue(conn[1]["answered"], conn)
        self.assertTrue(bytes.fromhex(conn[1]["hex"]).startswith(b"GET /page.bin"))
        proc = self.run_reader("/refused", "read", port=harness.closed_port())
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertRegex(proc.stderr.decode(), "connect errno ECONNREFUSED")


if __name__ == "__main__":
    harness.main()
