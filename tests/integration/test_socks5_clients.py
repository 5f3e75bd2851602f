"""Real client programs, unmodified, under `via run` through a real SOCKS5 proxy (microsocks).

The target is reached by a name only the proxy can resolve; the target records that the
request came from the proxy's outgoing address (127.0.0.2) and the Host it was asked for, and
microsocks logs the name it was asked to connect to.
"""
import os
import shutil
import subprocess

import harness


class Socks5Clients(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.proxy_port, self.proxy_log = self.start_microsocks()
        self.port, self.record = self.start_target()
        self.write_config([self.socks5_entry("tor", self.proxy_port)])
        self.url = f"http://example.test:{self.port}/hello"

    def assertProxySawName(self, name="example.test", port=None):
        self.assertMicrosocksConnected(self.proxy_log, f"{name}:{port or self.port}")

    def test_control_without_via_the_name_is_unknown_and_nothing_is_proxied(self):
        proc = subprocess.run(["curl", "-sS", self.url], env=self.env, capture_output=True,
                              text=True, timeout=30)
        self.assertFailed(proc, codes=(6,))  # could not resolve host: only the proxy knows it
        self.assertTargetSawNothing(self.record)
        self.assertEqual(harness.microsocks_destinations(self.proxy_log), [])

    def test_curl(self):
        proc = self.run_via("app:tor", "curl", "-sSf", self.url)
        self.assertOk(proc)
        self.assertEqual(proc.stdout, '{"ip": "127.0.0.2"}')
        self.assertReachedThroughProxy(self.record, "example.test", path="/hello")
        self.assertProxySawName()

    def test_wget(self):
        if shutil.which("wget") is None:
            self.skipTest("wget is not installed")
        proc = self.run_via("app:tor", "wget", "-qO-", self.url)
        self.assertOk(proc)
        self.assertEqual(proc.stdout, '{"ip": "127.0.0.2"}')
        self.assertReachedThroughProxy(self.record, "example.test", path="/hello")
        self.assertProxySawName()

    def test_python_urllib(self):
        code = f"import urllib.request; print(urllib.request.urlopen('{self.url}').read())"
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        self.assertIn('{"ip": "127.0.0.2"}', proc.stdout)
        self.assertReachedThroughProxy(self.record, "example.test", path="/hello")
        self.assertProxySawName()

    def test_python_asyncio_nonblocking(self):
        code = f"""
import asyncio, fcntl, os
async def main():
    r, w = await asyncio.open_connection('example.test', {self.port})
    fd = w.get_extra_info('socket').fileno()
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK, 'the socket must stay non-blocking'
    w.write(b'GET /async HTTP/1.0\\r\\nHost: example.test\\r\\n\\r\\n')
    data = await r.read()
    assert data.startswith(b'HTTP/1.0 200'), data[:40]
    print(w.get_extra_info('peername'))
asyncio.run(main())
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        self.assertOk(proc)
        self.assertRegex(proc.stdout, r"198\.1[89]\.")  # getpeername: the fake address
        self.assertReachedThroughProxy(self.record, "example.test", path="/async")
        self.assertProxySawName()

    def test_node_http_get(self):
        if shutil.which("node") is None:
            self.skipTest("node is not installed")
        code = (f"require('http').get('{self.url}', r => {{ console.log(r.statusCode); "
                "r.resume(); }).on('error', e => { console.error(e); process.exit(1); })")
        proc = self.run_via("app:tor", "node", "-e", code)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "200")
        self.assertReachedThroughProxy(self.record, "example.test", path="/hello")
        self.assertProxySawName()

    def test_git_clone_over_http(self):
        if shutil.which("git") is None:
            self.skipTest("git is not installed")
        docroot = os.path.join(self.dir, "www")
        os.makedirs(docroot)
        harness.make_git_repo(docroot, "repo.git", "routed\n")
        port, record = self.start_target(docroot=docroot)
        dest = os.path.join(self.dir, "clone")
        self.assertOk(self.run_via("app:tor", "git", "clone", "-q",
                                   f"http://git.test:{port}/repo.git", dest))
        with open(os.path.join(dest, "README")) as f:
            self.assertEqual(f.read(), "routed\n")
        recs = self.records(record)
        self.assertGreater(len(recs), 1)
        self.assertTrue(all(r["peer"] == "127.0.0.2" and r["host"] == f"git.test:{port}"
                            for r in recs), recs)
        self.assertIn("/repo.git/info/refs?service=git-upload-pack", [r["path"] for r in recs])
        self.assertProxySawName("git.test", port)

    def test_bare_ld_preload_starts_its_own_broker(self):
        if shutil.which("wget") is None:
            self.skipTest("wget is not installed")
        env = dict(self.env, LD_PRELOAD=harness.SHIM, VIA_NETWORK="app:tor",
                   VIA_CONFIG=self.config)
        proc = subprocess.run(["wget", "-qO-", self.url], env=env, capture_output=True,
                              text=True, timeout=60)
        self.assertOk(proc)
        self.assertReachedThroughProxy(self.record, "example.test", path="/hello")
        self.assertTrue(self.broker_pids(), "no broker was started")  # by the shim itself
        self.assertProxySawName()


if __name__ == "__main__":
    harness.main()
