"""Test harness for via's integration tests: real servers on loopback, real client programs.

Every test module calls `harness.main()`. As root, the module re-executes itself inside fresh
network and mount namespaces (`unshare --net --mount`): there it brings up `lo`, points
/etc/resolv.conf at a query-logging dnsmasq on 127.0.0.1:53 and gives the client an /etc/hosts
without the test names. Proxies run in a further mount namespace whose /etc/hosts maps the test
names to 127.0.0.1, so only the proxy can resolve them, from its own file: any DNS query for a
test name in dnsmasq's log came from the client. Nothing leaves the namespace.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("VIA_BUILD_DIR", os.path.join(ROOT, "build"))
VIA = os.environ.get("VIA_BIN", os.path.join(BUILD, "via"))
SHIM = os.environ.get("VIA_SHIM", os.path.join(BUILD, "libvia.so"))
PYTHON = sys.executable

# Names only the proxies can resolve (from their own hosts file).
TEST_NAMES = ["example.test", "target.test", "git.test", "other.test"]
# Where the client's own hosts file answers locally.
CLIENT_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.0.1 hosts-only.test\n"

NS_REASON = None  # why namespaces are unavailable (tests that need them skip)


def main():
    """Runs the calling module's tests inside private namespaces when possible."""
    global NS_REASON
    if os.environ.get("VIA_TEST_IN_NS") != "1":
        if os.geteuid() != 0:
            NS_REASON = "needs root for network/mount namespaces (run the tests as root)"
        elif shutil.which("unshare") is None:
            NS_REASON = "unshare (util-linux) is not installed"
        else:
            env = dict(os.environ, VIA_TEST_IN_NS="1")
            probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
            if probe.returncode == 0:
                os.execvpe("unshare", ["unshare", "--net", "--mount", "--", PYTHON] + sys.argv,
                           env)
            NS_REASON = "unshare --net --mount failed: " + probe.stderr.decode().strip()
    else:
        _setup_namespace()
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    result = prog.result
    if result.testsRun > 0 and len(result.skipped) == result.testsRun:
        sys.exit(77)  # ctest: SKIPPED
    sys.exit(0 if result.wasSuccessful() else 1)


_NS_DIR = None


def _setup_namespace():
    global _NS_DIR
    _NS_DIR = tempfile.mkdtemp(prefix="via-ns-")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    resolv = os.path.join(_NS_DIR, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    hosts = os.path.join(_NS_DIR, "hosts")
    with open(hosts, "w") as f:
        f.write(CLIENT_HOSTS)
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, host="127.0.0.1", timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


class ViaCase(unittest.TestCase):
    """A fixture with helpers so that each test reads like a specification."""

    needs_namespace = True

    def setUp(self):
        if self.needs_namespace and NS_REASON:
            self.skipTest(NS_REASON)
        for tool in ("curl",):
            if shutil.which(tool) is None:
                self.skipTest(f"{tool} is not installed")
        self.dir = tempfile.mkdtemp(prefix="via-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.runtime = os.path.join(self.dir, "run")
        os.mkdir(self.runtime, 0o700)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=self.runtime, HOME=self.dir)
        for k in ("LD_PRELOAD", "VIA_SOCKET", "VIA_SESSION", "VIA_NETWORK", "VIA_CONFIG",
                  "VIA_QUIET"):
            self.env.pop(k, None)
        self.config = None
        self.dns_log = None

    # ---- servers ---------------------------------------------------------------------------
    def spawn(self, argv, log_name, env=None, proxy_hosts=False):
        """Starts a server; its stdout/stderr go to a log file; stopped at cleanup."""
        log = os.path.join(self.dir, log_name)
        if proxy_hosts:
            hosts = os.path.join(self.dir, "proxy-hosts")
            with open(hosts, "w") as f:
                f.write("127.0.0.1 localhost\n")
                for n in TEST_NAMES:
                    f.write(f"127.0.0.1 {n}\n")
            if NS_REASON is None:
                argv = ["unshare", "--mount", "--", "sh", "-c",
                        f'mount --bind "{hosts}" /etc/hosts && exec "$@"', "sh"] + argv
        out = open(log, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or self.env,
                             start_new_session=True)
        out.close()

        def stop():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.addCleanup(stop)
        return p, log

    def start_microsocks(self, user=None, password=None, bind_out="127.0.0.2"):
        """microsocks on loopback; outgoing connections come from `bind_out`."""
        if shutil.which("microsocks") is None:
            self.skipTest("microsocks is not installed")
        port = free_port()
        argv = ["microsocks", "-i", "127.0.0.1", "-p", str(port)]
        if bind_out:
            argv += ["-b", bind_out]
        if user:
            argv += ["-u", user, "-P", password]
        p, log = self.spawn(argv, f"microsocks-{port}.log", proxy_hosts=True)
        wait_port(port)
        return port, log

    def start_danted(self, method="username", pam_service=None):
        """danted on loopback with username (system user) or pam.username authentication."""
        if shutil.which("danted") is None:
            self.skipTest("danted (dante-server) is not installed")
        port = free_port()
        log = os.path.join(self.dir, f"danted-{port}.log")
        conf = os.path.join(self.dir, f"danted-{port}.conf")
        pam = f"  pam.servicename: {pam_service}\n" if pam_service else ""
        with open(conf, "w") as f:
            f.write(f"""logoutput: {log}
debug: 0
internal: 127.0.0.1 port = {port}
external: 127.0.0.2
socksmethod: {method}
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
  from: 127.0.0.0/8 to: 0.0.0.0/0
  log: error connect disconnect
}}
socks pass {{
  from: 127.0.0.0/8 to: 0.0.0.0/0
  command: connect
  log: error connect disconnect
  socksmethod: {method}
{pam}}}
""")
        self.spawn(["danted", "-f", conf, "-N", "1", "-p", os.path.join(self.dir, f"danted-{port}.pid")],
                   f"danted-{port}.out", proxy_hosts=True)
        wait_port(port)
        return port, log

    def start_target(self, docroot=None, tls=None):
        """The recording HTTP target (also the IP-echo server)."""
        port = free_port()
        record = os.path.join(self.dir, f"target-{port}.jsonl")
        argv = [PYTHON, os.path.join(HERE, "target_server.py"), str(port), record]
        if docroot:
            argv.append(docroot)
        if tls:
            argv += ["--tls", tls[0], tls[1]]
        self.spawn(argv, f"target-{port}.log")
        wait_port(port)
        return port, record

    def start_dns(self):
        """dnsmasq on 127.0.0.1:53 (namespace only) logging every query; answers test names."""
        if shutil.which("dnsmasq") is None:
            self.skipTest("dnsmasq is not installed")
        log = os.path.join(self.dir, "dnsmasq.log")
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--log-queries", f"--log-facility={log}", "--listen-address=127.0.0.1",
                "--port=53", "--bind-interfaces", "--user=root", "--pid-file"]
        for n in TEST_NAMES:
            argv.append(f"--address=/{n}/127.0.0.1")
        self.spawn(argv, "dnsmasq.out")
        deadline = time.time() + 10
        while time.time() < deadline and "started" not in "".join(read_lines(log)):
            time.sleep(0.05)
        self.dns_log = log
        return log

    def dns_queries(self, name):
        return [l for l in read_lines(self.dns_log) if "query[" in l and name in l]

    # ---- via ---------------------------------------------------------------------------------
    def write_config(self, entries, service=None, name="via.yaml"):
        """A config in the Wippy registry format; `entries` are YAML snippets (lists of lines)."""
        lines = ['version: "1.0"', "namespace: app", "entries:"]
        for e in entries:
            lines.append("  - " + e[0])
            lines += ["    " + l for l in e[1:]]
        lines.append("network_service:")
        lines.append(f"  state_dir: {self.dir}/state")
        for k, v in (service or {}).items():
            lines.append(f"  {k}: {v}")
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.config = path
        self.addCleanup(self.stop_broker)
        return path

    @staticmethod
    def socks5_entry(name, port, *extra):
        return [f"name: {name}", "kind: network.socks5", "host: 127.0.0.1", f"port: {port}",
                *extra]

    def via(self, *args, env=None, timeout=60, input=None):
        """Runs `via ARGS` (with -c CONFIG inserted after the command when a config exists)."""
        argv = [VIA, args[0]]
        if self.config and args[0] in ("run", "check", "probe", "status", "stop", "broker"):
            argv += ["-c", self.config]
        argv += list(args[1:])
        return subprocess.run(argv, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def run_via(self, network, *cmd, timeout=60, env=None):
        """`via run --network NETWORK -- CMD...`"""
        return self.via("run", "--network", network, "--", *cmd, timeout=timeout, env=env)

    def stop_broker(self):
        if self.config:
            subprocess.run([VIA, "stop", "-c", self.config], env=self.env, capture_output=True,
                           timeout=20)

    def broker_log(self):
        lines = []
        rundir = os.path.join(self.runtime, "via")
        for f in sorted(os.listdir(rundir)) if os.path.isdir(rundir) else []:
            if f.endswith(".log"):
                lines += read_lines(os.path.join(rundir, f))
        return lines

    # ---- assertions ----------------------------------------------------------------------------
    def records(self, record_file):
        return [json.loads(l) for l in read_lines(record_file)]

    def assertOk(self, proc, msg=""):
        self.assertEqual(proc.returncode, 0,
                         f"{msg}\nexit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")

    def assertReachedThroughProxy(self, record_file, host, count=1, path=None):
        recs = self.records(record_file)
        self.assertEqual(len(recs), count, f"target saw {recs}")
        for r in recs:
            self.assertEqual(r["peer"], "127.0.0.2", f"not through the proxy: {r}")
            self.assertEqual(r["host"].split(":")[0], host)
            if path:
                self.assertEqual(r["path"], path)
