"""`network: none`: a program with no network at all. Every connect (by name, by address, to the
host's own services), every datagram, every listen on a real interface and every name lookup
fails with a clear error; nothing goes direct and nothing is resolved.

What the far side saw decides: the recording target (nothing), the SOCKS5 proxy of the config's
default network (nothing: none is not "the default overlay"), dnsmasq's query log (no query),
and a UDP listener standing in for anywhere else (no datagram). The broker's log names none.
"""
import os
import shutil
import socket
import subprocess

import harness

# Run under the shim: each line prints what one attempt gave. "ok" would be a leak.
PROBE = r"""
import errno, socket, sys
target, udp = int(sys.argv[1]), int(sys.argv[2])
def attempt(what, fn):
    try:
        fn()
        print(what, "ok", flush=True)
    except socket.gaierror as e:
        print(what, "gai", e.errno, flush=True)
    except OSError as e:
        print(what, "errno", errno.errorcode.get(e.errno, e.errno), flush=True)
def connect(addr, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(addr)
def listen(host):
    s = socket.socket()
    s.bind((host, 0))
    s.listen(1)
def datagram(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"leak", addr)
def raw_dns():
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, ("127.0.0.1", 53))
    r = s.recv(512)
    if r[3] & 0xF != 0:
        raise OSError(errno.EPROTO, "rcode %d" % (r[3] & 0xF))
attempt("name", lambda: socket.getaddrinfo("example.test", 80, proto=socket.IPPROTO_TCP))
def old_lookup():
    import ctypes
    libc = ctypes.CDLL(None)
    libc.gethostbyname.restype = ctypes.c_void_p
    libc.__h_errno_location.restype = ctypes.POINTER(ctypes.c_int)
    ok = libc.gethostbyname(b"example.test")
    print("old-name", "ok" if ok else "h_errno %d" % libc.__h_errno_location()[0], flush=True)
old_lookup()
attempt("connect-name", lambda: socket.create_connection(("example.test", target), timeout=5))
attempt("connect-far", lambda: connect(("192.0.2.1", 80)))
attempt("connect-far6", lambda: connect(("2001:db8::1", 80), socket.AF_INET6))
attempt("connect-loopback", lambda: connect(("127.0.0.1", target)))
attempt("udp-loopback", lambda: datagram(("127.0.0.1", udp)))
attempt("raw-dns", raw_dns)
attempt("listen-any", lambda: listen("0.0.0.0"))
"""


class NetworkNone(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.dns = self.start_dns()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.received = []
        self.udp_port = self.start_udp_listener("127.0.0.1", self.received)
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.bin)
        shutil.copy2(shutil.which("curl"), os.path.join(self.bin, "curl-none"))
        # The default network is an overlay: none must not fall back to it.
        self.write_config([
            self.socks5_entry("tor", self.proxy_port),
            ["name: curl_none", "kind: via.program",
             f"match: {{exe: {self.bin}/curl-none}}", "network: none"],
            ["name: untrusted", "kind: via.program", "match: {exe: /nonexistent/*}",
             "groups: [untrusted]"],
        ], service={"default_network": "app:tor"})

    def results(self, proc):
        out = {}
        for line in proc.stdout.splitlines():
            what, _, rest = line.partition(" ")
            out[what] = rest
        return out

    def assertNothingReached(self):
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [],
                         "the default overlay's proxy was used")
        self.assertEqual(self.dns_queries("example.test"), [], "a name was resolved")
        self.assertEqual(self.received, [], "a datagram left")

    def test_every_path_fails_and_nothing_leaves(self):
        p = self.via("run", "--network", "none", "--", harness.PYTHON, "-c", PROBE,
                     str(self.port), str(self.udp_port))
        self.assertOk(p)
        r = self.results(p)
        eai_fail = str(socket.EAI_FAIL)
        self.assertEqual(r.get("name"), f"gai {eai_fail}", p.stdout + p.stderr)
        self.assertEqual(r.get("connect-name"), f"gai {eai_fail}", p.stdout)
        self.assertEqual(r.get("old-name"), "h_errno 3", p.stdout)  # NO_RECOVERY
        self.assertEqual(r.get("connect-far"), "errno ENETUNREACH", p.stdout + p.stderr)
        self.assertEqual(r.get("connect-far6"), "errno ENETUNREACH", p.stdout)
        self.assertEqual(r.get("connect-loopback"), "errno ECONNREFUSED", p.stdout)
        self.assertTrue(r.get("udp-loopback", "ok").startswith("errno"), p.stdout)
        self.assertTrue(r.get("raw-dns", "ok").startswith("errno"), p.stdout)
        self.assertEqual(r.get("listen-any"), "errno ENETUNREACH", p.stdout + p.stderr)
        self.assertNothingReached()
        log = "\n".join(self.broker_log())
        self.assertIn("network none", log)
        self.assertIn("REFUSED (no network: network none)", log)

    def test_program_rule_none_beats_the_default_network(self):
        curl = os.path.join(self.bin, "curl-none")
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_CONFIG=self.config)
        by_name = subprocess.run([curl, "-sS", "-m", "10", f"http://example.test:{self.port}/"],
                                 env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(by_name.returncode, 6, by_name.stderr)  # could not resolve host
        by_addr = subprocess.run([curl, "-sS", "-m", "10", f"http://127.0.0.1:{self.port}/"],
                                 env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(by_addr.returncode, 7, by_addr.stderr)  # could not connect
        self.assertNothingReached()
        # The same curl under its own name is routed by the default network: the control.
        ok = subprocess.run([shutil.which("curl"), "-sS", "-m", "10",
                             f"http://example.test:{self.port}/"],
                            env=env, capture_output=True, text=True, timeout=30)
        self.assertOk(ok)
        self.assertReachedThroughProxy(self.record, "example.test")

    def test_a_group_denied_every_network_may_still_choose_none(self):
        self.write_config([
            self.socks5_entry("tor", self.proxy_port),
            ["name: everyone", "kind: via.program", "match: {exe: /*}", "groups: [untrusted]"],
            ["name: deny_network", "kind: security.policy", "policy:",
             '  actions: "network.select"', '  resources: "*"', "  effect: deny", "groups:",
             "  - untrusted"],
        ])
        denied = self.via("run", "--network", "app:tor", "--", "true")
        self.assertFailed(denied)
        self.assertIn("denied by security.policy", denied.stderr)
        p = self.via("run", "--network", "none", "--", harness.PYTHON, "-c", PROBE,
                     str(self.port), str(self.udp_port))
        self.assertOk(p)
        self.assertEqual(self.results(p).get("connect-far"), "errno ENETUNREACH",
                         p.stdout + p.stderr)
        self.assertNothingReached()

    def test_strict_mode_with_none(self):
        probe = self.via("run", "--strict", "--network", "none", "--", "true")
        if probe.returncode != 0:
            self.skipTest("strict mode unavailable here: " + probe.stderr.strip())
        client = self.static_gai_client()
        p = self.via("run", "--strict", "--network", "none", "--", client, "example.test",
                     str(self.port), "by-name")
        self.assertFailed(p)
        self.assertIn("getaddrinfo:", p.stderr)
        for host in ("127.0.0.1", "192.0.2.1"):
            p2 = self.via("run", "--strict", "--network", "none", "--", client, host,
                          str(self.port), "by-address")
            self.assertFailed(p2)
            self.assertIn("connect:", p2.stderr)
        self.assertNothingReached()

    def test_unknown_network_names_none_among_the_choices(self):
        p = self.via("run", "--network", "nowhere", "--", "true")
        self.assertFailed(p)
        self.assertIn("app:tor; or direct, none", p.stderr)


if __name__ == "__main__":
    harness.main()
