"""Under an overlay, datagrams that would leave the host are refused (EPERM), and so is TCP to
the local resolver (UDP DNS queries are answered by the broker: test_raw_dns.py); a packet capture on the test's own interface shows that
nothing left but what the positive control sent.

The namespace gets a veth pair `via0`/`via1` with 10.213.0.1/24 on via0: an address of this
test's own making, standing in for "anywhere off the host". Nothing can leave the namespace.
"""
import os
import shutil
import socket
import subprocess
import time

import harness

FAR = "10.213.0.1"


class UdpRefused(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.require_namespace()
        if shutil.which("tcpdump") is None:
            self.skipTest("tcpdump is not installed")
        if subprocess.run(["ip", "link", "show", "via0"], capture_output=True).returncode != 0:
            made = subprocess.run(["ip", "link", "add", "via0", "type", "veth", "peer", "name",
                                   "via1"], capture_output=True, text=True)
            if made.returncode != 0:
                self.skipTest("cannot create a veth pair: " + made.stderr.strip())
            subprocess.run(["ip", "addr", "add", f"{FAR}/24", "dev", "via0"], check=True)
            subprocess.run(["ip", "link", "set", "via0", "up"], check=True)
            subprocess.run(["ip", "link", "set", "via1", "up"], check=True)
        self.received = []
        self.udp_port = self.start_udp_listener(FAR, self.received)
        self.pcap = os.path.join(self.dir, "udp.pcap")
        # -Z root: Debian's tcpdump drops to its own user, which cannot write into our 0700 dir.
        cap, log = self.spawn(["tcpdump", "-Z", "root", "--immediate-mode", "-i", "any", "-n", "-U",
                               "-w", self.pcap,
                               f"udp and host {FAR}"], "tcpdump.log")
        harness.wait_for(lambda: "listening on" in harness.read_text(log), timeout=10)
        time.sleep(0.5)  # "listening on" is printed a moment before the filter is attached
        self.capture = cap
        proxy_port, _ = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", proxy_port)])

    def captured(self):
        """Stops the capture (tcpdump flushes on SIGINT) and returns the lines naming FAR."""
        time.sleep(0.3)
        self.capture.send_signal(2)
        self.capture.wait(10)
        out = subprocess.run(["tcpdump", "-n", "-r", self.pcap], capture_output=True, text=True)
        return [l for l in out.stdout.splitlines() if FAR in l]

    def test_udp_off_host_is_refused_and_nothing_leaves(self):
        control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        control.sendto(b"control", (FAR, self.udp_port))  # without via: it goes out
        control.close()
        code = f"""
import errno, socket
def attempt(fn):
    try:
        fn()
        return 'sent'
    except OSError as e:
        return errno.errorcode[e.errno]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print(attempt(lambda: s.sendto(b'leak', ('{FAR}', {self.udp_port}))))
print(attempt(lambda: s.sendmsg([b'leak'], [], 0, ('{FAR}', {self.udp_port}))))
print(attempt(lambda: s.connect(('{FAR}', {self.udp_port}))))
m = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
print(attempt(lambda: m.sendto(b'leak', ('::ffff:{FAR}', {self.udp_port}))))
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.split(), ["EPERM"] * 4)
        self.assertEqual(proc.stderr.count("refused with EPERM"), 1, proc.stderr)  # said once
        harness.wait_for(lambda: self.received, timeout=5)
        self.assertEqual(self.received, [b"control"])
        captured = self.captured()
        self.assertEqual(len(captured), 1, captured)  # only the control datagram

    def test_udp_to_loopback_still_works(self):
        port = self.start_udp_listener("127.0.0.1", self.received)
        code = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'local', ('127.0.0.1', {port}))"
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertTrue(harness.wait_for(lambda: b"local" in self.received, timeout=5))

    def test_raw_dns_to_the_local_resolver_is_refused(self):
        self.start_dns()
        self.assertIsNotNone(harness.dns_query("example.test"))  # control: dnsmasq answers
        self.assertEqual(len(self.dns_queries("example.test")), 1)
        code = f"""
import sys
sys.path.insert(0, {harness.HERE!r})
import errno, socket, harness
for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.connect(('127.0.0.1', 53))
        print('connected')
    except OSError as e:
        print(errno.errorcode[e.errno])
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        # UDP: a DNS socket the broker answers (tests/integration/test_raw_dns.py), connected
        # to nothing; TCP to the local resolver: refused.
        self.assertEqual(proc.stdout.split(), ["connected", "EPERM"])
        self.assertEqual(len(self.dns_queries("example.test")), 1)  # still only the control


if __name__ == "__main__":
    harness.main()
