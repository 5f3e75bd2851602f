"""Routes by destination (`kind: via.route`, `via run --route`), enforced by the broker and the
shim.

Two real SOCKS5 proxies stand in for two overlays: microsocks app:a goes out from 127.0.0.2,
app:b from 127.0.0.3, and each logs what it was asked to connect to. A recording HTTP target on
127.0.0.1 tells the way each request took by its peer address: 127.0.0.2 app:a, 127.0.0.3 app:b,
127.0.0.1 direct. `loopback: overlay` makes loopback destinations go through the process's
network, so that a route sending one direct is visible. The proxies resolve the test names
(example.test, other.test, ...) from their own hosts file; the client cannot.
"""
import json
import os
import shutil
import subprocess

import harness

A, B, DIRECT = "127.0.0.2", "127.0.0.3", "127.0.0.1"

PY_CONNECT = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
except socket.gaierror as e:
    print("gai", e.errno == socket.EAI_FAIL and "EAI_FAIL" or e.errno)
    sys.exit(0)
s = socket.socket()
try:
    s.connect((host, port))
    print("connected")
except OSError as e:
    import errno
    print("connect", errno.errorcode.get(e.errno, e.errno))
"""


class RoutesCase(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.a_port, self.a_log = self.start_microsocks(bind_out=A)
        self.b_port, self.b_log = self.start_microsocks(bind_out=B)
        self.port, self.record = self.start_target()
        self.python = os.path.realpath(harness.PYTHON)

    def configure(self, *routes, extra=(), service=None):
        """app:a, app:b, then `routes` as (name, match, network) and `extra` entries."""
        entries = [self.socks5_entry("a", self.a_port), self.socks5_entry("b", self.b_port)]
        for name, match, network in routes:
            entries.append([f"name: {name}", "kind: via.route", f"match: {match}",
                            f"network: {network}"])
        entries += list(extra)
        svc = {"loopback": "overlay"}
        svc.update(service or {})
        return self.write_config(entries, service=svc)

    def curl(self, network, url, *run_args, curl="curl"):
        net = ["--direct"] if network == "direct" else ["--network", network]
        return self.via("run", *net, *run_args, "--", curl, "-sSf", "-m", "20", url)

    def url(self, host, path):
        return f"http://{host}:{self.port}{path}"

    def seen(self):
        """(peer, path) of every request the target saw."""
        return [(r["peer"], r["path"]) for r in self.records(self.record)]

    def py(self, network, host, port, *run_args):
        net = ["--direct"] if network == "direct" else ["--network", network]
        proc = self.via("run", *net, *run_args, "--", self.python, "-c", PY_CONNECT, host,
                        str(port))
        self.assertOk(proc)
        return proc.stdout.strip()


class NameRoutes(RoutesCase):
    def test_a_name_glob_takes_its_overlay_and_the_rest_the_programs(self):
        self.configure(("to_b", '{name: "other.*"}', "app:b"))
        self.assertOk(self.curl("app:a", self.url("other.test", "/routed")))
        self.assertOk(self.curl("app:a", self.url("example.test", "/own")))
        self.assertEqual(self.seen(), [(B, "/routed"), (A, "/own")])
        self.assertEqual(harness.microsocks_destinations(self.b_log),
                         [f"other.test:{self.port}"])
        self.assertEqual(harness.microsocks_destinations(self.a_log),
                         [f"example.test:{self.port}"])

    def test_a_direct_program_follows_the_routes(self):
        self.configure(("to_b", '{name: "other.test"}', "app:b"))
        self.assertOk(self.curl("direct", self.url("other.test", "/routed")))
        self.assertOk(self.curl("direct", self.url("127.0.0.1", "/plain")))
        self.assertEqual(self.seen(), [(B, "/routed"), (DIRECT, "/plain")])
        self.assertEqual(harness.microsocks_destinations(self.b_log),
                         [f"other.test:{self.port}"])
        self.assertEqual(harness.microsocks_destinations(self.a_log), [])

    def test_a_name_route_with_a_port_matches_that_port_only(self):
        other_port, other_record = self.start_target()
        self.configure(("to_b", f'{{name: "other.test", port: {self.port}}}', "app:b"))
        self.assertOk(self.curl("app:a", self.url("other.test", "/port")))
        self.assertOk(self.curl("app:a", f"http://other.test:{other_port}/elsewhere"))
        self.assertEqual(self.seen(), [(B, "/port")])
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(other_record)],
                         [(A, "/elsewhere")])

    def test_a_blocked_name_fails_the_lookup(self):
        self.configure(("no_demo", '{name: "demo.test"}', "block"))
        self.assertEqual(self.py("app:a", "demo.test", self.port), "gai EAI_FAIL")
        self.assertEqual(self.py("direct", "demo.test", self.port), "gai EAI_FAIL")
        self.assertEqual(self.seen(), [])
        self.assertEqual(harness.microsocks_destinations(self.a_log), [])
        self.assertIn("resolve demo.test blocked by route app:no_demo", "\n".join(
            self.broker_log()))

    def test_a_name_routed_direct_is_resolved_by_the_system_and_connected_directly(self):
        self.start_dns()
        self.configure(("plain", '{name: "target.test"}', "direct"))
        self.assertOk(self.curl("app:a", self.url("target.test", "/direct")))
        self.assertEqual(self.seen(), [(DIRECT, "/direct")])
        self.assertEqual(harness.microsocks_destinations(self.a_log), [])
        self.assertNotEqual(self.dns_queries("target.test"), [])


    def test_gethostbyname_follows_the_routes_as_getaddrinfo_does(self):
        # gethostbyname_r (Python's gethostbyname_ex): in a direct process a name a route takes
        # gets a fake address that goes to app:b; under app:a a name routed direct is resolved
        # by the system and connected directly. The local resolver never hears the routed name.
        self.start_dns()
        self.configure(("to_b", '{name: "other.test"}', "app:b"),
                       ("plain", '{name: "target.test"}', "direct"))
        code = ("import socket, sys\n"
                "name, aliases, ips = socket.gethostbyname_ex(sys.argv[1])\n"
                "s = socket.create_connection((ips[0], int(sys.argv[2])))\n"
                "s.sendall(b'GET ' + sys.argv[3].encode() + b' HTTP/1.0\\r\\n\\r\\n')\n"
                "print(s.recv(12))\n")
        for network, host, path in (("direct", "other.test", "/byname-routed"),
                                    ("app:a", "target.test", "/byname-direct")):
            net = ["--direct"] if network == "direct" else ["--network", network]
            self.assertOk(self.via("run", *net, "--", self.python, "-c", code, host,
                                   str(self.port), path))
        self.assertEqual(self.seen(), [(B, "/byname-routed"), (DIRECT, "/byname-direct")])
        self.assertEqual(self.dns_queries("other.test"), [])
        self.assertNotEqual(self.dns_queries("target.test"), [])


class CidrRoutes(RoutesCase):
    def test_a_cidr_route_with_a_port_takes_its_overlay(self):
        other_port, other_record = self.start_target()
        self.configure(("lo_b", f'{{cidr: 127.0.0.1/32, port: {self.port}}}', "app:b"))
        self.assertOk(self.curl("direct", self.url("127.0.0.1", "/cidr")))
        self.assertOk(self.curl("direct", f"http://127.0.0.1:{other_port}/other-port"))
        self.assertEqual(self.seen(), [(B, "/cidr")])
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(other_record)],
                         [(DIRECT, "/other-port")])
        self.assertEqual(harness.microsocks_destinations(self.b_log),
                         [f"127.0.0.1:{self.port}"])

    def test_a_loopback_port_no_route_takes_follows_the_loopback_policy(self):
        other_port, other_record = self.start_target()
        self.configure(("lo_b", f'{{cidr: 127.0.0.1/32, port: {self.port}}}', "app:b"),
                       service={"loopback": "direct"})
        self.assertOk(self.curl("app:a", self.url("127.0.0.1", "/routed")))
        self.assertOk(self.curl("app:a", f"http://127.0.0.1:{other_port}/local"))
        self.assertEqual(self.seen(), [(B, "/routed")])
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(other_record)],
                         [(DIRECT, "/local")])
        self.assertEqual(harness.microsocks_destinations(self.a_log), [])

    def test_a_cidr_route_to_direct_beats_the_programs_overlay(self):
        self.configure(("lo", "{cidr: 127.0.0.0/8}", "direct"))
        self.assertOk(self.curl("app:a", self.url("127.0.0.1", "/direct")))
        self.assertEqual(self.seen(), [(DIRECT, "/direct")])
        self.assertEqual(harness.microsocks_destinations(self.a_log), [])

    def test_a_blocked_range_fails_the_connect(self):
        self.configure(("lo", "{cidr: 127.0.0.0/8}", "block"))
        self.assertEqual(self.py("direct", "127.0.0.1", self.port), "connect ENETUNREACH")
        self.assertEqual(self.py("app:a", "127.0.0.1", self.port), "connect ENETUNREACH")
        self.assertEqual(self.seen(), [])
        self.assertEqual(harness.microsocks_destinations(self.a_log), [])


class SessionRoutes(RoutesCase):
    def test_run_route_adds_routes_ahead_of_the_configs(self):
        self.configure(("to_a", '{name: "other.test"}', "app:a"))
        self.assertOk(self.curl("direct", self.url("other.test", "/run"), "--route",
                                "other.test=app:b"))
        self.assertOk(self.curl("direct", self.url("other.test", "/config")))
        self.assertEqual(self.seen(), [(B, "/run"), (A, "/config")])

    def test_run_route_takes_a_bracketed_ipv6_range_and_a_cidr_with_a_port(self):
        self.configure()
        proc = self.curl("direct", self.url("127.0.0.1", "/r"), "--route", "[fd00::/8]:80=block",
                         "--route", f"127.0.0.0/8:{self.port}=app:b")
        self.assertOk(proc)
        self.assertEqual(self.seen(), [(B, "/r")])

    def test_a_bad_run_route_is_a_usage_error(self):
        self.configure()
        proc = self.curl("direct", self.url("127.0.0.1", "/r"), "--route", "10.0.0.1/8=direct")
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("has host bits set (the network is 10.0.0.0/8)", proc.stderr)
        self.assertEqual(self.seen(), [])

    def test_policy_refuses_a_denied_groups_run_route(self):
        untrusted = os.path.join(self.dir, "untrusted")
        os.makedirs(untrusted)
        shutil.copy2(shutil.which("curl"), os.path.join(untrusted, "curl"))
        self.configure(extra=[
            ["name: untrusted", "kind: via.program", f"match: {{exe: {untrusted}/*}}",
             "groups: [untrusted]"],
            ["name: no_b", "kind: security.policy", "policy:", '  actions: "network.select"',
             '  resources: "app:b"', "  effect: deny", "groups: [untrusted]"]])
        proc = self.curl("app:a", self.url("other.test", "/denied"), "--route",
                         "other.test=app:b", curl=os.path.join(untrusted, "curl"))
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("--route other.test=app:b refused: network.select of app:b is denied by "
                      "security.policy app:no_b", proc.stderr)
        self.assertEqual(self.seen(), [])
        # block takes a destination away: always allowed.
        proc = self.curl("app:a", self.url("other.test", "/blocked"), "--route",
                         "other.test=block", curl=os.path.join(untrusted, "curl"))
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(self.seen(), [])


class StrictRoutes(RoutesCase):
    def test_strict_mode_follows_name_and_block_routes(self):
        self.require_namespace()
        self.configure(("to_b", '{name: "other.test"}', "app:b"),
                       ("no_demo", '{name: "demo.test"}', "block"))
        self.assertOk(self.curl("app:a", self.url("other.test", "/strict-routed"), "--strict"))
        self.assertOk(self.curl("app:a", self.url("example.test", "/strict-own"), "--strict"))
        proc = self.curl("app:a", self.url("demo.test", "/strict-blocked"), "--strict")
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertEqual(self.seen(), [(B, "/strict-routed"), (A, "/strict-own")])
        self.assertEqual(harness.microsocks_destinations(self.b_log),
                         [f"other.test:{self.port}"])


class Precedence(RoutesCase):
    def test_a_route_beats_a_program_rule(self):
        bin_dir = os.path.join(self.dir, "bin")
        os.makedirs(bin_dir)
        shutil.copy2(shutil.which("curl"), os.path.join(bin_dir, "curl-a"))
        self.configure(("to_b", '{name: "other.test"}', "app:b"), extra=[
            ["name: curl_a", "kind: via.program", f"match: {{exe: {bin_dir}/curl-a}}",
             "network: app:a"]])
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_CONFIG=self.config)
        for host, path in (("other.test", "/route"), ("example.test", "/rule")):
            proc = subprocess.run([os.path.join(bin_dir, "curl-a"), "-sSf", "-m", "20",
                                   self.url(host, path)], env=env, capture_output=True,
                                  text=True, timeout=60)
            self.assertOk(proc)
        self.assertEqual(self.seen(), [(B, "/route"), (A, "/rule")])

    def test_a_config_route_overrides_a_built_in_one(self):
        # app:a is marked as Tor: `.onion` goes there by default; a route of the config wins.
        self.configure(("onion", '{name: "*.onion"}', "block"))
        with open(self.config) as f:
            text = f.read()
        with open(self.config, "w") as f:
            f.write(text.replace(f"port: {self.a_port}\n", f"port: {self.a_port}\n    tor: true\n",
                                 1))
        self.assertEqual(self.py("direct", "abc.onion", 80), "gai EAI_FAIL")
        self.assertEqual(harness.microsocks_destinations(self.a_log), [])


class Check(RoutesCase):
    def test_check_explains_which_route_a_destination_takes(self):
        self.configure(("to_b", '{name: "*.other.test"}', "app:b"),
                       ("lan", "{cidr: 10.0.0.0/8, port: 22}", "block"))
        proc = self.via("check", "--network", "app:a", "--route", "x.test=direct",
                        "--to", "a.other.test:443", "--to", "10.1.2.3:22", "--to", "x.test:80",
                        "--to", "10.1.2.3:80", "--", "curl")
        self.assertOk(proc)
        out = proc.stdout
        self.assertIn("destination a.other.test:443: app:b\n"
                      f"  because: route app:to_b ({self.config}:12) matches *.other.test\n", out)
        self.assertIn("destination 10.1.2.3:22: blocked (the connect fails: ENETUNREACH)\n"
                      f"  because: route app:lan ({self.config}:16) matches 10.0.0.0/8:22\n", out)
        self.assertIn("destination x.test:80: direct (resolved by the system resolver)\n"
                      "  because: route --route (via run --route) matches x.test\n", out)
        self.assertIn("destination 10.1.2.3:80: app:a\n"
                      "  because: no route matches; the command's own network\n", out)
        listing = self.via("check").stdout
        self.assertIn("routes (first match wins):", listing)
        self.assertIn(f"app:to_b ({self.config}:12)", listing)

    def test_check_json_lists_the_routes_in_force(self):
        # The config's routes in file order, then the built-ins (a Tor-marked entry brings
        # `*.onion`), each with where it comes from.
        self.configure(("to_b", '{name: "*.other.test"}', "app:b"),
                       ("lan", "{cidr: 10.0.0.0/8, port: 22}", "block"),
                       extra=[self.socks5_entry("tor", self.a_port, "tor: true")])
        proc = self.via("check", "--json")
        self.assertOk(proc)
        routes = [(r["id"], r["name"], r["cidr"], r["port"], r["network"], r["builtin"])
                  for r in json.loads(proc.stdout)["routes"]]
        self.assertEqual(routes[:2], [("app:to_b", "*.other.test", None, 0, "app:b", False),
                                      ("app:lan", None, "10.0.0.0/8", 22, "block", False)])
        self.assertIn(("built-in", "*.onion", None, 0, "app:tor", True), routes[2:], routes)

    def test_a_broken_route_is_a_config_error_with_its_position(self):
        self.configure(("bad", "{cidr: 10.0.0.0/33}", "app:b"))
        proc = self.via("check")
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn(f"{self.config}:14:19: entry app:bad (via.route): match.cidr: "
                      '"10.0.0.0/33": the prefix length must be a number from 0 to 32',
                      proc.stderr)


if __name__ == "__main__":
    harness.main()
