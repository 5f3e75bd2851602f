"""Test harness for via's integration tests: real servers on loopback, real client programs.

Every test module calls `harness.main()`. As root, the module re-executes itself inside fresh
network and mount namespaces (`unshare --net --mount`): there it brings up `lo`, points
/etc/resolv.conf at a query-logging dnsmasq on 127.0.0.1:53 and gives the client an /etc/hosts
without the test names. Proxies run in a further mount namespace whose /etc/hosts maps the test
names to 127.0.0.1, so only the proxy can resolve them, from its own file: any DNS query for a
test name in dnsmasq's log came from the client. Nothing leaves the namespace.

Outside a namespace (not root, or unshare refused) tests that need one skip with the reason;
the others still run, with every server bound to 127.0.0.0/8.

Environment: VIA_BIN, VIA_SHIM, VIA_BUILD_DIR (set by ctest); VIA_TEST_KEEP=1 keeps each
test's temporary directory (logs, records, configs) and prints its path.
"""
import atexit
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("VIA_BUILD_DIR", os.path.join(ROOT, "build"))
GO = shutil.which("go") or "/usr/local/go/bin/go"
VIA = os.environ.get("VIA_BIN", os.path.join(BUILD, "via"))
SHIM = os.environ.get("VIA_SHIM", os.path.join(BUILD, "libvia.so"))
PYTHON = sys.executable
DATA = os.path.join(HERE, "data")

# Names only the proxies can resolve (from their own hosts file).
TEST_NAMES = ["example.test", "target.test", "git.test", "other.test", "demo.test"]
# The client's own hosts file: these are answered locally, even under an overlay.
CLIENT_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.0.1 hosts-only.test\n"
# The proxies' outgoing addresses: the target tells proxied requests (127.0.0.2/.3) from
# direct ones (127.0.0.1) by the peer address alone.
PROXY_OUT = "127.0.0.2"
DIRECT_PEER = "127.0.0.1"

NS_REASON = None  # why namespaces are unavailable (tests that need them skip)
IN_NAMESPACE = False
_CLEAN_VARS = ("LD_PRELOAD", "VIA_SOCKET", "VIA_SESSION", "VIA_NETWORK", "VIA_CONFIG",
               "VIA_QUIET")


def main():
    """Runs the calling module's tests inside private namespaces when possible.

    Exit status: 0 all passed (some may have skipped), 1 a failure, 77 every test skipped
    (ctest's SKIP_RETURN_CODE)."""
    global NS_REASON, IN_NAMESPACE
    if os.environ.get("VIA_TEST_IN_NS") != "1":
        if os.geteuid() != 0:
            NS_REASON = "needs root for network/mount namespaces (run the tests as root)"
        elif shutil.which("unshare") is None:
            NS_REASON = "unshare (util-linux) is not installed"
        elif shutil.which("ip") is None:
            NS_REASON = "ip (iproute2) is not installed"
        else:
            probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
            if probe.returncode == 0:
                env = dict(os.environ, VIA_TEST_IN_NS="1")
                sys.stdout.flush()
                os.execvpe("unshare", ["unshare", "--net", "--mount", "--", PYTHON] + sys.argv,
                           env)
            NS_REASON = ("unshare --net --mount failed: " +
                         probe.stderr.decode(errors="replace").strip())
    else:
        try:
            _setup_namespace()
            IN_NAMESPACE = True
        except (OSError, subprocess.CalledProcessError) as e:
            NS_REASON = f"setting up the test namespace failed: {e}"
    if NS_REASON:
        print(f"note: {NS_REASON}; tests needing namespaces will be SKIPPED", file=sys.stderr)
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    result = prog.result
    if not result.wasSuccessful():
        sys.exit(1)
    if result.testsRun > 0 and len(result.skipped) == result.testsRun:
        sys.exit(77)  # ctest: SKIPPED
    sys.exit(0)


def _setup_namespace():
    ns_dir = tempfile.mkdtemp(prefix="via-ns-")
    # The bind mounts keep the files' inodes; the directory itself can go at exit.
    atexit.register(shutil.rmtree, ns_dir, True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Make our mounts private so that nothing leaks back to the parent namespace.
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    resolv = os.path.join(ns_dir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    hosts = os.path.join(ns_dir, "hosts")
    with open(hosts, "w") as f:
        f.write(CLIENT_HOSTS)
    for src, dst in ((resolv, "/etc/resolv.conf"), (hosts, "/etc/hosts")):
        if not os.path.exists(dst):
            raise OSError(f"{dst} does not exist (nothing to bind-mount over)")
        subprocess.run(["mount", "--bind", src, dst], check=True)


# ---- small helpers ---------------------------------------------------------------------------
def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (bind to 0 and let the kernel choose)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def closed_port():
    """A loopback port with no listener (connects to it are refused)."""
    return free_port()


def wait_port(port, host="127.0.0.1", timeout=10.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on "
                               f"{host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_for(predicate, timeout=10.0, interval=0.05):
    """Polls `predicate` until it returns a true value (returned) or `timeout` passes (None)."""
    deadline = time.time() + timeout
    while True:
        v = predicate()
        if v or time.time() >= deadline:
            return v
        time.sleep(interval)


def alive(pid):
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except (FileNotFoundError, TypeError):
        return []


def read_text(path):
    return "\n".join(read_lines(path))


# ---- what the servers logged -------------------------------------------------------------------
def microsocks_destinations(log):
    """`host:port` of every CONNECT microsocks made ("client[N] 127.0.0.1: connected to X")."""
    return re.findall(r"connected to (\S+)", read_text(log))


def danted_requests(log):
    """(ATYP, "host.port") of every CONNECT request danted received, from its debug log line
    "dorequest(): command 1 request received ... Packet: VER: 5 CMD: 1 FLAG: 0 ATYP: 3
    address: example.test.8080". ATYP 3 means the name itself reached the proxy."""
    return [(int(a), d) for a, d in
            re.findall(r"dorequest\(\): command 1 request received .*?ATYP: (\d) address: (\S+)",
                       read_text(log))]


def danted_users(log):
    """The username of every connection danted passed ("tcp/connect [: username%U@...")."""
    return re.findall(r"tcp/connect \[: (?:pam\.)?username%([^@\s]+)@", read_text(log))


def dns_query(name, port=53, qtype=1, timeout=2.0):
    """Sends one DNS query to 127.0.0.1 and returns the raw answer (or None)."""
    qid = os.getpid() & 0xFFFF
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        packet += bytes([len(label)]) + label.encode()
    packet += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))  # connected: "port unreachable" is reported at once
        try:
            s.send(packet)
            return s.recv(512)
        except OSError:  # timeout or refused (not listening yet)
            return None


def make_git_repo(docroot, name="repo.git", content="routed\n"):
    """A bare repository under `docroot`, prepared for git's dumb HTTP protocol."""
    src = tempfile.mkdtemp(prefix="via-git-src-")
    try:
        git = ["git", "-c", "user.name=via", "-c", "user.email=via@example.test",
               "-c", "init.defaultBranch=main"]
        subprocess.run(git + ["init", "-q", src], check=True)
        with open(os.path.join(src, "README"), "w") as f:
            f.write(content)
        subprocess.run(git + ["-C", src, "add", "README"], check=True)
        subprocess.run(git + ["-C", src, "commit", "-qm", "first"], check=True)
        bare = os.path.join(docroot, name)
        subprocess.run(["git", "clone", "-q", "--bare", src, bare], check=True)
        subprocess.run(["git", "-C", bare, "update-server-info"], check=True)
        return bare
    finally:
        shutil.rmtree(src, True)


# GETs ARGV1 with net/http and prints the body (errors to stderr, exit 1): built with cgo off,
# a static binary with Go's own resolver, which the shim cannot cover (strict mode's witness).
GO_HTTP_CLIENT = """package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	resp, err := http.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
}
"""


class ViaCase(unittest.TestCase):
    """A fixture with helpers so that each test reads like a specification.

    Each test gets its own temporary directory (`self.dir`), XDG_RUNTIME_DIR (a fresh 0700
    directory, so brokers of different tests never meet) and HOME; every server it starts and
    every broker of its configs is stopped at cleanup."""

    needs_namespace = True     # skip unless running in the private namespaces
    needs_via = True           # skip when the via binaries were not built

    def setUp(self):
        if self.needs_namespace and NS_REASON:
            self.skipTest(NS_REASON)
        if self.needs_via:
            for path in (VIA, SHIM):
                if not os.path.exists(path):
                    self.skipTest(f"{path} does not exist (build via first)")
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        self.dir = tempfile.mkdtemp(prefix="via-test-")
        if os.environ.get("VIA_TEST_KEEP") == "1":
            print(f"\n[{self.id()}] keeping {self.dir}", file=sys.stderr)
        else:
            self.addCleanup(shutil.rmtree, self.dir, True)
        self.runtime = os.path.join(self.dir, "run")
        os.mkdir(self.runtime, 0o700)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=self.runtime, HOME=self.dir)
        for k in _CLEAN_VARS:
            self.env.pop(k, None)
        self.config = None
        self.dns_log = None
        # Runs last (cleanups are LIFO): no broker of this test may outlive it.
        self.addCleanup(self._kill_leftover_brokers)

    def static_gai_client(self):
        """data/gai_client.c linked statically (a program the shim cannot cover: strict mode's
        witness), in this test's directory; skips the test when it cannot be built."""
        if shutil.which("cc") is None:
            self.skipTest("no C compiler")
        exe = os.path.join(self.dir, "gai-static")
        built = subprocess.run(["cc", "-static", "-O1", "-o", exe,
                                os.path.join(HERE, "data", "gai_client.c")],
                               capture_output=True, text=True)
        if built.returncode != 0:
            self.skipTest("cannot link statically (libc.a missing?): " + built.stderr[-200:])
        return exe

    def require_namespace(self):
        """Skips the test unless it runs inside the test namespaces (names only the proxy
        knows, a private port 53)."""
        if not IN_NAMESPACE:
            self.skipTest(NS_REASON or "needs the test namespace")

    def go_strict_and_default(self, exe, network, strict_url, default_url, as_viatest=False,
                              timeout=120):
        """Runs the Go program `exe` under `via run --strict` on `strict_url`, then from the
        default mode on `default_url` (a session's `sh -c` exec of it runs strictly, under
        unrouted_exec: strict, and says so: checked). As viatest with `as_viatest`. Returns
        both CompletedProcesses, for the caller to check what the far side saw."""
        via = self.via_as_viatest if as_viatest else self.via
        strict = via("run", "--strict", "--network", network, "--", exe, strict_url,
                     timeout=timeout)
        default = via("run", "--network", network, "--", "sh", "-c", f"{exe} {default_url}",
                      timeout=timeout)
        self.assertIn(f"runs in strict mode under {network}", default.stderr)
        return strict, default

    def nbconnect(self):
        """data/nbconnect.c (non-blocking connects, test_nonblocking_connect.py), built with cc
        into this test's directory; skips the test when it cannot be built."""
        exe = os.path.join(self.dir, "nbconnect")
        built = subprocess.run(["cc", "-O1", "-o", exe, os.path.join(DATA, "nbconnect.c")],
                               capture_output=True, text=True)
        if built.returncode != 0:
            self.skipTest("cannot build data/nbconnect.c: " + built.stderr[-500:])
        return exe

    def run_nbconnect(self, network, mode, host, port, timeout=90):
        """Runs data/nbconnect.c MODE HOST PORT under via; returns (proc, {key: value} of what
        it printed)."""
        proc = self.run_via(network, self.nbconnect(), mode, host, str(port), timeout=timeout)
        return proc, dict(re.findall(r"(\w+)=(\S+)", proc.stdout))

    def go_build(self, name, source, *flags, cgo=True):
        """Builds Go `source` (package main, no modules) with `go build FLAGS` into DIR/NAME;
        cgo on (dynamically linked) unless `cgo` is false. Skips the test when Go is missing or
        the build fails."""
        if not os.access(GO, os.X_OK):
            self.skipTest("Go is not installed")
        work = os.path.join(self.dir, "go-" + name)
        os.makedirs(work)
        with open(os.path.join(work, "main.go"), "w") as f:
            f.write(source)
        out = os.path.join(self.dir, name)
        cache = os.environ.get("GOCACHE") or os.path.join(BUILD, "go-test-cache")
        env = dict(self.env, GOTOOLCHAIN="local", GOCACHE=cache, CGO_ENABLED="1" if cgo else "0",
                   GOFLAGS="", GOPATH=os.path.join(self.dir, "gopath"), GO111MODULE="off")
        built = subprocess.run([GO, "build", *flags, "-o", out, "main.go"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=600)
        if built.returncode != 0:
            self.skipTest(f"go build failed: {built.stderr[-400:]}")
        return out

    def go_http_client(self, *flags, cgo=False):
        """GO_HTTP_CLIENT built with `go build FLAGS`: static (CGO_ENABLED=0, Go's resolver)
        unless `cgo`. Skips the test as go_build does."""
        return self.go_build("goclient" + ("-cgo" if cgo else ""), GO_HTTP_CLIENT, *flags,
                             cgo=cgo)

    def viatest_env(self):
        """The environment for running via as the user viatest: a runtime directory and a
        state directory of its own. Skips the test when there is no viatest user."""
        if subprocess.run(["id", "viatest"], capture_output=True).returncode != 0:
            self.skipTest("no viatest user (scripts/install-deps.sh creates it)")
        runtime = os.path.join(self.dir, "run-viatest")
        if not os.path.isdir(runtime):
            os.mkdir(runtime, 0o700)
            shutil.chown(runtime, user="viatest", group="viatest")
        state = os.path.join(self.dir, "state")
        os.makedirs(state, exist_ok=True)
        shutil.chown(state, user="viatest", group="viatest")
        return dict(self.env, XDG_RUNTIME_DIR=runtime, HOME=runtime)

    AS_VIATEST = ["setpriv", "--reuid=viatest", "--regid=viatest", "--clear-groups"]

    def via_as_viatest(self, *args, timeout=60):
        """`via ARGS` (-c CONFIG as in via()) as the unprivileged user viatest, with a broker of
        its own, stopped afterwards. The test's directory, config and files must be readable by
        that user (this makes the directory and config so)."""
        env = self.viatest_env()
        os.chmod(self.dir, 0o755)
        if self.config:
            os.chmod(self.config, 0o644)
        argv = self.AS_VIATEST + [VIA, args[0]] + (["-c", self.config] if self.config else [])
        try:
            return subprocess.run(argv + list(args[1:]), env=env, capture_output=True,
                                  text=True, timeout=timeout)
        finally:
            subprocess.run(self.AS_VIATEST + [VIA, "stop"] +
                           (["-c", self.config] if self.config else []), env=env,
                           capture_output=True, timeout=20)

    # ---- servers ---------------------------------------------------------------------------
    def spawn(self, argv, log_name, env=None, proxy_hosts=False):
        """Starts a server; its stdout/stderr go to a log file; stopped at cleanup.

        proxy_hosts: run it in its own mount namespace whose /etc/hosts maps the test names to
        127.0.0.1 (only inside the test namespace; elsewhere the names are unknown to it)."""
        log = os.path.join(self.dir, log_name)
        if proxy_hosts and IN_NAMESPACE:
            hosts = os.path.join(self.dir, "proxy-hosts")
            with open(hosts, "w") as f:
                f.write("127.0.0.1 localhost\n")
                for n in TEST_NAMES:
                    f.write(f"127.0.0.1 {n}\n")
            argv = ["unshare", "--mount", "--", "sh", "-c",
                    'mount --bind "$0" /etc/hosts && exec "$@"', hosts] + argv
        out = open(log, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or self.env,
                             start_new_session=True)
        out.close()

        def stop():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                except ProcessLookupError:
                    pass
        self.addCleanup(stop)
        return p, log

    def start_microsocks(self, user=None, password=None, bind_out=PROXY_OUT):
        """microsocks on 127.0.0.1:<free port>; its outgoing connections come from `bind_out`.
        Returns (port, log); microsocks_destinations(log) lists what it connected to."""
        if shutil.which("microsocks") is None:
            self.skipTest("microsocks is not installed")
        port = free_port()
        argv = ["microsocks", "-i", "127.0.0.1", "-p", str(port)]
        if bind_out:
            argv += ["-b", bind_out]
        if user:
            argv += ["-u", user, "-P", password]
        p, log = self.spawn(argv, f"microsocks-{port}.log", proxy_hosts=True)
        wait_port(port, proc=p)
        return port, log

    def start_danted(self, method="username", pam_service=None, bind_out=PROXY_OUT):
        """danted (dante-server 1.4) on 127.0.0.1:<free port>, outgoing from `bind_out`.

        method "username": RFC 1929 checked against the system's users (viatest, made by
        scripts/install-deps.sh); "pam.username" with pam_service "via-test-sockd": any
        username/password is accepted (the usernames are still logged). The log is written
        at debug level 1, which records each request's ATYP and destination (danted_requests)
        and each connection's username (danted_users). Returns (port, log)."""
        if shutil.which("danted") is None:
            self.skipTest("danted (dante-server) is not installed")
        if pam_service and not os.path.exists(f"/etc/pam.d/{pam_service}"):
            self.skipTest(f"/etc/pam.d/{pam_service} missing (run scripts/install-deps.sh)")
        port = free_port()
        log = os.path.join(self.dir, f"danted-{port}.log")
        conf = os.path.join(self.dir, f"danted-{port}.conf")
        pam = f"  pam.servicename: {pam_service}\n" if pam_service else ""
        with open(conf, "w") as f:
            f.write(f"""logoutput: {log}
debug: 1
internal: 127.0.0.1 port = {port}
external: {bind_out}
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
        p, _ = self.spawn(["danted", "-f", conf, "-N", "1",
                           "-p", os.path.join(self.dir, f"danted-{port}.pid")],
                          f"danted-{port}.out", proxy_hosts=True)
        wait_port(port, proc=p)
        return port, log

    def start_target(self, docroot=None, tls=None, only_files=False):
        """The recording HTTP target (also the IP-echo server) on 127.0.0.1:<free port>.
        only_files: paths that are not files of `docroot` get 404 instead of the IP echo.
        Returns (port, record file); records(record) gives one dict per request."""
        port = free_port()
        record = os.path.join(self.dir, f"target-{port}.jsonl")
        argv = [PYTHON, os.path.join(HERE, "target_server.py"), str(port), record]
        if docroot:
            argv.append(docroot)
        if tls:
            argv += ["--tls", tls[0], tls[1]]
        if only_files:
            argv.append("--only-files")
        p, _ = self.spawn(argv, f"target-{port}.log")
        wait_port(port, proc=p)
        # wait_port's probe connection is not an HTTP request: nothing is recorded for it.
        return port, record

    def start_tcp_server(self, name, on_accept):
        """A small TCP server on 127.0.0.1:<free port>: a destination, or something that is not
        the proxy it is configured as. `on_accept` is Python code run for each accepted
        connection `c` from address `a` (`n` counts them, `held` keeps sockets open).
        Returns (port, log)."""
        port = free_port()
        body = "\n".join("    " + l for l in on_accept.strip("\n").split("\n"))
        code = ("import socket\n"
                "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('127.0.0.1', {port})); s.listen(64); n = 0; held = []\n"
                "while True:\n"
                "    c, a = s.accept(); n += 1\n"
                f"{body}\n")
        p, log = self.spawn([PYTHON, "-c", code], f"{name}-{port}.log")
        wait_port(port, proc=p)
        return port, log

    def start_udp_listener(self, host, received):
        """A UDP socket bound to (host, <free port>) whose datagrams are appended (as bytes) to
        the list `received` by a thread until cleanup. Returns the port."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.settimeout(0.2)
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    received.append(s.recvfrom(2048)[0])
                except OSError:
                    pass
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self.addCleanup(lambda: (stop.set(), t.join(), s.close()))
        return s.getsockname()[1]

    def start_hung_proxy(self):
        """A "SOCKS5 proxy" that accepts TCP connections and never answers (a hung or hostile
        server). Returns (port, log); the log has one line per accepted connection."""
        return self.start_tcp_server("hung", "held.append(c); print('accepted', a, flush=True)")

    def start_tap_relay(self, upstream_port, delay_ms=0):
        """bench/delay_relay.py on 127.0.0.1:<free port> in front of `upstream_port` (a proxy),
        each chunk `delay_ms` late. Returns (port, chunks): chunks() lists the client's first
        writes of every connection as the relay read them ({"conn", "seq", "hex", "answered":
        whether the proxy had sent anything back yet})."""
        port = free_port()
        log = os.path.join(self.dir, f"relay-{port}.jsonl")
        p, _ = self.spawn([PYTHON, os.path.join(ROOT, "bench", "delay_relay.py"), str(port),
                           str(upstream_port), "--log", log, "--delay-ms", str(delay_ms)],
                          f"relay-{port}.out")
        wait_port(port, proc=p)
        return port, lambda: [json.loads(l) for l in read_lines(log)]

    def start_dns(self):
        """dnsmasq on 127.0.0.1:53 (namespace only) logging every query; answers the test names
        with 127.0.0.1 (so a leaked lookup would even work, and show up). Returns its log."""
        self.require_namespace()  # port 53 and /etc/resolv.conf are the namespace's own
        if shutil.which("dnsmasq") is None:
            self.skipTest("dnsmasq is not installed")
        log = os.path.join(self.dir, "dnsmasq.log")
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--log-queries", f"--log-facility={log}", "--listen-address=127.0.0.1",
                "--port=53", "--bind-interfaces", "--user=root", "--pid-file",
                "--address=/dns-control.invalid/127.0.0.9"]
        for n in TEST_NAMES:
            argv.append(f"--address=/{n}/127.0.0.1")
        p, _ = self.spawn(argv, "dnsmasq.out")
        self.dns_log = log
        # Prove it answers and logs before any test relies on "no query was logged".
        if not wait_for(lambda: p.poll() is not None or self._dns_barrier(1.0), timeout=10,
                        interval=0.02) or p.poll() is not None:
            raise RuntimeError("dnsmasq did not start: " + read_text(os.path.join(self.dir,
                                                                                  "dnsmasq.out")))
        return log

    _barrier_count = 0

    def _dns_barrier(self, timeout=5.0):
        """Sends a marker query and waits until dnsmasq has logged it: every query it received
        before is in the log by then."""
        ViaCase._barrier_count += 1
        marker = f"b{ViaCase._barrier_count}.dns-control.invalid"
        if dns_query(marker, timeout=timeout) is None:
            return False
        return wait_for(lambda: marker in read_text(self.dns_log), timeout=timeout)

    def dns_queries(self, name):
        """The dnsmasq log lines of queries for names containing `name` (after a barrier)."""
        self.assertTrue(self._dns_barrier(), "dnsmasq stopped answering")
        out = []
        for line in read_lines(self.dns_log):
            m = re.search(r"query\[\w+\] (\S+) from", line)
            if m and name in m.group(1) and "dns-control.invalid" not in m.group(1):
                out.append(line)
        return out

    # ---- via ---------------------------------------------------------------------------------
    def write_config(self, entries, service=None, name="via.yaml"):
        """Writes a config in the Wippy registry format and makes it `self.config`.

        entries: lists of YAML lines, one list per entry (see socks5_entry); service: extra
        network_service keys. Its broker is stopped at cleanup."""
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
        self.addCleanup(self.stop_broker, path)
        return path

    @staticmethod
    def socks5_entry(name, port, *extra):
        return [f"name: {name}", "kind: network.socks5", "host: 127.0.0.1", f"port: {port}",
                *extra]

    def via(self, *args, env=None, timeout=60, input=None, via=None):
        """Runs `via ARGS` (with -c CONFIG inserted after the command when a config exists)."""
        argv = [via or VIA, args[0]]
        if self.config and args[0] in ("run", "check", "probe", "status", "stop", "broker",
                                        "reload", "newnym"):
            argv += ["-c", self.config]
        argv += list(args[1:])
        return subprocess.run(argv, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def run_via(self, network, *cmd, timeout=60, env=None):
        """`via run -c CONFIG --network NETWORK -- CMD...`"""
        return self.via("run", "--network", network, "--", *cmd, timeout=timeout, env=env)

    def stop_broker(self, config=None):
        config = config or self.config
        if config and os.path.exists(VIA):
            subprocess.run([VIA, "stop", "-c", config], env=self.env, capture_output=True,
                           timeout=20)

    def broker_log(self):
        """All lines of this test's broker logs ($XDG_RUNTIME_DIR/via/broker-*.log)."""
        lines = []
        rundir = os.path.join(self.runtime, "via")
        for f in sorted(os.listdir(rundir)) if os.path.isdir(rundir) else []:
            if f.endswith(".log"):
                lines += read_lines(os.path.join(rundir, f))
        return lines

    def broker_pids(self):
        return [int(p) for p in re.findall(r"broker pid (\d+) listening", "\n".join(
            self.broker_log()))]

    def _kill_leftover_brokers(self):
        for pid in self.broker_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"via" not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass

    # ---- assertions ----------------------------------------------------------------------------
    def records(self, record_file):
        return [json.loads(l) for l in read_lines(record_file)]

    def assertOk(self, proc, msg=""):
        self.assertEqual(proc.returncode, 0,
                         f"{msg}\nexit {proc.returncode}\nstdout: {proc.stdout}\n"
                         f"stderr: {proc.stderr}")

    def assertFailed(self, proc, codes=None, msg=""):
        detail = f"{msg}\nexit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        self.assertNotEqual(proc.returncode, 0, detail)
        if codes:
            self.assertIn(proc.returncode, codes, detail)

    def assertReachedThroughProxy(self, record_file, host, count=1, path=None, peer=PROXY_OUT):
        """The target saw exactly `count` requests, all from the proxy's outgoing address and
        all asking for `host` (the Host header)."""
        recs = self.records(record_file)
        self.assertEqual(len(recs), count, f"target saw {recs}")
        for r in recs:
            self.assertEqual(r["peer"], peer, f"not through the proxy: {r}")
            self.assertEqual(r["host"].rsplit(":", 1)[0], host, r)
            if path:
                self.assertEqual(r["path"], path, r)

    def assertTargetSawNothing(self, record_file):
        self.assertEqual(self.records(record_file), [], "the target was reached")

    def assertMicrosocksConnected(self, log, dest):
        """microsocks was asked for `dest` ("name:port") - the name, not an address."""
        self.assertIn(dest, microsocks_destinations(log), read_text(log)[-2000:])
