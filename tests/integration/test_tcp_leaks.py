"""TCP under an overlay never goes direct, whatever way the program connects: IPv4 and IPv6
literals, IPv4-mapped IPv6 on an IPv6 socket, TCP Fast Open (sendto with MSG_FASTOPEN, with
the kernel's client TFO switched on), and connect after bind. A packet capture on every
interface of the test's namespace shows that every SYN to the target came from the proxy's
outgoing address, never from the program.

The namespace gets a veth pair `via-l0`/`via-l1`: the target listens on 10.216.0.1 and
fd00:216::1 ("off the host" for the program); microsocks binds its outgoing IPv4 connections to
127.0.0.2 and, for the IPv6 test, to fd00:216::2, so its SYNs are told from the program's by
their source alone. A control without via shows the capture sees a direct SYN.
"""
import os
import re
import shutil
import subprocess
import tempfile
import time

import harness

FAR4 = "10.216.0.1"
FAR6 = "fd00:216::1"
PROXY6 = "fd00:216::2"


class TcpLeaks(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.require_namespace()
        if shutil.which("tcpdump") is None:
            self.skipTest("tcpdump is not installed")
        if subprocess.run(["ip", "link", "show", "via-l0"], capture_output=True).returncode:
            made = subprocess.run(["ip", "link", "add", "via-l0", "type", "veth", "peer", "name",
                                   "via-l1"], capture_output=True, text=True)
            if made.returncode != 0:
                self.skipTest("cannot create a veth pair: " + made.stderr.strip())
            subprocess.run(["ip", "addr", "add", f"{FAR4}/24", "dev", "via-l0"], check=True)
            for a in (FAR6, PROXY6):
                subprocess.run(["ip", "addr", "add", f"{a}/64", "dev", "via-l0", "nodad"],
                               check=True)
            subprocess.run(["ip", "link", "set", "via-l0", "up"], check=True)
            subprocess.run(["ip", "link", "set", "via-l1", "up"], check=True)
        # Client-side TFO on (1): a TFO sendto that escaped the shim would send its SYN itself.
        subprocess.run(["sysctl", "-qw", "net.ipv4.tcp_fastopen=3"], capture_output=True)
        self.port = harness.free_port()
        self.record = os.path.join(self.dir, "far.jsonl")
        for host in (FAR4, FAR6):
            p, _ = self.spawn([harness.PYTHON, os.path.join(harness.HERE, "target_server.py"),
                               str(self.port), self.record, "--bind", host], f"far-{host}.log")
            harness.wait_port(self.port, host=host, proc=p)
        self.pcap = os.path.join(self.dir, "tcp.pcap")
        cap, log = self.spawn(["tcpdump", "-Z", "root", "--immediate-mode", "-i", "any", "-n",
                               "-U", "-w", self.pcap,
                               f"tcp port {self.port} and tcp[tcpflags] & tcp-syn != 0 or "
                               f"ip6 and tcp port {self.port}"], "tcpdump.log")
        harness.wait_for(lambda: "listening on" in harness.read_text(log), timeout=10)
        time.sleep(0.5)  # "listening on" is printed a moment before the filter is attached
        self.capture = cap

    def syn_sources(self):
        """Stops the capture; the source address of every SYN (not SYN-ACK) to the target."""
        time.sleep(0.3)
        self.capture.send_signal(2)
        self.capture.wait(10)
        out = subprocess.run(["tcpdump", "-n", "-r", self.pcap], capture_output=True, text=True)
        sources = []
        for m in re.finditer(r"IP6? (\S+)\.\d+ > (\S+)\.(\d+): Flags \[S\]", out.stdout):
            if int(m.group(3)) == self.port:
                sources.append(m.group(1))
        return sources

    def use_proxy(self, bind_out):
        port, log = self.start_microsocks(bind_out=bind_out)
        # `refuse`: a Go program is refused rather than run in strict mode (the default).
        self.write_config([self.socks5_entry("tor", port)], service={"unrouted_exec": "refuse"})
        return log

    def run_py(self, code, via=True):
        if via:
            proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        else:
            proc = subprocess.run([harness.PYTHON, "-c", code], capture_output=True, text=True,
                                  env=self.env, timeout=30)
        self.assertOk(proc)
        return proc.stdout.split()

    def get(self, sock_expr, connect):
        return f"""
import socket
s = {sock_expr}
{connect}
s.sendall(b'GET /x HTTP/1.0\\r\\nHost: far\\r\\n\\r\\n')
print(s.recv(12).decode().split()[1])
"""

    def test_control_without_via_the_capture_sees_a_direct_syn(self):
        out = self.run_py(self.get("socket.socket()", f"s.connect(('{FAR4}', {self.port}))"),
                          via=False)
        self.assertEqual(out, ["200"])
        self.assertEqual(self.syn_sources(), [FAR4])  # the kernel's source for a local target

    def test_ipv4_mapped_fast_open_and_bind_are_routed(self):
        log = self.use_proxy(harness.PROXY_OUT)
        cases = [
            ("socket.socket()", f"s.connect(('{FAR4}', {self.port}))"),
            ("socket.socket(socket.AF_INET6)", f"s.connect(('::ffff:{FAR4}', {self.port}))"),
            ("socket.socket()",
             f"s.sendto(b'', socket.MSG_FASTOPEN, ('{FAR4}', {self.port}))"),
            ("socket.socket()", f"s.bind(('0.0.0.0', 0)); s.connect(('{FAR4}', {self.port}))"),
            ("socket.socket()", f"s.bind(('{FAR4}', 0)); s.connect(('{FAR4}', {self.port}))"),
        ]
        for sock, connect in cases:
            with self.subTest(connect=connect):
                self.assertEqual(self.run_py(self.get(sock, connect)), ["200"])
        peers = [r["peer"] for r in self.records(self.record)]
        self.assertEqual(peers, [harness.PROXY_OUT] * len(cases))
        self.assertEqual(harness.microsocks_destinations(log),
                         [f"{FAR4}:{self.port}"] * len(cases))
        self.assertEqual(self.syn_sources(), [harness.PROXY_OUT] * len(cases))

    def test_ipv6_literal_and_fast_open_are_routed(self):
        log = self.use_proxy(PROXY6)
        cases = [
            ("socket.socket(socket.AF_INET6)", f"s.connect(('{FAR6}', {self.port}))"),
            ("socket.socket(socket.AF_INET6)",
             f"s.sendto(b'', socket.MSG_FASTOPEN, ('{FAR6}', {self.port}))"),
            ("socket.socket(socket.AF_INET6)",
             f"s.bind(('::', 0)); s.connect(('{FAR6}', {self.port}))"),
        ]
        for sock, connect in cases:
            with self.subTest(connect=connect):
                self.assertEqual(self.run_py(self.get(sock, connect)), ["200"])
        peers = [r["peer"] for r in self.records(self.record)]
        self.assertEqual(peers, [PROXY6] * len(cases))
        self.assertEqual(len(harness.microsocks_destinations(log)), len(cases),
                         harness.read_text(log))
        self.assertEqual(self.syn_sources(), [PROXY6] * len(cases))

    # ---- programs whose connects the shim cannot see -------------------------------------------
    GO_CLIENT = """package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	c, err := net.Dial("tcp", os.Args[1])
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Fprintf(c, "GET /go HTTP/1.0\\r\\nHost: far\\r\\n\\r\\n")
	b := make([]byte, 12)
	n, _ := c.Read(b)
	fmt.Println(string(b[:n]))
}
"""

    def go_client(self):
        """A Go program dynamically linked for cgo (its socket calls are still its own system
        calls). Built once per run into a shared cache directory."""
        go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")
                                         if os.path.exists(p)), None)
        if go is None:
            self.skipTest("go is not installed (golang-go)")
        cache = os.path.join(tempfile.gettempdir(), "via-test-go")
        os.makedirs(cache, exist_ok=True)
        src = os.path.join(cache, "client.go")
        with open(src, "w") as f:
            f.write(self.GO_CLIENT)
        exe = os.path.join(cache, "client-cgo")
        env = dict(self.env, GOCACHE=os.path.join(cache, "build"), GOPATH=os.path.join(cache, "gopath"),
                   CGO_ENABLED="1", GOFLAGS="", GOTOOLCHAIN="local", GOPROXY="off")
        built = subprocess.run([go, "build", "-o", exe, "-ldflags=-linkmode=external", src],
                               capture_output=True, text=True, env=env, timeout=300, cwd=cache)
        if built.returncode != 0:
            self.skipTest("cannot build the Go test client: " + built.stderr[-500:])
        elf = subprocess.run(["readelf", "-l", exe], capture_output=True, text=True).stdout
        self.assertIn("Requesting program interpreter", elf)  # dynamically linked: not static
        return exe

    def test_go_program_is_refused_and_sends_nothing(self):
        exe = self.go_client()
        # Control: without via it connects, directly.
        plain = subprocess.run([exe, f"{FAR4}:{self.port}"], capture_output=True, text=True,
                               env=self.env, timeout=30)
        self.assertEqual(plain.stdout.strip(), "HTTP/1.0 200", plain.stdout + plain.stderr)
        self.use_proxy(harness.PROXY_OUT)
        direct = self.run_via("app:tor", exe, f"{FAR4}:{self.port}")
        nested = self.run_via("app:tor", "sh", "-c", f"{exe} {FAR4}:{self.port}; echo status=$?")
        for proc in (direct, nested):
            self.assertIn("it is a Go program", proc.stderr)
            self.assertNotIn("HTTP/1.0", proc.stdout)
        self.assertEqual(direct.returncode, 126, direct.stderr)
        self.assertIn("status=126", nested.stdout)
        self.assertEqual(len(self.records(self.record)), 1)  # only the control
        self.assertEqual(self.syn_sources(), [FAR4])  # only the control's SYN


if __name__ == "__main__":
    harness.main()
