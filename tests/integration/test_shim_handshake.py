"""SOCKS5 run by the program itself (network_service.handshake: program, the default).

Under a SOCKS5 overlay the broker's HELLO reply tells the shim the proxy and credentials, and the
shim runs CONNECT on the program's socket in the program's thread; the broker counts and logs it
(REPORT). A fake address whose name the process did not resolve itself still goes to the broker.
Every test checks what the far side saw: microsocks' log of the names it was asked for, the
target's record of who connected, the broker's log.
"""
import os
import re
import subprocess

import harness

CONNECT = """
import socket, sys
for host in sys.argv[2:]:
    addr = socket.getaddrinfo(host, int(sys.argv[1]), socket.AF_INET)[0][4]  # one address
    s = socket.socket()
    s.settimeout(10)
    s.connect(addr)
    s.sendall(b'GET /shim HTTP/1.0\\r\\nHost: ' + host.encode() + b'\\r\\n\\r\\n')
    print(s.recv(200).split(b' ')[1].decode(), flush=True)
    s.close()
"""


class ShimHandshake(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.start_dns()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.debug_env = dict(self.env, VIA_LOG_LEVEL="debug")

    def connect(self, *hosts, env=None, network="app:tor"):
        return self.run_via(network, harness.PYTHON, "-c", CONNECT, str(self.port), *hosts,
                            env=env)

    def ok_lines(self):
        return [l for l in self.broker_log() if re.search(r"connect \S+ via app:tor ok", l)]

    def test_the_program_runs_the_handshake_and_the_broker_logs_it(self):
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        proc = self.connect("example.test", "other.test", env=self.debug_env)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.split(), ["200", "200"])
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")
        self.assertMicrosocksConnected(self.proxy_log, f"other.test:{self.port}")
        recs = self.records(self.record)
        self.assertEqual([r["peer"] for r in recs], [harness.PROXY_OUT] * 2, recs)
        lines = self.ok_lines()
        self.assertEqual(len(lines), 2, "\n".join(self.broker_log()))
        for line, name in zip(lines, ["example.test", "other.test"]):
            self.assertIn(f"connect {name}:{self.port} via app:tor ok, by the program", line)
        self.assertEqual(self.dns_queries(".test"), [])

    def test_a_server_that_speaks_first_keeps_its_first_bytes(self):
        # The banner may reach the proxy right behind its CONNECT reply: the shim must read the
        # reply and not a byte more. Twenty connects, each banner intact.
        port, _ = self.start_tcp_server(
            "banner", "c.sendall(b'220 banner %d from %s\\r\\n' % (n, a[0].encode())); c.close()")
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        client = f"""
import socket
for i in range(20):
    s = socket.create_connection(('target.test', {port}))
    data = b''
    while not data.endswith(b'\\r\\n'):
        chunk = s.recv(100)
        if not chunk:
            break
        data += chunk
    print(data.decode().strip(), flush=True)
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", client)
        self.assertOk(proc)
        lines = proc.stdout.splitlines()
        self.assertEqual(len(lines), 20, proc.stdout)
        for line in lines:
            self.assertRegex(line, rf"^220 banner \d+ from {harness.PROXY_OUT}$")
        self.assertMicrosocksConnected(self.proxy_log, f"target.test:{port}")

    def test_handshake_broker_hands_every_socket_to_the_broker(self):
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"handshake": "broker"})
        proc = self.connect("example.test", env=self.debug_env)
        self.assertOk(proc)
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")
        lines = self.ok_lines()
        self.assertEqual(len(lines), 1, "\n".join(self.broker_log()))
        self.assertNotIn("by the program", lines[0])

    def test_a_name_resolved_by_another_process_goes_through_the_broker(self):
        # The parent resolves; the child connects to the fake address, whose name only the
        # broker knows: the broker runs that handshake, with the name.
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        code = f"""
import socket, subprocess, sys
ip = socket.getaddrinfo('example.test', {self.port}, socket.AF_INET)[0][4][0]
print(ip, flush=True)
child = "import socket; s = socket.create_connection(('" + ip + "', {self.port})); " \\
        "s.sendall(b'GET /child HTTP/1.0\\\\r\\\\nHost: example.test\\\\r\\\\n\\\\r\\\\n'); " \\
        "print(s.recv(200).split(b' ')[1].decode())"
subprocess.run([sys.executable, '-c', child], check=True)
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code, env=self.debug_env)
        self.assertOk(proc)
        ip, status = proc.stdout.split()
        self.assertRegex(ip, r"^198\.1[89]\.")  # the pool is 198.18.0.0/15
        self.assertEqual(status, "200")
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")
        self.assertReachedThroughProxy(self.record, "example.test", path="/child")
        lines = self.ok_lines()
        self.assertEqual(len(lines), 1, "\n".join(self.broker_log()))
        self.assertIn(f"connect example.test:{self.port} via app:tor ok (", lines[0])

    def test_connects_are_counted_in_via_status(self):
        # Without debug logging successes are told in batches, the last one when the program
        # exits.
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        proc = self.connect(*["example.test"] * 5)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.split(), ["200"] * 5)
        self.assertEqual(len(self.records(self.record)), 5)
        counted = lambda: re.search(r"app:tor\b.*connects ok=5 failed=0",
                                    self.via("status").stdout)
        self.assertTrue(harness.wait_for(counted, timeout=5), self.via("status").stdout)

    def test_the_last_count_never_lands_in_a_reused_descriptor(self):
        # The program closes every descriptor (our broker link among them) and puts a TCP
        # connection of its own on the link's number before it exits: the count the shim sends
        # at exit must not go into that connection.
        sink_log = os.path.join(self.dir, "sink.bin")
        sink_port, sink_out = self.start_tcp_server("sink", f"""
data = b''.join(iter(lambda: c.recv(4096), b''))  # until the program's side closes
open({sink_log!r}, 'ab').write(data)
print('closed', len(data), flush=True)
""")
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        client = f"""
import os, socket
for i in range(3):
    s = socket.create_connection(('example.test', {self.port}))
    s.sendall(b'GET /reuse HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n'); s.recv(100); s.close()
link = [int(n) for n in os.listdir('/proc/self/fd') if int(n) >= 400 and
        os.readlink('/proc/self/fd/' + n).startswith('socket:')]
assert len(link) == 1, link
own = socket.create_connection(('127.0.0.1', {sink_port}))  # loopback: direct
own.sendall(b'mine')
keep = own.detach()
os.dup2(keep, link[0])  # our connection now has the link's number; the link is gone
for n in os.listdir('/proc/self/fd'):
    if int(n) > 2 and int(n) != link[0]:
        try:
            os.close(int(n))
        except OSError:
            pass
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", client)
        self.assertOk(proc)
        self.assertTrue(harness.wait_for(lambda: harness.read_lines(sink_out), timeout=5))
        with open(sink_log, "rb") as f:
            self.assertEqual(f.read(), b"mine")
        self.assertEqual(len(self.records(self.record)), 3)

    def test_a_hung_proxy_times_out_and_nothing_goes_direct(self):
        hung, hung_log = self.start_hung_proxy()
        self.write_config([self.socks5_entry("tor", hung, "connect_timeout: 1")])
        proc = self.connect("example.test")
        self.assertFailed(proc)
        self.assertIn("TimeoutError", proc.stderr)
        self.assertIn(f"proxy 127.0.0.1:{hung} did not finish the handshake within 1000 ms",
                      proc.stderr)
        self.assertTrue(harness.read_lines(hung_log), "the hung proxy was never reached")
        self.assertTargetSawNothing(self.record)
        failed = [l for l in self.broker_log() if "via app:tor failed" in l]
        self.assertEqual(len(failed), 1, "\n".join(self.broker_log()))
        self.assertIn(f"example.test:{self.port}", failed[0])

    def test_a_proxy_port_that_is_not_socks5_fails_with_its_reply_named(self):
        # A misconfiguration: the overlay's port is an SSH server's, which speaks first.
        port, ssh_log = self.start_tcp_server("ssh", """
held.append(c)
c.sendall(b'SSH-2.0-OpenSSH_9.2\\r\\n')
print('accepted', a, flush=True)
""")
        self.write_config([self.socks5_entry("tor", port)])
        proc = self.connect("example.test")
        self.assertFailed(proc)
        self.assertIn("[Errno 71]", proc.stderr)  # EPROTO
        self.assertIn("SOCKS5 proxy answered the greeting with version 0x53, not 0x05",
                      proc.stderr)
        self.assertTrue(harness.read_lines(ssh_log))
        self.assertTargetSawNothing(self.record)
        failed = [l for l in self.broker_log() if "via app:tor failed" in l]
        self.assertEqual(len(failed), 1, "\n".join(self.broker_log()))

if __name__ == "__main__":
    harness.main()
