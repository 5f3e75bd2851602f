"""Every resolver entry point and listen() ask the broker whether the process is routed.

Issue 17, causes 5 and 9. Two routed programs whose environment does not say so:
  - "session": a `via run --network app:tor` session whose child was started with VIA_NETWORK
    emptied (VIA_SESSION is still there: the broker routes the child all the same);
  - "preload": the README's preloaded deployment, LD_PRELOAD + VIA_CONFIG and no VIA_NETWORK,
    where a via.program rule routes python to app:tor.
In both, res_query & co., glibc's internal names (__res_query, __res_context_query, the NSS DNS
module's _nss_dns_gethostbyname*_r), getaddrinfo_a and ruserok must not reach dnsmasq (the
namespace's only DNS server, which logs every query), and listen() on 0.0.0.0 must not open a
listener on the host. Names that only look local (x.localhost, a name /etc/hosts lists for the
other family only, a loopback address /etc/hosts lacks) are answered without any query.

Each "control" runs the same code without via and shows that the same calls do reach dnsmasq,
so "no query" can fail.
"""
import ipaddress
import os
import re
import shutil
import socket
import subprocess

import harness

FAKE4 = ipaddress.ip_network("198.18.0.0/15")

RESOLVER = r"""
import ctypes, os, socket, sys
print("VIA_NETWORK", repr(os.environ.get("VIA_NETWORK")))
libc = ctypes.CDLL(None)
NAME = sys.argv[1].encode()

def a_record(n, buf):
    return socket.inet_ntoa(buf.raw[n - 4:n]) if n > 0 else str(n)

for fn in ("res_query", "res_search", "__res_query", "__res_search"):
    # __res_query and __res_search are compatibility symbols: old binaries and dlvsym reach
    # glibc's, a lookup by name only finds the shim's.
    try:
        f = getattr(libc, fn)
    except AttributeError:
        print(fn, "missing")
        continue
    buf = ctypes.create_string_buffer(512)
    print(fn, a_record(f(NAME, 1, 1, buf, 512), buf))

libc.__res_state.restype = ctypes.c_void_p
state = ctypes.c_void_p(libc.__res_state())
libc.__res_ninit(state)
buf = ctypes.create_string_buffer(512)
print("res_nquery", a_record(libc.res_nquery(state, NAME, 1, 1, buf, 512), buf))

# glibc's private entry point behind res_query (GLIBC_PRIVATE, exported for libresolv).
libc.__resolv_context_get.restype = ctypes.c_void_p
ctx = ctypes.c_void_p(libc.__resolv_context_get())
buf = ctypes.create_string_buffer(512)
n = libc.__res_context_query(ctx, NAME, 1, 1, buf, 512, None, None, None, None, None)
print("__res_context_query", a_record(n, buf))
libc.__resolv_context_put(ctx)

# The NSS DNS module's function, as getaddrinfo's NSS machinery calls it.
class hostent(ctypes.Structure):
    _fields_ = [("h_name", ctypes.c_char_p), ("h_aliases", ctypes.c_void_p),
                ("h_addrtype", ctypes.c_int), ("h_length", ctypes.c_int),
                ("h_addr_list", ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte * 4)))]
he = hostent()
buf = ctypes.create_string_buffer(2048)
err, herr = ctypes.c_int(), ctypes.c_int()
status = libc._nss_dns_gethostbyname2_r(NAME, socket.AF_INET, ctypes.byref(he), buf, 2048,
                                        ctypes.byref(err), ctypes.byref(herr))
print("_nss_dns_gethostbyname2_r",
      ".".join(str(b) for b in he.h_addr_list[0].contents) if status == 1 else status)

# The NSS machinery driven by hand: the hosts database's first service (files), then the next
# one (dns) as libc steps on after NOTFOUND, and its gethostbyname2_r called.
ni, fct = ctypes.c_void_p(), ctypes.c_void_p()
libc.__nss_hosts_lookup2(ctypes.byref(ni), b"gethostbyname2_r", None, ctypes.byref(fct))
libc.__nss_next2(ctypes.byref(ni), b"gethostbyname2_r", None, ctypes.byref(fct), 0, 0)
fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                      ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p)(fct.value)
he = hostent()
status = fn(NAME, socket.AF_INET, ctypes.addressof(he), buf, 2048, ctypes.addressof(err),
            ctypes.addressof(herr))
print("__nss_next2", ".".join(str(b) for b in he.h_addr_list[0].contents) if status == 1 else status)

# getaddrinfo's entry into the module: a list of address tuples laid out in the buffer.
class gaih_addrtuple(ctypes.Structure):
    pass
gaih_addrtuple._fields_ = [("next", ctypes.POINTER(gaih_addrtuple)), ("name", ctypes.c_char_p),
                           ("family", ctypes.c_int), ("addr", ctypes.c_ubyte * 16),
                           ("scopeid", ctypes.c_uint32)]
pat = ctypes.POINTER(gaih_addrtuple)()
status = libc._nss_dns_gethostbyname4_r(NAME, ctypes.byref(pat), buf, 2048, ctypes.byref(err),
                                        ctypes.byref(herr), None)
v4 = []
while status == 1 and pat:
    if pat.contents.family == socket.AF_INET:
        v4.append(".".join(str(b) for b in pat.contents.addr[:4]))
    pat = pat.contents.next
print("_nss_dns_gethostbyname4_r", v4[0] if v4 else status)

class addrinfo(ctypes.Structure):
    pass
addrinfo._fields_ = [("flags", ctypes.c_int), ("family", ctypes.c_int),
                     ("socktype", ctypes.c_int), ("protocol", ctypes.c_int),
                     ("addrlen", ctypes.c_uint32), ("addr", ctypes.c_void_p),
                     ("canonname", ctypes.c_char_p), ("next", ctypes.POINTER(addrinfo))]
class gaicb(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("service", ctypes.c_char_p),
                ("request", ctypes.POINTER(addrinfo)), ("result", ctypes.POINTER(addrinfo)),
                ("ret", ctypes.c_int), ("reserved", ctypes.c_int * 5)]
hints = addrinfo(family=socket.AF_INET, socktype=socket.SOCK_STREAM)
req = gaicb(name=NAME, service=b"80", request=ctypes.pointer(hints))
reqs = (ctypes.POINTER(gaicb) * 1)(ctypes.pointer(req))
rc = libc.getaddrinfo_a(0, reqs, 1, None)  # GAI_WAIT
if rc == 0 and libc.gai_error(ctypes.pointer(req)) == 0:
    sa = ctypes.cast(req.result.contents.addr, ctypes.POINTER(ctypes.c_ubyte * 8)).contents
    print("getaddrinfo_a", ".".join(str(b) for b in sa[4:8]))
else:
    print("getaddrinfo_a", rc)

# ruserok resolves the remote host with libc's own getaddrinfo.
print("ruserok", libc.ruserok(b"demo.test", 0, b"nobody", b"nobody"))
"""

LOCAL_NAMES = r"""
import socket
def gai(name, family=0):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 80, family, socket.SOCK_STREAM)})
    except socket.gaierror:
        return "no address"
print(gai("foo.localhost"))
print(gai("Foo.LocalHost.", socket.AF_INET6))
print(gai("hosts-only.test", socket.AF_INET6))
print(gai("HOSTS-ONLY.TEST.", socket.AF_INET))
print(gai("v6only.test", socket.AF_INET))
print(gai("v6only.test", socket.AF_INET6))
try:
    print(socket.gethostbyname("bar.localhost"))
except OSError:
    print("no address")
try:
    print(socket.getnameinfo(("127.0.0.5", 80), 0)[0])
except OSError:
    print("no name")
print(gai(socket.gethostname(), socket.AF_INET))  # not in the namespace's /etc/hosts
"""

LISTENER = r"""
import errno, os, socket, sys
print("VIA_NETWORK", repr(os.environ.get("VIA_NETWORK")), flush=True)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
try:
    srv.listen(5)
    print("listening", flush=True)
except OSError as e:
    print("error", "EOPNOTSUPP" if e.errno == errno.EOPNOTSUPP else errno.errorcode[e.errno],
          flush=True)
sys.stdin.readline()
"""


# An "old binary": SunRPC's getrpcport and clnt_create are compatibility symbols (no header, no
# default version), bound by version as a program built against an old glibc binds them.
OLD_RPC = r"""
#include <stdio.h>
#include <netinet/in.h>
unsigned short getrpcport(const char*, unsigned long, unsigned long, unsigned int);
void* clnt_create(const char*, unsigned long, unsigned long, const char*);
__asm__(".symver getrpcport,getrpcport@GLIBC_2.2.5");
__asm__(".symver clnt_create,clnt_create@GLIBC_2.2.5");
int main(int argc, char** argv) {
  printf("getrpcport %u\n", getrpcport(argv[1], 100000, 2, IPPROTO_UDP));
  printf("clnt_create %s\n", clnt_create(argv[1], 100000, 2, "tcp") ? "client" : "null");
  return 0;
}
"""


class ResolverRouting(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.require_namespace()
        self.start_dns()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        python = os.path.realpath(harness.PYTHON)
        # A name /etc/hosts lists with an IPv6 address only (the harness lists hosts-only.test
        # with IPv4 only). /etc/hosts is this namespace's own file.
        with open("/etc/hosts") as f:
            hosts = f.read()
        def restore():
            with open("/etc/hosts", "w") as f:
                f.write(hosts)
        self.addCleanup(restore)
        with open("/etc/hosts", "a") as f:
            f.write("fd00::5 v6only.test\n")
        tor = self.socks5_entry("tor", self.proxy_port)
        self.preload_config = self.write_config(
            [tor, ["name: py_tor", "kind: via.program", f'match: {{exe: "{python}"}}',
                   "network: app:tor"]], name="preload.yaml")
        self.session_config = self.write_config([tor], name="session.yaml")

    def argv_env(self, mode, code, *args):
        """argv and environment that run python CODE ARGS routed as `mode` says."""
        py = [harness.PYTHON, "-c", code, *args]
        if mode == "session":
            return ([harness.VIA, "run", "-c", self.session_config, "--network", "app:tor",
                     "--", "env", "VIA_NETWORK=", *py], self.env)
        if mode == "preload":
            return py, dict(self.env, LD_PRELOAD=harness.SHIM, VIA_CONFIG=self.preload_config)
        if mode == "preload-direct":  # preloaded, and nothing routes it
            return py, dict(self.env, LD_PRELOAD=harness.SHIM, VIA_CONFIG=self.session_config)
        if mode == "routed":  # plainly under via run
            return ([harness.VIA, "run", "-c", self.session_config, "--network", "app:tor",
                     "--", *py], self.env)
        return py, self.env  # "plain": no via at all

    def run_mode(self, mode, code, *args):
        argv, env = self.argv_env(mode, code, *args)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    # ---- res_*, internal names, getaddrinfo_a, ruserok ----------------------------------------
    FUNCTIONS = ["res_query", "res_search", "__res_query", "__res_search", "res_nquery",
                 "__res_context_query", "_nss_dns_gethostbyname2_r", "_nss_dns_gethostbyname4_r",
                 "__nss_next2", "getaddrinfo_a"]

    def test_control_plain_resolver_calls_reach_the_dns_server(self):
        proc = self.run_mode("plain", RESOLVER, "other.test")
        self.assertOk(proc)
        lines = dict(l.split(" ", 1) for l in proc.stdout.splitlines())
        present = [fn for fn in self.FUNCTIONS if lines[fn] != "missing"]
        self.assertEqual(len(present), len(self.FUNCTIONS) - 2, proc.stdout)  # __res_query/search
        for fn in present:
            self.assertEqual(lines[fn], "127.0.0.1", f"{fn}: {proc.stdout}")
        # One query (at least) per call; getaddrinfo_a may ask A and AAAA.
        self.assertGreaterEqual(len(self.dns_queries("other.test")), len(present))
        self.assertTrue(self.dns_queries("demo.test"))  # ruserok's own getaddrinfo

    def test_resolver_calls_of_routed_programs_ask_no_dns(self):
        # "routed" (plainly under via run) isolates the internal names (cause 9) from cause 5.
        expected_network = {"routed": "'app:tor'", "session": "''", "preload": "None"}
        for mode in ("routed", "session", "preload"):
            with self.subTest(mode=mode):
                proc = self.run_mode(mode, RESOLVER, "example.test")
                self.assertEqual(self.dns_queries(".test"), [], proc.stdout)  # the far side first
                self.assertOk(proc)
                lines = dict(l.split(" ", 1) for l in proc.stdout.splitlines())
                self.assertEqual(lines["VIA_NETWORK"], expected_network[mode])
                for fn in self.FUNCTIONS:
                    self.assertIn(ipaddress.ip_address(lines[fn]), FAKE4,
                                  f"{fn}: {proc.stdout}\n{proc.stderr}")
                self.assertEqual(lines["ruserok"], "-1")
                self.assertIn("ruserok refused", proc.stderr)
                self.assertEqual(self.dns_queries(".test"), [])

    # ---- SunRPC compatibility symbols (old binaries) ------------------------------------------
    def old_rpc_binary(self):
        if shutil.which("cc") is None:
            self.skipTest("cc is not installed")
        src = os.path.join(self.dir, "oldrpc.c")
        exe = os.path.join(self.dir, "oldrpc")
        with open(src, "w") as f:
            f.write(OLD_RPC)
        built = subprocess.run(["cc", "-O1", "-o", exe, src], capture_output=True, text=True)
        if built.returncode != 0:
            self.skipTest("this libc has no SunRPC compatibility symbols: " + built.stderr)
        return exe

    def run_exe(self, mode, argv):
        py, env = self.argv_env(mode, "")
        # argv_env builds "python -c CODE"; swap that for the program.
        argv = py[:py.index(harness.PYTHON)] + argv
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    def test_control_plain_old_rpc_binary_reaches_the_dns_server(self):
        exe = self.old_rpc_binary()
        proc = self.run_exe("plain", [exe, "git.test"])
        self.assertOk(proc)
        self.assertTrue(self.dns_queries("git.test"))

    def test_old_rpc_binary_is_refused_and_asks_no_dns(self):
        exe = self.old_rpc_binary()
        for mode in ("routed", "session"):
            with self.subTest(mode=mode):
                proc = self.run_exe(mode, [exe, "git.test"])
                self.assertEqual(self.dns_queries("git.test"), [], proc.stdout)
                self.assertOk(proc)
                self.assertEqual(proc.stdout.splitlines(), ["getrpcport 0", "clnt_create null"])
                self.assertIn("getrpcport refused", proc.stderr)
                self.assertIn("clnt_create refused", proc.stderr)

    # ---- listen -----------------------------------------------------------------------------
    def test_preloaded_direct_program_resolves_and_listens_itself(self):
        # The broker's answer is "direct": libc's own resolver and a real listener, as asked.
        proc = self.run_mode("preload-direct", RESOLVER, "other.test")
        self.assertOk(proc)
        lines = dict(l.split(" ", 1) for l in proc.stdout.splitlines())
        self.assertEqual(lines["res_query"], "127.0.0.1", proc.stdout)
        self.assertEqual(lines["getaddrinfo_a"], "127.0.0.1", proc.stdout)
        self.assertTrue(self.dns_queries("other.test"))
        self.assertListenerReachable("preload-direct")

    def test_listen_of_routed_programs_opens_nothing_on_the_host(self):
        for mode in ("session", "preload"):
            with self.subTest(mode=mode):
                port = harness.free_port()
                argv, env = self.argv_env(mode, LISTENER, str(port))
                p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    first = p.stdout.readline().strip()
                    self.assertEqual(first,
                                     "VIA_NETWORK " + ("''" if mode == "session" else "None"))
                    self.assertEqual(p.stdout.readline().strip(), "error EOPNOTSUPP")
                    ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"],
                                        capture_output=True, text=True).stdout.strip()
                    self.assertEqual(ss, "")  # the program is alive and listens nowhere
                    with self.assertRaises(ConnectionRefusedError):
                        socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    out, err = p.communicate("\n", timeout=30)
                    self.assertIn(f"listen on 0.0.0.0:{port} refused", err)
                finally:
                    if p.poll() is None:
                        p.kill()
                    p.communicate()

    def assertListenerReachable(self, mode):
        """LISTENER run in `mode` listens on the host: a connection to it is accepted."""
        port = harness.free_port()
        argv, env = self.argv_env(mode, LISTENER, str(port))
        p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            p.stdout.readline()
            self.assertEqual(p.stdout.readline().strip(), "listening")
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        finally:
            p.kill()
            p.communicate()

    def test_control_plain_listen_is_reachable(self):
        self.assertListenerReachable("plain")

    # ---- names that only look local ---------------------------------------------------------------
    def test_control_plain_local_looking_names_reach_the_dns_server(self):
        proc = self.run_mode("plain", LOCAL_NAMES)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines()[5], "['fd00::5']")  # /etc/hosts is read
        self.assertTrue(self.dns_queries("foo.localhost"))
        self.assertTrue(self.dns_queries("hosts-only.test"))  # asked for AAAA
        self.assertTrue(self.dns_queries("v6only.test"))  # asked for A
        self.assertTrue(self.dns_queries("5.0.0.127.in-addr.arpa"))
        if socket.gethostname().lower() not in harness.CLIENT_HOSTS.lower().split():
            self.assertTrue(self.hostname_queries())

    def hostname_queries(self):
        """dnsmasq's log lines of queries for this machine's host name (exactly)."""
        name = socket.gethostname()
        pattern = re.compile(r"query\[\w+\] " + re.escape(name) + r"\.? from", re.I)
        return [l for l in self.dns_queries(name) if pattern.search(l)]

    def test_local_looking_names_are_answered_locally(self):
        for mode in ("routed", "session", "preload"):
            with self.subTest(mode=mode):
                proc = self.run_mode(mode, LOCAL_NAMES)
                # The far side first: what reached dnsmasq.
                self.assertEqual(self.dns_queries("localhost"), [], proc.stdout)
                self.assertEqual(self.dns_queries(".test"), [], proc.stdout)
                self.assertEqual(self.dns_queries("in-addr.arpa"), [], proc.stdout)
                self.assertEqual(self.hostname_queries(), [], proc.stdout)
                self.assertOk(proc)
                self.assertEqual(proc.stdout.splitlines(), [
                    "['127.0.0.1', '::1']",
                    "['::1']",
                    "no address",
                    "['127.0.0.1']",
                    "no address",
                    "['fd00::5']",
                    "127.0.0.1",
                    "127.0.0.5",
                    "['127.0.0.1']",
                ], proc.stderr)
                self.assertEqual(harness.read_lines(self.proxy_log), [])


if __name__ == "__main__":
    harness.main()
