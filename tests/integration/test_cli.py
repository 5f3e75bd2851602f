"""The command line as a user meets it: help, check, probe, status, install."""
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time

import harness

SEED = os.path.join(harness.DATA, "seed")  # a copy of the seed's _index.yaml and .wippy.yaml


class Cli(harness.ViaCase):
    needs_namespace = False

    def test_help_for_every_command(self):
        top = self.via("--help")
        self.assertOk(top)
        for cmd, flags in {"run": ["--network", "--direct", "--config", "--quiet"],
                           "broker": ["--socket", "--daemon", "--ensure", "--idle-timeout"],
                           "check": ["--config"],
                           "probe": ["--url", "--network", "--timeout", "--cafile"],
                           "status": ["--socket"], "stop": ["--socket"]}.items():
            self.assertIn(cmd, top.stdout)
            for form in ([cmd, "--help"], ["help", cmd]):
                proc = self.via(*form)
                self.assertOk(proc, form)
                for flag in flags:
                    self.assertIn(flag, proc.stdout, f"{cmd}: {flag}")
                self.assertIn("Exit status", proc.stdout)

    def test_unknown_flag_is_a_usage_error(self):
        proc = self.via("check", "--bogus")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("try 'via check --help'", proc.stderr)

    def test_check_lists_the_seed_overlays(self):
        proc = subprocess.run([harness.VIA, "check", "-c", os.path.join(SEED, "_index.yaml")],
                              env=self.env, capture_output=True, text=True)
        self.assertOk(proc)
        self.assertRegex(proc.stdout, r"app:tor\s+network\.socks5\s+127\.0\.0\.1:9050\s+isolate_streams=on")
        self.assertRegex(proc.stdout, r"app:tailnet\s+network\.tailscale")
        self.assertIn("default network: app:tor", proc.stdout)  # from the seed's .wippy.yaml
        # The directory form reads the same files.
        proc = subprocess.run([harness.VIA, "check", "-c", SEED], env=self.env,
                              capture_output=True, text=True)
        self.assertOk(proc)
        self.assertRegex(proc.stdout, r"app:tor\s+network\.socks5")
        self.assertRegex(proc.stdout, r"app:tailnet\s+network\.tailscale")

    def test_check_reports_file_line_col_entry_and_field(self):
        self.write_config([["name: tor", "kind: network.socks5", "host: 127.0.0.1", "port: 70000"]])
        proc = self.via("check")
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stderr.strip(),
                         f"via: {self.config}:7:11: entry app:tor (network.socks5): port: "
                         "network: invalid port (70000 is not in 1..65535)")


    def test_check_json_lists_the_config_and_escapes_what_it_quotes(self):
        # An argv pattern with a quote, a backslash and non-ASCII, and a config file whose name
        # has a tab and a newline: json.loads must give them back exactly.
        odd = 'a "b" \\ c é 🧅'
        self.write_config([
            self.socks5_entry("tor", 9050, "username: u", "password: p"),
            ["name: i2p", "kind: network.i2p", "host: 127.0.0.1", "port: 7656",
             "options:", "  inbound.length: 1"],
            ["name: tailnet", "kind: network.tailscale", "hostname: box", "ephemeral: true",
             "auth_key_env: VIA_TEST_TS_KEY"],
            ["name: odd", "kind: via.program", f'match: {{exe: /usr/bin/curl, argv: ["*", {json.dumps(odd, ensure_ascii=False)}]}}',
             "network: app:tor", "groups: [g1, g2]"],
            ["name: deny", "kind: security.policy", "policy:", '  actions: "network.select"',
             '  resources: "app:i2p"', "  effect: deny", "groups:", "  - g1"],
        ], service={"default_network": "app:tor", "loopback": "refuse"}, name="via\tconf\n.yaml")
        proc = self.via("check", "--json")
        self.assertOk(proc)
        doc = json.loads(proc.stdout)
        self.assertEqual(doc["config"], self.config)
        self.assertEqual([(o["id"], o["kind"]) for o in doc["overlays"]],
                         [("app:tor", "network.socks5"), ("app:i2p", "network.i2p"),
                          ("app:tailnet", "network.tailscale")])
        tor, i2p, tailnet = (o["settings"] for o in doc["overlays"])
        self.assertEqual((tor["host"], tor["port"], tor["auth"]), ("127.0.0.1", 9050, True))
        self.assertEqual((i2p["port"], i2p["options"]["inbound.length"]), (7656, "1"))
        self.assertEqual((tailnet["hostname"], tailnet["ephemeral"]), ("box", True))
        self.assertTrue(doc["overlays"][0]["where"].startswith(self.config + ":"))
        self.assertEqual((doc["default_network"], doc["loopback"]), ("app:tor", "refuse"))
        rule = doc["programs"][0]
        self.assertEqual((rule["id"], rule["exe"], rule["argv"], rule["network"], rule["groups"]),
                         ("app:odd", "/usr/bin/curl", ["*", odd], "app:tor",
                          ["g1", "g2"]))
        policy = doc["policies"][0]
        self.assertEqual((policy["id"], policy["effect"], policy["resources"], policy["groups"]),
                         ("app:deny", "deny", ["app:i2p"], ["g1"]))
        self.assertIsInstance(doc["skipped_entries"], int)
        # Explaining a command has no JSON form: said, not half done.
        proc = self.via("check", "--json", "--", "true")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("--json", proc.stderr)

    def test_check_reports_yaml_syntax_errors_with_position(self):
        path = os.path.join(self.dir, "broken.yaml")
        with open(path, "w") as f:
            f.write('version: "1.0"\nnamespace: app\nentries:\n  - name: tor\n'
                    '    kind: network.socks5\n   host: [\n')
        proc = subprocess.run([harness.VIA, "check", "-c", path], env=self.env,
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2)
        self.assertRegex(proc.stderr.strip(), rf"^via: {re.escape(path)}:\d+:\d+: ")
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)

    def test_run_with_an_unknown_overlay_runs_nothing(self):
        self.write_config([self.socks5_entry("tor", harness.closed_port())])
        marker = os.path.join(self.dir, "ran")
        proc = self.run_via("app:nope", "touch", marker)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertIn("app:nope", proc.stderr)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual(self.via("run", "--network", "app:nope", "--", "true").returncode, 2)


class CliWithServers(harness.ViaCase):
    needs_namespace = False  # loopback servers only; tests that need names ask for it
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.write_config([self.socks5_entry("tor", self.proxy_port)])

    def test_probe_shows_direct_and_overlay_addresses(self):
        port, record = self.start_target()
        proc = self.via("probe", "--network", "app:tor", "--url", f"http://127.0.0.1:{port}/ip")
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines(), ["direct IP: 127.0.0.1", "tor IP: 127.0.0.2"])

    def test_probe_by_name_never_resolves_locally(self):
        self.start_dns()
        port, record = self.start_target()
        proc = self.via("probe", "--url", f"http://example.test:{port}/ip")
        self.assertEqual(proc.stdout.splitlines()[1], "tor IP: 127.0.0.2")
        # The direct line resolved it (that is its job); the overlay line sent the name to the
        # proxy: exactly one client query, from the direct fetch.
        self.assertTrue(any(f"connected to example.test:{port}" in l
                            for l in harness.read_lines(self.proxy_log)))
        self.assertEqual(len([q for q in self.dns_queries("example.test") if "query[A]" in q]), 1)

    def test_probe_reports_a_dial_error_when_the_proxy_is_down(self):
        port, record = self.start_target()
        self.write_config([self.socks5_entry("tor", harness.free_port())])
        proc = self.via("probe", "--url", f"http://127.0.0.1:{port}/")
        self.assertEqual(proc.returncode, 1)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0], "direct IP: 127.0.0.1")
        self.assertTrue(lines[1].startswith("tor failed: dial: "), lines[1])
        self.assertIn("Connection refused", lines[1])
        self.assertEqual(len(self.records(record)), 1)  # only the direct fetch arrived

    def test_probe_https_checks_the_certificate(self):
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        port, record = self.start_target(tls=(cert, key))
        url = f"https://127.0.0.1:{port}/"
        good = self.via("probe", "--url", url, "--cafile", cert)
        self.assertOk(good)
        self.assertEqual(good.stdout.splitlines(), ["direct IP: 127.0.0.1", "tor IP: 127.0.0.2"])
        bad = self.via("probe", "--url", url)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("certificate", bad.stdout)

    def test_status_shows_overlay_and_session(self):
        flag = os.path.join(self.dir, "done")
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor", "--",
                              "sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done"],
                             env=self.env)
        self.addCleanup(p.kill)
        try:
            for _ in range(100):
                st = self.via("status")
                if "network app:tor" in st.stdout:
                    break
                time.sleep(0.05)
            self.assertOk(st)
            self.assertIn(f"overlay app:tor network.socks5 127.0.0.1:{self.proxy_port}", st.stdout)
            self.assertRegex(st.stdout, r"session [0-9a-f]{8} network app:tor")
            # sh and sleep open no socket: the shim in them never connected to the broker.
            self.assertRegex(st.stdout, r"(?m)^session [0-9a-f]{8} network app:tor clients=0$")
        finally:
            open(flag, "w").close()
            p.wait(10)

    def test_status_json_matches_the_running_broker(self):
        """`via status --json`: the facts of `via status` as data, checked against what is
        running: the SOCKS5 overlay on the test's proxy, the session `via run` opened, and the
        program in it that asked the broker for a name."""
        flag = os.path.join(self.dir, "done")
        program = ("import os, socket, time\n"
                   "try:\n"
                   "    socket.getaddrinfo('example.test', 80, type=socket.SOCK_STREAM)\n"
                   "except OSError:\n"
                   "    pass\n"
                   f"while not os.path.exists({flag!r}):\n"
                   "    time.sleep(0.05)\n")
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor", "--",
                              "/usr/bin/python3", "-c", program], env=self.env)
        self.addCleanup(p.kill)
        try:
            doc = None
            for _ in range(200):
                st = self.via("status", "--json")
                doc = json.loads(st.stdout) if st.returncode == 0 else None
                # The program greets the broker before its lookup is answered: wait for both.
                if (doc and doc["sessions"] and doc["programs"] and
                        doc["fake_addresses"]["names"] >= 1):
                    break
                time.sleep(0.05)
            self.assertOk(st)
            self.assertEqual(len(st.stdout.splitlines()), 1)
            text = self.via("status").stdout
            broker = doc["broker"]
            self.assertIn(f"broker pid {broker['pid']}, config {broker['config']} "
                          f"(fingerprint {broker['fingerprint']}", text)
            self.assertEqual(broker["config"], self.config)
            [tor] = doc["overlays"]
            self.assertEqual((tor["id"], tor["kind"], tor["available"], tor["error"]),
                             ("app:tor", "network.socks5", True, None))
            self.assertTrue(tor["settings"].startswith(f"127.0.0.1:{self.proxy_port}"),
                            tor["settings"])
            self.assertIn(f"overlay app:tor network.socks5 {tor['settings']} connects ok=", text)
            [session] = doc["sessions"]
            self.assertEqual((session["network"], session["detached"]), ("app:tor", False))
            self.assertRegex(session["token_prefix"], r"^[0-9a-f]{8}$")
            self.assertIn(f"session {session['token_prefix']} network app:tor", text)
            [prog] = [q for q in doc["programs"] if "python3" in q["exe"]]
            self.assertEqual((prog["network"], prog["error"]), ("app:tor", None))
            self.assertEqual(os.readlink(f"/proc/{prog['pid']}/exe"), prog["exe"])
            self.assertIsInstance(prog["origin"], str)
            self.assertIn(f"program pid {prog['pid']} {prog['exe']} network app:tor ({prog['origin']})",
                          text)
            self.assertGreaterEqual(doc["clients"], 1)
            self.assertEqual(doc["listeners"], [])
            self.assertEqual(doc["load"]["refused"]["other_uid"], 0)
            self.assertGreater(doc["load"]["descriptor_limit"], 0)
            self.assertEqual((doc["fake_addresses"]["ipv4"], doc["fake_addresses"]["ipv6"]),
                             ("198.18.0.0/15", "fd76:6961:ff00::/64"))
            self.assertGreaterEqual(doc["fake_addresses"]["names"], 1)  # example.test
        finally:
            open(flag, "w").close()
            p.wait(10)

    def test_broker_refuses_a_peer_of_another_uid(self):
        """SO_PEERCRED: even with the directory and socket opened to everyone, a process of
        another uid is cut off before its first request is read, and the broker logs it."""
        if os.geteuid() != 0 or subprocess.run(["id", "viatest"], capture_output=True).returncode:
            self.skipTest("needs root and the viatest user (scripts/install-deps.sh creates it)")
        uid = pwd.getpwnam("viatest").pw_uid
        ensure = self.via("broker", "--ensure")
        self.assertOk(ensure)
        sock = ensure.stdout.strip()
        for path in (self.dir, self.runtime, os.path.dirname(sock)):
            os.chmod(path, 0o755)
        os.chmod(sock, 0o777)
        client = (
            "import socket, struct, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            "s.connect(sys.argv[1])\n"
            "s.settimeout(10)\n"
            "try:\n"
            "    s.send(b'VIA1' + bytes(12))\n"  # the broker may have closed it already
            "    print('reply' if s.recv(4096) else 'closed')\n"
            "except (ConnectionResetError, BrokenPipeError):\n"
            "    print('closed')\n")
        proc = subprocess.run(["runuser", "-u", "viatest", "--", "/usr/bin/python3", "-c", client,
                               sock], capture_output=True, text=True, timeout=30)
        for path in (self.dir, self.runtime, os.path.dirname(sock)):
            os.chmod(path, 0o700)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "closed")
        self.assertTrue(harness.wait_for(lambda: any(
            f"refused connection from uid {uid}" in l for l in self.broker_log())),
            "\n".join(self.broker_log()))
        # The broker still serves its own uid.
        self.assertOk(self.via("status"))

    def test_shim_depends_on_libc_only(self):
        out = subprocess.run(["ldd", harness.SHIM], capture_output=True, text=True).stdout
        libs = sorted(l.split()[0] for l in out.splitlines() if l.strip())
        self.assertTrue(all(re.match(r"(linux-vdso|libc\.so|/lib64/ld-linux)", l) for l in libs),
                        libs)

    def test_cmake_install_gives_a_working_via(self):
        self.require_namespace()
        prefix = tempfile.mkdtemp(prefix="via-prefix-")
        self.addCleanup(shutil.rmtree, prefix, True)
        proc = subprocess.run(["cmake", "--install", harness.BUILD, "--prefix", prefix],
                              capture_output=True, text=True)
        self.assertOk(proc)
        self.assertTrue(os.path.exists(os.path.join(prefix, "lib", "via", "libvia.so")))
        port, record = self.start_target()
        env = dict(self.env)
        env.pop("VIA_SHIM", None)
        proc = subprocess.run([os.path.join(prefix, "bin", "via"), "run", "-c", self.config,
                               "--network", "app:tor", "--", "sh", "-c",
                               f"echo $LD_PRELOAD; curl -sSf http://example.test:{port}/"],
                              env=env, capture_output=True, text=True, timeout=60)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines()[0], os.path.join(prefix, "lib", "via", "libvia.so"))
        self.assertReachedThroughProxy(record, "example.test")
        self.stop_broker()
        # Bare preload of the installed library: it starts <prefix>/bin/via broker itself.
        env = dict(env, LD_PRELOAD=os.path.join(prefix, "lib", "via", "libvia.so"),
                   VIA_NETWORK="app:tor", VIA_CONFIG=self.config)
        proc = subprocess.run(["curl", "-sSf", f"http://example.test:{port}/bare"], env=env,
                              capture_output=True, text=True, timeout=60)
        self.assertOk(proc)
        self.assertReachedThroughProxy(record, "example.test", count=2)
        self.assertEqual(self.records(record)[1]["path"], "/bare")


if __name__ == "__main__":
    harness.main()
