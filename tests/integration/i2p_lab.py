"""A real I2P router for the tests: Debian's i2pd, offline, on 127.0.0.1 (recipe "single" of
../shared/notes/i2p-lab.md), and a stdlib-only SAM v3 peer that serves HTTP on a destination
of its own and records what it saw.

The router is a floodfill with zero-hop tunnels, no reseed, no NTP, no UPnP, no address-book
download, a private netid, and transports bound to 127.0.0.1: nothing can leave the host. i2pd
2.45 needs i2cp.leaseSetType=1 on a destination that is connected to from the floodfill's own
clients (bug 1 of the note), and takes 20 s for every SESSION CREATE.
"""
import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

# SESSION CREATE options every destination of the tests uses.
SAM_OPTIONS = {
    "inbound.length": "0",
    "outbound.length": "0",
    "inbound.quantity": "1",
    "outbound.quantity": "1",
    "i2cp.leaseSetType": "1",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b32_of(dest64):
    """The .b32.i2p name of a base64 destination (or private keys)."""
    raw = base64.b64decode(dest64, altchars=b"-~")
    cert_len = int.from_bytes(raw[385:387], "big")
    pub = raw[:387 + cert_len]
    return base64.b32encode(hashlib.sha256(pub).digest()).decode().lower().rstrip("=") + ".b32.i2p"


def i2pd_missing():
    return None if shutil.which("i2pd") else "i2pd is not installed (scripts/install-deps.sh)"


class I2pRouter:
    """One i2pd in `workdir`, SAM and the web console on free loopback ports."""

    def __init__(self, workdir, hosts=None):
        self.dir = workdir
        os.makedirs(self.dir, exist_ok=True)
        self.sam_port = free_port()
        self.http_port = free_port()
        self.ntcp_port = free_port()
        self.log = os.path.join(self.dir, "i2pd.log")
        self.hosts = hosts or {}
        self.proc = None

    def start(self, timeout=20):
        conf = os.path.join(self.dir, "i2pd.conf")
        with open(conf, "w") as f:
            f.write(f"""log = file
logfile = {self.log}
loglevel = info
ipv4 = true
ipv6 = false
host = 127.0.0.1
address4 = 127.0.0.1
nat = false
port = {self.ntcp_port}
netid = 77
reservedrange = false
floodfill = true
[ntcp2]
enabled = true
published = true
[ssu2]
enabled = false
[reseed]
urls =
yggurls =
threshold = 0
verify = false
[nettime]
enabled = false
[upnp]
enabled = false
[meshnets]
yggdrasil = false
[addressbook]
enabled = true
[sam]
enabled = true
address = 127.0.0.1
port = {self.sam_port}
singlethread = false
[http]
enabled = true
address = 127.0.0.1
port = {self.http_port}
[httpproxy]
enabled = false
[socksproxy]
enabled = false
[bob]
enabled = false
[i2cp]
enabled = false
[i2pcontrol]
enabled = false
[exploratory]
inbound.length = 0
outbound.length = 0
""")
        # An address book with only the test's names; no subscription is ever fetched.
        with open(os.path.join(self.dir, "hosts.txt"), "w") as f:
            for name, dest in self.hosts.items():
                f.write(f"{name}={dest}\n")
        with open(os.path.join(self.dir, "subscriptions.txt"), "w") as f:
            f.write("# none\n")
        out = open(os.path.join(self.dir, "i2pd.out"), "ab")
        self.proc = subprocess.Popen(["i2pd", f"--datadir={self.dir}", f"--conf={conf}"],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"i2pd exited with {self.proc.returncode}: see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.sam_port), timeout=1) as s:
                    s.sendall(b"HELLO VERSION MIN=3.1 MAX=3.1\n")
                    if s.recv(100).startswith(b"HELLO REPLY RESULT=OK"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"i2pd's SAM bridge did not answer within {timeout}s")

    def stop(self, grace=2):
        """SIGTERM (SIGINT would start i2pd's 10-minute graceful shutdown), then SIGKILL: i2pd
        2.45 often takes more than 10 s to stop on SIGTERM."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def sam_session_ids(self):
        """The SAM sessions the router itself lists (web console, page sam_sessions)."""
        url = f"http://127.0.0.1:{self.http_port}/?page=sam_sessions"
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url,
                                                                                timeout=5) as r:
            page = r.read().decode("utf-8", "replace")
        return sorted(set(re.findall(r"sam_id=([^\"&'<>]+)", page)))


    def dest_generate(self):
        """(public, private) base64 of a new destination (DEST GENERATE, EdDSA)."""
        s = SamLine(self.sam_port).hello()
        try:
            p = pairs(s.command("DEST GENERATE SIGNATURE_TYPE=7"))
            return p["PUB"], p["PRIV"]
        finally:
            s.close()


class SamError(Exception):
    pass


class SamLine:
    """One socket to the SAM bridge, speaking lines."""

    def __init__(self, port, timeout=60):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def readline(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SamError("SAM bridge closed the socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def command(self, line):
        self.sock.sendall(line.encode() + b"\n")
        return self.readline()

    def hello(self):
        reply = self.command("HELLO VERSION MIN=3.1 MAX=3.1")
        if "RESULT=OK" not in reply:
            raise SamError(reply)
        return self

    def close(self):
        self.sock.close()


def pairs(reply):
    return dict(p.split("=", 1) for p in reply.split()[2:] if "=" in p)


class SamHttpServer:
    """A SAM peer: its own STREAM session, serving HTTP/1.0 on every accepted stream.

    `records` gets {"peer": <b32 of the connecting destination>, "request": <request line>} for
    every request. Create with start_session() (20 s; run several in threads), then serve()."""

    def __init__(self, sam_port, name, body=b"hello from i2p\n", priv="TRANSIENT", mode="http"):
        """mode: "http" answers one HTTP/1.0 request; "banner" speaks first ("220 <id>\\n"),
        then answers one line with "echo: <line>"; "stream" sends a line every 0.1 s for
        two minutes."""
        self.mode = mode
        self.sam_port = sam_port
        self.id = f"{name}-{os.getpid()}-{free_port()}"
        self.body = body
        self.priv = priv
        self.records = []
        self.ctl = None
        self.b32 = None
        self.error = None
        self.stopping = False

    def start_session(self):
        try:
            self.ctl = SamLine(self.sam_port, timeout=90).hello()
            opts = " ".join(f"{k}={v}" for k, v in SAM_OPTIONS.items())
            reply = self.ctl.command(f"SESSION CREATE STYLE=STREAM ID={self.id} "
                                     f"DESTINATION={self.priv} SIGNATURE_TYPE=7 {opts}")
            if "RESULT=OK" not in reply:
                raise SamError(reply)
            self.priv = pairs(reply)["DESTINATION"]
            self.b32 = b32_of(self.priv)
        except Exception as e:  # reported by the test that needs it
            self.error = e

    def serve(self):
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stopping:
            try:
                s = SamLine(self.sam_port, timeout=None).hello()
                reply = s.command(f"STREAM ACCEPT ID={self.id} SILENT=false")
                if "RESULT=OK" not in reply:
                    time.sleep(0.5)
                    continue
                peer = s.readline()
                threading.Thread(target=self._handle, args=(s, peer), daemon=True).start()
            except Exception:
                if self.stopping:
                    return
                time.sleep(0.5)

    def _handle(self, s, peer):
        if self.mode == "banner":
            return self._banner(s, peer)
        if self.mode == "stream":
            return self._stream(s, peer)
        try:
            s.sock.settimeout(10)
            request = s.readline()
            while s.readline().strip():
                pass
            self.records.append({"peer": b32_of(peer.split()[0]), "request": request.strip()})
            s.sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                           str(len(self.body)).encode() + b"\r\n\r\n" + self.body)
        except Exception:
            pass
        finally:
            s.close()

    def _banner(self, s, peer):
        try:
            s.sock.settimeout(10)
            s.sock.sendall(f"220 {self.id}\n".encode())
            line = s.readline()
            self.records.append({"peer": b32_of(peer.split()[0]), "request": line})
            s.sock.sendall(f"echo: {line}\n".encode())
        except Exception:
            pass
        finally:
            s.close()

    def _stream(self, s, peer):
        self.records.append({"peer": b32_of(peer.split()[0]), "request": "stream"})
        try:
            for i in range(1200):
                s.sock.sendall(f"line {i}\n".encode())
                time.sleep(0.1)
        except Exception:
            pass
        finally:
            s.close()

    def connect(self, dest, timeout=30):
        """STREAM CONNECT from this peer's session; returns the SamLine after RESULT=OK."""
        s = SamLine(self.sam_port, timeout=timeout).hello()
        reply = s.command(f"STREAM CONNECT ID={self.id} DESTINATION={dest} SILENT=false")
        if "RESULT=OK" not in reply:
            s.close()
            raise SamError(reply)
        return s

    def close(self):
        self.stopping = True
        if self.ctl:
            self.ctl.close()
