"""via run --strict: the command in a network namespace of its own (only lo), its connects placed
by via run through the broker (seccomp user notification), its names answered with fake
addresses. Programs the shim cannot cover - static, Go, raw system calls - are routed, and what
is not routed has no way out. Each case asserts what the proxy, the target or a listener on the
host saw."""
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import harness

# getaddrinfo + connect + GET /ARGV3 from ARGV1:ARGV2 (data/gai_client.c).
GAI_CLIENT = harness.read_text(os.path.join(harness.HERE, "data", "gai_client.c"))

# Sends one UDP datagram to ARGV1:ARGV2 (the host's listener, as seen from the namespace).
UDP_SEND = "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
           "print(s.sendto(b'leak', (sys.argv[1], int(sys.argv[2]))))"


# Daemonizes (fork, setsid, fork, stdio to /dev/null) while the command exits with status 3; the
# daemon writes its pid to ARGV2, sleeps ARGV3 seconds (its parents are gone by then), then GETs
# /daemon from example.test:ARGV1 and writes the status line, or the error, to ARGV2 + ".out".
DAEMON = r"""
import os, socket, sys, time
port, pidfile, nap = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if os.fork() > 0:
    sys.exit(3)
os.setsid()
if os.fork() > 0:
    os._exit(0)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
with open(pidfile, "w") as f:
    f.write(str(os.getpid()))
time.sleep(nap)
try:
    s = socket.create_connection(("example.test", port), timeout=30)
    s.sendall(b"GET /daemon HTTP/1.0\r\nHost: example.test\r\n\r\n")
    res = s.recv(100).split(b"\r\n")[0].decode()
except OSError as e:
    res = "error %s" % e
with open(pidfile + ".out", "w") as f:
    f.write(res)
"""

# Asks the broker at $VIA_SOCKET, greeted as $VIA_SESSION's process, for PROXY_SOCKET to each
# ADDR:PORT in ARGV1.. (IPv4); prints, per request, the reply's ERRNO and whether a descriptor
# came with it, and for a descriptor whether it connects to that address.
PROXY_SOCKET = r"""
import array, os, socket, struct, sys, time
def msg(t, i, fields):
    body = b"".join(struct.pack("<HH", tag, len(v)) + v for tag, v in fields)
    return b"VIA1" + struct.pack("<HHII", t, 0, i, len(body)) + body
def fields(reply):
    out, i = {}, 16
    while i + 4 <= len(reply):
        tag, n = struct.unpack("<HH", reply[i:i + 4])
        out.setdefault(tag, reply[i + 4:i + 4 + n])
        i += 4 + n
    return out
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(os.environ["VIA_SOCKET"])
s.send(msg(1, 1, [(12, struct.pack("<H", 1)), (1, os.environ["VIA_NETWORK"].encode()),
                  (2, os.environ["VIA_SESSION"].encode())]))
f = fields(s.recv(65536))
print("hello", struct.unpack("<I", f[7])[0], "strict" if struct.unpack("<I", f[9])[0] & (1 << 17) else "-")
for i, ep in enumerate(sys.argv[1:]):
    host, port = ep.rsplit(":", 1)
    addr = bytes([4, 0]) + struct.pack(">H", int(port)) + socket.inet_aton(host)
    s.send(msg(0x45, 2 + i, [(3, addr), (6, bytes([4]))]))
    fds = array.array("i")
    data, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(4))
    for level, kind, d in anc:
        fds.frombytes(d[:4])
    err = struct.unpack("<I", fields(data)[7])[0]
    peer = "-"
    if fds:
        c = socket.socket(fileno=fds[0])
        time.sleep(0.2)
        peer = "%s:%d" % c.getpeername()
        c.close()
    print(ep, err, peer)
"""


class Strict(harness.ViaCase):
    """With the shim in dynamic programs (the default): names from its cache, and under SOCKS5
    its own handshake on a socket the broker connected to the proxy; via run serves the rest."""
    shim = True

    def setUp(self):
        super().setUp()
        self.require_namespace()  # names only the proxy knows
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()

    def configure(self, loopback="overlay"):
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": loopback})

    def cc(self, source, *flags):
        if shutil.which("cc") is None:
            self.skipTest("no C compiler")
        src = os.path.join(self.dir, "client.c")
        exe = os.path.join(self.dir, "client" + "".join(flags).replace("-", "_"))
        with open(src, "w") as f:
            f.write(source)
        built = subprocess.run(["cc", "-O1", *flags, "-o", exe, src], capture_output=True,
                               text=True)
        if built.returncode != 0:
            self.skipTest("cannot build the test client " + " ".join(flags) + ": " +
                          built.stderr[-200:])
        return exe

    def strict(self, *cmd, env=None):
        shim = [] if self.shim else ["--no-shim"]
        return self.via("run", "--strict", *shim, "--network", "app:tor", "--", *cmd, env=env)

    def assertProxied(self, path, host="example.test"):
        self.assertMicrosocksConnected(self.proxy_log, f"{host}:{self.port}")
        self.assertReachedThroughProxy(self.record, host, path=path)

    def test_who_connects_a_dynamic_program(self):
        # With the shim, curl runs its own SOCKS5 handshake on a socket the broker connected to
        # the proxy (PROXY_SOCKET: no seccomp notification for the connect), and reports it
        # itself; without it, via run does both. The broker's debug log names who did.
        self.env["VIA_LOG_LEVEL"] = "debug"
        self.configure()
        self.assertOk(self.strict("curl", "-sS", f"http://example.test:{self.port}/who"))
        self.assertProxied("/who")
        log = self.broker_log()
        placed = [l for l in log if "proxy socket to 127.0.0.1:%d" % self.proxy_port in l]
        reported = [l for l in log if f"connect example.test:{self.port} via app:tor ok" in l]
        self.assertEqual(len(reported), 1, log[-20:])
        if self.shim:
            # the one curl used, and the spare made for its next connect (strict_socket.cc)
            self.assertIn(len(placed), (1, 2), log[-20:])
            self.assertTrue(all("curl" in l for l in placed), placed)
            self.assertIn("curl", reported[0])
        else:
            self.assertEqual(placed, [])
            self.assertNotIn("curl", reported[0])

    def test_a_proxy_restarted_between_connects_is_reached_again(self):
        # The shim keeps a spare proxy socket for its process's next connect (strict_socket.cc).
        # A proxy that restarts meanwhile has closed it: the next connect takes a fresh one
        # instead of failing on the dead one.
        if not self.shim:
            self.skipTest("only the shim keeps a spare")
        port = harness.free_port()
        argv = ["microsocks", "-i", "127.0.0.1", "-p", str(port), "-b", harness.PROXY_OUT]
        first, _ = self.spawn(argv, "ms-first.log", proxy_hosts=True)
        harness.wait_port(port, proc=first)
        self.write_config([self.socks5_entry("tor", port)], service={"loopback": "overlay"})
        code = ("import socket, sys\n"
                "def get(path):\n"
                "    s = socket.create_connection(('example.test', int(sys.argv[1])))\n"
                "    s.sendall(b'GET /' + path.encode() + b' HTTP/1.0\\r\\n\\r\\n')\n"
                "    print(path, s.recv(100).split()[1].decode(), flush=True)\n"
                "get('one'); sys.stdin.readline(); get('two')\n")
        proc = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--strict", "--network",
                                 "app:tor", "--", harness.PYTHON, "-c", code, str(self.port)],
                                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        self.assertEqual(proc.stdout.readline().strip(), "one 200")
        first.kill()
        first.wait()
        second, log = self.spawn(argv, "ms-second.log", proxy_hosts=True)
        harness.wait_port(port, proc=second)
        out, err = proc.communicate("\n", timeout=60)
        self.assertEqual(proc.returncode, 0, err)
        self.assertNotIn("failed", err)  # not even a first attempt (Python tries IPv6 next)
        self.assertEqual(out.strip(), "two 200")
        self.assertEqual(harness.microsocks_destinations(log), [f"example.test:{self.port}"])
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/one", "/two"])

    def test_spares_are_greeted_with_the_process_credential_and_isolation_still_holds(self):
        # The broker greets a process's spare proxy socket ahead of its next connect, with the
        # plan's credential, where every connect has the same one (isolation: process), so that
        # the shim sends only its request; under isolation: connection each connect has its own
        # credential and no spare is greeted. danted checks every credential (PAM) and logs it.
        if not self.shim:
            self.skipTest("only the shim keeps a spare")
        self.env["VIA_LOG_LEVEL"] = "debug"
        port, log = self.start_danted("pam.username", pam_service="via-test-sockd")
        code = ("import urllib.request, sys\n"
                "for i in range(3):\n"
                "    urllib.request.urlopen(f'http://example.test:{sys.argv[1]}/g{i}').read()\n")
        greeted = {}
        for mode in ("process", "connection"):
            self.write_config([self.socks5_entry("tor", port, f"isolation: {mode}")],
                              service={"loopback": "overlay"})
            self.assertOk(self.strict(harness.PYTHON, "-c", code, str(self.port)))
            greeted[mode] = sum("proxy socket greeted" in l for l in self.broker_log())
            self.stop_broker()
        harness.wait_for(lambda: len(harness.danted_users(log)) >= 6, timeout=10)
        users = harness.danted_users(log)
        self.assertEqual(len(users), 6, users)
        self.assertEqual(len(set(users[:3])), 1, users)  # one process, one credential
        self.assertEqual(len(set(users[3:])), 3, users)  # one credential per connect
        self.assertGreaterEqual(greeted["process"], 2, greeted)  # the 2nd and 3rd connects'
        self.assertEqual(greeted["connection"], greeted["process"], greeted)  # none more
        self.assertEqual([r["path"] for r in self.records(self.record)],
                         ["/g0", "/g1", "/g2"] * 2)
        self.assertEqual(harness.danted_requests(log), [(3, f"example.test.{self.port}")] * 6)

    def test_static_programs_take_greeted_spares_and_credentials_stay_apart(self):
        # via run greets a spare proxy socket after each connect it handshakes itself (static
        # programs here), for the next connect with the same network and credential: three
        # static processes under one configured credential share them; under isolation: process
        # each process's credential is its own. danted checks every credential (PAM).
        exe = self.cc(GAI_CLIENT, "-static")
        port, log = self.start_danted("pam.username", pam_service="via-test-sockd")
        # (the pause lets via run finish the last spare before the command ends)
        run3 = (f"for i in 1 2 3; do {exe} example.test {self.port} s$i || exit 1; done; "
                "sleep 0.5")
        # A spare greeted and never used is closed when via run exits: danted logs its end
        # ("eof from local client" after the greeting's bytes; the harness's port probe sent
        # none). With one credential, the 2nd and 3rd connects took the spares and one is left;
        # with one per process, each process's is left.
        def left():
            return len(re.findall(r"error after reading [1-9]\d* bytes .*eof from local client",
                                  harness.read_text(log)))
        for extra, unused in ((["username: alice", "password: pw"], 1),
                              (["isolation: process"], 4)):
            self.write_config([self.socks5_entry("tor", port, *extra)],
                              service={"loopback": "overlay"})
            self.assertOk(self.strict("sh", "-c", run3))
            self.stop_broker()
            harness.wait_for(lambda: left() >= unused, timeout=10)
            self.assertEqual(left(), unused)
        harness.wait_for(lambda: len(harness.danted_users(log)) >= 6, timeout=10)
        users = harness.danted_users(log)
        self.assertEqual(users[:3], ["alice"] * 3, users)
        self.assertEqual(len(set(users[3:])), 3, users)
        self.assertEqual([r["path"] for r in self.records(self.record)],
                         ["/s1", "/s2", "/s3"] * 2)

    def test_non_blocking_connects_keep_the_programs_epoll_registrations(self):
        # The shim puts the broker's socket on the program's descriptor (dup3): a registration
        # the program made on its own socket before connecting (nginx does) goes with the
        # descriptor to the new socket, and fires once when the handshake is done. Without it,
        # the program waited forever.
        if not self.shim:
            self.skipTest("via run answers a connect once connected: nothing is pending")
        self.configure()
        exe = self.nbconnect()
        for mode in ("epoll-before", "epoll-after", "oneshot"):
            proc = self.strict(exe, mode, "example.test", str(self.port))
            self.assertOk(proc)
            v = dict(re.findall(r"(\w+)=(\S+)", proc.stdout))
            self.assertEqual((v.get("connect"), v.get("events"), v.get("out"), v.get("status")),
                             ("EINPROGRESS", "1", "1", "200"), proc.stdout + proc.stderr)
        self.assertEqual([r["path"] for r in self.records(self.record)],
                         ["/epoll-before", "/epoll-after", "/oneshot"])
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")

    def test_the_broker_gives_proxy_sockets_only_to_strict_sessions_and_only_to_the_proxy(self):
        # PROXY_SOCKET hands out a socket of the host's network namespace: never to a process of
        # a default-mode session (it could connect itself), never to anything but the overlay's
        # proxy, whatever a program inside a strict session asks for.
        if not self.shim:
            self.skipTest("the same broker check; run once")
        self.configure()
        proxy, target = f"127.0.0.1:{self.proxy_port}", f"127.0.0.1:{self.port}"
        proc = self.via("run", "--network", "app:tor", "--", harness.PYTHON, "-c", PROXY_SOCKET,
                        proxy)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(), ["hello 0 -", f"{proxy} 1 -"])  # EPERM
        proc = self.strict(harness.PYTHON, "-c", PROXY_SOCKET, target, proxy)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(),
                         ["hello 0 strict", f"{target} 1 -", f"{proxy} 0 {proxy}"])
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])

    def test_a_daemon_that_outlives_the_command_is_served_until_it_exits(self):
        # The command exits at once; the daemon it left connects a second later: via run, which
        # holds the filter's listener, stays until the daemon is gone (else its connect would
        # fail with ENOSYS), then exits with the command's status.
        self.configure()
        pidfile = os.path.join(self.dir, "daemon.pid")
        proc = self.strict(harness.PYTHON, "-c", DAEMON, str(self.port), pidfile, "1")
        self.assertEqual(proc.returncode, 3, proc.stderr)
        self.assertIn("the command exited; via run serves the processes it left", proc.stderr)
        self.assertEqual(harness.read_text(pidfile + ".out"), "HTTP/1.0 200 OK")
        self.assertFalse(harness.alive(int(harness.read_text(pidfile))))
        self.assertProxied("/daemon")

    def test_a_signal_to_via_run_reaches_the_processes_the_command_left(self):
        # The daemon would sleep for a minute: SIGTERM to via run is passed on to it, and via
        # run exits once it is gone; it never connected.
        self.configure()
        pidfile = os.path.join(self.dir, "daemon.pid")
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--strict", "--network",
                              "app:tor", "--", harness.PYTHON, "-c", DAEMON, str(self.port),
                              pidfile, "60"], env=self.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(p.stderr.close)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        self.assertIn("the command exited", p.stderr.readline())
        self.assertTrue(harness.wait_for(lambda: os.path.exists(pidfile) and
                                         harness.read_text(pidfile) != ""))
        daemon = int(harness.read_text(pidfile))
        self.assertTrue(harness.alive(daemon))
        p.terminate()
        self.assertEqual(p.wait(timeout=10), 3)
        self.assertFalse(harness.alive(daemon))
        self.assertFalse(os.path.exists(pidfile + ".out"))
        self.assertEqual(self.records(self.record), [])

    def test_curl_by_name_is_routed_and_nothing_resolves_locally(self):
        self.configure()
        proc = self.strict("curl", "-sS", f"http://example.test:{self.port}/curl")
        self.assertOk(proc)
        self.assertIn(harness.PROXY_OUT, proc.stdout)  # the IP-echo body: the proxy's address
        self.assertProxied("/curl")

    def test_a_getaddrinfo_pair_gets_one_fake_address_with_either_handshake(self):
        # glibc's A/AAAA pair from one socket: the AAAA is answered with no address once the A
        # got a fake one, so getaddrinfo has nothing to sort (no RFC 6724 probes: each would be a
        # notification). From RESOLVE (handshake: program) or the broker's DNS_QUERY (broker).
        # An AAAA asked alone still gets the fake IPv6 address; the connect reaches the name.
        code = ("import socket, sys; h = 'example.test'; p = int(sys.argv[1]);"
                "print(len(socket.getaddrinfo(h, p, type=socket.SOCK_STREAM)));"
                "print(len(socket.getaddrinfo(h, p, socket.AF_INET6, socket.SOCK_STREAM)));"
                "s = socket.create_connection((h, p)); s.sendall(b'GET /' + sys.argv[2].encode()"
                " + b' HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n'); print(s.recv(12))")
        for handshake in ("program", "broker"):
            self.write_config([self.socks5_entry("tor", self.proxy_port)],
                              service={"loopback": "overlay", "handshake": handshake})
            proc = self.strict(harness.PYTHON, "-c", code, str(self.port), f"pair-{handshake}")
            self.assertOk(proc)
            # The shim answers getaddrinfo itself (one fake address per family, no sort).
            self.assertEqual(proc.stdout.splitlines(),
                             ["2" if self.shim else "1", "1", "b'HTTP/1.0 200'"])
        self.assertEqual([r["path"] for r in self.records(self.record)],
                         ["/pair-program", "/pair-broker"])
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")

    def test_addresses_and_names_are_routed_with_either_handshake(self):
        # via run runs the SOCKS5 handshake itself when the overlay lets programs do so
        # (handshake: program, the default: by address, and by name for the fake addresses its
        # resolver answered with RESOLVE's promise), else the broker runs it. The proxy and the
        # target see the same either way, the name included.
        for handshake in ("program", "broker"):
            self.write_config([self.socks5_entry("tor", self.proxy_port)],
                              service={"loopback": "overlay", "handshake": handshake})
            for host in ("127.0.0.1", "example.test"):
                proc = self.strict("curl", "-sS", f"http://{host}:{self.port}/{handshake}")
                self.assertOk(proc)
            self.stop_broker()
        self.assertEqual([(r["peer"], r["host"].rsplit(":", 1)[0], r["path"])
                          for r in self.records(self.record)],
                         [(harness.PROXY_OUT, "127.0.0.1", "/program"),
                          (harness.PROXY_OUT, "example.test", "/program"),
                          (harness.PROXY_OUT, "127.0.0.1", "/broker"),
                          (harness.PROXY_OUT, "example.test", "/broker")])
        self.assertEqual(harness.microsocks_destinations(self.proxy_log),
                         [f"127.0.0.1:{self.port}", f"example.test:{self.port}"] * 2)

    def test_connects_via_run_handshakes_are_reported_to_the_broker(self):
        # handshake: program: via run runs SOCKS5 itself, as the shim does, and REPORTs each
        # connect: the broker counts the successes (via status) and logs the failure.
        self.configure()
        closed = harness.closed_port()
        for host in ("127.0.0.1", "example.test"):
            self.assertOk(self.strict("curl", "-sS", f"http://{host}:{self.port}/reported"))
        proc = self.strict("curl", "-sS", f"http://127.0.0.1:{closed}/")
        self.assertNotEqual(proc.returncode, 0)
        status = self.via("status")
        self.assertOk(status)
        self.assertRegex(status.stdout, r"overlay app:tor network\.socks5.* connects ok=2 failed=1")
        self.assertTrue(any(f"connect 127.0.0.1:{closed} via app:tor failed" in l
                            for l in self.broker_log()), self.broker_log()[-10:])
        self.assertEqual([(r["peer"], r["host"]) for r in self.records(self.record)],
                         [(harness.PROXY_OUT, f"127.0.0.1:{self.port}"),
                          (harness.PROXY_OUT, f"example.test:{self.port}")])

    def test_program_rules_apply_to_programs_inside_the_session(self):
        # A via.program rule sends curl-other (a copy of curl) to app:other: inside the strict
        # session its connects go to that overlay's proxy (via run asks the broker for each
        # process: STRICT_PROCESS), while curl keeps the session's.
        other_port, other_log = self.start_microsocks()
        curl_other = os.path.join(self.dir, "curl-other")
        shutil.copy2(shutil.which("curl"), curl_other)
        self.write_config([self.socks5_entry("tor", self.proxy_port),
                           self.socks5_entry("other", other_port),
                           ["name: curl_other", "kind: via.program",
                            f"match: {{exe: {curl_other}}}", "network: app:other"]],
                          service={"loopback": "overlay"})
        url = f"http://example.test:{self.port}"
        proc = self.strict("sh", "-c", f"curl -sS {url}/session && {curl_other} -sS {url}/rule")
        self.assertOk(proc)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log),
                         [f"example.test:{self.port}"])
        self.assertEqual(harness.microsocks_destinations(other_log), [f"example.test:{self.port}"])
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/session", "/rule"])

    def test_capture_sees_only_connects_to_the_proxy_and_no_dns(self):
        # A packet capture on every interface of the host's side while strict programs connect
        # by name (curl, and a static client with its own resolver): every TCP SYN that the
        # proxy did not send goes to the proxy, and no DNS packet is seen at all (the names were
        # answered inside the namespace with fake addresses).
        if shutil.which("tcpdump") is None:
            self.skipTest("tcpdump is not installed (scripts/install-deps.sh installs it)")
        self.configure()
        exe = self.cc(GAI_CLIENT, "-static")
        pcap = os.path.join(self.dir, "strict.pcap")
        cap, log = self.spawn(["tcpdump", "-Z", "root", "--immediate-mode", "-i", "any", "-n",
                               "-U", "-w", pcap, "(tcp[tcpflags] & tcp-syn != 0 and "
                               "tcp[tcpflags] & tcp-ack == 0) or port 53"], "tcpdump.log")
        harness.wait_for(lambda: "listening on" in harness.read_text(log), timeout=10)
        time.sleep(0.5)  # "listening on" is printed a moment before the filter is attached
        self.assertOk(self.strict("curl", "-sS", f"http://example.test:{self.port}/cap-curl"))
        self.assertOk(self.strict(exe, "example.test", str(self.port), "cap-static"))
        time.sleep(0.3)
        cap.send_signal(2)
        cap.wait(10)
        out = subprocess.run(["tcpdump", "-n", "-r", pcap], capture_output=True, text=True)
        packets = [l.split() for l in out.stdout.splitlines() if " > " in l]
        # "... lo In IP 127.0.0.1.40000 > 127.0.0.1.1080: Flags [S] ..." (-i any: each once
        # per direction): (source address, port), (destination address, port).
        ends = [(p[p.index(">") - 1].rsplit(".", 1), p[p.index(">") + 1].rstrip(":").rsplit(".", 1))
                for p in packets]
        self.assertEqual([p for p, (src, dst) in zip(packets, ends) if "53" in (src[1], dst[1])],
                         [])
        # curl's and the static client's (each seen going out of lo and coming in)
        # (each program's connect, and perhaps the spare proxy socket made for the next one:
        # the shim's, strict_socket.cc, or via run's, strict_spare.cc)
        to_proxy = {src[1] for src, dst in ends if dst[1] == str(self.proxy_port)}
        self.assertIn(len(to_proxy), (2, 3, 4), out.stdout)
        self.assertEqual([(src, dst) for src, dst in ends
                          if dst[1] != str(self.proxy_port) and src[0] != harness.PROXY_OUT], [])
        self.assertEqual([r["path"] for r in self.records(self.record)],
                         ["/cap-curl", "/cap-static"])

    def test_unspecified_family_lookups_get_one_address_and_ipv6_ones_still_work(self):
        # glibc's AF_UNSPEC lookup gets only the fake IPv4 address (with two, getaddrinfo would
        # probe each with a UDP connect to sort them: notifications for nothing); a lookup for
        # AF_INET6 alone still gets a fake IPv6 address, and a connect to it is routed by name.
        self.configure()
        code = ("import socket, sys\n"
                "port = int(sys.argv[1])\n"
                "print(sorted({a[0].name for a in socket.getaddrinfo('example.test', port)}))\n"
                "a6 = socket.getaddrinfo('example.test', port, socket.AF_INET6)[0][4]\n"
                "s = socket.socket(socket.AF_INET6)\n"
                "s.connect(a6)\n"
                "s.sendall(b'GET /v6 HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')\n"
                "print(s.recv(100).split()[1].decode())\n")
        proc = self.strict(harness.PYTHON, "-c", code, str(self.port))
        self.assertOk(proc)
        families = "['AF_INET', 'AF_INET6']" if self.shim else "['AF_INET']"  # the shim's: both
        self.assertEqual(proc.stdout.splitlines(), [families, "200"])
        self.assertProxied("/v6")

    def test_static_program_is_routed(self):
        self.configure()
        exe = self.cc(GAI_CLIENT, "-static")
        self.assertOk(self.strict(exe, "example.test", str(self.port), "static"))
        self.assertProxied("/static")

    def test_raw_connect_system_call_is_routed(self):
        self.configure()
        exe = self.cc(GAI_CLIENT)
        env = dict(self.env, RAW="1")
        self.assertOk(self.strict(exe, "example.test", str(self.port), "raw", env=env))
        self.assertProxied("/raw")

    def test_many_connects_at_once_are_all_routed(self):
        # 64 threads connect at the same time: via run serves them from a bounded pool of
        # threads (tools/strict.cc), each placed on its own descriptor.
        self.configure()
        code = ("import concurrent.futures as f, urllib.request as u, sys\n"
                "def get(i): return u.urlopen(f'http://example.test:{sys.argv[1]}/p{i}', "
                "timeout=30).read()\n"
                "with f.ThreadPoolExecutor(64) as ex: print(len(list(ex.map(get, range(64)))))")
        proc = self.strict(harness.PYTHON, "-c", code, str(self.port))
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "64")
        recs = self.records(self.record)
        self.assertEqual(sorted(r["path"] for r in recs), sorted(f"/p{i}" for i in range(64)))
        self.assertEqual({r["peer"] for r in recs}, {harness.PROXY_OUT})

    def test_fast_open_has_no_way_out(self):
        # sendto with MSG_FASTOPEN connects without connect(2): not placed by via run, so it
        # meets the namespace, which has no route to the proxy or the target. The shim takes
        # libc's sendto as it does outside strict mode: through the proxy.
        self.configure()
        exe = self.cc(GAI_CLIENT)
        proc = self.strict(exe, "127.0.0.1", str(self.port), "tfo", env=dict(self.env, TFO="1"))
        if self.shim:
            self.assertOk(proc)
            self.assertProxied("/tfo", host="127.0.0.1")
            return
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("sendto", proc.stderr)
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])
        # The control: outside via the same call reaches the target.
        control = subprocess.run([exe, "127.0.0.1", str(self.port), "tfo"], capture_output=True,
                                 text=True, env=dict(self.env, TFO="1"))
        self.assertEqual(control.returncode, 0, control.stderr)
        self.assertEqual([r["path"] for r in self.records(self.record)], ["/tfo"])

    def test_audit_reports_what_would_have_left(self):
        # --audit: every send with an address outside the namespace on a socket via does not
        # place (UDP, ICMP...), and io_uring, listed by process at the end; the routed connect
        # is not listed. Nothing of it reached the host.
        self.configure()
        got = []
        port = self.start_udp_listener("127.0.0.1", got)
        code = ("import socket, sys\n"
                "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for dest in [('192.0.2.7', 53), ('192.0.2.7', 53), ('127.0.0.1', int(sys.argv[1]))]:\n"
                "    try: u.sendto(b'x', dest)\n"
                "    except OSError: pass\n"
                "c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "try: c.connect(('198.51.100.9', 123))\n"
                "except OSError: pass\n"
                "import urllib.request as r\n"
                "print(r.urlopen(f'http://example.test:{sys.argv[2]}/audited').read().decode())\n")
        proc = self.via("run", "--strict", "--audit", "--network", "app:tor", "--",
                        harness.PYTHON, "-c", code, str(port), str(self.port))
        self.assertOk(proc)
        lines = [l for l in proc.stderr.splitlines() if "audit:" in l]
        self.assertIn("3 attempts would have left outside app:tor", lines[0], proc.stderr)
        self.assertTrue(any("UDP send to 192.0.2.7:53 (x2)" in l for l in lines), lines)
        self.assertTrue(any("UDP connect to 198.51.100.9:123" in l for l in lines), lines)
        self.assertFalse(any(str(self.port) in l for l in lines), lines)  # routed: not a leak
        self.assertProxied("/audited")
        self.assertEqual(got, [])  # the loopback datagram stayed in the namespace
        # Without anything leaving, it says so.
        proc = self.via("run", "--strict", "--audit", "--network", "app:tor", "--", "true")
        self.assertOk(proc)
        self.assertIn("audit: nothing tried to leave outside app:tor", proc.stderr)
        # --audit without strict mode is refused.
        self.assertEqual(self.via("run", "--audit", "--network", "app:tor", "--", "true").returncode,
                         2)

    def test_status_shows_strict_sessions_and_what_they_refused(self):
        # `via status` (text and JSON) marks a running strict session, and with --audit counts
        # what its namespace refused, by kind, while the command still runs. A plain session
        # is not marked.
        self.configure()
        code = ("import socket, sys\n"
                "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for _ in range(2):\n"
                "    try: u.sendto(b'x', ('192.0.2.7', int(sys.argv[1])))\n"
                "    except OSError: pass\n"
                "print('sent', flush=True)\n"
                "sys.stdin.read()\n")
        run = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--strict", "--audit",
                                "--network", "app:tor", "--", harness.PYTHON, "-c", code,
                                "9"], env=self.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: run.communicate(timeout=20))  # stdin closed: it ends
        self.assertEqual(run.stdout.readline().strip(), "sent")
        plain = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                                  "--", harness.PYTHON, "-c", "import sys; sys.stdin.read()"],
                                 env=self.env, stdin=subprocess.PIPE)
        self.addCleanup(lambda: (plain.stdin.close(), plain.wait(timeout=20)))

        def sessions():
            status = self.via("status")
            lines = [l for l in status.stdout.splitlines() if l.startswith("session ")]
            return lines if len(lines) == 2 and "x2" in status.stdout else None
        lines = harness.wait_for(sessions, timeout=10)
        self.assertIsNotNone(lines, self.via("status").stdout)
        strict = [l for l in lines if "strict" in l]
        self.assertEqual(len(strict), 1, lines)
        self.assertIn("network app:tor", strict[0])
        self.assertIn("strict (audit) refused: UDP send x2", strict[0])
        js = json.loads(self.via("status", "--json").stdout)
        marked = sorted((s["strict"], s["audit"], s["refused_by_kind"]) for s in js["sessions"])
        self.assertEqual(marked, [(False, False, {}), (True, True, {"UDP send": 2})])

    def test_getpeername_gives_the_destination_not_the_proxy(self):
        # The socket via run places is connected to the proxy; getpeername answers what the
        # program connected to (the fake address of a name, the port it asked for), as the shim
        # does, and the kernel's own answer still stands for sockets via did not place (a UDP
        # socket connected inside the namespace).
        self.configure()
        code = ("import socket, sys\n"
                "port = int(sys.argv[1])\n"
                "a = socket.getaddrinfo('example.test', port, socket.AF_INET,"
                " socket.SOCK_STREAM)[0][4]\n"
                "s = socket.create_connection(a)\n"
                "s.sendall(b'GET /peer HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')\n"
                "s.recv(100)\n"
                "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "u.connect(('127.0.0.1', 9))\n"
                "print(a[0], a[1], s.getpeername()[0], s.getpeername()[1])\n"
                "print(u.getpeername() == ('127.0.0.1', 9))\n")
        proc = self.strict(harness.PYTHON, "-c", code, str(self.port))
        self.assertOk(proc)
        first, second = proc.stdout.split("\n")[:2]
        fake, port, peer, peer_port = first.split()
        self.assertEqual((peer, peer_port), (fake, port))
        self.assertEqual(int(port), self.port)
        self.assertNotEqual(peer, "127.0.0.1")  # a fake address, not the proxy's
        self.assertEqual(second, "True")
        self.assertProxied("/peer")

    def test_io_uring_is_refused(self):
        # io_uring submits connects the filter never sees: io_uring_setup fails with EPERM (the
        # namespace would stop them anyway). The control: outside via it works here.
        code = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
  char params[120] = {0};
  long fd = syscall(SYS_io_uring_setup, 4, params);
  printf("%s\n", fd >= 0 ? "ok" : strerror(errno));
  return 0;
}
"""
        self.configure()
        exe = self.cc(code)
        control = subprocess.run([exe], capture_output=True, text=True)
        if control.stdout.strip() != "ok":
            self.skipTest("io_uring is not available here: " + control.stdout.strip())
        proc = self.strict(exe)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "Operation not permitted")

    def test_setuid_binary_runs_without_its_privilege(self):
        # no_new_privs: a setuid binary exec'd inside the sandbox keeps the caller's uid (it
        # cannot regain what the sandbox took away, nor leave it).
        if subprocess.run(["id", "viatest"], capture_output=True).returncode != 0:
            self.skipTest("no viatest user (scripts/install-deps.sh creates it)")
        self.configure()
        suid = os.path.join(self.dir, "id-suid")
        shutil.copy(shutil.which("id"), suid)
        os.chmod(self.dir, 0o755)
        os.chmod(self.config, 0o644)
        os.chmod(suid, 0o4755)  # setuid root
        as_user = ["setpriv", "--reuid=viatest", "--regid=viatest", "--clear-groups"]
        control = subprocess.run(as_user + [suid, "-u"], capture_output=True, text=True)
        self.assertEqual(control.stdout.strip(), "0")  # outside: the bit works
        env = self.viatest_env()
        proc = subprocess.run(as_user + [harness.VIA, "run", "-c", self.config, "--strict",
                                         "--network", "app:tor", "--", suid, "-u"],
                              env=env, capture_output=True, text=True, timeout=60)
        subprocess.run(as_user + [harness.VIA, "stop", "-c", self.config], env=env,
                       capture_output=True)
        self.assertOk(proc)
        uid = subprocess.run(["id", "-u", "viatest"], capture_output=True, text=True).stdout
        self.assertEqual(proc.stdout.strip(), uid.strip())

    def test_dynamic_go_program_without_build_id_is_routed(self):
        # A cgo (dynamically linked) Go binary built with -buildid= (which the default mode's
        # Go check looks for by other marks): in strict mode what it is does not matter.
        exe = self.go_client(["-ldflags=-buildid="], cgo=True)
        self.configure()
        proc = self.strict(exe, f"http://example.test:{self.port}/go-dyn")
        self.assertOk(proc)
        self.assertProxied("/go-dyn")

    def test_go_programs_run_strictly_from_the_default_mode(self):
        # Item 6: without --strict, a session's exec of a Go program (static, or dynamic and
        # stripped of its build ID) is run in strict mode (unrouted_exec: strict, the default),
        # and reaches the target through the proxy; nothing resolves locally.
        self.configure()
        for flags, cgo, path in (([], False, "/go-static"),
                                 (["-ldflags=-buildid="], True, "/go-dyn")):
            exe = self.go_client(flags, cgo)
            proc = self.via("run", "--network", "app:tor", "--", "sh", "-c",
                            f"{exe} http://example.test:{self.port}{path}; echo status=$?")
            self.assertIn("status=0", proc.stdout, proc.stderr)
            self.assertIn("runs in strict mode under app:tor", proc.stderr)
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(self.record)],
                         [(harness.PROXY_OUT, "/go-static"), (harness.PROXY_OUT, "/go-dyn")])

    def go_client(self, flags, cgo):
        return self.go_http_client(*flags, cgo=cgo)

    def test_static_go_program_is_routed(self):
        exe = self.go_client([], cgo=False)
        self.configure()
        proc = self.strict(exe, f"http://example.test:{self.port}/go")
        self.assertOk(proc)
        self.assertProxied("/go")

    def test_udp_has_no_way_out(self):
        # A UDP listener on the host's loopback: from inside the namespace, 127.0.0.1 is the
        # namespace's own lo, so the datagram never reaches it.
        self.configure()
        got = []
        port = self.start_udp_listener("127.0.0.1", got)
        proc = self.strict(harness.PYTHON, "-c", UDP_SEND, "127.0.0.1", str(port))
        self.assertOk(proc)  # sent (into the namespace's lo)
        proc = self.strict(harness.PYTHON, "-c", UDP_SEND, "192.0.2.1", str(port))
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("Network is unreachable", proc.stderr)
        # The control: the same program outside via reaches the listener.
        subprocess.run([harness.PYTHON, "-c", UDP_SEND, "127.0.0.1", str(port)], check=True,
                       capture_output=True)
        self.assertEqual(got, [b"leak"])

    def test_loopback_direct_reaches_the_hosts_service(self):
        # network_service.loopback: direct - a service on the host's loopback stays reachable,
        # over a socket via run connects in the host's namespace; the proxy sees nothing.
        self.configure(loopback="direct")
        proc = self.strict("curl", "-sS", f"http://127.0.0.1:{self.port}/local")
        self.assertOk(proc)
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(self.record)],
                         [(harness.DIRECT_PEER, "/local")])
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])

    def test_unix_sockets_by_path_still_work(self):
        # A Unix socket is found by its path, in the file system the command still shares: a
        # host service listening on one stays reachable from inside the namespace.
        self.configure()
        path = os.path.join(self.dir, "service.sock")
        got = []
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        self.addCleanup(srv.close)

        def serve():
            c, _ = srv.accept()
            got.append(c.recv(100))
            c.sendall(b"pong")
            c.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        code = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "s.sendall(b'ping'); print(s.recv(100).decode())")
        proc = self.strict(harness.PYTHON, "-c", code, path)
        t.join(10)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "pong")
        self.assertEqual(got, [b"ping"])

    def test_loopback_refused_is_refused(self):
        self.configure(loopback="refuse")
        proc = self.strict("curl", "-sS", f"http://127.0.0.1:{self.port}/refused")
        self.assertNotEqual(proc.returncode, 0)
        self.assertTargetSawNothing(self.record)

    def test_as_an_ordinary_user(self):
        # Not root: a user namespace first (uid and gid map to themselves).
        if subprocess.run(["id", "viatest"], capture_output=True).returncode != 0:
            self.skipTest("no viatest user (scripts/install-deps.sh creates it)")
        self.configure()
        os.chmod(self.dir, 0o755)
        os.chmod(self.config, 0o644)
        env = self.viatest_env()
        as_user = ["setpriv", "--reuid=viatest", "--regid=viatest", "--clear-groups"]
        proc = subprocess.run(as_user + [harness.VIA, "run", "-c", self.config, "--strict",
                                         "--network", "app:tor", "--", "sh", "-c",
                                         f"id -u; curl -sS http://example.test:{self.port}/user"],
                              env=env, capture_output=True, text=True, timeout=60)
        subprocess.run(as_user + [harness.VIA, "stop", "-c", self.config], env=env,
                       capture_output=True)
        self.assertOk(proc)
        uid = subprocess.run(["id", "-u", "viatest"], capture_output=True, text=True).stdout
        self.assertEqual(proc.stdout.splitlines()[0], uid.strip())  # the same user inside
        self.assertProxied("/user")

    def test_strict_from_the_configuration(self):
        # network_service.strict, or strict: true on a via.program rule matching the command:
        # `via run` without --strict runs it strictly. A static program is the witness: without
        # strict mode the exec guard refuses it; with it, it is routed.
        exe = self.cc(GAI_CLIENT, "-static")
        args = ("run", "--network", "app:tor", "--", exe, "example.test", str(self.port))
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay", "unrouted_exec": "refuse"})
        proc = self.via(*args, "plain")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("statically linked", proc.stderr)  # the control: the shim's guard
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay", "strict": "true"})
        self.assertOk(self.via(*args, "service"))
        self.write_config([self.socks5_entry("tor", self.proxy_port),
                           ["name: static", "kind: via.program", f"match: {{exe: {exe}}}",
                            "strict: true"]], service={"loopback": "overlay"})
        self.assertOk(self.via(*args, "rule"))
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(self.record)],
                         [(harness.PROXY_OUT, "/service"), (harness.PROXY_OUT, "/rule")])

    def test_default_mode_runs_a_static_program_strictly_instead_of_refusing_it(self):
        # network_service.unrouted_exec: strict, the default - in the default mode, a process
        # that execs a static program (which the shim cannot cover) runs it through
        # `via run --strict`: from a shell (execve), and from Python's subprocess (vfork +
        # execve) with its own argv[0] kept, and through posix_spawnp.
        exe = self.cc(GAI_CLIENT, "-static")
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay"})
        proc = self.via("run", "--network", "app:tor", "--", "sh", "-c",
                        f"{exe} example.test {self.port} from-sh; echo status=$?")
        self.assertIn("status=0", proc.stdout, proc.stderr)
        self.assertIn("runs in strict mode", proc.stderr)
        code = ("import subprocess, sys; "
                f"sys.exit(subprocess.call(['renamed', 'example.test', '{self.port}', "
                f"'from-python'], executable={exe!r}))")
        proc = self.via("run", "--network", "app:tor", "--", harness.PYTHON, "-c", code,
                        env=dict(self.env, PRINT_ARGV0="1"))
        self.assertOk(proc)
        self.assertIn("argv0=renamed", proc.stdout)
        # posix_spawnp (os.posix_spawnp: a PATH search, then the spawn itself).
        code = ("import os, sys; "
                f"pid = os.posix_spawnp('gai-static', ['gai-static', 'example.test', "
                f"'{self.port}', 'from-spawn'], os.environ); "
                "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))")
        os.rename(exe, os.path.join(os.path.dirname(exe), "gai-static"))
        path = os.path.dirname(exe) + ":" + self.env.get("PATH", "/usr/bin:/bin")
        self.assertOk(self.via("run", "--network", "app:tor", "--", harness.PYTHON, "-c", code,
                               env=dict(self.env, PATH=path)))
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(self.record)],
                         [(harness.PROXY_OUT, "/from-sh"), (harness.PROXY_OUT, "/from-python"),
                          (harness.PROXY_OUT, "/from-spawn")])
        self.assertEqual(harness.microsocks_destinations(self.proxy_log),
                         [f"example.test:{self.port}"] * 3)

    def test_unrouted_exec_strict_leaves_setuid_binaries_refused(self):
        # Strict mode would drop a setuid binary's privilege (no_new_privs): it stays refused.
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay", "unrouted_exec": "strict"})
        suid = os.path.join(self.dir, "curl-suid")
        shutil.copy(shutil.which("curl"), suid)
        os.chmod(self.dir, 0o755)
        shutil.chown(suid, user="nobody")  # setuid to another user: it changes credentials
        os.chmod(suid, 0o4755)
        proc = self.via("run", "--network", "app:tor", "--", "sh", "-c",
                        f"{suid} -sS http://example.test:{self.port}/suid; echo status=$?")
        self.assertIn("status=126", proc.stdout, proc.stderr)
        self.assertIn("it is setuid", proc.stderr)
        self.assertTargetSawNothing(self.record)

    def test_a_session_without_an_overlay_runs_nothing(self):
        # Strict mode needs an overlay: a direct session is refused after the sandbox was made,
        # and the command never runs.
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        marker = os.path.join(self.dir, "ran")
        proc = self.via("run", "--strict", "--", "touch", marker)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("strict mode", proc.stderr)
        self.assertIn("nothing was run", proc.stderr)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual(self.via("run", "--strict", "--direct", "--", "true").returncode, 2)


class StrictWithoutShim(Strict):
    """`via run --strict --no-shim`: via run serves every connect and lookup, as it does for
    static and Go programs."""
    shim = False


if __name__ == "__main__":
    harness.main()
