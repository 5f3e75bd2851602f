"""Names under an overlay never reach the local resolver.

dnsmasq on 127.0.0.1:53 is the namespace's only DNS server and logs every query. The positive
control shows a plain lookup does reach it, so "no query" can fail.
"""
import ipaddress
import subprocess

import harness


class DnsLeak(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.start_dns()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port)])

    def test_positive_control_plain_curl_asks_dns(self):
        proc = subprocess.run(["curl", "-sS", f"http://example.test:{self.port}/"], env=self.env,
                              capture_output=True, text=True, timeout=30)
        self.assertOk(proc)
        self.assertTrue(self.dns_queries("example.test"))
        self.assertEqual(self.records(self.record)[0]["peer"], "127.0.0.1")  # direct

    def test_curl_under_via_asks_no_dns(self):
        self.assertOk(self.run_via("app:tor", "curl", "-sSf", f"http://example.test:{self.port}/"))
        self.assertEqual(self.dns_queries("example.test"), [])
        self.assertReachedThroughProxy(self.record, "example.test")
        self.assertTrue(any("example.test" in l for l in harness.read_lines(self.proxy_log)))

    def test_getent_and_gethostbyname_ask_no_dns(self):
        code = ("import socket; print(socket.gethostbyname('example.test')); "
                "print(socket.gethostbyname_ex('other.test')[2])")
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        self.assertTrue(proc.stdout.startswith("198.18."), proc.stdout)
        proc = self.run_via("app:tor", "getent", "ahosts", "target.test")
        self.assertOk(proc)
        self.assertEqual(self.dns_queries(".test"), [])

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
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        lines = proc.stdout.splitlines()
        addrs = [ipaddress.ip_address(a) for a in eval(lines[0])]
        self.assertTrue(any(a in ipaddress.ip_network("198.18.0.0/15") for a in addrs), addrs)
        self.assertTrue(any(a in ipaddress.ip_network("fd76:6961:ff00::/64") for a in addrs), addrs)
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
        self.assertEqual([l for l in harness.read_lines(self.dns_log) if "query[PTR]" in l], [])

    def test_a_name_resolved_by_the_parent_connects_from_a_child(self):
        code = f"""
import socket, subprocess, sys
ip = socket.gethostbyname('example.test')
sys.exit(subprocess.call(['curl', '-sSf', 'http://%s:{self.port}/child' % ip]))
"""
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertReachedThroughProxy(self.record, "198.18.0.1", path="/child")
        self.assertTrue(any(f"connected to example.test:{self.port}" in l
                            for l in harness.read_lines(self.proxy_log)))
        self.assertEqual(self.dns_queries("example.test"), [])


if __name__ == "__main__":
    harness.main()
