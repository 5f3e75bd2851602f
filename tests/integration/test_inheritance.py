"""The overlay is inherited by every descendant and can be overridden for a subtree."""
import os

import harness


class Inheritance(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.other_port, self.other_log = self.start_microsocks(bind_out="127.0.0.3")
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port),
                           self.socks5_entry("other", self.other_port)])
        self.url = f"http://example.test:{self.port}/"

    def assertThroughTor(self, count=1):
        self.assertReachedThroughProxy(self.record, "example.test", count=count)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log),
                         [f"example.test:{self.port}"] * count)

    def test_through_sh_c(self):
        self.assertOk(self.run_via("app:tor", "sh", "-c", f"curl -sSf {self.url}"))
        self.assertThroughTor()

    def test_grandchild(self):
        self.assertOk(self.run_via("app:tor", "sh", "-c", f"sh -c 'curl -sSf {self.url}'"))
        self.assertThroughTor()

    def test_exec_after_fork(self):
        code = f"""
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp('curl', ['curl', '-sSf', '{self.url}'])
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertThroughTor()

    def test_fork_without_exec_uses_its_own_broker_connection(self):
        code = f"""
import os, sys, urllib.request
urllib.request.urlopen('{self.url}parent1').read()   # the parent's link to the broker is open
pid = os.fork()
if pid == 0:
    urllib.request.urlopen('{self.url}child').read()
    os._exit(0)
urllib.request.urlopen('{self.url}parent2').read()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))
        self.assertThroughTor(count=3)

    def test_nested_run_overrides_for_its_subtree(self):
        inner = f"{harness.VIA} run -c {self.config} --network app:other -- curl -sSf {self.url}"
        self.assertOk(self.run_via("app:tor", "sh", "-c", f"{inner} && curl -sSf {self.url}"))
        peers = [r["peer"] for r in self.records(self.record)]
        self.assertEqual(peers, ["127.0.0.3", "127.0.0.2"])  # app:other, then app:tor again

    def test_nested_direct_connects_directly(self):
        # With loopback: overlay, 127.0.0.1 goes through the proxy under app:tor (the control,
        # first), so only --direct can explain a direct connection.
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay"})
        url = f"http://127.0.0.1:{self.port}/"
        inner = f"{harness.VIA} run -c {self.config} --direct -- curl -sSf {url}direct"
        self.assertOk(self.run_via("app:tor", "sh", "-c", f"curl -sSf {url}tor && {inner}"))
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(self.record)],
                         [("127.0.0.2", "/tor"), ("127.0.0.1", "/direct")])
        self.assertEqual(harness.microsocks_destinations(self.proxy_log),
                         [f"127.0.0.1:{self.port}"])  # the control's connect only

    def test_a_name_resolved_by_the_parent_connects_from_a_child(self):
        self.start_dns()
        code = f"""
import socket, subprocess, sys
ip = socket.gethostbyname('example.test')
print(ip, flush=True)
sys.exit(subprocess.call(['curl', '-sSf', '-o', '/dev/null', 'http://%s:{self.port}/child' % ip]))
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        fake = proc.stdout.split()[0]
        self.assertTrue(fake.startswith("198.1"), fake)
        self.assertReachedThroughProxy(self.record, fake, path="/child")  # Host: the fake IP
        # ...but the proxy was asked for the name the parent resolved.
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")
        self.assertEqual(self.dns_queries("example.test"), [])

    def test_nested_run_without_network_keeps_the_parent_selection(self):
        inner = f"{harness.VIA} run -c {self.config} -- curl -sSf {self.url}"
        self.assertOk(self.run_via("app:other", "sh", "-c", inner))
        self.assertEqual([r["peer"] for r in self.records(self.record)], ["127.0.0.3"])

    def test_default_network_applies_without_selection(self):
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"default_network": "app:tor"})
        self.assertOk(self.via("run", "--", "curl", "-sSf", self.url))
        self.assertReachedThroughProxy(self.record, "example.test")

    def test_unknown_overlay_is_an_error_before_anything_runs(self):
        marker = os.path.join(self.dir, "ran")
        proc = self.run_via("app:nope", "touch", marker)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertIn('unknown overlay "app:nope"', proc.stderr)
        self.assertFalse(os.path.exists(marker))

    def test_environment_is_prepended_once(self):
        env = dict(self.env, LD_PRELOAD="/lib/x86_64-linux-gnu/libc.so.6")
        proc = self.via("run", "--network", "app:tor", "--", "sh", "-c",
                        f"{harness.VIA} run -c {self.config} -- printenv LD_PRELOAD VIA_NETWORK",
                        env=env)
        self.assertOk(proc)
        preload, network = proc.stdout.splitlines()
        self.assertEqual(preload.split(":"), [os.path.realpath(harness.SHIM),
                                              "/lib/x86_64-linux-gnu/libc.so.6"])
        self.assertEqual(network, "app:tor")


if __name__ == "__main__":
    harness.main()
