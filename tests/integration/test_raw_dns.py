"""DNS queries that programs send themselves over UDP (a Python socket to the resolver of
/etc/resolv.conf, node's dns.resolve via c-ares, dig) are answered by the broker with fake
addresses under an overlay; they never reach a DNS server. Proof: dnsmasq's query log and a
packet capture on the test's own interfaces (lo and a veth pair with a "far" resolver address).
"""
import ipaddress
import os
import shutil
import subprocess
import time

import harness

FAR_RESOLVER = "10.215.0.53"  # on the test's veth: a query there would be captured leaving

QUERY = r"""
import socket, struct, sys
def query(name, qtype, qid=0x4242):
    p = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        p += bytes([len(label)]) + label.encode()
    return p + b"\0" + struct.pack(">HH", qtype, 1)
def address(answer, qtype):
    n = 16 if qtype == 28 else 4
    fam = socket.AF_INET6 if qtype == 28 else socket.AF_INET
    return socket.inet_ntop(fam, answer[-n:])
def resolver():
    for line in open("/etc/resolv.conf"):
        if line.split()[:1] == ["nameserver"]:
            return line.split()[1]
"""


class RawDns(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.require_namespace()
        if shutil.which("tcpdump") is None:
            self.skipTest("tcpdump is not installed")
        if subprocess.run(["ip", "link", "show", "via-d0"], capture_output=True).returncode:
            made = subprocess.run(["ip", "link", "add", "via-d0", "type", "veth", "peer", "name",
                                   "via-d1"], capture_output=True, text=True)
            if made.returncode != 0:
                self.skipTest("cannot create a veth pair: " + made.stderr.strip())
            subprocess.run(["ip", "addr", "add", "10.215.0.1/24", "dev", "via-d0"], check=True)
            subprocess.run(["ip", "link", "set", "via-d0", "up"], check=True)
            subprocess.run(["ip", "link", "set", "via-d1", "up"], check=True)
        self.start_dns()
        self.pcap = os.path.join(self.dir, "dns.pcap")
        cap, log = self.spawn(["tcpdump", "-Z", "root", "--immediate-mode", "-i", "any", "-n",
                               "-U", "-w", self.pcap, "port 53 or arp"], "tcpdump.log")
        harness.wait_for(lambda: "listening on" in harness.read_text(log), timeout=10)
        time.sleep(0.5)  # "listening on" is printed a moment before the filter is attached
        self.capture = cap
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port)])

    def captured(self, *needles):
        """Stops the capture; the packet lines that mention any of `needles`."""
        time.sleep(0.3)
        self.capture.send_signal(2)
        self.capture.wait(10)
        out = subprocess.run(["tcpdump", "-n", "-r", self.pcap], capture_output=True, text=True)
        return [l for l in out.stdout.splitlines() if any(n in l for n in needles)]

    def py(self, code, via=True):
        script = os.path.join(self.dir, "q.py")
        with open(script, "w") as f:
            f.write(QUERY + code)
        if via:
            return self.run_via("app:tor", harness.PYTHON, script)
        return subprocess.run([harness.PYTHON, script], capture_output=True, text=True,
                              env=self.env, timeout=30)

    def test_control_without_via_the_query_reaches_the_dns_server(self):
        proc = self.py("""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(query("other.test", 1), (resolver(), 53))
print(address(s.recvfrom(512)[0], 1))
""", via=False)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "127.0.0.1")  # dnsmasq's answer
        self.assertEqual(len(self.dns_queries("other.test")), 1)
        self.assertEqual(len(self.captured("other.test")), 1)  # the query, on lo

    def test_python_raw_udp_gets_fake_addresses_and_they_connect_through_the_proxy(self):
        proc = self.py(f"""
r = resolver()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(query("example.test", 1), (r, 53))
answer, source = s.recvfrom(512)
print(address(answer, 1), source == (r, 53))
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); c.settimeout(5)
c.connect(("::ffff:{FAR_RESOLVER}", 53))
c.send(query("example.test", 28))
print(address(c.recv(512), 28), c.getpeername()[0])
t = socket.create_connection((address(answer, 1), {self.port}), timeout=10)
t.sendall(b"GET /raw HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n")
print(t.recv(12).decode())
""")
        self.assertOk(proc)
        lines = proc.stdout.splitlines()
        v4, same_source = lines[0].split()
        self.assertIn(ipaddress.ip_address(v4), ipaddress.ip_network("198.18.0.0/15"))
        self.assertEqual(same_source, "True")  # the answer came "from the resolver"
        v6, peer = lines[1].split()
        self.assertIn(ipaddress.ip_address(v6), ipaddress.ip_network("fd76:6961:ff00::/64"))
        self.assertEqual(peer, f"::ffff:{FAR_RESOLVER}")
        self.assertEqual(lines[2], "HTTP/1.0 200")
        # Another program of the same broker: curl to the fake address reaches the name.
        curl = self.run_via("app:tor", "curl", "-sSf", f"http://{v4}:{self.port}/curl")
        self.assertOk(curl)
        recs = self.records(self.record)
        self.assertEqual([(r["peer"], r["path"]) for r in recs],
                         [(harness.PROXY_OUT, "/raw"), (harness.PROXY_OUT, "/curl")], recs)
        self.assertEqual(microsocks := harness.microsocks_destinations(self.proxy_log),
                         [f"example.test:{self.port}"] * 2, microsocks)
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertEqual(self.captured("example.test", FAR_RESOLVER), [])
        self.assertTrue(any("dns query via app:tor: A example.test -> " in l
                            for l in self.broker_log()), self.broker_log())

    def test_node_dns_resolve_gets_fake_addresses(self):
        if shutil.which("node") is None:
            self.skipTest("node is not installed")
        code = ("const dns = require('dns');"
                "dns.resolve4('example.test', (e, a) => { console.log(e ? e.code : a.join());"
                " dns.resolve6('example.test', (e, a) => console.log(e ? e.code : a.join())); });")
        proc = self.run_via("app:tor", "node", "-e", code)
        self.assertOk(proc)
        v4, v6 = proc.stdout.split()
        self.assertIn(ipaddress.ip_address(v4), ipaddress.ip_network("198.18.0.0/15"))
        self.assertIn(ipaddress.ip_address(v6), ipaddress.ip_network("fd76:6961:ff00::/64"))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertEqual(self.captured("example.test"), [])

    def test_dig_gets_fake_addresses(self):
        if shutil.which("dig") is None:
            self.skipTest("dig is not installed (bind9-dnsutils)")
        # dig's libuv sends with a raw sendmmsg system call the shim cannot see: its socket is
        # connected to a loopback responder of the broker, which answers.
        answers = []
        for server, qtype in (("127.0.0.1", "A"), (FAR_RESOLVER, "AAAA")):
            proc = self.run_via("app:tor", "dig", "+tries=1", "+timeout=5", f"@{server}",
                                "example.test", qtype)
            self.assertOk(proc)
            self.assertIn(f"SERVER: {server}#53", proc.stdout)
            answers += [l.split()[-1] for l in proc.stdout.splitlines()
                        if l.startswith("example.test.") and f"IN\t{qtype}" in l]
        self.assertEqual(len(answers), 2, answers)
        self.assertIn(ipaddress.ip_address(answers[0]), ipaddress.ip_network("198.18.0.0/15"))
        self.assertIn(ipaddress.ip_address(answers[1]), ipaddress.ip_network("fd76:6961:ff00::/64"))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertEqual(self.captured("example.test", FAR_RESOLVER), [])

    RES_QUERY = """
import ctypes, socket
libc = ctypes.CDLL(None)
for fn in ("res_query", "res_search"):
    buf = ctypes.create_string_buffer(512)
    n = getattr(libc, fn)(NAME.encode(), 1, 1, buf, 512)   # class IN, type A
    print(fn, socket.inet_ntoa(buf.raw[n - 4:n]) if n > 0 else n)
"""

    def test_control_without_via_res_query_reaches_the_dns_server(self):
        proc = self.py(self.RES_QUERY.replace("NAME", '"other.test"'), via=False)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(),
                         ["res_query 127.0.0.1", "res_search 127.0.0.1"])
        self.assertEqual(len(self.dns_queries("other.test")), 2)

    def test_res_query_and_res_search_are_answered_by_the_broker(self):
        # glibc sends these with socket calls inside libc that no preload sees: the shim
        # answers res_* itself, through the broker.
        proc = self.py(self.RES_QUERY.replace("NAME", '"example.test"'))
        self.assertOk(proc)
        lines = proc.stdout.splitlines()
        self.assertEqual([l.split()[0] for l in lines], ["res_query", "res_search"])
        for l in lines:
            self.assertIn(ipaddress.ip_address(l.split()[1]), ipaddress.ip_network("198.18.0.0/15"))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertEqual(self.captured("example.test"), [])

    GAI_A = """
import ctypes, socket
class addrinfo(ctypes.Structure):
    pass
addrinfo._fields_ = [("flags", ctypes.c_int), ("family", ctypes.c_int), ("socktype", ctypes.c_int),
                     ("protocol", ctypes.c_int), ("addrlen", ctypes.c_uint32),
                     ("addr", ctypes.c_void_p), ("canonname", ctypes.c_char_p),
                     ("next", ctypes.POINTER(addrinfo))]
class gaicb(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("service", ctypes.c_char_p),
                ("request", ctypes.POINTER(addrinfo)), ("result", ctypes.POINTER(addrinfo)),
                ("ret", ctypes.c_int), ("reserved", ctypes.c_int * 5)]
libc = ctypes.CDLL(None)
hints = addrinfo(family=socket.AF_INET, socktype=socket.SOCK_STREAM)
req = gaicb(name=NAME.encode(), service=b"80", request=ctypes.pointer(hints))
reqs = (ctypes.POINTER(gaicb) * 1)(ctypes.pointer(req))
print(libc.getaddrinfo_a(0, reqs, 1, None), libc.gai_error(ctypes.pointer(req)))  # GAI_WAIT
sa = ctypes.cast(req.result.contents.addr, ctypes.POINTER(ctypes.c_ubyte * 8)).contents
print(".".join(str(b) for b in sa[4:8]))
"""

    def test_control_without_via_getaddrinfo_a_reaches_the_dns_server(self):
        proc = self.py(self.GAI_A.replace("NAME", '"other.test"'), via=False)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(), ["0 0", "127.0.0.1"])
        self.assertTrue(self.dns_queries("other.test"))

    def test_getaddrinfo_a_gets_a_fake_address(self):
        proc = self.py(self.GAI_A.replace("NAME", '"example.test"'))
        self.assertOk(proc)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0], "0 0")
        self.assertIn(ipaddress.ip_address(lines[1]), ipaddress.ip_network("198.18.0.0/15"))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertEqual(self.captured("example.test"), [])

    def test_malformed_queries_get_formerr_or_nothing(self):
        proc = self.py("""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(query("example.test", 1) + b"x", (resolver(), 53))   # a byte after the question
a = s.recvfrom(512)[0]
print(a[:2] == b"\\x42\\x42", a[3] & 0x0f)
s.sendto(b"\\x01\\x02\\x03", (resolver(), 53))               # shorter than a header
try:
    s.recvfrom(512); print("answered")
except socket.timeout:
    print("no answer")
""")
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(), ["True 1", "no answer"])
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertEqual(self.captured("example.test"), [])


if __name__ == "__main__":
    harness.main()
