"""The shim judges every destination as the kernel reads it (issue 17, cause 2), and libc's
exported aliases of the socket calls go through the same decision (cause 9).

A small C program (data/parity.c, built here with cc) makes calls the kernel accepts in forms a
careless parser misses: an IPv6 socket address of 24 bytes (SIN6_LEN_RFC2133) holding
::ffff:a.b.c.d, sin_family = AF_UNSPEC on a UDP send (IPv4 to the kernel), a sendmsg name longer
than the struct, TCP Fast Open through sendto/sendmsg/sendmmsg, `__connect`/`__sendmmsg`/
`__socket` called by name, packet sockets (AF_PACKET, and the obsolete AF_INET SOCK_PACKET)
that reach the wire without any inet address, and a raw UDP socket whose ports the address does
not show (a DNS query to the local resolver sent to "127.0.0.1 port 9"), and IPv4 source routes
(IP_OPTIONS, or IP_RETOPTS in a sendmsg) that send a datagram "to 127.0.0.1" to another host.

The namespace gets a veth pair `via-k0`/`via-k1` with 10.217.0.1 on via-k0: "off the host" for
the program. There a UDP listener records every datagram (the payload names the case) and the
recording HTTP target every request with its peer; microsocks connects out from 127.0.0.2, so
the target tells routed requests from direct ones by the peer alone; dnsmasq logs every query.
A control without via shows each case really reaches its target on this kernel.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import harness

FAR4 = "10.217.0.1"
IFACE = "via-k1"  # the packet cases send on the peer end, to via-k0's MAC

UDP_CASES = ["udp6_24_sendto", "udp6_24_sendmsg", "udp6_24_sendmmsg", "udp_unspec_sendto",
             "udp_unspec_sendmsg", "udp_unspec_sendmmsg", "udp6_in4_sendto", "udp6_in4_sendmsg",
             "udp_sendmsg_oversize",
             "udp_alias___sendmmsg"]
TCP_CASES = ["tcp6_24_connect", "tcp_connect_128", "tcp_alias___connect", "tfo_sendto",
             "tfo_sendmsg", "tfo_sendmmsg", "tfo6_24_sendmsg"]
DNS_CASES = ["dns_tfo_sendto", "dns_tfo_sendmsg", "dns_tfo_sendmmsg"]
PACKET_CASES = ["packet_socket", "packet___socket", "packet_sock_packet"]
# An IPv4 source route via FIRST_HOP: the datagram "to 127.0.0.1" leaves for FIRST_HOP.
FIRST_HOP = "10.217.0.2"
LSRR_CASES = ["udp_lsrr_setsockopt", "udp_lsrr_syscall", "udp_lsrr_cmsg"]


class KernelParity(harness.ViaCase):
    exe = None
    maxDiff = None

    def setUp(self):
        super().setUp()
        self.require_namespace()
        if shutil.which("cc") is None:
            self.skipTest("no C compiler (cc) to build the test program")
        if subprocess.run(["ip", "link", "show", "via-k0"], capture_output=True).returncode:
            made = subprocess.run(["ip", "link", "add", "via-k0", "type", "veth", "peer", "name",
                                   IFACE], capture_output=True, text=True)
            if made.returncode != 0:
                self.skipTest("cannot create a veth pair: " + made.stderr.strip())
            subprocess.run(["ip", "addr", "add", f"{FAR4}/24", "dev", "via-k0"], check=True)
            subprocess.run(["ip", "link", "set", "via-k0", "up"], check=True)
            subprocess.run(["ip", "link", "set", IFACE, "up"], check=True)
            # A first hop that answers no ARP: its frames leave via-k0 and arrive at via-k1.
            subprocess.run(["ip", "neigh", "replace", FIRST_HOP, "lladdr", "02:00:00:00:02:17",
                            "dev", "via-k0", "nud", "permanent"], check=True)
        # (/sys still shows the outer namespace's devices: ask ip.)
        link = subprocess.run(["ip", "-o", "link", "show", "via-k0"], capture_output=True,
                              text=True, check=True).stdout.split()
        self.mac = link[link.index("link/ether") + 1]
        # Client-side TFO on: a Fast Open send that escaped the shim would send its SYN itself.
        subprocess.run(["sysctl", "-qw", "net.ipv4.tcp_fastopen=3"], capture_output=True)
        if KernelParity.exe is None:
            out = tempfile.mkdtemp(prefix="via-parity-")
            exe = os.path.join(out, "parity")
            built = subprocess.run(["cc", "-O1", "-o", exe, os.path.join(harness.DATA, "parity.c"),
                                    "-ldl"], capture_output=True, text=True)
            if built.returncode != 0:
                self.skipTest("cannot build data/parity.c: " + built.stderr[-500:])
            KernelParity.exe = exe
        self.received = []
        self.udp_port = self.start_udp_listener(FAR4, self.received)
        self.wire = []
        self._wire_watcher()
        self.tcp_port = harness.free_port(FAR4)
        self.record = os.path.join(self.dir, "far.jsonl")
        p, _ = self.spawn([harness.PYTHON, os.path.join(harness.HERE, "target_server.py"),
                           str(self.tcp_port), self.record, "--bind", FAR4], "far.log")
        harness.wait_port(self.tcp_port, host=FAR4, proc=p)

    def _wire_watcher(self):
        """Records every frame that arrives at via-k1 (what left the namespace's host side)."""
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((IFACE, 0))
        s.settimeout(0.2)
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                try:
                    self.wire.append(s.recv(65536))
                except OSError:
                    pass
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        self.addCleanup(lambda: (stop.set(), t.join(), s.close()))

    def on_wire(self, cases):
        """Which of `cases` (each a payload) were seen on the wire."""
        time.sleep(0.5)
        return [c for c in cases if any(c.encode() in f for f in list(self.wire))]

    def use_proxy(self):
        port, log = self.start_microsocks(bind_out=harness.PROXY_OUT)
        self.write_config([self.socks5_entry("tor", port)])
        return log

    def run_case(self, case, via=True):
        argv = [self.exe, case, FAR4, str(self.tcp_port), str(self.udp_port), IFACE, self.mac]
        if via:
            proc = self.run_via("app:tor", *argv)
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=30)
        self.assertOk(proc, case)
        return proc.stdout.strip()

    def settled(self):
        """What the UDP listener received, once every datagram sent has had time to arrive."""
        time.sleep(0.5)
        return sorted(r.decode(errors="replace") for r in self.received)

    # ---- the control: every case reaches its target without via --------------------------
    def test_control_without_via_every_case_reaches_its_target(self):
        self.start_dns()
        for case in UDP_CASES + PACKET_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case, via=False), "sent")
        self.assertTrue(harness.wait_for(
            lambda: len(self.received) == len(UDP_CASES + PACKET_CASES), timeout=5),
            self.received)
        self.assertEqual(self.settled(), sorted(UDP_CASES + PACKET_CASES))
        for case in TCP_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case, via=False), "200")
        recs = self.records(self.record)
        self.assertEqual(sorted(r["path"] for r in recs), sorted("/" + c for c in TCP_CASES))
        self.assertTrue(all(r["peer"] != harness.PROXY_OUT for r in recs), recs)  # direct
        for case in DNS_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case, via=False), "answered")
        self.assertEqual(len(self.dns_queries("dns-tfo-")), len(DNS_CASES))
        self.assertEqual(self.run_case("dns_raw_udp", via=False), "sent")
        self.assertEqual(len(self.dns_queries("dns-raw-udp")), 1)
        for case in LSRR_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case, via=False), "sent")
        self.assertEqual(self.on_wire(LSRR_CASES), LSRR_CASES)

    # ---- under via -------------------------------------------------------------------------
    def test_udp_in_every_form_the_kernel_accepts_is_refused(self):
        self.use_proxy()
        for case in UDP_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case), "EPERM")
        self.assertEqual(self.settled(), [])  # the target received no datagram

    def test_tcp_in_every_form_the_kernel_accepts_is_routed(self):
        log = self.use_proxy()
        for case in TCP_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case), "200")
        # Each case's request reached the target once, from the proxy.
        peers = {r["path"][1:]: r["peer"] for r in self.records(self.record)}
        self.assertEqual(peers, {c: harness.PROXY_OUT for c in TCP_CASES})
        self.assertEqual(len(self.records(self.record)), len(TCP_CASES))
        self.assertEqual(harness.microsocks_destinations(log),
                         [f"{FAR4}:{self.tcp_port}"] * len(TCP_CASES))

    def test_fast_open_or_raw_udp_to_the_local_resolver_is_refused(self):
        self.start_dns()
        self.use_proxy()
        for case in DNS_CASES + ["dns_raw_udp"]:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case), "EPERM")
        self.assertEqual(self.dns_queries("dns-tfo-"), [])
        self.assertEqual(self.dns_queries("dns-raw-udp"), [])

    def test_source_routes_to_loopback_are_refused(self):
        self.use_proxy()
        for case in LSRR_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case), "EPERM")
        self.assertEqual(self.on_wire(LSRR_CASES), [])

    def test_packet_sockets_are_refused(self):
        self.use_proxy()
        for case in PACKET_CASES:
            with self.subTest(case=case):
                self.assertEqual(self.run_case(case), "EPERM")
        self.assertEqual(self.settled(), [])


if __name__ == "__main__":
    harness.main()
