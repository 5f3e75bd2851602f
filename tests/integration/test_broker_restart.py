"""A fake address keeps its name when the broker restarts (docs/architecture.md, "Names").

A program that resolved a name before the broker died holds the fake address the broker gave
it; it may connect to it after a new broker started and handed out addresses to other programs.
The address must still mean the name it was given for: never another one. The broker keeps its
name table beside its socket and the next broker loads it.

Each test runs the programs as the README's preloaded deployment does (LD_PRELOAD, the config's
default_network, no `via run`: a `via run` session does not survive its broker), kills the
broker with SIGKILL, lets the shim of another program start a new one, and then checks what the
proxy (microsocks) was asked to connect to.
"""
import os
import signal
import subprocess

import harness

# Resolves argv[1], writes the address to argv[2], waits for a line on the fifo argv[3], then
# connects to the saved address (argv[4] is the port) and makes one HTTP request.
HOLDER = ("import socket, sys\n"
          "name, out, go, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])\n"
          "addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]\n"
          "open(out, 'w').write(addr)\n"
          "open(go).read()\n"
          "s = socket.socket()\n"
          "try:\n"
          "    s.connect((addr, port))\n"
          "except OSError as e:\n"
          "    print('connect failed:', e, flush=True)\n"
          "    sys.exit(3)\n"
          "s.sendall(b'GET /held HTTP/1.0\\r\\nHost: ' + name.encode() + b'\\r\\n\\r\\n')\n"
          "print(s.recv(100).decode(errors='replace').splitlines()[0], flush=True)\n")

# Resolves each name in argv[1:] and prints name=address.
RESOLVER = ("import socket, sys\n"
            "for n in sys.argv[1:]:\n"
            "    print(n + '=' + socket.getaddrinfo(n, 80, socket.AF_INET)[0][4][0])\n")

OTHERS = ["other.test", "demo.test", "git.test", "target.test"]


class BrokerRestart(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.require_namespace()  # the proxy resolves the test names
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port)],
                          service={"default_network": "app:tor"})
        self.bare = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_CONFIG=self.config)

    def kill_broker(self):
        pids = [p for p in self.broker_pids() if harness.alive(p)]
        self.assertEqual(len(pids), 1, "\n".join(self.broker_log()))
        os.kill(pids[0], signal.SIGKILL)
        self.assertTrue(harness.wait_for(lambda: not harness.alive(pids[0])))
        return pids[0]

    def hold_then_restart(self, between=None):
        """Starts the holder on example.test, replaces the broker (SIGKILL; another program's
        shim starts the next one and resolves OTHERS there), then lets the holder connect.
        Returns (holder's address, holder's result, the other program's answers)."""
        go, out = os.path.join(self.dir, "go"), os.path.join(self.dir, "held")
        os.mkfifo(go)
        holder = subprocess.Popen([harness.PYTHON, "-c", HOLDER, "example.test", out, go,
                                   str(self.port)], env=self.bare, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: holder.poll() is None and (holder.kill(), holder.wait()))
        self.assertTrue(harness.wait_for(lambda: harness.read_lines(out), timeout=30),
                        "the holder did not resolve")
        held = harness.read_lines(out)[0]
        old = self.kill_broker()
        if between:
            between()
        others = subprocess.run([harness.PYTHON, "-c", RESOLVER, *OTHERS], env=self.bare,
                                capture_output=True, text=True, timeout=60)
        self.assertOk(others)
        new = [p for p in self.broker_pids() if harness.alive(p)]
        self.assertTrue(new and old not in new, f"no new broker: {self.broker_log()}")
        with open(go, "w") as f:
            f.write("go\n")
        stdout, stderr = holder.communicate(timeout=60)
        answers = dict(l.split("=") for l in others.stdout.split())
        return held, (holder.returncode, stdout, stderr), answers

    def test_address_held_across_a_restart_reaches_its_own_name(self):
        held, (rc, stdout, stderr), answers = self.hold_then_restart()
        # The proxy was asked for example.test, and for no other name.
        self.assertEqual(harness.microsocks_destinations(self.proxy_log),
                         [f"example.test:{self.port}"],
                         f"the holder's {held} went elsewhere; the new broker answered {answers}")
        self.assertNotIn(held, answers.values(),
                         f"the new broker gave {held} (example.test's) to another name: {answers}")
        self.assertEqual(rc, 0, f"{stdout}\n{stderr}")
        self.assertIn("200", stdout)
        self.assertReachedThroughProxy(self.record, "example.test", path="/held")
        self.assertTrue(any("name(s) kept from earlier brokers" in l and " 1 name" in l
                            for l in self.broker_log()), "\n".join(self.broker_log()))

    def test_lost_table_refuses_the_old_address_rather_than_misroute(self):
        """If the table is gone (its file removed), the new broker starts its numbers at a
        random place: the old address is then one it never handed out, and the connect fails
        with a clear error. It must never reach another name."""
        def lose_table():
            rundir = os.path.join(self.runtime, "via")
            tables = [f for f in os.listdir(rundir) if f.endswith(".names")]
            self.assertEqual(len(tables), 1, os.listdir(rundir))
            os.unlink(os.path.join(rundir, tables[0]))

        held, (rc, stdout, stderr), answers = self.hold_then_restart(between=lose_table)
        if held in answers.values():
            self.skipTest(f"the new table's random start gave {held} to another name again "
                          f"(odds about 1 in 30,000): nothing to test this time")
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [],
                         "the held address reached a name through the proxy")
        self.assertEqual(rc, 3, f"{stdout}\n{stderr}")
        self.assertIn("unknown fake address " + held, stderr + stdout +
                      "\n".join(self.broker_log()))
        self.assertTargetSawNothing(self.record)


if __name__ == "__main__":
    harness.main()
