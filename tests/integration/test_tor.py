"""via against a real, private, offline Tor network (tests/tor/tor_network.py).

Once per module: 3 directory authorities, 3 exits, a client (SocksPort + ControlPort) and an
onion-service host, all on 127.0.0.0/8 inside the test's network namespace (`lo`, plus a veth
pair to the IP-echo namespace this module creates: nothing can reach the real Tor network). The
tests watch the client's control port (STREAM events) to see which circuit carried each of
via's connections; exits' DNS goes to EXIT_RESOLVER (a dnsmasq a test starts when it needs
one).

Skipped with the reason when tor/tor-gencert are missing, without the namespace, or when the
network is not ready within VIA_TOR_TIMEOUT seconds (default 180). VIA_TEST_KEEP=1 keeps the
network's directory (torrcs, logs).
"""
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import harness

sys.path.insert(0, os.path.join(harness.ROOT, "tests", "tor"))
import tor_network  # noqa: E402

TARGET = os.path.join(harness.HERE, "target_server.py")
# The IP-echo namespace (see Tor._make_echo_namespace): addresses of this test's own making.
ECHO_IP = "10.214.0.2"
DIRECT_IP = "10.214.0.1"
EXIT_OUT = ["10.214.0.14", "10.214.0.15", "10.214.0.16"]
# The exits' DNS server (their resolv.conf); the program's is dnsmasq on 127.0.0.1 (harness).
EXIT_RESOLVER = "127.0.0.53"

# FETCHER PORT N TAG [child]: N HTTP GETs, each on a fresh connection, to 127.0.0.1:PORT;
# with "child", one more from a child process (same environment, so also under via).
FETCHER = r"""
import socket, subprocess, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"GET /%s%d HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % (sys.argv[3].encode(), i))
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    print(data.split(b"\r\n", 1)[0].decode(), flush=True)
if len(sys.argv) > 4 and sys.argv[4] == "child":
    sys.exit(subprocess.run([sys.executable, sys.argv[0], sys.argv[1], "1",
                             sys.argv[3] + "child"]).returncode)
"""


class Tor(harness.ViaCase):
    net = None
    net_dir = None

    @classmethod
    def setUpClass(cls):
        if harness.NS_REASON:
            raise unittest.SkipTest(harness.NS_REASON)
        reason = tor_network.missing_tools()
        if reason:
            raise unittest.SkipTest(reason)
        timeout = float(os.environ.get("VIA_TOR_TIMEOUT", "180"))
        cls.net_dir = tempfile.mkdtemp(prefix="via-tor-net-")
        cls.echo_ns = None
        try:
            cls._make_echo_namespace()
        except (OSError, subprocess.CalledProcessError) as e:
            cls._down()
            raise unittest.SkipTest(f"cannot create the IP-echo namespace: {e}")
        cls.net = tor_network.TorNetwork(cls.net_dir, exit_outbound=EXIT_OUT,
                                         exit_resolver=EXIT_RESOLVER)
        t0 = time.time()
        try:
            cls.net.up(timeout=timeout,
                       log=lambda m: print(f"[tor network] {m}", file=sys.stderr, flush=True))
        except Exception as e:  # noqa: BLE001 - any failure to come up is a skip, with why
            cls._down()
            raise unittest.SkipTest(f"the private Tor network was not ready within "
                                    f"{timeout:.0f}s ({time.time() - t0:.0f}s spent): {e}")

    @classmethod
    def _make_echo_namespace(cls):
        """A network namespace holding only the IP-echo target (ECHO_IP), joined to the test
        namespace by a veth pair: there, DIRECT_IP is the primary address (direct connections
        come from it) and EXIT_OUT are the exits' outgoing addresses for non-loopback targets."""
        cls.echo_ns = f"via-echo-{os.getpid()}"
        ip = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True)  # noqa
        ip("netns", "add", cls.echo_ns)
        ip("link", "add", "via-e0", "type", "veth", "peer", "name", "via-e1")
        ip("link", "set", "via-e1", "netns", cls.echo_ns)
        for a in [DIRECT_IP] + EXIT_OUT:
            ip("addr", "add", f"{a}/24", "dev", "via-e0")
        ip("link", "set", "via-e0", "up")
        ip("-n", cls.echo_ns, "addr", "add", f"{ECHO_IP}/24", "dev", "via-e1")
        ip("-n", cls.echo_ns, "link", "set", "via-e1", "up")
        ip("-n", cls.echo_ns, "link", "set", "lo", "up")

    @classmethod
    def tearDownClass(cls):
        cls._down()

    @classmethod
    def _down(cls):
        if cls.net is not None:
            cls.net.down()
        if cls.echo_ns:
            subprocess.run(["ip", "link", "del", "via-e0"], capture_output=True)
            subprocess.run(["ip", "netns", "del", cls.echo_ns], capture_output=True)
        if cls.net_dir:
            if os.environ.get("VIA_TEST_KEEP") == "1":
                print(f"\n[tor network] keeping {cls.net_dir}", file=sys.stderr)
            else:
                shutil.rmtree(cls.net_dir, True)

    # ---- helpers ---------------------------------------------------------------------------
    def use_tor(self, isolate, *extra):
        self.write_config(
            [self.socks5_entry("tor", self.net.socks_port,
                               f"isolate_streams: {'true' if isolate else 'false'}",
                               "connect_timeout: 60s", *extra)],
            service={"loopback": "overlay"})

    def watch_streams(self):
        """A control connection to the client receiving STREAM events."""
        ctl = self.net.client.controller()
        self.addCleanup(ctl.close)
        ctl.setevents("STREAM")
        return ctl

    def succeeded(self, ctl, target, count, timeout=15.0):
        """The STREAM SUCCEEDED events for `target` ("host:port"), waiting until `count` of
        them arrived (events may trail the program's exit slightly)."""
        seen = []
        deadline = time.time() + timeout
        while True:
            for text in ctl.events(timeout=0.2):
                ev = tor_network.parse_stream_event(text)
                if ev:
                    seen.append(ev)
            ok = [e for e in seen if e["status"] == "SUCCEEDED" and e["target"] == target]
            if len(ok) >= count or time.time() >= deadline:
                return ok, seen

    def exit_of(self, ctl, circuit_id):
        return self.net.exit_of(ctl, circuit_id)

    def assertRan(self, proc, ctl=None):
        """assertOk, with the STREAM events seen and the client's log on failure."""
        if proc.returncode != 0:
            seen = ctl.events(timeout=1) if ctl else []
            self.assertOk(proc, f"STREAM events: {seen}\nbroker log:\n" +
                          "\n".join(self.broker_log()[-20:]) +
                          f"\ntor client:\n{self.net.diagnosis()}")

    def fetch(self, port, n, tag, child=False, timeout=180):
        """Runs FETCHER under via: n requests on n connections (plus one in a child)."""
        script = os.path.join(self.dir, "fetcher.py")
        with open(script, "w") as f:
            f.write(FETCHER)
        argv = [harness.PYTHON, script, str(port), str(n), tag] + (["child"] if child else [])
        return self.run_via("app:tor", *argv, timeout=timeout)

    # ---- (a) a TCP connection through an exit --------------------------------------------
    def test_curl_reaches_a_loopback_target_through_an_exit(self):
        port, record = self.start_target()
        self.use_tor(isolate=False)
        ctl = self.watch_streams()
        proc = self.run_via("app:tor", "curl", "-sSf", "--max-time", "90",
                            f"http://127.0.0.1:{port}/through-tor", timeout=120)
        self.assertRan(proc, ctl)
        ok, seen = self.succeeded(ctl, f"127.0.0.1:{port}", 1)
        self.assertEqual(len(ok), 1, f"STREAM events: {seen}")
        circuit = ok[0]["circuit"]
        self.assertNotEqual(circuit, "0")
        exit_fp = self.exit_of(ctl, circuit)
        self.assertIn(exit_fp, self.net.describe()["exits"],
                      f"circuit {circuit} does not end at one of the exits")
        recs = self.records(record)
        self.assertEqual([r["path"] for r in recs], ["/through-tor"], recs)
        self.assertIn(ipaddress.ip_address(recs[0]["peer"]), ipaddress.ip_network("127.0.0.0/8"))

    def test_pipelined_handshake_reaches_tor_in_one_write(self):
        # Tor reads the greeting, the credentials (isolation ones, or none) and the CONNECT
        # request from one write (`pipeline: true`); the relay in front of its SocksPort shows
        # what it received. With credentials Tor answers without the method reply (it keeps
        # the credentials' status only), which the handshake accepts.
        port, record = self.start_target()
        ctl = self.watch_streams()
        relay, chunks = self.start_tap_relay(self.net.socks_port)
        request = (bytes([5, 1, 0, 1, 127, 0, 0, 1]) + port.to_bytes(2, "big")).hex()
        cred = "10(?:3[0-9]|6[1-6]){16}"
        cases = [("program", True), ("broker", True), ("program", False), ("broker", False)]
        for handshake, isolate in cases:
            with self.subTest(handshake=handshake, isolate=isolate):
                self.write_config(
                    [self.socks5_entry("tor", relay, f"isolate_streams: {str(isolate).lower()}",
                                       "connect_timeout: 60s", "pipeline: true")],
                    service={"loopback": "overlay", "handshake": handshake},
                    name=f"{handshake}-{isolate}.yaml")
                proc = self.run_via("app:tor", "curl", "-sSf", "--max-time", "90",
                                    f"http://127.0.0.1:{port}/{handshake}-{isolate}",
                                    timeout=120)
                self.assertRan(proc, ctl)
        ok, seen = self.succeeded(ctl, f"127.0.0.1:{port}", len(cases))
        self.assertEqual(len(ok), len(cases), f"STREAM events: {seen}")
        self.assertEqual([r["path"] for r in self.records(record)],
                         [f"/{h}-{i}" for h, i in cases])
        firsts = [c for c in chunks() if c["seq"] == 0]
        self.assertEqual(len(firsts), len(cases), chunks())
        for c, (_, isolate) in zip(firsts, cases):
            self.assertFalse(c["answered"], c)
            greeting = "05010201" + cred + cred if isolate else "050100"
            self.assertRegex(c["hex"], "^" + greeting + request + "$")

    def test_optimistic_data_through_tor(self):
        # `optimistic_data: true`: the program's request follows the CONNECT request before Tor
        # has answered (Tor's SocksPort takes it: socks-extensions.txt, "optimistic data"), the
        # reply never reaches the program, and a refused stream is the first read's error.
        port, record = self.start_target()
        ctl = self.watch_streams()
        relay, chunks = self.start_tap_relay(self.net.socks_port, delay_ms=20)
        self.write_config([self.socks5_entry("tor", relay, "connect_timeout: 60s",
                                             "pipeline: true", "optimistic_data: true")],
                          service={"loopback": "overlay"})
        code = ("import socket, sys\n"
                "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=90)\n"
                "s.sendall(b'GET /optimistic HTTP/1.0\\r\\nHost: t\\r\\n\\r\\n')\n"
                "data = b''\n"
                "try:\n"
                "    while True:\n"
                "        c = s.recv(4096)\n"
                "        if not c: break\n"
                "        data += c\n"
                "except OSError as e:\n"
                "    print('recv', e.__class__.__name__); sys.exit(3)\n"
                "sys.stdout.buffer.write(data)\n")
        proc = self.run_via("app:tor", sys.executable, "-c", code, str(port), timeout=120)
        self.assertRan(proc, ctl)
        self.assertTrue(proc.stdout.startswith("HTTP/1.0 200 "), proc.stdout[:80])
        # The body alone (text mode: the CRLFs are newlines): no byte of Tor's reply before it.
        self.assertRegex(proc.stdout.split("\n\n", 1)[1], r'^\{"ip": "127\.0\.0\.\d+"\}$')
        ok, seen = self.succeeded(ctl, f"127.0.0.1:{port}", 1)
        self.assertEqual(len(ok), 1, f"STREAM events: {seen}")
        self.assertEqual([r["path"] for r in self.records(record)], ["/optimistic"])
        request = (bytes([5, 1, 0, 1, 127, 0, 0, 1]) + port.to_bytes(2, "big")).hex()
        got = chunks()
        early = "".join(c["hex"] for c in got if c["conn"] == got[0]["conn"] and
                        not c["answered"])
        self.assertTrue(early.startswith("050100" + request), got)
        self.assertTrue(bytes.fromhex(early[len("050100" + request):]).startswith(
            b"GET /optimistic"), got)
        # A closed port at the exit's end: Tor answers 0x05 (or 0x01), the program's recv fails.
        closed = harness.closed_port()
        proc = self.run_via("app:tor", sys.executable, "-c", code, str(closed), timeout=120)
        self.assertEqual(proc.returncode, 3, proc.stderr)
        self.assertRegex(proc.stdout, "recv (ConnectionRefusedError|ConnectionResetError)")
        self.assertIn("optimistic data: seen on the first read", proc.stderr)

    # ---- (b) stream isolation ----------------------------------------------------------------
    def circuits_for(self, isolate, n, child=False):
        port, record = self.start_target()
        self.use_tor(isolate)
        ctl = self.watch_streams()
        tag = f"iso-{isolate}-{'child' if child else 'conns'}"
        proc = self.fetch(port, n, tag, child=child)
        total = n + (1 if child else 0)
        self.assertRan(proc, ctl)
        self.assertEqual(proc.stdout.count("200 OK"), total, proc.stdout)
        ok, seen = self.succeeded(ctl, f"127.0.0.1:{port}", total)
        self.assertEqual(len(ok), total, f"STREAM events: {seen}")
        self.assertEqual(len(self.records(record)), total)
        return ok

    def test_isolated_connections_use_different_circuits(self):
        ok = self.circuits_for(isolate=True, n=3)
        self.assertEqual(len({e["circuit"] for e in ok}), 3, ok)
        self.assertEqual(len({e.get("SOCKS_USERNAME") for e in ok}), 3, ok)

    def test_connections_share_a_circuit_without_isolation(self):
        ok = self.circuits_for(isolate=False, n=3)
        self.assertEqual(len({e["circuit"] for e in ok}), 1, ok)

    def test_newnym_gives_a_program_a_new_circuit_and_signals_tor(self):
        port, _ = self.start_target()
        self.use_tor(False, "isolation: program", f"control_port: {self.net.client.control}")
        ctl = self.watch_streams()
        for tag in ("nym-a", "nym-b"):
            self.assertRan(self.fetch(port, 1, tag), ctl)
        renew = self.via("newnym")
        self.assertOk(renew)
        self.assertIn("app:tor: Tor control 127.0.0.1:", renew.stdout)
        self.assertIn("SIGNAL NEWNYM: 250 OK", renew.stdout)
        self.assertRan(self.fetch(port, 1, "nym-c"), ctl)
        ok, seen = self.succeeded(ctl, f"127.0.0.1:{port}", 3)
        self.assertEqual(len(ok), 3, f"STREAM events: {seen}")
        users = [e.get("SOCKS_USERNAME") for e in ok]
        # One program, one identity: one credential and one circuit; after newnym, new ones.
        self.assertEqual(users[0], users[1], ok)
        self.assertEqual(ok[0]["circuit"], ok[1]["circuit"], ok)
        self.assertNotEqual(users[0], users[2], ok)
        self.assertNotEqual(ok[0]["circuit"], ok[2]["circuit"], ok)

    def test_parent_and_child_use_different_circuits_when_isolated(self):
        ok = self.circuits_for(isolate=True, n=1, child=True)
        self.assertEqual(len({e["circuit"] for e in ok}), 2, ok)

    def test_parent_and_child_share_a_circuit_without_isolation(self):
        ok = self.circuits_for(isolate=False, n=1, child=True)
        self.assertEqual(len({e["circuit"] for e in ok}), 1, ok)

    # ---- (c) .onion by name --------------------------------------------------------------------
    def start_onion_target(self):
        """The local DNS server, the onion service's target (its record file), via configured
        for Tor with isolation, and a control connection watching streams. Returns (record,
        controller, the .onion name)."""
        self.start_dns()
        port = self.net.onion_target_port
        record = os.path.join(self.dir, "onion-target.jsonl")
        p, _ = self.spawn([harness.PYTHON, TARGET, str(port), record], "onion-target.log")
        harness.wait_port(port, proc=p)
        self.use_tor(isolate=True)
        return record, self.watch_streams(), self.net.onion

    def test_onion_service_by_name_through_a_fake_address_without_dns(self):
        record, ctl, onion = self.start_onion_target()
        self.assertRegex(onion, r"^[a-z2-7]{56}\.onion$")
        proc = self.run_via("app:tor", "curl", "-sSf", "--max-time", "90", "-o", "/dev/null",
                            "-w", "%{remote_ip}", f"http://{onion}/hidden", timeout=120)
        self.assertRan(proc, ctl)
        # curl connected to a fake address that via mapped to the name (IPv4 or IPv6: curl's
        # Happy Eyeballs starts a second attempt through the other one after 200 ms, and an
        # onion circuit takes longer, so either may win; the loser is closed)...
        remote = ipaddress.ip_address(proc.stdout.strip())
        self.assertTrue(remote in ipaddress.ip_network("198.18.0.0/15")
                        or remote in ipaddress.ip_network("fd76:6961:ff00::/64"), proc.stdout)
        # ...the name reached Tor (ATYP 3) and the onion service's target saw the request...
        ok, seen = self.succeeded(ctl, f"{onion}:80", 1)
        self.assertIn(len(ok), (1, 2), f"STREAM events: {seen}")
        recs = self.records(record)
        self.assertEqual([(r["host"], r["path"]) for r in recs], [(onion, "/hidden")], recs)
        # ...and the local DNS server never heard of it.
        self.assertEqual(self.dns_queries(".onion"), [])
        self.assertEqual(self.dns_queries(onion[:16]), [])

    def test_strict_mode_takes_a_static_program_to_the_onion_service(self):
        # via run --strict: a statically linked program, which the shim cannot cover, reaches
        # the onion service by name (its resolver gets a fake address in the namespace); the
        # name reached Tor and the local DNS server never heard of it.
        exe = self.static_gai_client()
        record, ctl, onion = self.start_onion_target()
        proc = self.via("run", "--strict", "--network", "app:tor", "--", exe, onion, "80",
                        "strict", timeout=120)
        self.assertRan(proc, ctl)
        ok, seen = self.succeeded(ctl, f"{onion}:80", 1)
        self.assertEqual(len(ok), 1, f"STREAM events: {seen}")
        self.assertEqual([(r["host"], r["path"]) for r in self.records(record)],
                         [(onion, "/strict")])
        self.assertEqual(self.dns_queries(".onion"), [])

    def go_by_name_through_an_exit(self, strict_path, default_path, as_viatest=False):
        """A Go static binary (net/http, Go's own resolver) fetches example.test by name under
        `via run --strict` (`strict_path`) and from the default mode (`default_path`; as viatest
        with `as_viatest`): its resolver got a fake address in the namespace, the name went to
        Tor (an exit resolved it), the target saw each request from an exit, and the program's
        DNS server heard nothing."""
        exe = self.go_http_client()
        self.start_dns()
        self.start_exit_dns()
        port, record = self.start_target()
        self.use_tor(isolate=True)
        ctl = self.watch_streams()
        url = f"http://example.test:{port}"
        runs = [strict_path, default_path]
        for proc in self.go_strict_and_default(exe, "app:tor", url + strict_path,
                                               url + default_path, as_viatest=as_viatest):
            self.assertRan(proc, ctl)
            self.assertIn('"ip"', proc.stdout)  # the target's IP echo reached the program
        # The name reached Tor (ATYP 3), and the exit's answer carried each stream. At least one
        # stream per run: Go's dialer has an IPv4 and an IPv6 fake address for the name and,
        # when the first connect takes over 300 ms (a Tor circuit can), starts a second through
        # the other (its Happy Eyeballs fallback) and closes the loser, so a run may open two
        # streams to the same name; the target still sees one request per run, and every user
        # stream names example.test.
        ok, seen = self.succeeded(ctl, f"127.0.0.1:{port}", len(runs))
        self.assertGreaterEqual(len(ok), len(runs), f"STREAM events: {seen}")
        named = [e for e in seen if e["status"] == "NEW" and e["target"] == f"example.test:{port}"]
        self.assertGreaterEqual(len(named), len(runs), f"STREAM events: {seen}")
        self.assertLessEqual(len(named), 2 * len(runs), f"STREAM events: {seen}")
        user = [e for e in seen if e["status"] == "NEW" and e.get("PURPOSE") == "USER"]
        self.assertEqual(len(user), len(named), f"STREAM events: {seen}")
        self.assertEqual([r["path"] for r in self.records(record)], runs)
        # An exit resolved it (its answer may come from the exits' DNS cache, filled by an
        # earlier test: the exits' dnsmasq log is not asked).
        remapped = [e for e in seen if e["status"] == "REMAP" and e.get("SOURCE") == "EXIT"
                    and e["target"] == f"127.0.0.1:{port}"]
        self.assertGreaterEqual(len(remapped), len(runs), f"STREAM events: {seen}")
        self.assertEqual(self.dns_queries("example.test"), [])

    def test_static_go_program_reaches_a_name_through_an_exit_strictly(self):
        # Issue 13's overlay tests: under `via run --strict`, and from the default mode (a
        # session's exec of a static Go program runs strictly: unrouted_exec: strict).
        self.go_by_name_through_an_exit("/go-strict", "/go-default")

    def test_static_go_program_reaches_a_name_through_an_exit_as_an_ordinary_user(self):
        # Not root: via run --strict enters a user namespace first; the broker is viatest's.
        self.go_by_name_through_an_exit("/go-user", "/go-user-default", as_viatest=True)

    def test_static_go_program_does_not_resolve_an_onion_name(self):
        # Go's own resolver never asks DNS for a .onion name (RFC 7686, golang.org/issue/13705):
        # the program fails ("no suitable address found") before any system call reaches the
        # network, so via's resolver has nothing to answer (docs/architecture.md, strict mode's
        # limits). Nothing left: no stream, no query anywhere.
        exe = self.go_http_client()
        record, ctl, onion = self.start_onion_target()
        proc = self.via("run", "--strict", "--network", "app:tor", "--", exe,
                        f"http://{onion}/go-onion", timeout=120)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertRegex(proc.stderr, "no such host|no suitable address found")
        _, seen = self.succeeded(ctl, f"{onion}:80", 1, timeout=2)
        self.assertEqual([e for e in seen if onion in e["target"]], [])
        self.assertEqual(self.records(record), [])
        self.assertEqual(self.dns_queries(".onion"), [])

    # ---- (e) Tor's refusals become errnos, and the log says which hop failed ----------------
    def test_refused_destination_is_econnrefused_and_the_log_names_the_hop(self):
        self.use_tor(isolate=True)
        port = harness.closed_port()
        proc = self.run_via("app:tor", harness.PYTHON, "-c", f"""
import errno, socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=90)
except OSError as e:
    print(errno.errorcode[e.errno])
""", timeout=120)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "ECONNREFUSED", self.net.diagnosis())
        # Tor's exits end such a stream with reason MISC ("refused due to 'misc error'" in the
        # client's log), so the client answers 0x01, not 0x05: the log says so.
        self.assertTrue(any("replied 0x01 (general SOCKS server failure)" in l and
                            "exit could not connect" in l for l in self.broker_log()),
                        self.broker_log())

    def test_malformed_onion_address_is_einval_from_tor_extended_errors(self):
        self.use_tor(isolate=True)
        bad = "a" * 56 + ".onion"  # base32, but the checksum is wrong
        proc = self.run_via("app:tor", harness.PYTHON, "-c", f"""
import errno, socket
try:
    socket.create_connection(("{bad}", 80), timeout=90)
except OSError as e:
    print(errno.errorcode[e.errno])
""", timeout=120)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "EINVAL")
        self.assertTrue(any("replied 0xf6" in l and "the .onion address is malformed" in l
                            for l in self.broker_log()), self.broker_log())

    # ---- (f) remote_resolve: Tor's RESOLVE extension -------------------------------------------
    def start_exit_dns(self):
        """dnsmasq on EXIT_RESOLVER:53, the exits' resolver: answers example.test with
        127.0.0.1 and logs every query. Returns its log."""
        log = os.path.join(self.dir, "exit-dnsmasq.log")
        p, _ = self.spawn(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                           "--no-hosts", "--log-queries", f"--log-facility={log}",
                           f"--listen-address={EXIT_RESOLVER}", "--port=53",
                           "--bind-interfaces", "--user=root", "--pid-file",
                           "--address=/example.test/127.0.0.1",
                           "--ptr-record=7.2.0.192.in-addr.arpa,far.example.test"],
                          "exit-dnsmasq.out")
        self.assertTrue(harness.wait_for(lambda: "started" in harness.read_text(log), 10),
                        harness.read_text(os.path.join(self.dir, "exit-dnsmasq.out")))
        return log

    def test_remote_resolve_returns_the_exits_answer_and_asks_nothing_locally(self):
        self.start_dns()  # the program's resolver: must hear nothing
        exit_log = self.start_exit_dns()
        port, record = self.start_target()
        self.use_tor(True, "remote_resolve: true")
        proc = self.run_via("app:tor", harness.PYTHON, "-c", f"""
import socket
addr = socket.getaddrinfo("example.test", {port}, socket.AF_INET, socket.SOCK_STREAM)[0][4]
print(addr[0])
s = socket.create_connection(addr, timeout=90)
s.sendall(b"GET /resolved HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n")
print(s.recv(12).decode())
""", timeout=120)
        self.assertRan(proc)
        # The real address (what the exits' DNS server says), not a fake one...
        self.assertEqual(proc.stdout.split("\n")[:2], ["127.0.0.1", "HTTP/1.0 200"])
        self.assertEqual([r["path"] for r in self.records(record)], ["/resolved"])
        self.assertTrue(any("remote resolve of example.test via app:tor: 127.0.0.1" in l
                            for l in self.broker_log()), self.broker_log())
        # ...asked for by an exit (tor randomizes the case of the letters it sends), never by
        # the program's side.
        exit_queries = [l for l in harness.read_lines(exit_log)
                        if "query[a] example.test " in l.lower()]
        self.assertTrue(exit_queries, harness.read_text(exit_log))
        self.assertEqual([q for q in harness.read_lines(self.dns_log)
                          if "example.test" in q.lower()], [])

    def test_remote_resolve_ptr_names_a_real_address_from_the_exit(self):
        # 192.0.2.7 (TEST-NET-1): tor's exits refuse reverse lookups of private addresses. The
        # PTR query goes to the exits' dnsmasq on loopback, nowhere else.
        self.start_dns()
        exit_log = self.start_exit_dns()
        self.use_tor(True, "remote_resolve: true")
        proc = self.run_via("app:tor", harness.PYTHON, "-c",
                            "import socket; print(socket.getnameinfo(('192.0.2.7', 80), "
                            "socket.NI_NAMEREQD)[0])", timeout=120)
        self.assertRan(proc)
        self.assertEqual(proc.stdout.strip(), "far.example.test")
        self.assertTrue(any("ptr] 7.2.0.192.in-addr.arpa " in l.lower()
                            for l in harness.read_lines(exit_log)), harness.read_text(exit_log))
        self.assertEqual([q for q in harness.read_lines(self.dns_log) if "in-addr" in q], [])

    def test_remote_resolve_keeps_fake_addresses_for_onion_names(self):
        self.use_tor(True, "remote_resolve: true")
        proc = self.run_via("app:tor", harness.PYTHON, "-c",
                            f"import socket; print(socket.gethostbyname('{self.net.onion}'))")
        self.assertOk(proc)
        self.assertIn(ipaddress.ip_address(proc.stdout.strip()),
                      ipaddress.ip_network("198.18.0.0/15"))

    # ---- (d) the seed's probe, offline -----------------------------------------------------------
    def start_echo(self):
        """The IP-echo target inside the echo namespace, on ECHO_IP:<port>."""
        port = harness.free_port()
        record = os.path.join(self.dir, "echo.jsonl")
        p, _ = self.spawn(["ip", "netns", "exec", self.echo_ns, harness.PYTHON, TARGET,
                           str(port), record, "--bind", ECHO_IP], "echo.log")
        harness.wait_port(port, host=ECHO_IP, proc=p)
        return port, record

    def test_probe_shows_different_direct_and_tor_addresses(self):
        port, record = self.start_echo()
        self.use_tor(isolate=True)
        proc = self.via("probe", "--network", "app:tor", "--timeout", "60",
                        "--url", f"http://{ECHO_IP}:{port}/ip", timeout=120)
        self.assertRan(proc)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0], f"direct IP: {DIRECT_IP}", proc.stdout)
        self.assertRegex(lines[1], r"^tor IP: ", proc.stdout)
        self.assertIn(lines[1].split(": ", 1)[1], EXIT_OUT, proc.stdout)
        # The echo server saw both fetches, from those two addresses.
        peers = [r["peer"] for r in self.records(record)]
        self.assertEqual(peers, [DIRECT_IP, lines[1].split(": ", 1)[1]], peers)

    def test_probe_reports_a_dial_error_when_tor_is_stopped(self):
        port, record = self.start_echo()
        self.use_tor(isolate=True)
        self.net.stop_client()
        # Whatever happens below, the next tests get a working client again.
        self.addCleanup(self.net.start_client)
        proc = self.via("probe", "--network", "app:tor", "--timeout", "30",
                        "--url", f"http://{ECHO_IP}:{port}/ip", timeout=60)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0], f"direct IP: {DIRECT_IP}", proc.stdout)
        self.assertTrue(lines[1].startswith("tor failed: dial: "), proc.stdout)
        self.assertIn("Connection refused", lines[1])
        self.assertEqual([r["peer"] for r in self.records(record)], [DIRECT_IP])


if __name__ == "__main__":
    harness.main()
