#!/usr/bin/env python3
"""A private, offline Tor network on 127.0.0.0/8 for via's tests (stdlib only).

    python3 tests/tor/tor_network.py up DIR [--base PORT] [--timeout S]   # prints the network
    python3 tests/tor/tor_network.py down DIR

Eight tor processes: 3 directory authorities (127.0.0.11-13, also non-exit relays), 3 exits
(127.0.0.14-16, see "Exit policy" below), 1 client (SocksPort + ControlPort on
127.0.0.1, cookie auth) and 1 onion-service host (HiddenServicePort 80 -> 127.0.0.1:<onion
target port>). Nothing contacts the real Tor network: the DirAuthority lines replace the
built-in authorities and fallback directories, and the relays' DNS is pinned to 127.0.0.1.

`up` returns only when the network is usable, checked by polling (never fixed sleeps):
  1. the client reports bootstrap 100% (GETINFO status/bootstrap-phase);
  2. the client's consensus lists all exits with the Exit and Running flags, and the client
     holds their (full) descriptors;
  3. real streams through the client's SocksPort to a probe listener on 127.0.0.1 returned the
     probe's banner through EVERY exit (fresh SOCKS usernames until each exit carried one:
     the STREAM event names the circuit, circuit-status its last hop);
  4. the same for the onion service: a stream to <onion>:80 reaches a probe listener on the
     onion target port.
The network's description is written to DIR/network.json (see TorNetwork.describe).

Everything is derived from one base port (checked free); all processes are stopped by the PIDs
in their PidFiles (SIGTERM, then SIGKILL).

Exit policy. With tor 0.4.9.11 an exit policy that accepts only some addresses ("accept
127.0.0.0/8:*" or "accept 192.0.2.0/24:*", then "reject *:*") makes the client consider every
exit unusable for every stream, although the descriptors it holds carry exactly that policy:
"Found 0 servers that might support 0/1 pending connections", "All routers are down or won't
exit -- choosing a doomed exit at random", and the stream never attaches (reproduced on every
fresh run, load or not; the consensus summary of such a policy is "p reject 1-65535"). With
"ExitPolicy accept *:*" streams attach at once. So the exits accept everything, and are kept
on loopback otherwise: their outgoing sockets are bound to their own 127.0.0.x address
(OutboundBindAddress; a loopback source cannot leave the host), and the integration tests run
the whole network inside a network namespace of their own (lo, plus veth pairs to namespaces
the tests create; no route to anywhere else). VIA_TOR_EXIT_NET
overrides the accepted network (for experiments).

Voting runs every 20 s (10 s intervals gave consensuses that expired under CPU load).
Environment: VIA_TOR_INFO_LOG=1 adds an info-level log per node (DIR/<node>/info.log);
VIA_TOR_KEEP_FAILED=1 leaves a network that did not become ready running (for `down DIR`).
"""
import argparse
import binascii
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

AUTH_IPS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
EXIT_IPS = ["127.0.0.14", "127.0.0.15", "127.0.0.16"]
CLIENT_IP = "127.0.0.1"
# Voting: a 20 s interval (10 s was too short under CPU load: consensuses expired before the
# client could use them), vote and dist delays 4 s each (delay + dist < interval / 2), and a
# consensus valid for 4 intervals.
VOTING_INTERVAL = 20
VOTE_DELAY = 4
DIST_DELAY = 4
N_INTERVALS_VALID = 4
PORTS_PER_NODE = 3   # ORPort, DirPort, ControlPort
NODE_COUNT = 8
SPAN = NODE_COUNT * PORTS_PER_NODE + 4   # + SocksPort, exit probe, onion target, spare


class TorNetworkError(RuntimeError):
    pass


def tor_binary():
    return shutil.which("tor")


def missing_tools():
    """Why the network cannot run here (None when tor and tor-gencert exist)."""
    for tool in ("tor", "tor-gencert"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install tor)"
    return None


# ---- ports -------------------------------------------------------------------------------------
def _port_free(port, hosts):
    for host in hosts:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def choose_base(preferred=None):
    """A base port whose whole range [base, base + SPAN) is free on every address we use."""
    hosts = [CLIENT_IP] + AUTH_IPS + EXIT_IPS
    candidates = [preferred] if preferred else []
    start = 20000 + (os.getpid() * 37) % 20000
    candidates += [20000 + (start - 20000 + i * 97) % 40000 for i in range(200)]
    for base in candidates:
        if base and all(_port_free(p, hosts) for p in range(base, base + SPAN)):
            return base
    raise TorNetworkError("no free port range found")


# ---- control port ------------------------------------------------------------------------------
class ControlError(RuntimeError):
    pass


class Controller:
    """A minimal Tor control-port client: cookie AUTHENTICATE, GETINFO, SETEVENTS, events.

    Asynchronous event lines (650) that arrive while waiting for a reply are queued and
    returned by `events()`."""

    def __init__(self, port, cookie_path, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.queue = []
        with open(cookie_path, "rb") as f:
            cookie = f.read()
        self.command("AUTHENTICATE " + binascii.hexlify(cookie).decode())

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise socket.timeout("control port: no line in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ControlError("control connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def _message(self, deadline):
        """One whole reply or event: a list of (code, sep, text) with data blocks joined."""
        parts = []
        while True:
            line = self._line(deadline)
            code, sep, text = line[:3], line[3:4], line[4:]
            if sep == "+":
                data = []
                while True:
                    d = self._line(deadline)
                    if d == ".":
                        break
                    data.append(d[1:] if d.startswith("..") else d)
                text = text + "\n" + "\n".join(data)
            parts.append((code, sep, text))
            if sep == " ":
                return parts

    def command(self, cmd, timeout=30.0):
        """Sends a command; returns the reply's parts; raises ControlError unless 250."""
        self.sock.sendall(cmd.encode() + b"\r\n")
        deadline = time.time() + timeout
        while True:
            msg = self._message(deadline)
            if msg[0][0] == "650":
                self.queue.append(msg)
                continue
            if msg[-1][0] != "250":
                raise ControlError(f"{cmd.split()[0]}: {msg}")
            return msg

    def getinfo(self, key, timeout=30.0):
        for code, sep, text in self.command(f"GETINFO {key}", timeout):
            if text.startswith(key + "="):
                value = text[len(key) + 1:]
                return value[1:] if sep == "+" and value.startswith("\n") else value
        raise ControlError(f"GETINFO {key}: no value")

    def setevents(self, *names):
        self.command("SETEVENTS " + " ".join(names))

    def events(self, timeout=0.0):
        """Queued events plus those arriving within `timeout`: a list of event lines (the text
        after "650 ", continuation parts joined by newlines)."""
        out = [self._event_text(m) for m in self.queue]
        self.queue = []
        deadline = time.time() + timeout
        while True:
            try:
                msg = self._message(deadline if timeout > 0 else time.time() + 0.05)
            except socket.timeout:
                return out
            if msg[0][0] == "650":
                out.append(self._event_text(msg))

    @staticmethod
    def _event_text(msg):
        return "\n".join(t for _, _, t in msg)


def parse_stream_event(text):
    """`STREAM <id> <status> <circ> <target> ...` -> dict (None for other events)."""
    f = text.split()
    if len(f) < 5 or f[0] != "STREAM":
        return None
    ev = {"id": f[1], "status": f[2], "circuit": f[3], "target": f[4]}
    for kv in f[5:]:
        if "=" in kv:
            k, v = kv.split("=", 1)
            ev[k] = v
    return ev


# ---- a probe listener --------------------------------------------------------------------------
class Probe:
    """Accepts connections on host:port and sends a fixed banner to each (readiness checks)."""

    def __init__(self, port, host="127.0.0.1", banner=b"via-tor-probe\n"):
        self.banner = banner
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                c.sendall(self.banner)
            except OSError:
                pass
            c.close()

    def close(self):
        self.stopped = True
        self.thread.join(2)
        self.sock.close()


def socks_fetch(socks_port, host, port, timeout=30.0, username=None):
    """SOCKS5 CONNECT through 127.0.0.1:socks_port to host:port (a name goes as ATYP 3) and
    returns what the far side sends first (until it closes). Raises OSError on failure."""
    s = socket.create_connection(("127.0.0.1", socks_port), timeout=timeout)
    try:
        if username:
            s.sendall(b"\x05\x01\x02")
        else:
            s.sendall(b"\x05\x01\x00")
        reply = _recv_exact(s, 2)
        if reply[1] == 2:
            u = username.encode()
            s.sendall(b"\x01" + bytes([len(u)]) + u + bytes([len(u)]) + u)
            if _recv_exact(s, 2)[1] != 0:
                raise OSError("SOCKS authentication refused")
        elif reply[1] != 0:
            raise OSError(f"SOCKS method refused: {reply!r}")
        try:
            addr = b"\x01" + socket.inet_aton(host)
        except OSError:
            addr = b"\x03" + bytes([len(host)]) + host.encode()
        s.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
        head = _recv_exact(s, 4)
        if head[1] != 0:
            raise OSError(f"SOCKS CONNECT to {host}:{port} failed: reply {head[1]}")
        if head[3] == 3:
            _recv_exact(s, _recv_exact(s, 1)[0] + 2)
        else:
            _recv_exact(s, (16 if head[3] == 4 else 4) + 2)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data
            data += chunk
    finally:
        s.close()


def _recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed during the SOCKS handshake")
        data += chunk
    return data


# ---- the network -------------------------------------------------------------------------------
class Node:
    def __init__(self, net, name, role, ip, index):
        self.net, self.name, self.role, self.ip = net, name, role, ip
        self.dir = os.path.join(net.dir, name)
        b = net.base + index * PORTS_PER_NODE
        self.orport, self.dirport, self.control = b, b + 1, b + 2
        self.fingerprint = None
        self.v3ident = None

    @property
    def torrc(self):
        return os.path.join(self.dir, "torrc")

    @property
    def pidfile(self):
        return os.path.join(self.dir, "pid")

    @property
    def cookie(self):
        return os.path.join(self.dir, "control_auth_cookie")

    @property
    def log(self):
        return os.path.join(self.dir, "notice.log")

    def pid(self):
        try:
            with open(self.pidfile) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def controller(self, timeout=10.0):
        return Controller(self.control, self.cookie, timeout=timeout)


class TorNetwork:
    def __init__(self, directory, base=None, exit_outbound=None, exit_resolver="127.0.0.1"):
        """exit_outbound: optional list of one address per exit: the exit's streams to
        non-loopback destinations leave from it (OutboundBindAddressExit), so a target reached
        through the network sees which exit carried a stream."""
        self.dir = os.path.abspath(directory)
        self.base = base
        self.exit_outbound = list(exit_outbound or [])
        # The DNS server the relays (exits) ask: a loopback address of the caller's choice, so
        # that a test can tell the exits' lookups from the program's.
        self.exit_resolver = exit_resolver
        if self.exit_outbound and len(self.exit_outbound) != len(EXIT_IPS):
            raise TorNetworkError(f"exit_outbound needs {len(EXIT_IPS)} addresses")
        self.nodes = []
        self.onion = None
        # See the module docstring: tor 0.4.9's client treats exits whose policy accepts only
        # some addresses (127.0.0.0/8, 192.0.2.0/24, ...) as unusable for every stream ("All
        # routers are down or won't exit"); "accept *:*" works. Exits still reach nothing but
        # loopback: their outgoing sockets are bound to their 127.0.0.x address (loopback
        # sources cannot leave the host), and the tests run them in a namespace of their own.
        self.exit_net = os.environ.get("VIA_TOR_EXIT_NET", "*")
        self.probe_host = os.environ.get("VIA_TOR_PROBE_HOST", "127.0.0.1")

    # -- layout --
    def _layout(self):
        self.nodes = []
        i = 0
        for n, ip in enumerate(AUTH_IPS):
            self.nodes.append(Node(self, f"auth{n}", "auth", ip, i)); i += 1
        for n, ip in enumerate(EXIT_IPS):
            self.nodes.append(Node(self, f"exit{n}", "exit", ip, i)); i += 1
        self.nodes.append(Node(self, "client", "client", CLIENT_IP, i)); i += 1
        self.nodes.append(Node(self, "hs", "hs", CLIENT_IP, i)); i += 1
        top = self.base + NODE_COUNT * PORTS_PER_NODE
        self.socks_port = top
        self.probe_port = top + 1
        self.onion_target_port = top + 2

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    @property
    def client(self):
        return self.node("client")

    @property
    def hs(self):
        return self.node("hs")

    def by_role(self, role):
        return [n for n in self.nodes if n.role == role]

    def describe(self):
        return {"dir": self.dir, "base": self.base, "socks_port": self.socks_port,
                "client_control_port": self.client.control, "client_cookie": self.client.cookie,
                "hs_control_port": self.hs.control, "hs_cookie": self.hs.cookie,
                "onion": self.onion, "onion_target_port": self.onion_target_port,
                "exits": {n.fingerprint: n.ip for n in self.by_role("exit")},
                "pids": {n.name: n.pid() for n in self.nodes}}

    # -- keys and configs --
    def _run(self, argv, **kw):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
        if p.returncode != 0:
            raise TorNetworkError(f"{' '.join(argv)} failed ({p.returncode}): "
                                  f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
        return p

    def _make_keys(self):
        tor = tor_binary()
        for n in self.nodes:
            os.makedirs(n.dir, mode=0o700, exist_ok=True)
            os.chmod(n.dir, 0o700)
        for n in self.by_role("auth") + self.by_role("exit"):
            keys = os.path.join(n.dir, "keys")
            os.makedirs(keys, mode=0o700, exist_ok=True)
            if n.role == "auth":
                self._run(["tor-gencert", "--create-identity-key", "-m", "12",
                           "-a", f"{n.ip}:{n.dirport}",
                           "-i", os.path.join(keys, "authority_identity_key"),
                           "-s", os.path.join(keys, "authority_signing_key"),
                           "-c", os.path.join(keys, "authority_certificate"),
                           "--passphrase-fd", "0"], input="via-test\n")
                with open(os.path.join(keys, "authority_certificate")) as f:
                    n.v3ident = re.search(r"^fingerprint (\S+)", f.read(), re.M).group(1)
            p = self._run([tor, "--list-fingerprint", "--DataDirectory", n.dir,
                           "--ORPort", "1", "--Nickname", n.name, "--defaults-torrc",
                           self.empty, "-f", self.empty, "--Log", "err stderr"])
            m = re.search(rf"^{n.name} ((?:[0-9A-F]{{4}} ?){{10}})$", p.stdout, re.M)
            if not m:
                raise TorNetworkError(f"no fingerprint for {n.name}: {p.stdout}")
            n.fingerprint = m.group(1).replace(" ", "")

    def _write_configs(self):
        resolv = os.path.join(self.dir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {self.exit_resolver}\n")
        authorities = [f"DirAuthority {a.name} orport={a.orport} no-v2 v3ident={a.v3ident} "
                       f"{a.ip}:{a.dirport} {a.fingerprint}" for a in self.by_role("auth")]
        for n in self.nodes:
            c = ["TestingTorNetwork 1", f"DataDirectory {n.dir}", f"Nickname {n.name}",
                 "RunAsDaemon 1", f"PidFile {n.pidfile}", f"Log notice file {n.log}",
                 "SafeLogging 0", "LogTimeGranularity 1", "ShutdownWaitLength 0",
                 f"ControlPort {CLIENT_IP}:{n.control}",
                 ] + ([f"Log info file {n.dir}/info.log"]
                      if n.role == "client" or os.environ.get("VIA_TOR_INFO_LOG") else []) + [
                 "CookieAuthentication 1",
                 "PathsNeededToBuildCircuits 0.67", "DisableDebuggerAttachment 0",
                 "ConnLimit 60", "AvoidDiskWrites 1",
                 # Timings: the same voting schedule on every node.
                 f"TestingV3AuthInitialVotingInterval {VOTING_INTERVAL}",
                 f"TestingV3AuthInitialVoteDelay {VOTE_DELAY}",
                 f"TestingV3AuthInitialDistDelay {DIST_DELAY}",
                 f"V3AuthVotingInterval {VOTING_INTERVAL}",
                 f"V3AuthVoteDelay {VOTE_DELAY}", f"V3AuthDistDelay {DIST_DELAY}",
                 f"V3AuthNIntervalsValid {N_INTERVALS_VALID}",
                 ] + authorities
            if n.role in ("auth", "exit"):
                c += [f"Address {n.ip}", f"ORPort {n.ip}:{n.orport}",
                      f"OutboundBindAddress {n.ip}", "AssumeReachable 1", "SocksPort 0",
                      f"ServerDNSResolvConfFile {resolv}", "ServerDNSDetectHijacking 0",
                      "ServerDNSTestAddresses", "ServerDNSAllowBrokenConfig 1",
                      "PublishServerDescriptor 1", "ContactInfo via-tests@localhost"]
            if n.role == "auth":
                c += [f"DirPort {n.ip}:{n.dirport}", "AuthoritativeDirectory 1",
                      "V3AuthoritativeDirectory 1", "ExitRelay 0", "ExitPolicy reject *:*",
                      "TestingDirAuthVoteExit *", "TestingDirAuthVoteGuard *",
                      "TestingDirAuthVoteHSDir *", "TestingMinExitFlagThreshold 0",
                      "AuthDirMaxServersPerAddr 0"]
            elif n.role == "exit":
                if self.exit_outbound:
                    # Streams to non-loopback targets leave from this address (tor never binds
                    # connections to loopback destinations); see TorNetwork(exit_outbound=).
                    c.append(f"OutboundBindAddressExit "
                             f"{self.exit_outbound[self.by_role('exit').index(n)]}")
                c += [f"DirPort {n.ip}:{n.dirport}", "ExitRelay 1",
                      "ExitPolicyRejectPrivate 0", "ExitPolicyRejectLocalInterfaces 0",
                      f"ExitPolicy accept {self.exit_net}:*", "ExitPolicy reject *:*",
                      "IPv6Exit 0"]
            elif n.role == "client":
                # ExtendedErrors: onion-service failures as SOCKS5 replies 0xF0-0xF7.
                c += [f"SocksPort {CLIENT_IP}:{self.socks_port} ExtendedErrors",
                      "UseMicrodescriptors 0",
                      "ClientRejectInternalAddresses 0",
                      "ConfluxEnabled 0", "SafeSocks 0", "TestSocks 0",
                      "CircuitBuildTimeout 30", "LearnCircuitBuildTimeout 0",
                      "MaxClientCircuitsPending 64"]
            elif n.role == "hs":
                hsdir = os.path.join(n.dir, "hs")
                c += ["SocksPort 0", "UseMicrodescriptors 0", "ConfluxEnabled 0",
                      f"HiddenServiceDir {hsdir}",
                      f"HiddenServicePort 80 127.0.0.1:{self.onion_target_port}",
                      "CircuitBuildTimeout 30", "LearnCircuitBuildTimeout 0"]
            with open(n.torrc, "w") as f:
                f.write("\n".join(c) + "\n")

    # -- lifecycle --
    def up(self, timeout=120.0, log=None):
        """Creates, starts and waits for the network (TorNetworkError on failure: the caller
        must call down(), which is safe at any point)."""
        reason = missing_tools()
        if reason:
            raise TorNetworkError(reason)
        t0 = time.time()
        deadline = t0 + timeout
        say = log or (lambda *_: None)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.base = choose_base(self.base)
        self._layout()
        self._save()  # PIDs land in the PidFiles; `down DIR` works from here on
        self.empty = os.path.join(self.dir, "empty-torrc")
        open(self.empty, "w").close()
        self._make_keys()
        self._write_configs()
        for n in self.nodes:
            self._run([tor_binary(), "--verify-config", "-f", n.torrc,
                       "--defaults-torrc", self.empty])
        say(f"keys and configs: {time.time() - t0:.1f}s")
        procs = []
        for n in self.nodes:  # RunAsDaemon: each launcher returns once the node forked
            procs.append(subprocess.Popen([tor_binary(), "-f", n.torrc, "--defaults-torrc",
                                           self.empty], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        for p in procs:
            p.wait(60)
        for n in self.nodes:
            if not _wait(lambda: n.pid() and _port_open(n.control), deadline):
                raise TorNetworkError(f"{n.name} did not start: {_tail(n.log)}")
        say(f"started: {time.time() - t0:.1f}s")
        with open(os.path.join(self.hs.dir, "hs", "hostname")) as f:
            self.onion = f.read().strip()
        self._save()
        hs_ctl = self.hs.controller()  # HS_DESC events from the start: none is missed
        hs_ctl.setevents("HS_DESC")
        with self.client.controller() as ctl:
            self._wait_bootstrap(ctl, deadline)
            say(f"client bootstrapped: {time.time() - t0:.1f}s")
            self._wait_exits(ctl, deadline)
            say(f"exits in the consensus with descriptors: {time.time() - t0:.1f}s")
        self._wait_every_exit(deadline)
        say(f"a stream through every exit works: {time.time() - t0:.1f}s")
        with hs_ctl:
            self._wait_hs_uploaded(hs_ctl, deadline)
        say(f"onion descriptor uploaded: {time.time() - t0:.1f}s")
        self._wait_stream(self.onion, 80, self.onion_target_port, deadline,
                          on_failure=self._forget_onion_fetches)
        say(f"onion service reachable: {time.time() - t0:.1f}s")
        self._save()
        return self

    def _wait_bootstrap(self, ctl, deadline):
        last = ""
        while time.time() < deadline:
            last = ctl.getinfo("status/bootstrap-phase")
            if "PROGRESS=100" in last:
                return
            time.sleep(0.2)
        raise TorNetworkError(f"client did not bootstrap: {last}")

    def _wait_exits(self, ctl, deadline):
        want = {n.fingerprint for n in self.by_role("exit")}
        missing = want
        while time.time() < deadline:
            ns = ctl.getinfo("ns/all")
            flagged = set()
            fp = None
            for line in ns.splitlines():
                if line.startswith("r "):
                    ident = line.split()[2]
                    fp = binascii.hexlify(binascii.a2b_base64(ident + "=")).decode().upper()
                elif line.startswith("s ") and fp:
                    flags = line.split()[1:]
                    if "Exit" in flags and "Running" in flags and "Valid" in flags:
                        flagged.add(fp)
            missing = set()
            for fp in want:
                if fp not in flagged:
                    missing.add(fp)
                    continue
                try:
                    ctl.getinfo(f"desc/id/{fp}")
                except ControlError:
                    missing.add(fp)
            if not missing:
                return
            time.sleep(0.5)
        raise TorNetworkError(f"exits missing from the client's consensus/descriptors: "
                              f"{sorted(missing)}")

    def _wait_hs_uploaded(self, hs_ctl, deadline, want=3):
        """Waits until the service has uploaded its descriptor to at least `want` HSDirs and
        every upload it started has finished (HS_DESC UPLOAD / UPLOADED events). Fetching
        earlier makes the client query HSDirs that do not have it yet, and it then avoids
        those HSDirs for a while."""
        addr = self.onion[:-len(".onion")]
        started, uploaded = set(), set()
        while len(uploaded) < want or not started <= uploaded:
            if time.time() >= deadline:
                raise TorNetworkError(f"onion descriptor uploaded to {len(uploaded)} of "
                                      f"{len(started)} HSDirs")
            for ev in hs_ctl.events(timeout=min(1.0, max(0.05, deadline - time.time()))):
                f = ev.split()
                if len(f) >= 5 and f[0] == "HS_DESC" and f[2] == addr:
                    if f[1] == "UPLOAD":
                        started.add(f[4])
                    elif f[1] == "UPLOADED":
                        uploaded.add(f[4])

    def _forget_onion_fetches(self):
        """SIGNAL NEWNYM: the client forgets which HSDirs it already asked (it would not ask
        them again for 15 minutes) and its descriptor cache, so the next try fetches afresh."""
        try:
            with self.client.controller() as ctl:
                ctl.command("SIGNAL NEWNYM")
        except (OSError, ControlError):
            pass

    def exit_of(self, ctl, circuit_id):
        """The fingerprint of the last hop of circuit `circuit_id` (GETINFO circuit-status), or
        None when the client no longer has that circuit."""
        for line in ctl.getinfo("circuit-status").splitlines():
            f = line.split()
            if len(f) >= 3 and f[0] == circuit_id:
                return f[2].split(",")[-1].lstrip("$").split("~")[0].split("=")[0]
        return None

    def _wait_every_exit(self, deadline):
        """Waits until a real stream through the SocksPort succeeded through each exit.

        Every attempt uses a fresh SOCKS username (IsolateSOCKSAuth: a new circuit, so a
        freshly chosen exit); the STREAM SUCCEEDED event names the circuit, circuit-status its
        exit. A flaky exit (or a client that cannot yet use it) keeps the network "not ready"
        instead of failing a test later."""
        want = {n.fingerprint for n in self.by_role("exit")}
        seen, last = set(), None
        probe = Probe(self.probe_port, self.probe_host)
        target = f"{self.probe_host}:{self.probe_port}"
        try:
            with self.client.controller() as ctl:
                ctl.setevents("STREAM")
                while seen != want:
                    if time.time() >= deadline:
                        raise TorNetworkError(
                            f"streams worked through {len(seen)} of {len(want)} exits "
                            f"(last error: {last}); client log:\n{self.diagnosis()}")
                    try:
                        if socks_fetch(self.socks_port, self.probe_host, self.probe_port,
                                       timeout=max(1, min(30, deadline - time.time())),
                                       username=f"ready-{time.time()}") != probe.banner:
                            last = "wrong banner"
                    except OSError as e:
                        last = e
                        time.sleep(0.5)
                    for text in ctl.events(timeout=0.2):
                        ev = parse_stream_event(text)
                        if ev and ev["status"] == "SUCCEEDED" and ev["target"] == target:
                            fp = self.exit_of(ctl, ev["circuit"])
                            if fp in want:
                                seen.add(fp)
        finally:
            probe.close()

    def diagnosis(self, lines=40):
        """The end of the client's logs: stream and circuit failures (for test messages)."""
        info = os.path.join(self.client.dir, "info.log")
        keep = [l for l in _tail(info, 4000).splitlines()
                if any(k in l for k in ("stream", "Stream", "exit", "circuit_", "SOCKS",
                                        "Rejecting", "doomed", "END", "warn"))]
        return _tail(self.client.log, 10) + "\n".join(keep[-lines:])

    def stop_client(self, timeout=15.0):
        """Stops the client tor (SIGTERM by its PidFile's PID) and waits until it is gone."""
        pid = self.client.pid()
        if pid and _is_tor(pid):
            os.kill(pid, signal.SIGTERM)
            if not _wait(lambda: not _is_tor(pid), time.time() + timeout):
                os.kill(pid, signal.SIGKILL)
        if not _wait(lambda: not _port_open(self.socks_port), time.time() + timeout):
            raise TorNetworkError("the client's SocksPort still accepts after stopping it")

    def start_client(self, timeout=90.0):
        """Starts the client again (same torrc and DataDirectory) and waits until streams
        work through every exit again."""
        deadline = time.time() + timeout
        subprocess.run([tor_binary(), "-f", self.client.torrc, "--defaults-torrc", self.empty],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        if not _wait(lambda: self.client.pid() and _port_open(self.client.control), deadline):
            raise TorNetworkError(f"client did not start again: {_tail(self.client.log)}")
        with self.client.controller() as ctl:
            self._wait_bootstrap(ctl, deadline)
        self._wait_every_exit(deadline)
        self._save()

    def _wait_stream(self, host, port, listen_port, deadline, listen_host="127.0.0.1",
                     on_failure=None):
        probe = Probe(listen_port, listen_host)
        last = None
        try:
            while time.time() < deadline:
                try:
                    if socks_fetch(self.socks_port, host, port,
                                   timeout=max(1, min(30, deadline - time.time())),
                                   username=f"probe-{time.time()}") == probe.banner:
                        return
                    last = "wrong banner"
                except OSError as e:
                    last = e
                    if on_failure:
                        on_failure()
                time.sleep(0.5)
        finally:
            probe.close()
        raise TorNetworkError(f"no working stream to {host}:{port}: {last}")

    def _save(self):
        state = {"base": self.base, "onion": self.onion,
                 "nodes": [{"name": n.name, "pidfile": n.pidfile} for n in self.nodes]}
        if self.nodes:
            state["network"] = self.describe()
        with open(os.path.join(self.dir, "network.json"), "w") as f:
            json.dump(state, f, indent=1)

    def down(self, timeout=15.0):
        """Stops every node by the PID in its PidFile (SIGTERM, then SIGKILL)."""
        pidfiles = [n.pidfile for n in self.nodes]
        try:
            with open(os.path.join(self.dir, "network.json")) as f:
                pidfiles += [n["pidfile"] for n in json.load(f)["nodes"]]
        except (OSError, ValueError, KeyError):
            pass
        pids = set()
        for pf in set(pidfiles):
            try:
                with open(pf) as f:
                    pid = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if _is_tor(pid):
                pids.add(pid)
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.time() + timeout
        while time.time() < end and any(_is_tor(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            if _is_tor(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _is_tor(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return False
    return comm == "tor" and "State:\tZ" not in status


def _port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(pred, deadline, interval=0.1):
    while True:
        if pred():
            return True
        if time.time() >= deadline:
            return False
        time.sleep(interval)


def _tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("dir")
    u.add_argument("--base", type=int)
    u.add_argument("--timeout", type=float, default=180)
    d = sub.add_parser("down")
    d.add_argument("dir")
    a = ap.parse_args(argv)
    net = TorNetwork(a.dir, getattr(a, "base", None))
    if a.cmd == "down":
        net.down()
        return 0
    try:
        net.up(a.timeout, log=lambda m: print(m, file=sys.stderr, flush=True))
    except BaseException as e:
        if os.environ.get("VIA_TOR_KEEP_FAILED") == "1":
            print(f"tor network not ready: {e}; left running (down DIR stops it)",
                  file=sys.stderr)
        else:
            print(f"tor network not ready: {e}; stopping it", file=sys.stderr)
            net.down()
        return 1
    print(json.dumps(net.describe(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
