"""Issue 15's headline: one Python process under one `via run --direct` reaches an .onion service
(a private Tor network), a .b32.i2p destination (i2pd) and a MagicDNS name (a local tailnet)
through the built-in routes alone (no route written for them), while a route-blocked range
fails and a `direct` route reaches a loopback target directly. The far sides' records show
each: the onion service's target, the I2P peer's SAM records, the tailnet peer's record file,
and the loopback target's peer address.

The labs are those of test_tor.py (tests/tor/tor_network.py), test_i2p.py (i2p_lab.py) and
test_tailscale.py (tailnet_lab.py), started together. The tailnet's MagicDNS suffix is
via-test.ts.net, so that the built-in `*.ts.net` route covers it, as it would a real tailnet's.
Slow (the Tor network and the SAM sessions take a minute or more): label `slow`.
"""
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import harness
import i2p_lab
from tailnet_lab import TailnetLab

sys.path.insert(0, os.path.join(harness.ROOT, "tests", "tor"))
import tor_network  # noqa: E402

TARGET = os.path.join(harness.HERE, "target_server.py")
TS_DOMAIN = "via-test.ts.net"

# ONION B32 TS_HOST BLOCKED_PORT DIRECT_PORT: each destination once, one line per result.
PROGRAM = r"""
import errno, socket, sys, urllib.request
onion, b32, ts_host, blocked_port, direct_port = sys.argv[1:6]

def get(url):
    try:
        with urllib.request.urlopen(url, timeout=180) as r:
            return r.read().decode().strip()
    except Exception as e:
        return f"failed: {e}"

print("onion:", get(f"http://{onion}/hidden"), flush=True)
print("i2p:", get(f"http://{b32}/eepsite"), flush=True)
try:
    s = socket.create_connection((ts_host, 7000), timeout=120)
    s.sendall(b"hello tailnet\n")
    s.shutdown(socket.SHUT_WR)
    print("tailnet:", s.makefile().read().strip(), flush=True)
except OSError as e:
    print("tailnet: failed:", e, flush=True)
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(blocked_port)))
    print("blocked: connected", flush=True)
except OSError as e:
    print("blocked:", errno.errorcode.get(e.errno, e.errno), flush=True)
print("direct:", get(f"http://127.0.0.1:{direct_port}/direct"), flush=True)
"""


class Headline(TailnetLab, harness.ViaCase):
    def setUp(self):
        super().setUp()
        for reason in (tor_network.missing_tools(), i2p_lab.i2pd_missing()):
            if reason:
                self.skipTest(reason)
        self.setUp_tailnet(domain=TS_DOMAIN)

    def start_tor(self, result):
        net_dir = tempfile.mkdtemp(prefix="via-tor-net-")
        self.addCleanup(shutil.rmtree, net_dir, True)
        net = tor_network.TorNetwork(net_dir)
        self.addCleanup(net.down)
        try:
            net.up(timeout=float(os.environ.get("VIA_TOR_TIMEOUT", "180")))
            result["tor"] = net
        except Exception as e:  # noqa: BLE001 - reported below
            result["tor_error"] = e

    def test_one_process_reaches_onion_i2p_and_the_tailnet_by_the_built_in_routes(self):
        result = {}
        tor = threading.Thread(target=self.start_tor, args=(result,))
        tor.start()
        router = i2p_lab.I2pRouter(os.path.join(self.dir, "i2p"))
        router.start()
        self.addCleanup(router.stop)
        site = i2p_lab.SamHttpServer(router.sam_port, "site", body=b"hello from i2p\n")
        self.addCleanup(site.close)
        session = threading.Thread(target=site.start_session)
        session.start()
        alpha = self.start_peer("alpha")
        session.join()
        tor.join()
        if "tor_error" in result:
            self.skipTest(f"the private Tor network was not ready: {result['tor_error']}")
        if site.error:
            self.fail(f"the I2P peer's SAM session: {site.error}")
        site.serve()
        net = result["tor"]
        onion_record = os.path.join(self.dir, "onion-target.jsonl")
        p, _ = self.spawn([harness.PYTHON, TARGET, str(net.onion_target_port), onion_record],
                          "onion-target.log")
        harness.wait_port(net.onion_target_port, proc=p)
        direct_port, direct_record = self.start_target()
        blocked_port, blocked_record = self.start_target()

        i2p = ["name: i2p", "kind: network.i2p", "host: 127.0.0.1",
               f"port: {router.sam_port}", "options:"]
        i2p += [f"  {k}: {v}" for k, v in i2p_lab.SAM_OPTIONS.items()]
        self.write_config([
            self.socks5_entry("tor", net.socks_port, "tor: true", "connect_timeout: 120s"),
            i2p,
            self.ts_entry("ts", "via-headline"),
            # No route for .onion, .i2p or the tailnet: the built-in ones take them.
            ["name: keep", "kind: via.route",
             f"match: {{cidr: 127.0.0.1/32, port: {direct_port}}}", "network: direct"],
            ["name: lan", "kind: via.route", "match: {cidr: 127.0.0.0/8}", "network: block"],
        ], service={"idle_timeout": "600"})
        b32 = f"{site.b32}.b32.i2p"
        ts_host = f"alpha.{TS_DOMAIN}"
        check = self.via("check", "--to", f"{net.onion}:80", "--to", f"{b32}:80",
                         "--to", f"{ts_host}:7000", "--", harness.PYTHON)
        self.assertOk(check)
        for line in (f"destination {net.onion}:80: app:tor", f"destination {b32}:80: app:i2p",
                     f"destination {ts_host}:7000: app:ts"):
            self.assertIn(line, check.stdout)

        t0 = time.time()
        proc = self.via("run", "--direct", "--", harness.PYTHON, "-c", PROGRAM, net.onion, b32,
                        ts_host, str(blocked_port), str(direct_port), timeout=600)
        self.assertOk(proc)
        out = dict(l.split(": ", 1) for l in proc.stdout.splitlines() if ": " in l)
        detail = f"{proc.stdout}\n{proc.stderr}\n" + "\n".join(self.broker_log()[-30:])
        print(f"\n[headline] the program ran {time.time() - t0:.0f} s", file=sys.stderr)

        # .onion: the onion service's target saw the request, by name.
        recs = self.records(onion_record)
        self.assertEqual([(r["host"], r["path"]) for r in recs], [(net.onion, "/hidden")], detail)
        # .b32.i2p: the I2P peer answered and recorded the request line.
        self.assertEqual(out.get("i2p"), "hello from i2p", detail)
        self.assertEqual([r["request"] for r in site.records], ["GET /eepsite HTTP/1.1"],
                         detail)
        # MagicDNS: the tailnet peer recorded the line, from via's node.
        self.assertIn("hello tailnet", out.get("tailnet", ""), detail)
        with open(alpha["record"]) as f:
            lines = [json.loads(l)["line"] for l in f if l.strip()]
        self.assertEqual(lines, ["hello tailnet"], detail)
        # The blocked range: refused before anything was sent.
        self.assertEqual(out.get("blocked"), "ENETUNREACH", detail)
        self.assertEqual(self.records(blocked_record), [])
        # The direct route: a direct connection (the target's peer is 127.0.0.1).
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(direct_record)],
                         [(harness.DIRECT_PEER, "/direct")], detail)


if __name__ == "__main__":
    harness.main()
