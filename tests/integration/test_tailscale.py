"""network.tailscale on a real local tailnet: tailscale.com's testcontrol with a DERP relay and a
STUN server (tests/tailnet/control), plain tsnet peer nodes (tests/tailnet/peer), via's own node
helper (via-tsnet) and, for attach mode, a real tailscaled. Everything listens on 127.0.0.1 inside
the test's network namespace; tsnet also needs one non-loopback interface to consider the network
up, so the namespace gets a veth pair with 192.0.2.1/24 (TEST-NET-1, inside the namespace only).

The far side records every connection (peer's JSON record file: remote tailnet address, line);
the DNS log shows that no name was looked up locally.
"""
import ipaddress
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import harness
from tailnet_lab import (AUTH_KEY, CONTROL, DOMAIN, HELPER, PEER, TAILNET,  # noqa: F401
                         TAILSCALED, TailnetLab)

CLIENT = r"""
import errno, socket, sys
host, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(msg.encode() + b"\n")
    s.shutdown(socket.SHUT_WR)
    print(s.makefile().read(), end="")
except OSError as e:
    print("ERRNO", errno.errorcode.get(e.errno, e.errno), e)
    sys.exit(3)
"""

SERVER = r"""
import socket, sys
port, ready = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.bind(("0.0.0.0", port))
s.listen(4)
open(ready, "w").close()
c, a = s.accept()
line = c.makefile().readline().strip()
name = socket.getnameinfo((a[0], 0), socket.NI_NAMEREQD)[0]
c.sendall(f"server got {line} from {name}\n".encode())
c.close()
"""

# A static Go server (pure-Go resolver, epoll and non-blocking accept4): listens on :ARGV1,
# prints its address, touches ARGV2, answers one stream with the peer's name (a PTR query).
GO_SERVER = """package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
)

func main() {
	ln, err := net.Listen("tcp", ":"+os.Args[1])
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Println("go listening on", ln.Addr())
	os.WriteFile(os.Args[2], nil, 0o644)
	c, err := ln.Accept()
	if err != nil {
		fmt.Println("accept:", err)
		os.Exit(1)
	}
	line, _ := bufio.NewReader(c).ReadString('\\n')
	names, _ := net.LookupAddr(c.RemoteAddr().(*net.TCPAddr).IP.String())
	fmt.Fprintf(c, "go server got %s from %s\\n", strings.TrimSpace(line), strings.Join(names, ","))
	c.Close()
}
"""


class Tailnet(TailnetLab, harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.setUp_tailnet()

    # ---- the tailnet: tailnet_lab.py (start_control, start_peer), and -----------------------

    def control_nodes(self, admin=None):
        with urllib.request.urlopen((admin or self.control_admin) + "/via/nodes",
                                    timeout=10) as r:
            return json.load(r)

    def peer_dial(self, peer, addr, msg):
        q = urllib.parse.urlencode({"addr": addr, "msg": msg})
        try:
            with urllib.request.urlopen(f"http://{peer['admin']}/dial?{q}", timeout=40) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            return "HTTP %d %s" % (e.code, e.read().decode())

    # ---- via ---------------------------------------------------------------------------------
    def write_ts_config(self, entries):
        self.write_config(entries, service={"idle_timeout": "600"})

    def dial(self, network, host, port, msg, timeout=90):
        return self.run_via(network, harness.PYTHON, "-c", CLIENT, host, str(port), msg,
                            timeout=timeout)

    def status(self):
        st = self.via("status")
        self.assertOk(st)
        return st.stdout

    def node_line(self, overlay_id):
        for line in self.status().splitlines():
            if line.startswith(f"tailscale {overlay_id} ") and "state=" in line:
                return line
        return ""

    def node_ips(self, overlay_id):
        line = self.node_line(overlay_id)
        for part in line.split():
            if part.startswith("ips="):
                return part[4:].split(",")
        return []

    def wait_running(self, overlay_id, timeout=90):
        ok = harness.wait_for(lambda: "state=Running" in self.node_line(overlay_id),
                              timeout=timeout, interval=0.5)
        self.assertTrue(ok, f"{overlay_id} never Running:\n{self.status()}\n" +
                        "\n".join(self.broker_log()[-20:]))

    def start_broker(self):
        self.assertOk(self.run_via("app:ts", "true"))

    # ---- outbound ----------------------------------------------------------------------------
    def test_a_direct_program_reaches_a_magicdns_name_by_the_learned_suffix(self):
        # No route written: once via's node runs, its MagicDNS suffix (tailnet.test here, not
        # ts.net) is a built-in route to app:ts, even for a program whose network is direct.
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-r")])
        self.start_broker()
        self.wait_running("app:ts")
        p = self.via("run", "--direct", "--", harness.PYTHON, "-c", CLIENT, f"alpha.{DOMAIN}",
                     "7000", "hello suffix", timeout=90)
        self.assertOk(p)
        with open(alpha["record"]) as f:
            recs = [json.loads(l) for l in f if l.strip()]
        self.assertEqual([r["line"] for r in recs], ["hello suffix"])
        via_ip = self.node_ips("app:ts")[0]
        self.assertEqual(recs[0]["remote"].rsplit(":", 1)[0].strip("[]"), via_ip)

    def test_dial_peer_by_short_name_fqdn_and_address(self):
        dns = self.start_dns()
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        out = []
        for host in ("alpha", f"alpha.{DOMAIN}", alpha["ips"][0]):
            p = self.dial("app:ts", host, 7000, f"hello {host}")
            self.assertOk(p, f"dial {host}")
            out.append(p.stdout)
        via_ip = self.node_ips("app:ts")[0]
        self.assertTrue(via_ip.startswith("100.64."), self.status())
        for host, reply in zip(("alpha", f"alpha.{DOMAIN}", alpha["ips"][0]), out):
            self.assertRegex(reply, rf"^peer alpha saw {via_ip}:\d+: hello {host}\n$")
        recs = self.records(alpha["record"])
        self.assertEqual([r["line"] for r in recs],
                         ["hello alpha", f"hello alpha.{DOMAIN}", f"hello {alpha['ips'][0]}"])
        self.assertTrue(all(r["remote"].startswith(via_ip + ":") for r in recs), recs)
        self.assertEqual(self.dns_queries("alpha"), [])
        self.assertEqual(harness.read_text(dns).count("tailnet"), 0)
        # The peer's IPv6 tailnet address, from an IPv6 socket: it arrives from ours.
        v6 = self.dial("app:ts", alpha["ips"][1], 7000, "over v6")
        self.assertOk(v6)
        via_ip6 = self.node_ips("app:ts")[1]
        self.assertRegex(v6.stdout, rf"^peer alpha saw \[{via_ip6}\]:\d+: over v6\n$")

    def test_a_nonblocking_connect_is_einprogress_until_the_tailnet_dial_is_done(self):
        # The broker dials through the node while connect has returned EINPROGRESS: an
        # edge-triggered epoll registration made after it fires once, SO_ERROR is 0, and the
        # peer saw the request from via's node.
        self.start_dns()
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        proc, v = self.run_nbconnect("app:ts", "epoll-after", "alpha", 8000)
        self.assertOk(proc)
        self.assertEqual((v.get("connect"), v.get("events"), v.get("so_error"), v.get("status")),
                         ("EINPROGRESS", "1", "0", "200"), proc.stdout + proc.stderr)
        via_ip = self.node_ips("app:ts")[0]
        recs = self.records(alpha["record"])
        self.assertEqual([r["line"] for r in recs], ["GET /epoll-after"], recs)
        self.assertTrue(recs[0]["remote"].startswith(via_ip + ":"), recs)

    def test_curl_and_wget_reach_a_peer_by_magicdns_name(self):
        self.start_dns()
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        curl = self.run_via("app:ts", "curl", "-sSf", "http://alpha:8000/curl")
        self.assertOk(curl)
        via_ip = self.node_ips("app:ts")[0]
        self.assertRegex(curl.stdout, rf"^hello from alpha, you are {via_ip}:\d+\n$")
        cmds = [("curl", "/curl")]
        if shutil.which("wget"):
            wget = self.run_via("app:ts", "wget", "-q", "-O", "-",
                                f"http://alpha.{DOMAIN}:8000/wget")
            self.assertOk(wget)
            self.assertIn(f"you are {via_ip}:", wget.stdout)
            cmds.append(("Wget", "/wget"))
        recs = self.records(alpha["record"])
        self.assertEqual([r["line"] for r in recs], [f"GET {path}" for _, path in cmds])
        for r, (agent, _) in zip(recs, cmds):
            self.assertTrue(r["agent"].startswith(agent), r)
            self.assertTrue(r["remote"].startswith(via_ip + ":"), r)
        self.assertEqual(self.dns_queries("alpha"), [])

    def test_strict_mode_takes_a_static_program_to_a_peer_by_magicdns_name(self):
        # via run --strict: a statically linked program, which the shim cannot cover, reaches
        # a peer by its MagicDNS name through the node; no DNS server heard of the name.
        exe = self.static_gai_client()
        self.start_dns()
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        proc = self.via("run", "--strict", "--network", "app:ts", "--", exe, f"alpha.{DOMAIN}",
                        "8000", "strict", timeout=120)
        self.assertOk(proc)
        via_ip = self.node_ips("app:ts")[0]
        self.assertIn(f"you are {via_ip}:", proc.stdout)
        recs = self.records(alpha["record"])
        self.assertEqual([r["line"] for r in recs], ["GET /strict"])
        self.assertTrue(recs[0]["remote"].startswith(via_ip + ":"), recs[0])
        self.assertEqual(self.dns_queries("alpha"), [])

    def test_strict_mode_takes_a_static_go_program_to_a_peer_by_magicdns_name(self):
        # Issue 13's overlay tests: a Go static binary (net/http, Go's own resolver: the name is
        # a fake address from via's resolver in the namespace), under `via run --strict` and
        # from the default mode (a session's exec of it runs strictly: unrouted_exec: strict).
        exe = self.go_http_client()
        self.start_dns()
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        url = f"http://alpha.{DOMAIN}:8000"
        strict, default = self.go_strict_and_default(exe, "app:ts", url + "/go-strict",
                                                     url + "/go-default")
        self.assertOk(strict)
        self.assertOk(default)
        via_ip = self.node_ips("app:ts")[0]
        for proc in (strict, default):
            self.assertIn(f"you are {via_ip}:", proc.stdout)
        recs = self.records(alpha["record"])
        self.assertEqual([r["line"] for r in recs], ["GET /go-strict", "GET /go-default"])
        for r in recs:
            self.assertTrue(r["remote"].startswith(via_ip + ":"), r)
        self.assertEqual(self.dns_queries("alpha"), [])

    def test_strict_mode_takes_a_static_go_program_to_a_peer_as_an_ordinary_user(self):
        # Not root: a user namespace first; the broker (and its node, with its state in this
        # test's directory) is viatest's own. Under --strict, then from the default mode.
        exe = self.go_http_client()
        self.start_dns()
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-u")])
        url = f"http://alpha.{DOMAIN}:8000"
        strict, default = self.go_strict_and_default(exe, "app:ts", url + "/go-user",
                                                     url + "/go-user-default", as_viatest=True,
                                                     timeout=150)
        self.assertOk(strict)
        self.assertOk(default)
        recs = self.records(alpha["record"])
        self.assertEqual([r["line"] for r in recs], ["GET /go-user", "GET /go-user-default"])
        # The peer saw viatest's node (a tailnet address), and told the program so.
        for r, proc in zip(recs, (strict, default)):
            self.assertIn(ipaddress.ip_address(r["remote"].rsplit(":", 1)[0]),
                          ipaddress.ip_network("100.64.0.0/10"), r)
            self.assertIn(f"you are {r['remote']}", proc.stdout)
        self.assertEqual(self.dns_queries("alpha"), [])

    def test_status_shows_state_addresses_and_name(self):
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.start_broker()
        self.wait_running("app:ts")
        line = self.node_line("app:ts")
        self.assertRegex(line, rf"^tailscale app:ts node hostname=via-a state=Running "
                               rf"name=via-a\.{DOMAIN}\. ips=100\.64\.\d+\.\d+,fd7a:115c:a1e0:")
        names = [n["hostname"] for n in self.control_nodes()]
        self.assertIn("via-a", names)

    def test_two_entries_are_two_independent_nodes(self):
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("tsa", "via-a"), self.ts_entry("tsb", "via-b")])
        self.assertOk(self.dial("app:tsa", "alpha", 7000, "from a"))
        self.assertOk(self.dial("app:tsb", "alpha", 7000, "from b"))
        ip_a, ip_b = self.node_ips("app:tsa")[0], self.node_ips("app:tsb")[0]
        self.assertNotEqual(ip_a, ip_b)
        recs = {r["line"]: r["remote"].rsplit(":", 1)[0] for r in self.records(alpha["record"])}
        self.assertEqual(recs, {"from a": ip_a, "from b": ip_b})
        nodes = {n["hostname"]: n for n in self.control_nodes()}
        self.assertEqual(nodes["via-a"]["ips"][0], ip_a)
        self.assertEqual(nodes["via-b"]["ips"][0], ip_b)
        self.assertNotEqual(nodes["via-a"]["key"], nodes["via-b"]["key"])

    def test_one_hostname_on_two_tailnets_is_two_nodes_with_two_keys(self):
        """Two entries with the same hostname and no state_dir, on two control servers: two
        state directories (named after the entries), so two node keys. The second node starts
        after the first has written its state, as it would on any later start."""
        second = self.start_control(log_name="control2.log")
        self.write_ts_config([self.ts_entry("tsa", "same"),
                              self.ts_entry("tsb", "same", control_url=second)])
        self.assertOk(self.run_via("app:tsa", "true"))
        self.wait_running("app:tsa")
        self.assertOk(self.run_via("app:tsb", "true"))
        self.wait_running("app:tsb")
        first = [n for n in self.control_nodes() if n["hostname"] == "same"]
        other = [n for n in self.control_nodes(second) if n["hostname"] == "same"]
        self.assertEqual((len(first), len(other)), (1, 1), (first, other))
        self.assertNotEqual(first[0]["key"], other[0]["key"],
                            "one node key registered on both tailnets")
        # Each node's own state, in a directory named after its entry.
        base = os.path.join(self.dir, "state", "tailscale")
        states = [os.path.join(base, d, "tailscaled.state") for d in ("app:tsa", "app:tsb")]
        for path in states:
            self.assertTrue(os.path.exists(path), sorted(os.listdir(base)))
        self.assertNotEqual(harness.read_text(states[0]), harness.read_text(states[1]))
        self.assertFalse(os.path.exists(os.path.join(base, "same")), sorted(os.listdir(base)))

    def test_a_shared_state_dir_is_refused(self):
        shared = os.path.join(self.dir, "one-dir")
        self.write_ts_config([self.ts_entry("tsa", "a", f"state_dir: {shared}"),
                              self.ts_entry("tsb", "b", f"state_dir: {shared}/")])
        p = self.run_via("app:tsa", "true")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(f"entry app:tsb (network.tailscale): state_dir: {shared} is also the "
                      "state directory of entry app:tsa", p.stderr)
        self.assertEqual(self.broker_pids(), [])
        self.assertFalse(os.path.exists(shared))

    def test_a_state_dir_in_use_by_another_broker_is_refused(self):
        """Two configs (two brokers) whose entries name one directory (here by two spellings
        through a symlink): the config check cannot see it, the directory's lock does. The
        second node never starts; the first keeps running."""
        shared = os.path.join(self.dir, "shared")
        os.makedirs(shared)
        os.symlink(shared, os.path.join(self.dir, "alias"))
        self.write_config([self.ts_entry("ts", "via-a", f"state_dir: {shared}")],
                          service={"idle_timeout": "600"}, name="one.yaml")
        first = self.config
        self.start_broker()
        self.wait_running("app:ts")
        self.write_config([self.ts_entry("ts", "via-b",
                                         f"state_dir: {os.path.join(self.dir, 'alias')}")],
                          service={"idle_timeout": "600"}, name="two.yaml")
        p = self.dial("app:ts", "via-a", 7000, "should not start")
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertIn("ERRNO ENETUNREACH", p.stdout)
        self.assertIn("is in use by another Tailscale node", p.stderr)
        self.assertIn("is in use by another Tailscale node", self.status())
        self.assertEqual([n["hostname"] for n in self.control_nodes()], ["via-a"])
        self.config = first
        self.assertIn("state=Running", self.node_line("app:ts"))

    def test_destination_off_the_tailnet_is_refused_never_dialed(self):
        self.start_dns()
        # A target on 192.0.2.1, this namespace's own address (not loopback, so the shim routes
        # it): a direct connect reaches it, as the first request proves.
        port = harness.free_port()
        record = os.path.join(self.dir, "target-off.jsonl")
        tp, _ = self.spawn([harness.PYTHON, os.path.join(harness.HERE, "target_server.py"),
                            str(port), record, "--bind", "192.0.2.1"], "target-off.log")
        harness.wait_port(port, host="192.0.2.1", proc=tp)
        urllib.request.urlopen(f"http://192.0.2.1:{port}/direct", timeout=10).read()
        self.assertEqual(len(self.records(record)), 1)
        self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        for host, err in (("192.0.2.1", "EACCES"), ("example.test", "EHOSTUNREACH")):
            p = self.dial("app:ts", host, port, "leak?")
            self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
            self.assertIn(f"ERRNO {err}", p.stdout)
        self.assertEqual(len(self.records(record)), 1, "a connect under the overlay went direct")
        self.assertEqual(self.dns_queries("example.test"), [])
        log = "\n".join(harness.read_lines(os.path.join(self.dir, "state", "tailscale", "app:ts",
                                                        "via-tsnet.log")))
        self.assertIn("refused 192.0.2.1", log)
        self.assertIn("refused example.test", log)

    # ---- inbound -----------------------------------------------------------------------------
    def start_server(self, network, port, *run_flags, server=None):
        ready = os.path.join(self.dir, f"ready-{port}")
        cmd = server or [harness.PYTHON, "-c", SERVER]
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, *run_flags, "--network",
                              network, "--", *cmd, str(port), ready],
                             env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        self.addCleanup(p.stdout.close)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        self.assertTrue(harness.wait_for(lambda: os.path.exists(ready) or p.poll() is not None,
                                         timeout=90))
        return p

    def test_listener_reached_from_a_peer(self):
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.start_broker()
        self.wait_running("app:ts")
        server = self.start_server("app:ts", 8080)
        via_ip = self.node_ips("app:ts")[0]
        self.assertTrue(harness.wait_for(
            lambda: f"tailscale app:ts listener port 8080 {via_ip}:8080" in self.status(),
            timeout=60), self.status())
        reply = self.peer_dial(alpha, f"via-a.{DOMAIN}:8080", "hi from alpha")
        # The peer's address, as accept() gave it, maps back to the peer's MagicDNS name.
        self.assertEqual(reply, f"server got hi from alpha from alpha.{DOMAIN}\n")
        server.wait(20)
        self.assertEqual(server.returncode, 0, server.stdout.read())

    def test_strict_listener_reached_from_a_peer(self):
        # via run --strict: the program listens inside its namespace, which has no way in; the
        # listen goes to the node as in default mode, and the peer's stream is placed as the
        # result of the program's accept (no relay): the peer's address maps back to its name.
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.start_broker()
        self.wait_running("app:ts")
        server = self.start_server("app:ts", 8080, "--strict")
        via_ip = self.node_ips("app:ts")[0]
        self.assertTrue(harness.wait_for(
            lambda: f"tailscale app:ts listener port 8080 {via_ip}:8080" in self.status(),
            timeout=60), self.status())
        reply = self.peer_dial(alpha, f"via-a.{DOMAIN}:8080", "hi from alpha")
        self.assertEqual(reply, f"server got hi from alpha from alpha.{DOMAIN}\n")
        server.wait(20)
        out = server.stdout.read()
        self.assertEqual(server.returncode, 0, out)
        self.assertIn(f"via: listening on 0.0.0.0:8080 through app:ts: reachable at {via_ip}:8080",
                      out)

    def test_strict_static_go_listener_reached_from_a_peer(self):
        # The same with a static Go server: Go's runtime polls the listener with epoll and
        # accepts without blocking; getsockname answers the address it listened on.
        exe = self.go_build("server", GO_SERVER, cgo=False)
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.start_broker()
        self.wait_running("app:ts")
        server = self.start_server("app:ts", 8082, "--strict", server=[exe])
        reply = self.peer_dial(alpha, f"via-a.{DOMAIN}:8082", "hi from alpha")
        self.assertEqual(reply, f"go server got hi from alpha from alpha.{DOMAIN}.\n")
        server.wait(20)
        out = server.stdout.read()
        self.assertEqual(server.returncode, 0, out)
        self.assertIn("go listening on [::]:8082\n", out)

    def test_a_reload_keeps_the_node_and_its_listener(self):
        """`via reload` with an edited config (another entry added) keeps the running node:
        same helper process, same tailnet address, and the listener still answers peers."""
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.start_broker()
        self.wait_running("app:ts")
        server = self.start_server("app:ts", 8080)
        via_ip = self.node_ips("app:ts")[0]
        self.assertTrue(harness.wait_for(
            lambda: f"tailscale app:ts listener port 8080 {via_ip}:8080" in self.status(),
            timeout=60), self.status())
        pid = self.helper_pid("app:ts")
        self.write_ts_config([self.ts_entry("ts", "via-a"),
                              self.socks5_entry("other", harness.closed_port())])
        self.assertOk(self.via("reload"))
        self.assertIn("overlay app:other", self.status())
        self.assertEqual(self.helper_pid("app:ts"), pid, self.status())
        self.assertEqual(self.node_ips("app:ts")[0], via_ip)
        self.assertIn("app:ts keeps its running network.tailscale", "\n".join(self.broker_log()))
        reply = self.peer_dial(alpha, f"via-a.{DOMAIN}:8080", "hi after reload")
        self.assertEqual(reply, f"server got hi after reload from alpha.{DOMAIN}\n")
        server.wait(20)
        self.assertEqual(server.returncode, 0, server.stdout.read())

    def test_two_sockets_on_one_port_share_the_node_listener(self):
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.start_broker()
        self.wait_running("app:ts")
        ready = os.path.join(self.dir, "ready2")
        code = r"""
import select, socket, sys
v4 = socket.socket(socket.AF_INET)
v4.bind(("0.0.0.0", 8081)); v4.listen(4)
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", 8081)); v6.listen(4)
open(sys.argv[1], "w").close()
seen = []
while len(seen) < 2:
    r, _, _ = select.select([v4, v6], [], [], 30)
    for s in r:
        c, a = s.accept()
        line = c.makefile().readline().strip()
        fam = "v4" if s is v4 else "v6"
        seen.append(fam)
        c.sendall(f"{line} on {fam}\n".encode())
        c.close()
print(sorted(seen))
"""
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:ts", "--",
                              harness.PYTHON, "-c", code, ready], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.addCleanup(p.stdout.close)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        self.assertTrue(harness.wait_for(
            lambda: "listener port 8081 " in self.status() and "sockets=2" in self.status()
            and "(pending)" not in self.status(), timeout=60), self.status())
        via_ip = self.node_ips("app:ts")[0]
        r1 = self.peer_dial(alpha, f"{via_ip}:8081", "one")
        r2 = self.peer_dial(alpha, f"{via_ip}:8081", "two")
        # One connection to each socket, in turn.
        self.assertIn(r1, ("one on v4\n", "one on v6\n"))
        self.assertEqual(r2, "two on " + ("v6" if r1.endswith("v4\n") else "v4") + "\n")
        p.wait(30)
        out = p.stdout.read()
        self.assertEqual(out.strip().splitlines()[-1], "['v4', 'v6']", out)
        self.assertIn(f"via: listening on [::]:8081 through app:ts: reachable at {via_ip}:8081",
                      out)

    def test_undeclared_host_loopback_port_is_not_reachable_through_the_node(self):
        alpha = self.start_peer("alpha")
        port, record = self.start_target()  # on the host's 127.0.0.1, not declared to via
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.start_broker()
        self.wait_running("app:ts")
        via_ip = self.node_ips("app:ts")[0]
        reply = self.peer_dial(alpha, f"{via_ip}:{port}", "GET / HTTP/1.0\r\n")
        self.assertTrue(reply.startswith("HTTP 502 dial:") or reply == "", reply)
        self.assertTargetSawNothing(record)

    # ---- lifecycle and errors ------------------------------------------------------------------
    def test_ephemeral_node_leaves_when_the_broker_stops(self):
        self.write_ts_config([self.ts_entry("ts", "via-e", "ephemeral: true")])
        self.start_broker()
        self.wait_running("app:ts")
        first_ip = self.node_ips("app:ts")[0]
        node = {n["hostname"]: n for n in self.control_nodes()}["via-e"]
        self.assertTrue(node["online"])
        self.assertOk(self.via("stop"))
        self.assertTrue(harness.wait_for(
            lambda: not {n["key"]: n for n in self.control_nodes()}[node["key"]]["online"],
            timeout=20), self.control_nodes())
        self.assertIn("logged out", "\n".join(self.broker_log()) + self.helper_log("app:ts"))
        # No identity was kept: the next broker registers a brand-new node.
        self.start_broker()
        self.wait_running("app:ts")
        self.assertNotEqual(self.node_ips("app:ts")[0], first_ip)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "state", "tailscale", "app:ts",
                                                     "tailscaled.state")))

    def test_stop_returns_as_soon_as_the_helpers_have_exited(self):
        """`via stop` waits for each helper only until it exits: a node that stops promptly (an
        ephemeral one logs out first) lets it return well before the 10 s bound."""
        self.write_ts_config([self.ts_entry("ts", "via-a"),
                              self.ts_entry("tse", "via-e", "ephemeral: true")])
        self.assertOk(self.run_via("app:ts", "true"))
        self.assertOk(self.run_via("app:tse", "true"))
        self.wait_running("app:ts")
        self.wait_running("app:tse")
        pids = [self.helper_pid("app:ts"), self.helper_pid("app:tse")]
        node = {n["hostname"]: n for n in self.control_nodes()}["via-e"]
        t0 = time.monotonic()
        st = self.via("stop")
        took = time.monotonic() - t0
        self.assertOk(st)
        self.assertLess(took, 5, "\n".join(self.broker_log()[-20:]))
        for pid in pids:
            self.assertFalse(harness.alive(pid), f"helper {pid} outlived `via stop`")
        self.assertFalse(any(harness.alive(b) for b in self.broker_pids()))
        self.assertIn("ephemeral node logged out", self.helper_log("app:tse"))
        self.assertFalse({n["key"]: n for n in self.control_nodes()}[node["key"]]["online"])
        log = "\n".join(self.broker_log())
        self.assertNotIn("killing it", log)
        self.assertRegex(log, r"app:tse: the Tailscale helper \(pid \d+\) exited with status 0")

    def stubborn_helper(self, close_channel=False):
        """A config whose helper is deaf to SIGTERM (and to its channel's end); with
        close_channel, it closes its channel at once but does not exit. Returns the file its
        first instance writes its pid to."""
        ready = os.path.join(self.dir, "stubborn.pid")
        stub = os.path.join(self.dir, "stubborn-helper")
        with open(stub, "w") as f:
            f.write(f"""#!{harness.PYTHON}
import os, signal, socket, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ctl = socket.socket(fileno=3)
ctl.recv(65536)  # CONFIG
ctl.send(b"STATUS\\nstate=Starting")
if {close_channel!r}:
    ctl.close()
if not os.path.exists({ready!r}):
    with open({ready!r} + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename({ready!r} + ".tmp", {ready!r})
while True:
    time.sleep(60)
""")
        os.chmod(stub, 0o755)
        self.write_ts_config([["name: ts", "kind: network.tailscale", "hostname: via-s",
                               f"control_url: {self.control_url}", f"helper: {stub}",
                               "auth_key: k"]])
        return ready

    def test_a_helper_that_ignores_sigterm_is_killed_at_the_bound(self):
        ready = self.stubborn_helper()
        self.start_broker()
        self.assertTrue(harness.wait_for(lambda: os.path.exists(ready), timeout=30))
        pid = int(harness.read_text(ready))
        self.assertTrue(harness.alive(pid))
        t0 = time.monotonic()
        st = self.via("stop", timeout=60)
        took = time.monotonic() - t0
        self.assertOk(st)
        self.assertFalse(harness.alive(pid), "a helper deaf to SIGTERM outlived `via stop`")
        self.assertGreater(took, 9)  # it had its 10 s to exit
        self.assertLess(took, 40)
        self.assertIn(f"the Tailscale helper (pid {pid}) did not exit within 10000 ms of "
                      "SIGTERM; killing it", "\n".join(self.broker_log()))

    def test_a_helper_given_up_on_is_killed_and_reaped_while_the_broker_runs(self):
        """A helper that closes its channel but does not exit (and ignores SIGTERM) is killed
        10 s after the SIGTERM, and reaped, while the broker goes on (restarting the node)."""
        ready = self.stubborn_helper(close_channel=True)
        self.start_broker()
        self.assertTrue(harness.wait_for(lambda: os.path.exists(ready), timeout=30))
        pid = int(harness.read_text(ready))
        line = (f"the Tailscale helper (pid {pid}) did not exit within 10000 ms of SIGTERM; "
                "killing it")
        self.assertTrue(harness.wait_for(lambda: line in "\n".join(self.broker_log()),
                                         timeout=40), "\n".join(self.broker_log()))
        # Reaped by the broker (no zombie left), while the broker still serves.
        self.assertTrue(harness.wait_for(lambda: not os.path.exists(f"/proc/{pid}"),
                                         timeout=10), f"helper {pid} was not reaped")
        self.assertIn(f"the Tailscale helper (pid {pid}) was killed by Killed",
                      "\n".join(self.broker_log()))
        self.assertRegex(self.node_line("app:ts"), r"restarts=[1-9]")

    def helper_pid(self, overlay_id):
        line = self.node_line(overlay_id)
        return int(line.split("helper=pid ")[1].split()[0]) if "helper=pid " in line else None

    def test_a_crashed_helper_is_restarted(self):
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-a")])
        self.assertOk(self.dial("app:ts", "alpha", 7000, "before"))
        pid = self.helper_pid("app:ts")
        os.kill(pid, 9)
        self.assertTrue(harness.wait_for(lambda: "restarts=1" in self.node_line("app:ts"),
                                         timeout=20), self.status())
        self.assertTrue(harness.wait_for(lambda: not os.path.exists(f"/proc/{pid}"),
                                         timeout=10), "the dead helper was not reaped")
        self.wait_running("app:ts")
        self.assertNotEqual(self.helper_pid("app:ts"), pid)
        self.assertOk(self.dial("app:ts", "alpha", 7000, "after"))
        self.assertEqual([r["line"] for r in self.records(alpha["record"])], ["before", "after"])
        self.assertIn("Tailscale helper stopped", "\n".join(self.broker_log()))

    def test_helper_leaves_when_the_broker_is_killed(self):
        self.write_ts_config([self.ts_entry("ts", "via-e", "ephemeral: true")])
        self.start_broker()
        self.wait_running("app:ts")
        pid = self.helper_pid("app:ts")
        for broker in self.broker_pids():
            os.kill(broker, 9)
        self.assertTrue(harness.wait_for(lambda: not harness.alive(pid), timeout=20),
                        "via-tsnet outlived its broker")
        self.assertIn("ephemeral node logged out", self.helper_log("app:ts"))

    def helper_log(self, overlay_id):
        return harness.read_text(os.path.join(self.dir, "state", "tailscale", overlay_id,
                                              "via-tsnet.log"))

    def test_bad_auth_key_fails_the_call_with_a_clear_error(self):
        alpha = self.start_peer("alpha")
        self.write_ts_config([self.ts_entry("ts", "via-x", auth_key="tskey-wrong")])
        p = self.dial("app:ts", "alpha", 7000, "should not arrive")
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertIn("EACCES", p.stdout)
        # The program's user is told why, on its stderr (the shim passes the broker's message).
        self.assertIn("via-x of app:ts is NeedsLogin: invalid authkey", p.stderr)
        log = "\n".join(self.broker_log())
        self.assertIn("invalid authkey", log)
        self.assertIn("check auth_key/auth_key_env", log)
        self.assertEqual(self.records(alpha["record"]), [])
        self.assertIn("state=NeedsLogin", self.node_line("app:ts"))

    def test_control_down_fails_the_call_after_connect_timeout(self):
        dead = f"http://127.0.0.1:{harness.closed_port()}"
        self.write_ts_config([self.ts_entry("ts", "via-y", control_url=dead, timeout="4s")])
        t0 = time.monotonic()
        p = self.dial("app:ts", "alpha", 7000, "nothing")
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertIn("ETIMEDOUT", p.stdout)
        self.assertIn("is not Running yet", p.stderr)
        self.assertLess(time.monotonic() - t0, 30)
        log = "\n".join(self.broker_log())
        self.assertIn(f"is not Running yet", log)
        self.assertIn(f"is control server {dead} reachable?", log)
        self.assertIn("connection refused", log)  # the node's own last error, passed on
        self.assertNotIn("state=Running", self.node_line("app:ts"))

    # ---- attach mode: a real tailscaled's LocalAPI -------------------------------------------------
    def test_attach_to_a_running_tailscaled(self):
        if not os.access(TAILSCALED, os.X_OK):
            self.skipTest(f"{TAILSCALED} was not built")
        alpha = self.start_peer("alpha")
        sock = os.path.join(self.dir, "tsd.sock")
        conf = os.path.join(self.dir, "tsd.json")
        with open(conf, "w") as f:
            json.dump({"Version": "alpha0", "Locked": False, "Enabled": True,
                       "AuthKey": AUTH_KEY, "Hostname": "daemon", "ServerURL": self.control_url},
                      f)
        env = dict(self.env, TS_LOGS_DIR=os.path.join(self.dir, "tsd"))
        env.pop("PORT", None)
        self.spawn([TAILSCALED, "--tun=userspace-networking", f"--socket={sock}",
                    f"--statedir={os.path.join(self.dir, 'tsd')}", "--port=0",
                    f"--config={conf}", "--no-logs-no-support"], "tailscaled.log", env=env)
        self.write_ts_config([self.ts_entry("ts", "ignored", f"localapi_socket: {sock}",
                                            auth_key=None)])
        p = self.dial("app:ts", "alpha", 7000, "via tailscaled")
        self.assertOk(p)
        daemon_ip = {n["hostname"]: n for n in self.control_nodes()}["daemon"]["ips"][0]
        self.assertRegex(p.stdout, rf"^peer alpha saw {daemon_ip}:\d+: via tailscaled\n$")
        self.assertIn("attached", self.node_line("app:ts"))
        self.assertIn(f"localapi={sock}", self.node_line("app:ts"))
        # Outbound only: a listen() under an attached entry fails instead of listening anywhere.
        code = r"""
import errno, socket
s = socket.socket()
s.bind(("0.0.0.0", 8082))
try:
    s.listen(1)
    print("listening")
except OSError as e:
    print("ERRNO", errno.errorcode[e.errno])
"""
        lp = self.run_via("app:ts", harness.PYTHON, "-c", code)
        self.assertOk(lp)
        # EOPNOTSUPP (Python names errno 95 ENOTSUP: the same value on Linux)
        self.assertEqual(lp.stdout.strip(), "ERRNO ENOTSUP", lp.stderr)
        self.assertIn("app:ts (network.tailscale) cannot carry inbound connections", lp.stderr)


if __name__ == "__main__":
    harness.main()
