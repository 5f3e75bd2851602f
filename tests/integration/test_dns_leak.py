"""Names under an overlay never reach the local resolver.

dnsmasq on 127.0.0.1:53 is the namespace's only DNS server and logs every query; it would even
answer the test names (127.0.0.1), so a leaked lookup would work and show up in its log. The
proxies resolve the names from their own /etc/hosts, never by DNS: every query for a test name
in dnsmasq's log came from the client. The positive controls show that the same programs
without via do ask dnsmasq, so "no query" can fail.
"""
import ast
import ipaddress
import subprocess

import harness

GAI = ("import socket, sys\n"
       "print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 80, "
       "type=socket.SOCK_STREAM)}))\n")


class DnsLeak(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.start_dns()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"default_network": "app:tor"})
        self.url = f"http://example.test:{self.port}/"

    def plain(self, *argv):
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)

    # ---- positive controls: without via the client does ask DNS -----------------------------
    def test_control_plain_curl_asks_dns(self):
        self.assertOk(self.plain("curl", "-sS", self.url))
        self.assertTrue(self.dns_queries("example.test"))
        self.assertEqual([r["peer"] for r in self.records(self.record)], ["127.0.0.1"])  # direct
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])

    def test_control_plain_python_and_getent_ask_dns(self):
        proc = self.plain(harness.PYTHON, "-c", GAI, "target.test")
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "['127.0.0.1']")
        self.assertTrue(self.dns_queries("target.test"))
        proc = self.plain("getent", "hosts", "other.test")
        self.assertOk(proc)
        self.assertTrue(self.dns_queries("other.test"))

    def test_control_plain_reverse_lookup_asks_dns(self):
        code = "import socket; print(socket.getnameinfo(('192.0.2.7', 80), 0)[0])"
        self.plain(harness.PYTHON, "-c", code)  # dnsmasq has no answer; only the query counts
        self.assertTrue(self.dns_queries("7.2.0.192.in-addr.arpa"))

    # ---- under via ----------------------------------------------------------------------------
    def test_curl_under_via_asks_no_dns(self):
        self.assertOk(self.run_via("app:tor", "curl", "-sSf", self.url))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertReachedThroughProxy(self.record, "example.test")
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")

    def test_python_under_via_asks_no_dns(self):
        code = f"import urllib.request; print(urllib.request.urlopen('{self.url}py').read())"
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertReachedThroughProxy(self.record, "example.test", path="/py")
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")

    def test_getent_hosts_and_gethostbyname_ask_no_dns(self):
        proc = self.run_via("app:tor", "getent", "hosts", "example.test")
        self.assertOk(proc)
        self.assertIn(proc.stdout.split()[0][:7], ("198.18.", "198.19.", "fd76:69"), proc.stdout)
        self.assertTrue(proc.stdout.split()[1] == "example.test", proc.stdout)
        code = ("import socket; print(socket.gethostbyname('target.test')); "
                "print(socket.gethostbyname_ex('other.test')[2])")
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        first = proc.stdout.splitlines()[0]
        self.assertIn(ipaddress.ip_address(first), ipaddress.ip_network("198.18.0.0/15"))
        self.assertEqual(self.dns_queries(".test"), [])

    def test_name_reaches_danted_as_atyp_domain_and_no_dns(self):
        port, log = self.start_danted("none")
        self.write_config([self.socks5_entry("dante", port)])
        self.assertOk(self.run_via("app:dante", "curl", "-sSf", self.url + "dante"))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertReachedThroughProxy(self.record, "example.test", path="/dante")
        self.assertIn((3, f"example.test.{self.port}"), harness.danted_requests(log),
                      harness.read_text(log)[-3000:])

    def test_fake_addresses_in_both_pools_and_local_names_stay_real(self):
        code = """
import socket
fake = {a[4][0] for a in socket.getaddrinfo('example.test', 80, type=socket.SOCK_STREAM)}
print(sorted(fake))
print(socket.gethostbyname('localhost'), socket.gethostbyname('hosts-only.test'))
print(socket.getaddrinfo('127.0.0.1', 80, flags=socket.AI_NUMERICHOST)[0][4][0])
try:
    socket.getaddrinfo('example.test', 80, flags=socket.AI_NUMERICHOST)
    print('numeric lookup of a name succeeded')
except socket.gaierror:
    print('numeric-only refused')
"""
        proc = self.via("run", "--", harness.PYTHON, "-c", code)  # default_network: app:tor
        self.assertOk(proc)
        lines = proc.stdout.splitlines()
        addrs = [ipaddress.ip_address(a) for a in eval(lines[0])]
        self.assertTrue(any(a in ipaddress.ip_network("198.18.0.0/15") for a in addrs), addrs)
        self.assertTrue(any(a in ipaddress.ip_network("fd76:6961:ff00::/64") for a in addrs),
                        addrs)
        self.assertEqual(lines[1], "127.0.0.1 127.0.0.1")
        self.assertEqual(lines[2], "127.0.0.1")
        self.assertEqual(lines[3], "numeric-only refused")
        self.assertEqual(self.dns_queries(".test"), [])

    def test_reverse_lookup_of_a_fake_address_gives_the_name(self):
        code = """
import socket
a = socket.gethostbyname('example.test')
print(socket.gethostbyaddr(a)[0], socket.getnameinfo((a, 80), 0)[0])
print(socket.getnameinfo(('192.0.2.7', 80), 0)[0])
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(), ["example.test example.test", "192.0.2.7"])
        # No PTR query left for the non-fake address either.
        self.assertEqual(self.dns_queries("in-addr.arpa"), [])
        self.assertEqual(self.dns_queries(".test"), [])


class CustomPools(harness.ViaCase):
    def test_configured_pools_are_used(self):
        self.start_dns()
        proxy_port, _ = self.start_microsocks()
        port, record = self.start_target()
        self.write_config([self.socks5_entry("tor", proxy_port)],
                          service={"fake_ipv4": "10.77.0.0/16", "fake_ipv6": "fd00:77::/64"})
        code = f"""
import socket, urllib.request
print(sorted({{a[4][0] for a in socket.getaddrinfo('example.test', 80, type=socket.SOCK_STREAM)}}))
print(urllib.request.urlopen('http://example.test:{port}/pool').status)
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        # A new table starts at a random number (docs/architecture.md, "Names"), the same one
        # in both pools.
        addrs, status = proc.stdout.splitlines()
        v4, v6 = (ipaddress.ip_address(a) for a in ast.literal_eval(addrs))
        self.assertIn(v4, ipaddress.ip_network("10.77.0.0/16"))
        self.assertIn(v6, ipaddress.ip_network("fd00:77::/64"))
        self.assertEqual(int(v4) & 0xffff, int(v6) & 0xffffffff, addrs)
        self.assertEqual(status, "200")
        self.assertReachedThroughProxy(record, "example.test", path="/pool")
        self.assertEqual(self.dns_queries("example.test"), [])


if __name__ == "__main__":
    harness.main()
