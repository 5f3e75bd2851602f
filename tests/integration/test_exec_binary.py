"""The exec guard decides from what the kernel and the dynamic loader will run, not from names:
a static program run through the dynamic loader, `#!` chains ending in a static program, a
dynamic program whose PT_INTERP is a static program, Go built without a build ID (cgo on, so
dynamically linked), and a Go c-shared library loaded by Python's ctypes. Each is refused under
an overlay, and the target and the DNS server see nothing; each has its control: with
network_service.unrouted_exec: allow the same program does reach the target directly (and the
name reaches the DNS server), so the test would see a leak."""
import os
import shutil
import struct
import subprocess

import harness

# GET PATH from HOST:PORT, the last three arguments (so that it works as a #! interpreter too).
CLIENT = r"""
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char** argv) {
  if (argc < 4) return 2;
  const char *host = argv[argc - 3], *port = argv[argc - 2], *path = argv[argc - 1];
  struct addrinfo hints = {0}, *res;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  int e = getaddrinfo(host, port, &hints, &res);
  if (e != 0) { fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(e)); return 1; }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) { perror("connect"); return 1; }
  char req[512];
  snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, host);
  write(fd, req, strlen(req));
  char buf[64];
  return read(fd, buf, sizeof buf) > 0 ? 0 : 1;
}
"""

# A program interpreter that is no loader: GET /interp from 127.0.0.1:PORT (the last argument)
# with raw system calls (x86-64), no libc.
RAW_INTERP = r"""
static long sys(long n, long a, long b, long c) {
  long r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
  return r;
}
void entry(long* sp) {
  long argc = sp[0];
  char** argv = (char**)(sp + 1);
  const char* p = argv[argc - 1];
  unsigned port = 0;
  while (*p >= '0' && *p <= '9') port = port * 10 + (unsigned)(*p++ - '0');
  unsigned char addr[16] = {2, 0, (unsigned char)(port >> 8), (unsigned char)port, 127, 0, 0, 1};
  long fd = sys(41, 2, 1, 0);
  long rc = sys(42, fd, (long)addr, 16);
  static const char req[] = "GET /interp HTTP/1.0\r\nHost: interp\r\n\r\n";
  char buf[16];
  if (rc == 0) { sys(1, fd, (long)req, sizeof req - 1); sys(0, fd, (long)buf, sizeof buf); }
  sys(60, rc == 0 ? 0 : 1, 0, 0);
}
__asm__(".globl _start\n_start:\n mov %rsp, %rdi\n and $-16, %rsp\n call entry\n hlt\n");
"""

HELLO = "int main(void) { return 0; }\n"

# An audit library (LD_AUDIT) that sends GET /audit to 127.0.0.1:$AUDIT_PORT when loaded.
AUDIT_LIB = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
unsigned int la_version(unsigned int v) {
  const char* p = getenv("AUDIT_PORT");
  if (p != NULL) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(p));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    static const char req[] = "GET /audit HTTP/1.0\r\nHost: audit\r\n\r\n";
    char buf[16];
    if (connect(fd, (struct sockaddr*)&a, sizeof a) == 0) {
      write(fd, req, sizeof req - 1);
      read(fd, buf, sizeof buf);
    }
    close(fd);
  }
  return LAV_CURRENT;
}
"""

GO_CLIENT = """package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	c, err := net.Dial("tcp", os.Args[1]+":"+os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(c, "GET %s HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n", os.Args[3], os.Args[1])
	buf := make([]byte, 64)
	c.Read(buf)
}
"""

GO_LIBRARY = """package main

import "C"

import (
	"fmt"
	"net"
)

//export Fetch
func Fetch(host *C.char, port C.int) C.int {
	c, err := net.Dial("tcp", fmt.Sprintf("%s:%d", C.GoString(host), int(port)))
	if err != nil {
		return 1
	}
	fmt.Fprintf(c, "GET /cshared HTTP/1.0\\r\\nHost: %s\\r\\n\\r\\n", C.GoString(host))
	buf := make([]byte, 64)
	c.Read(buf)
	c.Close()
	return 0
}

func main() {}
"""


def pt_interp(path):
    """The PT_INTERP of a 64-bit ELF file (the dynamic loader it names), or None."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data,
                                                                 phoff + i * phentsize)
        if p_type == 3:
            return data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    return None


class ExecBinary(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.start_dns()
        self.loader = pt_interp(os.path.realpath(shutil.which("sh")))
        self.use_config(allow=False)

    def use_config(self, allow):
        # `refuse` (the default is `strict`, which would run these programs routed in strict
        # mode): the guard's verdict shows as a refusal.
        service = {"loopback": "overlay", "unrouted_exec": "allow" if allow else "refuse"}
        self.write_config([self.socks5_entry("tor", self.proxy_port)], service=service)

    def cc(self, name, source, *flags):
        if shutil.which("cc") is None:
            self.skipTest("no C compiler")
        src = os.path.join(self.dir, name + ".c")
        exe = os.path.join(self.dir, name)
        with open(src, "w") as f:
            f.write(source)
        built = subprocess.run(["cc", "-O1", "-o", exe, src, *flags], capture_output=True,
                               text=True)
        if built.returncode != 0:
            self.skipTest(f"cannot build {name} ({' '.join(flags)}): {built.stderr[-300:]}")
        return exe

    def assert_refused(self, proc, *phrases):
        self.assertNotEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        for phrase in phrases:
            self.assertIn(phrase, proc.stderr)
        self.assertTargetSawNothing(self.record)
        self.assertEqual(self.dns_queries("example.test"), [])

    def assert_direct(self, proc, path):
        """The control: unrouted, the program reached the target itself."""
        self.assertOk(proc)
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(self.record)],
                         [(harness.DIRECT_PEER, path)])

    def test_static_program_through_the_loader_is_refused(self):
        if self.loader is None or not os.path.exists(self.loader):
            self.skipTest("no dynamic loader found in /bin/sh")
        exe = self.cc("static-client", CLIENT, "-static")
        cmd = [self.loader, "--argv0", "client", exe, "example.test", str(self.port), "/ld"]
        self.assert_refused(self.run_via("app:tor", *cmd),
                            "the dynamic loader would run it, and it is statically linked")
        # A dynamic program through the loader is fine (and routed).
        dyn = self.cc("dynamic-client", CLIENT)
        self.assertOk(self.run_via("app:tor", self.loader, dyn, "example.test", str(self.port),
                                   "/ld-dynamic"))
        self.assertReachedThroughProxy(self.record, "example.test", path="/ld-dynamic")
        os.remove(self.record)
        self.use_config(allow=True)
        self.assert_direct(self.run_via("app:tor", *cmd), "/ld")
        self.assertNotEqual(self.dns_queries("example.test"), [])

    def chain(self, levels):
        exe = self.cc("static-client", CLIENT, "-static")
        interp = exe
        for i in range(levels):
            script = os.path.join(self.dir, f"level{i + 1}")
            with open(script, "w") as f:
                f.write(f"#!{interp}\n")
            os.chmod(script, 0o755)
            interp = script
        return interp

    def check_chain(self, levels):
        top = self.chain(levels)
        cmd = [top, "example.test", str(self.port), f"/chain{levels}"]
        self.assert_refused(self.run_via("app:tor", *cmd), "it is statically linked")
        self.use_config(allow=True)
        self.assert_direct(self.run_via("app:tor", *cmd), f"/chain{levels}")

    def test_two_level_interpreter_chain_is_followed(self):
        self.check_chain(2)

    def test_three_level_interpreter_chain_is_followed(self):
        self.check_chain(3)

    def test_pt_interp_naming_a_static_program_is_refused(self):
        if os.uname().machine != "x86_64":
            self.skipTest("the raw interpreter is x86-64 code")
        raw = self.cc("raw-interp", RAW_INTERP, "-static", "-nostdlib", "-fno-stack-protector")
        prog = self.cc("odd-interp", HELLO, f"-Wl,--dynamic-linker={raw}")
        proc = self.run_via("app:tor", prog, str(self.port))
        self.assert_refused(proc, "its program interpreter is not this process's dynamic loader",
                            raw)
        self.use_config(allow=True)
        self.assert_direct(self.run_via("app:tor", prog, str(self.port)), "/interp")

    def test_execute_only_binary_is_refused_for_an_ordinary_user(self):
        # Mode 0111: the kernel runs it, the check cannot read it to tell static from dynamic.
        if subprocess.run(["id", "viatest"], capture_output=True).returncode != 0:
            self.skipTest("no viatest user (scripts/install-deps.sh creates it)")
        exe = self.cc("static-client", CLIENT, "-static")
        hidden = os.path.join(self.dir, "exec-only")
        shutil.copy(exe, hidden)
        os.chmod(self.dir, 0o755)
        shutil.chown(hidden, user="viatest")
        os.chmod(hidden, 0o111)
        as_user = ["setpriv", "--reuid=viatest", "--regid=viatest", "--clear-groups"]
        cmd = as_user + ["sh", "-c", '"$@"', "sh", hidden, "example.test", str(self.port),
                         "/exec-only"]
        self.assert_refused(self.run_via("app:tor", *cmd), "it cannot be read", hidden)
        # unrouted_exec: allow is the broker's to say (a program controls VIA_UNROUTED_EXEC), and
        # viatest cannot reach root's broker (its socket directory is 0700): the guard cannot
        # learn the setting and still refuses, naming the broker it could not ask.
        self.use_config(allow=True)
        self.assert_refused(self.run_via("app:tor", *cmd), "it cannot be read", "via broker")

    def test_audit_library_is_refused(self):
        lib = self.cc("audit.so", AUDIT_LIB, "-shared", "-fPIC")
        code = ("import os, subprocess, sys\n"
                f"env = dict(os.environ, LD_AUDIT={lib!r}, AUDIT_PORT='{self.port}')\n"
                "try:\n"
                "    sys.exit(subprocess.call(['/bin/true'], env=env))\n"
                "except PermissionError as e:\n"
                "    print('refused:', e); sys.exit(3)\n")
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertEqual(proc.returncode, 3, proc.stdout + proc.stderr)
        self.assert_refused(proc, "audit library", "LD_AUDIT=")
        # The loader's --audit option too.
        proc = self.run_via("app:tor", self.loader, "--audit", lib, "/bin/true",
                            env=dict(self.env, AUDIT_PORT=str(self.port)))
        self.assert_refused(proc, "audit library")
        self.use_config(allow=True)
        self.run_via("app:tor", harness.PYTHON, "-c", code)  # the shim may then fail to load
        self.assertEqual([(r["peer"], r["path"]) for r in self.records(self.record)],
                         [(harness.DIRECT_PEER, "/audit")])

    def test_go_without_build_id_is_refused(self):
        exe = self.go_build("go-client", GO_CLIENT, "-ldflags=-buildid=")
        with open(exe, "rb") as f:
            self.assertNotIn(b"Go\0\0\x04\0\0\0", f.read(8192))  # no build-ID note up front
        self.assertIsNotNone(pt_interp(exe), "cgo on: expected a dynamically linked program")
        cmd = [exe, "example.test", str(self.port), "/go"]
        self.assert_refused(self.run_via("app:tor", *cmd), "it is a Go program")
        self.use_config(allow=True)
        self.assert_direct(self.run_via("app:tor", *cmd), "/go")
        self.assertNotEqual(self.dns_queries("example.test"), [])

    def test_go_c_shared_library_is_refused_at_dlopen(self):
        lib = self.go_build("libfetch.so", GO_LIBRARY, "-buildmode=c-shared", "-ldflags=-buildid=")
        code = ("import ctypes, sys\n"
                "try:\n"
                f"    lib = ctypes.CDLL({lib!r})\n"
                "except OSError as e:\n"
                "    print('refused:', e); sys.exit(3)\n"
                f"sys.exit(lib.Fetch(b'example.test', {self.port}))\n")
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertEqual(proc.returncode, 3, proc.stdout + proc.stderr)
        self.assertIn("holds Go code", proc.stdout)  # dlerror() tells ctypes why
        self.assert_refused(proc)
        # Preloaded instead of dlopen'ed: the program stops at its first routed call.
        env = dict(self.env, LD_PRELOAD=lib)
        proc = self.run_via("app:tor", harness.PYTHON, "-c",
                            f"import socket; socket.create_connection(('example.test', "
                            f"{self.port}))", env=env)
        self.assertEqual(proc.returncode, 126, proc.stderr)
        self.assertIn(f"Go code is loaded in this process ({lib})", proc.stderr)
        self.assertTargetSawNothing(self.record)
        self.use_config(allow=True)
        self.assert_direct(self.run_via("app:tor", harness.PYTHON, "-c", code), "/cshared")


if __name__ == "__main__":
    harness.main()
