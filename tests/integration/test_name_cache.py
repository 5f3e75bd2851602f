"""The shim's cache of name answers (shim/name_cache.cc, kTagHoldMs in docs/protocol.md).

A broker whose fake-address pool is large promises each answer for a while; the shim answers
repeat lookups of the name from its cache meanwhile, so the broker sees one RESOLVE where the
program made many. The broker's debug log has a line per RESOLVE it answered ("resolve NAME ->
ADDR"), which is what these tests count. A broker that restarts hands out addresses afresh, so
the cache must not outlive it: the last test restarts the broker inside the cache's lifetime
and checks the program then reaches the right name through the proxy.
"""
import os
import re
import subprocess
import time

import harness

# AF_UNSPEC, as urllib asks: the cache keys on name and family.
LOOKUPS = ("import socket, sys\n"
           "seen = {a[4][0] for _ in range(int(sys.argv[2])) for a in socket.getaddrinfo("
           "sys.argv[1], 80, 0, socket.SOCK_STREAM) if a[0] == socket.AF_INET}\n"
           "print(sorted(seen))\n")


class NameCache(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.env["VIA_LOG_LEVEL"] = "debug"

    def resolves(self, name):
        return [l for l in self.broker_log() if re.search(rf"resolve {re.escape(name)} -> ", l)]

    def test_repeat_lookups_ask_the_broker_once(self):
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        code = LOOKUPS + (f"import urllib.request\n"
                          f"for p in ('/a', '/b'):\n"
                          f"    urllib.request.urlopen('http://example.test:{self.port}' + p).read()\n")
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code, "example.test", "50")
        self.assertOk(proc)
        self.assertRegex(proc.stdout.strip(), r"^\['198\.1[89]\.\d+\.\d+'\]$")  # one address
        self.assertEqual(len(self.resolves("example.test")), 1, "\n".join(self.broker_log()))
        self.assertIn("hold 2000 ms", self.resolves("example.test")[0])
        self.assertReachedThroughProxy(self.record, "example.test", count=2)
        self.assertMicrosocksConnected(self.proxy_log, f"example.test:{self.port}")

    def test_small_pool_promises_nothing_and_is_asked_every_time(self):
        # 254 addresses: a second's worth of new names could cycle it, so no promise, no cache.
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"fake_ipv4": "198.18.0.0/24"})
        proc = self.run_via("app:tor", harness.PYTHON, "-c", LOOKUPS, "example.test", "5")
        self.assertOk(proc)
        lines = self.resolves("example.test")
        self.assertEqual(len(lines), 5, "\n".join(self.broker_log()))
        self.assertIn("hold 0 ms", lines[0])

    def test_restarted_broker_is_asked_again(self):
        """A cached answer is only used while the broker that promised it is alive. A restarted
        broker knows neither the name nor the session (sessions do not survive a broker), so
        the repeat lookup must reach it and be refused there, not answered from the cache."""
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"loopback": "overlay"})
        go = os.path.join(self.dir, "go")
        out = os.path.join(self.dir, "out")
        os.mkfifo(go)
        # Resolve, wait while the broker is replaced, resolve the same name again.
        code = (f"import socket, time\n"
                f"def fake():\n"
                f"    return socket.getaddrinfo('example.test', 80, socket.AF_INET)[0][4][0]\n"
                f"first = fake(); t0 = time.monotonic()\n"
                f"open('{out}.first', 'w').write(first)\n"
                f"open('{go}').read()\n"
                f"try:\n"
                f"    second = fake()\n"
                f"except socket.gaierror:\n"
                f"    second = 'refused'\n"
                f"elapsed = time.monotonic() - t0\n"
                f"open('{out}', 'w').write(f'{{first}} {{second}} {{elapsed:.3f}}')\n")
        err = open(os.path.join(self.dir, "session.err"), "w")
        run = subprocess.Popen([harness.VIA, "run", "-c", self.config, "--network", "app:tor",
                                "--", harness.PYTHON, "-c", code], env=self.env,
                               stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        self.addCleanup(lambda: run.poll() is None and (run.kill(), run.wait()))
        self.assertTrue(harness.wait_for(lambda: harness.read_lines(out + ".first"), timeout=30),
                        "the session did not get going")
        # A new broker at the same socket, whose first name is another one: the old answer
        # for example.test is now another name's address there.
        self.assertOk(self.via("stop"))
        self.assertOk(self.via("broker", "--ensure"))
        self.assertOk(self.run_via("app:tor", "getent", "hosts", "other.test"))
        with open(go, "w") as f:
            f.write("go\n")
        self.assertEqual(run.wait(timeout=30), 0)
        first, second, elapsed = harness.read_lines(out)[0].split()
        if float(elapsed) >= 1.0:
            self.skipTest(f"the broker restart took {elapsed} s, longer than the shim keeps an "
                          f"answer (1 s), so the cache was not exercised")
        self.assertEqual(second, "refused", f"the shim answered {second} from a dead broker's "
                         f"promise (first answer {first})")
        self.assertIn("names no open session",
                      harness.read_text(os.path.join(self.dir, "session.err")))
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])


if __name__ == "__main__":
    harness.main()
