"""Program rules, precedence, the network.select policy and reload, enforced by the broker.

Every test runs real programs (sh scripts, curl, python3) under the broker, with two real
SOCKS5 proxies (microsocks; app:tor goes out from 127.0.0.2, app:other from 127.0.0.3) and a
recording HTTP target. `loopback: overlay` sends 127.0.0.1 through the overlay, so the target's
record of each request's peer tells what happened: 127.0.0.2 app:tor, 127.0.0.3 app:other,
127.0.0.1 direct.

Programs are told apart the way the broker tells them apart, by their executable: copies of
curl and dash under bin/ (matched by via.program rules with a network) and under untrusted/
(matched by a rule giving group `untrusted`, which the seed's deny_network policy covers).
"""
import os
import shutil
import signal
import subprocess
import time

import harness

TOR, OTHER, DIRECT = "127.0.0.2", "127.0.0.3", "127.0.0.1"


class PolicyCase(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.tor_port, self.tor_log = self.start_microsocks()
        self.other_port, self.other_log = self.start_microsocks(bind_out=OTHER)
        self.port, self.record = self.start_target()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bin = os.path.join(self.dir, "bin")
        self.untrusted = os.path.join(self.dir, "untrusted")
        self.scripts = os.path.join(self.dir, "tor-scripts")
        for d in (self.bin, self.untrusted, self.scripts):
            os.makedirs(d)
        curl, dash = shutil.which("curl"), os.path.realpath(shutil.which("dash") or "/bin/sh")
        for name in ("curl-tor", "curl-direct", "curl-other"):
            shutil.copy2(curl, os.path.join(self.bin, name))
        shutil.copy2(dash, os.path.join(self.bin, "sh-tor"))
        shutil.copy2(dash, os.path.join(self.untrusted, "sh"))
        shutil.copy2(curl, os.path.join(self.untrusted, "curl"))
        self.python = os.path.realpath(harness.PYTHON)
        self.configure()

    def entries(self, tor_port=None, extra=()):
        return [
            self.socks5_entry("tor", tor_port or self.tor_port),
            self.socks5_entry("other", self.other_port),
            ["name: curl_tor", "kind: via.program", f"match: {{exe: {self.bin}/curl-tor}}",
             "network: app:tor"],
            ["name: curl_direct", "kind: via.program", f"match: {{exe: {self.bin}/curl-direct}}",
             "network: direct"],
            ["name: curl_other", "kind: via.program", "match: {exe: curl-other}",
             "network: app:other"],
            ["name: sh_tor", "kind: via.program", f"match: {{exe: {self.bin}/sh-tor}}",
             "network: app:tor"],
            ["name: py_tor", "kind: via.program",
             f'match: {{exe: "{self.python}", argv: ["*", "*/tor-scripts/*"]}}',
             "network: app:tor"],
            ["name: untrusted", "kind: via.program", f"match: {{exe: {self.untrusted}/*}}",
             "groups: [untrusted]"],
            # The seed's entry, verbatim.
            ["name: deny_network", "kind: security.policy", "policy:",
             '  actions: "network.select"', '  resources: "*"', "  effect: deny", "groups:",
             "  - untrusted"],
            *extra,
        ]

    def configure(self, service=None, **kw):
        svc = {"loopback": "overlay"}
        svc.update(service or {})
        return self.write_config(self.entries(**kw), service=svc)

    def bare_env(self, **extra):
        """The shim preloaded without `via run`: it finds (or starts) the broker itself."""
        return dict(self.env, LD_PRELOAD=harness.SHIM, VIA_CONFIG=self.config, **extra)

    def call(self, argv, env=None, timeout=60):
        return subprocess.run(argv, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)

    def seen(self):
        """(peer, path) of every request the target saw."""
        return [(r["peer"], r["path"]) for r in self.records(self.record)]

    def assertSaw(self, *expected):
        self.assertEqual(self.seen(), list(expected))

    def assertDeniedInLog(self, what="network.select of direct is denied by security.policy "
                                     "app:deny_network"):
        log = "\n".join(self.broker_log())
        self.assertIn(what, log)


class Precedence(PolicyCase):
    """explicit selection > program rule > inherited session > default_network > direct."""

    def test_explicit_run_network_beats_the_commands_rule(self):
        self.assertOk(self.run_via("app:other", f"{self.bin}/curl-tor", "-sSf", self.url + "/p1"))
        self.assertSaw((OTHER, "/p1"))

    def test_explicit_run_direct_beats_the_commands_rule(self):
        proc = self.via("run", "--direct", "--", f"{self.bin}/curl-tor", "-sSf", self.url + "/d")
        self.assertOk(proc)
        self.assertSaw((DIRECT, "/d"))
        self.assertEqual(harness.microsocks_destinations(self.tor_log), [])

    def test_explicit_via_network_of_a_process_beats_its_rule(self):
        cmd = f"VIA_NETWORK=app:other {self.bin}/curl-tor -sSf {self.url}/p2"
        self.assertOk(self.run_via("app:tor", "sh", "-c", cmd))
        self.assertSaw((OTHER, "/p2"))

    def test_program_rule_beats_the_inherited_session(self):
        cmd = (f"{self.bin}/curl-direct -sSf {self.url}/direct && "
               f"{self.bin}/curl-other -sSf {self.url}/other && curl -sSf {self.url}/session")
        self.assertOk(self.run_via("app:tor", "sh", "-c", cmd))
        self.assertSaw((DIRECT, "/direct"), (OTHER, "/other"), (TOR, "/session"))

    def test_program_rule_matches_argv(self):
        script = os.path.join(self.scripts, "fetch.py")
        with open(script, "w") as f:
            f.write(f"import urllib.request as u, sys\nu.urlopen('{self.url}' + sys.argv[1])\n")
        plain = os.path.join(self.dir, "fetch.py")
        shutil.copy(script, plain)
        self.assertOk(self.call([self.python, script, "/rule"], env=self.bare_env()))
        self.assertOk(self.call([self.python, plain, "/norule"], env=self.bare_env()))
        self.assertSaw((TOR, "/rule"), (DIRECT, "/norule"))

    def test_a_rule_routed_program_resolves_names_through_the_overlay(self):
        self.start_dns()
        url = f"http://example.test:{self.port}/named"
        self.assertOk(self.call([f"{self.bin}/curl-tor", "-sSf", url], env=self.bare_env()))
        self.assertReachedThroughProxy(self.record, "example.test", path="/named")
        self.assertMicrosocksConnected(self.tor_log, f"example.test:{self.port}")
        self.assertEqual(self.dns_queries("example.test"), [])

    def test_a_rules_network_is_inherited_by_the_programs_children(self):
        # Without via run: the shim is preloaded, sh-tor's rule sends it and its children to
        # app:tor (as every git and its helpers would go through tor).
        proc = self.call([f"{self.bin}/sh-tor", "-c", f"curl -sSf {self.url}/child"],
                        env=self.bare_env())
        self.assertOk(proc)
        self.assertSaw((TOR, "/child"))

    def test_a_rule_routed_program_keeps_the_shim_in_children(self):
        # No via run, no VIA_NETWORK: the rule routes python; once the broker has said so, exec
        # puts a dropped LD_PRELOAD back, and the child inherits the rule's network.
        script = os.path.join(self.scripts, "spawn.py")
        with open(script, "w") as f:
            f.write("import os, subprocess, sys, urllib.request as u\n"
                    f"u.urlopen('{self.url}/parent').read()\n"
                    "env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}\n"
                    f"sys.exit(subprocess.call(['curl', '-sSf', '{self.url}/child'], env=env))\n")
        self.assertOk(self.call([self.python, script], env=self.bare_env()))
        self.assertSaw((TOR, "/parent"), (TOR, "/child"))

    def test_a_background_job_outliving_via_run_keeps_its_session(self):
        # via run exits at once; the job is re-parented to it first, so it carries the session on.
        cmd = f"(sleep 1; curl -sSf {self.url}/late) >/dev/null 2>&1 & exit 0"
        self.assertOk(self.run_via("app:tor", "sh", "-c", cmd))
        self.assertTrue(harness.wait_for(lambda: self.seen(), timeout=10))
        self.assertSaw((TOR, "/late"))
        self.assertIn("carried on by 1 process(es)", "\n".join(self.broker_log()))

    def test_inherited_session_beats_default_network(self):
        self.configure(service={"default_network": "app:other"})
        self.assertOk(self.run_via("app:tor", "sh", "-c", f"curl -sSf {self.url}/inherited"))
        self.assertSaw((TOR, "/inherited"))

    def test_default_network_applies_when_nothing_else_does(self):
        self.configure(service={"default_network": "app:other"})
        self.assertOk(self.call(["curl", "-sSf", self.url + "/default"], env=self.bare_env()))
        self.assertSaw((OTHER, "/default"))

    def test_direct_when_nothing_selects_a_network(self):
        self.assertOk(self.call(["curl", "-sSf", self.url + "/none"], env=self.bare_env()))
        self.assertSaw((DIRECT, "/none"))
        self.assertEqual(harness.microsocks_destinations(self.tor_log), [])

    def test_preloaded_without_any_configuration_is_direct(self):
        if os.path.exists("/etc/via"):
            self.skipTest("/etc/via exists on this machine: a configuration would be found")
        empty = os.path.join(self.dir, "empty")
        os.mkdir(empty)
        env = dict(self.env, LD_PRELOAD=harness.SHIM)
        proc = subprocess.run(["curl", "-sSf", self.url + "/noconfig"], env=env, cwd=empty,
                              capture_output=True, text=True, timeout=60)
        self.assertOk(proc)
        self.assertSaw((DIRECT, "/noconfig"))

    def test_the_session_is_found_by_the_process_tree_not_the_environment(self):
        # VIA_NETWORK and VIA_SESSION emptied (exec restores only missing ones): the broker still
        # knows the session from curl's ancestry.
        cmd = f"VIA_NETWORK= VIA_SESSION= curl -sSf {self.url}/tree"
        self.assertOk(self.run_via("app:tor", "sh", "-c", cmd))
        self.assertSaw((TOR, "/tree"))


class Policy(PolicyCase):
    """security.policy network.select: explicit selections are checked, inherited ones not."""

    def test_inherited_selection_is_not_rechecked(self):
        cmd = f"{self.untrusted}/curl -sSf {self.url}/inherited"
        self.assertOk(self.run_via("app:tor", f"{self.untrusted}/sh", "-c", cmd))
        self.assertSaw((TOR, "/inherited"))

    def test_a_trusted_caller_may_select_for_an_untrusted_program(self):
        # The selection is the caller's (via run from this trusted shell), as in the seed.
        proc = self.via("run", "--direct", "--", f"{self.untrusted}/curl", "-sSf",
                        self.url + "/chosen")
        self.assertOk(proc)
        self.assertSaw((DIRECT, "/chosen"))

    def test_via_run_inside_an_untrusted_program_is_denied_naming_the_policy(self):
        marker = os.path.join(self.dir, "ran")
        inner = f"{harness.VIA} run -c {self.config} --direct -- touch {marker}"
        proc = self.run_via("app:tor", f"{self.untrusted}/sh", "-c", inner)
        self.assertFailed(proc, codes=[1])
        self.assertIn("network.select of direct is denied by security.policy app:deny_network",
                      proc.stderr)
        self.assertIn("for group untrusted (untrusted: rule app:untrusted", proc.stderr)
        self.assertIn("(nothing was run)", proc.stderr)
        self.assertFalse(os.path.exists(marker))
        self.assertDeniedInLog()

    def test_via_run_network_inside_an_untrusted_program_is_denied_too(self):
        inner = f"{harness.VIA} run -c {self.config} --network app:other -- curl -sS {self.url}/x"
        proc = self.run_via("app:tor", f"{self.untrusted}/sh", "-c", inner)
        self.assertFailed(proc, codes=[1])
        self.assertIn("network.select of app:other is denied by security.policy "
                      "app:deny_network", proc.stderr)
        self.assertTargetSawNothing(self.record)

    def test_allow_for_one_overlay_beats_the_wildcard_deny(self):
        self.configure(extra=[["name: tor_ok", "kind: security.policy",
                               "policy: {actions: network.select, resources: app:other, "
                               "effect: allow}", "groups: [untrusted]"]])
        cmd = (f"VIA_NETWORK=app:other curl -sSf {self.url}/allowed; "
               f"VIA_NETWORK=direct curl -sS {self.url}/denied; exit 0")
        proc = self.run_via("app:tor", f"{self.untrusted}/sh", "-c", cmd)
        self.assertOk(proc)
        self.assertSaw((OTHER, "/allowed"))
        self.assertDeniedInLog()

    def test_a_policy_without_groups_applies_to_everyone(self):
        self.configure(extra=[["name: nobody_direct", "kind: security.policy",
                               "policy: {actions: network.select, resources: direct, "
                               "effect: deny}"]])
        proc = self.via("run", "--direct", "--", "curl", "-sS", self.url + "/x")
        self.assertFailed(proc, codes=[1])
        self.assertIn("denied by security.policy app:nobody_direct", proc.stderr)
        self.assertIn("(it applies to every process)", proc.stderr)
        self.assertTargetSawNothing(self.record)
        # Overlays are still free to choose.
        self.assertOk(self.run_via("app:other", "curl", "-sSf", self.url + "/o"))
        self.assertSaw((OTHER, "/o"))

    def test_trusted_programs_may_select_explicitly(self):
        cmd = f"VIA_NETWORK=direct curl -sSf {self.url}/trusted"
        self.assertOk(self.run_via("app:tor", "sh", "-c", cmd))
        self.assertSaw((DIRECT, "/trusted"))


class Escape(PolicyCase):
    """An untrusted program under app:tor tries to reach the target directly: each fails closed
    (EACCES on its connects, a broker log line naming the policy entry)."""

    def escape(self, inner, path="/escape"):
        """Runs `inner` (a shell command) from the untrusted shell under app:tor."""
        proc = self.run_via("app:tor", f"{self.untrusted}/sh", "-c", inner)
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.other_log), [])
        return proc

    def test_editing_via_network_to_direct(self):
        code = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', %d))\n"
                "    print('connected')\nexcept OSError as e:\n    print('errno', e.errno)\n"
                % self.port)
        proc = self.escape(f"VIA_NETWORK=direct {self.python} -c \"{code}\"")
        self.assertEqual(proc.stdout.strip(), "errno 13", proc.stderr)  # EACCES
        self.assertIn("app:deny_network", proc.stderr)
        self.assertDeniedInLog()

    def test_editing_via_network_with_curl(self):
        proc = self.escape(f"VIA_NETWORK=direct curl -sS {self.url}/escape")
        self.assertEqual(proc.returncode, 7, proc.stderr)  # couldn't connect
        self.assertDeniedInLog()

    def test_editing_via_network_to_another_overlay(self):
        self.escape(f"VIA_NETWORK=app:other curl -sS {self.url}/escape")
        self.assertDeniedInLog("network.select of app:other is denied by security.policy "
                               "app:deny_network")

    def test_emptying_via_network_and_via_session_keeps_the_session(self):
        proc = self.run_via("app:tor", f"{self.untrusted}/sh", "-c",
                            f"VIA_NETWORK= VIA_SESSION= curl -sSf {self.url}/kept")
        self.assertOk(proc)
        self.assertSaw((TOR, "/kept"))  # still through the proxy, never direct

    def test_a_made_up_session_token(self):
        proc = self.escape(f"VIA_NETWORK=direct VIA_SESSION={'0' * 32} curl -sS {self.url}/e; "
                           f"VIA_NETWORK= VIA_SESSION={'0' * 32} curl -sS {self.url}/e")
        self.assertIn("names no open session", proc.stderr)

    def test_a_stolen_session_token_of_another_process_tree(self):
        # A trusted --direct session elsewhere; the untrusted program reads its token (same uid:
        # /proc/PID/environ) and presents it.
        token_file = os.path.join(self.dir, "token")
        other = subprocess.Popen(
            [harness.VIA, "run", "-c", self.config, "--direct", "--", "sh", "-c",
             f'echo "$VIA_SESSION" > {token_file}.tmp && mv {token_file}.tmp {token_file} '
             "&& exec sleep 30"], env=self.env)
        self.addCleanup(other.kill)
        self.assertTrue(harness.wait_for(lambda: os.path.exists(token_file)))
        with open(token_file) as f:
            token = f.read().strip()
        self.assertRegex(token, "^[0-9a-f]{32}$")
        proc = self.escape(f"VIA_SESSION={token} VIA_NETWORK=direct curl -sS {self.url}/e; "
                           f"VIA_SESSION={token} VIA_NETWORK= curl -sS {self.url}/e")
        self.assertIn("is not a descendant of it: a forged or stolen session token", proc.stderr)
        log = "\n".join(self.broker_log())
        self.assertIn("a forged or stolen session token", log)

    def test_unsetting_ld_preload_for_a_child(self):
        # exec (in env, which still has the shim) puts LD_PRELOAD back: the child is still seen.
        proc = self.escape(f"env -u LD_PRELOAD VIA_NETWORK=direct curl -sS {self.url}/e; "
                           f"LD_PRELOAD= VIA_NETWORK=direct curl -sS {self.url}/e; "
                           f"env -i PATH=/usr/bin:/bin VIA_NETWORK=direct curl -sS {self.url}/e")
        self.assertEqual(proc.stderr.count("app:deny_network"), 3, proc.stderr)

    def test_detaching_a_child_does_not_shed_the_group(self):
        # The untrusted shell starts a trusted /bin/sh that backgrounds another and exits: the
        # grandchild is re-parented to via run (a subreaper), its lineage through the untrusted
        # program is gone, and the broker refuses its explicit selection.
        rc = os.path.join(self.dir, "rc")
        inner = (f"/bin/sh -c '/bin/sh -c \"sleep 0.3; VIA_NETWORK=direct curl -sS {self.url}/e;"
                 f" echo \\$? > {rc}\" &'; sleep 3")
        self.escape(inner)
        self.assertTrue(harness.wait_for(lambda: os.path.exists(rc), timeout=5))
        with open(rc) as f:
            self.assertEqual(f.read().strip(), "7")
        self.assertIn("(its own parent exited), so its lineage is unknown",
                      "\n".join(self.broker_log()))


    def test_outliving_via_run_does_not_shed_the_group(self):
        # As above, but the detached job lives on after via run has exited.
        rc = os.path.join(self.dir, "rc")
        inner = (f"/bin/sh -c '(sleep 1; VIA_NETWORK=direct VIA_SESSION= curl -sS {self.url}/e;"
                 f" echo $? > {rc}) >/dev/null 2>&1 &'")
        proc = self.run_via("app:tor", f"{self.untrusted}/sh", "-c", inner)
        self.assertOk(proc)
        self.assertTrue(harness.wait_for(lambda: os.path.exists(rc), timeout=10))
        time.sleep(0.1)
        with open(rc) as f:
            self.assertEqual(f.read().strip(), "7")
        self.assertTargetSawNothing(self.record)
        self.assertIn("outlived the via run of its session", "\n".join(self.broker_log()))


class KeptGroups(PolicyCase):
    """Groups are a property of the process from the moment a rule matched it: an untrusted
    program that execs something else in place (same pid), or writes over its own argv, keeps
    its group, and so do its children. Each case ends with a child that selects a network
    itself: refused (EACCES, the broker log names the policy entry and the rule that matched
    the program as it was), and the target saw nothing direct."""

    RECORDED = "recorded for pid "

    def assertRefusedAndUnseen(self, rc_file, what="direct"):
        self.assertTrue(harness.wait_for(lambda: harness.read_lines(rc_file), timeout=20))
        self.assertEqual(harness.read_lines(rc_file)[0], "7")  # curl: couldn't connect
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.other_log), [])
        log = "\n".join(self.broker_log())
        self.assertIn(f"network.select of {what} is denied by security.policy app:deny_network",
                      log)
        self.assertIn(self.RECORDED, log)
        self.assertIn("rule app:untrusted", log)

    def test_the_command_of_via_run_execs_a_shell_in_place(self):
        rc = os.path.join(self.dir, "rc")
        inner = f"exec /bin/sh -c 'VIA_NETWORK=direct curl -sS {self.url}/e; echo $? > {rc}'"
        self.run_via("app:tor", f"{self.untrusted}/sh", "-c", inner)
        self.assertRefusedAndUnseen(rc)

    def test_a_grandchild_of_via_run_execs_a_shell_in_place(self):
        # Below a trusted shell: the untrusted program is not the session's command, and it
        # never asked the broker anything before its exec (its shim greets the broker first).
        rc = os.path.join(self.dir, "rc")
        inner = (f"exec /bin/sh -c 'VIA_NETWORK=direct curl -sS {self.url}/e; echo \\$? > {rc}'")
        self.run_via("app:tor", "/bin/sh", "-c",
                     f"{self.untrusted}/sh -c \"{inner}\"; true")
        self.assertRefusedAndUnseen(rc)

    def test_preloaded_without_via_run_execs_a_shell_in_place(self):
        # No session and no VIA_SOCKET: the shim finds the broker's marker in the runtime
        # directory. (The broker runs already: one that is not running cannot record.)
        self.assertOk(self.via("broker", "--ensure"))
        rc = os.path.join(self.dir, "rc")
        inner = (f"exec /bin/sh -c 'VIA_NETWORK=app:other curl -sS {self.url}/e; "
                 f"echo $? > {rc}'")
        self.call([f"{self.untrusted}/sh", "-c", inner], env=self.bare_env())
        self.assertRefusedAndUnseen(rc, what="app:other")

    def test_a_program_that_writes_over_its_argv(self):
        # A rule matching argv gives the group; the program asks the broker (a name lookup),
        # then overwrites the argument the rule matched and runs a command.
        if shutil.which("cc") is None:
            self.skipTest("no C compiler to build the test program")
        src, exe = os.path.join(self.dir, "argv.c"), os.path.join(self.dir, "argvprog")
        with open(src, "w") as f:
            f.write("#include <netdb.h>\n#include <stdlib.h>\n#include <string.h>\n"
                    "int main(int argc, char** argv) {\n"
                    "  struct addrinfo* ai = 0;\n"
                    "  if (argc < 3 || getaddrinfo(\"example.test\", \"80\", 0, &ai) != 0) "
                    "return 2;\n"
                    "  memset(argv[1], 'x', strlen(argv[1]));\n"
                    "  return system(argv[2]) == 0 ? 0 : 1;\n}\n")
        built = subprocess.run(["cc", "-O1", "-o", exe, src], capture_output=True, text=True)
        self.assertEqual(built.returncode, 0, built.stderr)
        self.configure(extra=[["name: argv_untrusted", "kind: via.program",
                               f'match: {{exe: "{exe}", argv: ["*", "untrusted-mode"]}}',
                               "groups: [untrusted]"]])
        rc = os.path.join(self.dir, "rc")
        cmd = (f"tr '\\\\0' ' ' < /proc/\\$PPID/cmdline > {rc}.cmdline; "
               f"VIA_NETWORK=direct curl -sS {self.url}/e; echo \\$? > {rc}")
        self.run_via("app:tor", "/bin/sh", "-c", f"{exe} untrusted-mode \"{cmd}\"; true")
        self.assertNotIn("untrusted-mode", harness.read_text(rc + ".cmdline"))
        self.assertTrue(harness.wait_for(lambda: harness.read_lines(rc), timeout=20))
        self.assertEqual(harness.read_lines(rc)[0], "7")
        self.assertTargetSawNothing(self.record)
        log = "\n".join(self.broker_log())
        self.assertIn("network.select of direct is denied by security.policy app:deny_network",
                      log)
        self.assertIn("rule app:argv_untrusted", log)


class Check(PolicyCase):
    """`via check -- CMD` explains the overlay and groups CMD would get."""

    def test_explains_a_program_rule(self):
        proc = self.via("check", "--", f"{self.bin}/curl-tor", "http://x/")
        self.assertOk(proc)
        self.assertIn("network: app:tor\n  because: program rule app:curl_tor", proc.stdout)
        self.assertIn("groups: none", proc.stdout)

    def test_explains_groups_and_what_the_policy_allows(self):
        proc = self.via("check", "--", f"{self.untrusted}/curl", "http://x/")
        self.assertOk(proc)
        self.assertIn("groups: untrusted\n  untrusted: rule app:untrusted", proc.stdout)
        self.assertRegex(proc.stdout, r"direct\s+denied by security.policy app:deny_network")
        self.assertIn("network: direct\n  because: nothing selected a network", proc.stdout)

    def test_explains_an_argv_rule_and_a_script(self):
        script = os.path.join(self.scripts, "x.py")
        with open(script, "w") as f:
            f.write(f"#!{self.python}\nprint(1)\n")
        os.chmod(script, 0o755)
        proc = self.via("check", "--", script)
        self.assertOk(proc)
        self.assertIn(f"executable: {self.python}", proc.stdout)
        self.assertIn("program rule app:py_tor", proc.stdout)

    def test_explicit_selection_from_a_trusted_shell_is_explained_as_allowed(self):
        proc = self.via("check", "--network", "app:other", "--", f"{self.untrusted}/curl")
        self.assertOk(proc)
        self.assertIn("network: app:other\n  because: explicit selection", proc.stdout)

    def test_explicit_selection_from_an_untrusted_program_is_explained_as_denied(self):
        proc = self.call([f"{self.untrusted}/sh", "-c",
                         f"{harness.VIA} check -c {self.config} --direct -- curl"])
        self.assertFailed(proc, codes=[1])
        self.assertIn("network: DENIED", proc.stdout)
        self.assertIn("security.policy app:deny_network", proc.stdout)


    def test_a_command_that_cannot_run_is_reported_before_anything_starts(self):
        proc = self.via("run", "--", "no-such-command-here")
        self.assertEqual(proc.returncode, 127, proc.stderr)
        self.assertEqual(proc.stderr, "via: cannot run no-such-command-here: command not found "
                                      "in PATH\n")
        self.assertEqual(self.broker_pids(), [])  # no broker was started for it


class Reload(PolicyCase):
    """SIGHUP / via reload while a connection is open: it is not cut; new connects follow the
    new config; a broken config is rejected and the old one keeps running."""

    HOLD = """
import os, socket, sys, time
port, ready, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
held = socket.create_connection(('127.0.0.1', port))
open(ready, 'w').close()
while not os.path.exists(go):
    time.sleep(0.05)
held.sendall(b'GET /held HTTP/1.0\\r\\nHost: t\\r\\n\\r\\n')
print(held.recv(100).split(b' ')[1].decode(), flush=True)
new = socket.create_connection(('127.0.0.1', port))
new.sendall(b'GET /new HTTP/1.0\\r\\nHost: t\\r\\n\\r\\n')
print(new.recv(100).split(b' ')[1].decode(), flush=True)
"""

    def start_holder(self):
        self.ready = os.path.join(self.dir, "ready")
        self.go = os.path.join(self.dir, "go")
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                              "--", self.python, "-c", self.HOLD, str(self.port), self.ready,
                              self.go], env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(p.kill)
        self.assertTrue(harness.wait_for(lambda: os.path.exists(self.ready), timeout=15))
        return p

    def finish_holder(self, p):
        open(self.go, "w").close()
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(out.split(), ["200", "200"], err)

    def test_good_reload_keeps_the_open_connection_and_applies_to_new_ones(self):
        p = self.start_holder()
        status = self.via("status")
        self.assertOk(status)
        self.assertRegex(status.stdout, r"program pid \d+ \S*python\S* network app:tor "
                                        r"\(explicit: selected for this command by via run")
        # app:tor now points at the other proxy.
        self.configure(tor_port=self.other_port)
        proc = self.call([harness.VIA, "reload", "-c", self.config])
        self.assertOk(proc)
        self.assertIn("reloaded its configuration", proc.stdout)
        self.finish_holder(p)
        self.assertSaw((TOR, "/held"), (OTHER, "/new"))
        self.assertIn("reloaded", "\n".join(self.broker_log()))

    def test_sighup_reloads(self):
        p = self.start_holder()
        self.configure(tor_port=self.other_port)
        pids = self.broker_pids()
        self.assertEqual(len(pids), 1)
        os.kill(pids[0], signal.SIGHUP)
        self.assertTrue(harness.wait_for(
            lambda: "reloaded" in "\n".join(self.broker_log()), timeout=10))
        self.finish_holder(p)
        self.assertSaw((TOR, "/held"), (OTHER, "/new"))

    def test_broken_config_is_rejected_and_the_old_one_keeps_running(self):
        p = self.start_holder()
        self.configure(tor_port=self.other_port,
                       extra=[["name: broken", "kind: via.program", "match: {exe: bin/x}",
                               "network: app:tor"]])
        proc = self.call([harness.VIA, "reload", "-c", self.config])
        self.assertFailed(proc, codes=[1])
        self.assertIn("reload rejected", proc.stderr)
        self.assertIn("match.exe: \"bin/x\" is relative", proc.stderr)
        self.assertIn("via.yaml:", proc.stderr)
        self.finish_holder(p)
        self.assertSaw((TOR, "/held"), (TOR, "/new"))  # the old config still applies
        self.assertIn("reload (requested by", "\n".join(self.broker_log()))
        self.assertIn("rejected, still running the previous configuration",
                      "\n".join(self.broker_log()))

    def test_a_policy_added_by_reload_applies_to_running_programs(self):
        # A trusted program that may select direct now; after a reload that puts it in the
        # untrusted group, its next explicit selection is refused.
        script = (f"import os, socket, time, sys\n"
                  f"def get(p):\n"
                  f"    try:\n"
                  f"        s = socket.create_connection(('127.0.0.1', {self.port}))\n"
                  f"        s.sendall(b'GET ' + p + b' HTTP/1.0\\r\\n\\r\\n'); s.recv(100)\n"
                  f"        print('ok', flush=True)\n"
                  f"    except OSError as e:\n"
                  f"        print('errno', e.errno, flush=True)\n"
                  f"get(b'/before')\n"
                  f"open('{self.dir}/ready', 'w').close()\n"
                  f"while not os.path.exists('{self.dir}/go'): time.sleep(0.05)\n"
                  f"get(b'/after')\n")
        p = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor", "--",
                              "sh", "-c", f'VIA_NETWORK=direct exec "$0" -c "$1"', self.python,
                              script], env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(p.kill)
        self.assertTrue(harness.wait_for(lambda: os.path.exists(f"{self.dir}/ready"), 15))
        self.configure(extra=[["name: py_untrusted", "kind: via.program",
                               f'match: {{exe: "{self.python}"}}', "groups: [untrusted]"]])
        self.assertOk(self.call([harness.VIA, "reload", "-c", self.config]))
        open(f"{self.dir}/go", "w").close()
        out, err = p.communicate(timeout=30)
        self.assertEqual(out.split("\n")[:2], ["ok", "errno 13"], err)
        self.assertSaw((DIRECT, "/before"))
        self.assertDeniedInLog()

    def test_via_run_reloads_a_broker_whose_config_changed(self):
        self.assertOk(self.run_via("app:tor", "curl", "-sSf", self.url + "/one"))
        self.configure(tor_port=self.other_port)
        self.assertOk(self.run_via("app:tor", "curl", "-sSf", self.url + "/two"))
        self.assertSaw((TOR, "/one"), (OTHER, "/two"))
        self.assertEqual(len(self.broker_pids()), 1)  # the same broker, reloaded


if __name__ == "__main__":
    harness.main()
