"""The program's own socket is what gets connected: same fd, options, flags; TFO and bind work."""
import harness


class SocketState(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port)])

    def run_py(self, code):
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        return proc.stdout

    def test_fd_options_and_flags_survive(self):
        out = self.run_py(f"""
import fcntl, os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
fd = s.fileno()
before = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
s.connect(('example.test', {self.port}))
assert s.fileno() == fd
assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, 'FD_CLOEXEC lost'
assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK, 'a blocking socket became non-blocking'
assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == before
s.sendall(b'GET /state HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')
print(s.recv(100).split(b'\\r\\n')[0].decode(), s.getpeername()[0])
""")
        status, peer = out.split("\n")[0].rsplit(" ", 1)
        self.assertEqual(status, "HTTP/1.0 200 OK")
        self.assertRegex(peer, r"^198\.1[89]\.")  # a fake address of the pool (198.18.0.0/15)
        self.assertReachedThroughProxy(self.record, "example.test", path="/state")

    def test_nonblocking_connect_returns_connected_and_stays_nonblocking(self):
        out = self.run_py(f"""
import fcntl, os, select, socket
addr = socket.getaddrinfo('example.test', {self.port}, socket.AF_INET)[0][4]
s = socket.socket()
s.setblocking(False)
err = s.connect_ex(addr)
select.select([], [s], [], 10)
assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
assert fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
s.setblocking(True)
s.sendall(b'GET /nb HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')
print(err in (0, 115), s.recv(12).decode())
""")
        self.assertEqual(out.strip(), "True HTTP/1.0 200")
        self.assertReachedThroughProxy(self.record, "example.test", path="/nb")

    def test_tcp_fast_open_sendto_is_routed(self):
        out = self.run_py(f"""
import socket
addr = socket.getaddrinfo('example.test', {self.port}, socket.AF_INET)[0][4]
s = socket.socket()
s.sendto(b'GET /tfo HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n', socket.MSG_FASTOPEN, addr)
print(s.recv(12).decode())
""")
        self.assertEqual(out.strip(), "HTTP/1.0 200")
        self.assertReachedThroughProxy(self.record, "example.test", path="/tfo")

    def test_connect_after_bind_and_ipv6_sockets(self):
        out = self.run_py(f"""
import socket
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.connect(('example.test', {self.port}))
s.sendall(b'GET /bound HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')
print(s.recv(12).decode())
v6 = [a[4] for a in socket.getaddrinfo('example.test', {self.port}, socket.AF_INET6)][0]
t = socket.socket(socket.AF_INET6)
t.connect(v6)
t.sendall(b'GET /v6 HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')
print(t.recv(12).decode(), t.getpeername()[0] == v6[0], v6[0].startswith('fd76:6961:ff00::'))
""")
        lines = out.splitlines()
        self.assertEqual(lines[0], "HTTP/1.0 200")
        # The peer is the fake address (a new table starts at a random number in the pool).
        self.assertEqual(lines[1], "HTTP/1.0 200 True True")
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/bound", "/v6"])
        self.assertTrue(all(r["peer"] == "127.0.0.2" for r in self.records(self.record)))

    def test_many_threads_connect_at_once(self):
        # Each thread has its own broker connection; replies must never cross threads.
        out = self.run_py(f"""
import concurrent.futures, urllib.request
def fetch(i):
    return urllib.request.urlopen('http://example.test:{self.port}/t%d' % i).status
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    print(sorted(set(pool.map(fetch, range(64)))))
""")
        self.assertEqual(out.strip(), "[200]")
        paths = sorted(r["path"] for r in self.records(self.record))
        self.assertEqual(paths, sorted(f"/t{i}" for i in range(64)))
        self.assertTrue(all(r["peer"] == "127.0.0.2" for r in self.records(self.record)))

    def test_connect_to_an_ip_literal_goes_through_the_proxy(self):
        # 127.0.0.1 is loopback (direct by default); a routable literal goes to the proxy as ATYP 1.
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay"})
        self.assertOk(self.run_via("app:tor", "curl", "-sSf", f"http://127.0.0.1:{self.port}/lit"))
        self.assertReachedThroughProxy(self.record, "127.0.0.1", path="/lit")
        self.assertTrue(any(f"connected to 127.0.0.1:{self.port}" in l
                            for l in harness.read_lines(self.proxy_log)))


if __name__ == "__main__":
    harness.main()
