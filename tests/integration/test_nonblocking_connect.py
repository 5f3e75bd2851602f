"""Non-blocking routed connects (issue 14, item 1): EINPROGRESS at once, the SOCKS5 handshake in
the shim's thread, the socket writable only once the overlay connection is ready.

The proxy is slow_socks5.py, a small SOCKS5 proxy that answers CONNECT after 1 s (or refuses,
closes, never answers). 50 serial handshakes would take 50 s: event-loop programs (node, Python
asyncio, curl --parallel) making 50 connections at once must finish in a few seconds with their
loop never stalled, and the target must have seen every request from the proxy. Edge cases
(epoll edge-triggered and one-shot, poll for POLLIN only, select, EALREADY/EISCONN, close and fork
while pending, blocking sockets) are driven by data/nbconnect.c, built here with cc.
"""
import json
import os
import subprocess
import time

import harness

N = 50
DELAY_MS = 1000


class NonBlockingConnect(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.start_dns()
        self.port, self.record = self.start_target()

    def start_slow_proxy(self, mode="ok", delay_ms=DELAY_MS):
        """slow_socks5.py in `mode`; returns (port, log)."""
        port = harness.free_port()
        log = os.path.join(self.dir, f"slow-{port}.log")
        p, _ = self.spawn([harness.PYTHON, os.path.join(harness.HERE, "slow_socks5.py"),
                           str(port), log, "--mode", mode, "--delay-ms", str(delay_ms)],
                          f"slow-{port}.out", proxy_hosts=True)
        harness.wait_port(port, proc=p)
        return port, log

    def proxy_lines(self, log, kind):
        return [l.split(" ", 1)[1] for l in harness.read_lines(log) if l.startswith(kind + " ")]

    def use_proxy(self, port, *extra, handshake="program"):
        self.write_config([self.socks5_entry("tor", port, *extra)],
                          service={"handshake": handshake})

    def run_c(self, mode, host="example.test", timeout=60):
        """Runs data/nbconnect.c under via; returns (proc, {key: value} of its output)."""
        return self.run_nbconnect("app:tor", mode, host, self.port, timeout=timeout)

    # The bounds carry slack for a loaded 2-core machine running the suite in parallel (the issue
    # asks for 3 s and 50 ms; alone here node takes about 2 s, and a plain node, no via, already
    # sees its 10 ms timer 50 ms late at times) and stay far from what serial handshakes give:
    # 50 s in all, the loop stalled 1 s at a time.
    def assertConcurrent(self, proc, log, elapsed_limit=6.0, gap_limit=0.1):
        """The program printed {"ok", "elapsed", "max_gap"}: all N requests answered within
        `elapsed_limit` s, its timer never late by more than `gap_limit` s beyond its period;
        the proxy saw at least N CONNECTs and the target N requests, all through the proxy."""
        self.assertOk(proc)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertEqual(out["ok"], N, out)
        self.assertLess(out["elapsed"], elapsed_limit, out)
        self.assertLess(out["max_gap"], 0.01 + gap_limit, out)
        # At least N: a happy-eyeballs program (node, curl) abandons a first attempt through
        # one fake address after 250 ms and connects through the other (docs/architecture.md).
        self.assertGreaterEqual(len(self.proxy_lines(log, "connect")), N,
                                harness.read_text(log)[-2000:])
        self.assertReachedThroughProxy(self.record, "example.test", count=N)

    # ---- event-loop programs -------------------------------------------------------------------

    def test_python_asyncio_makes_50_connections_at_once(self):
        self.asyncio_50()

    def test_python_asyncio_makes_50_connections_at_once_when_the_broker_runs_the_handshake(self):
        # `handshake: broker` (also the path of I2P and Tailscale): CONNECT with the socket
        # attached, the broker's reply is the completion.
        self.asyncio_50(handshake="broker")

    def asyncio_50(self, handshake="program"):
        proxy, log = self.start_slow_proxy()
        self.use_proxy(proxy, handshake=handshake)
        code = f"""
import asyncio, json, time
async def one(i):
    r, w = await asyncio.open_connection("example.test", {self.port})
    w.write(b"GET /a%d HTTP/1.0\\r\\nHost: example.test:{self.port}\\r\\n\\r\\n" % i)
    await w.drain()
    data = await r.read()
    w.close()
    return data.startswith(b"HTTP/1")
async def ticker(gap):
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gap[0] = max(gap[0], now - last)
        last = now
async def main():
    gap = [0.0]
    t = asyncio.ensure_future(ticker(gap))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    res = await asyncio.gather(*[one(i) for i in range({N})])
    print(json.dumps({{"ok": sum(res), "elapsed": time.monotonic() - t0, "max_gap": gap[0]}}))
asyncio.run(main())
"""
        proc = self.run_via("app:tor", harness.PYTHON, "-c", code)
        # asyncio resolves names in a thread pool: its threads share the GIL with the loop, so
        # the loop's own latency gets more room than node's.
        self.assertConcurrent(proc, log, gap_limit=0.2)

    def test_node_makes_50_fetches_at_once(self):
        if subprocess.run(["which", "node"], capture_output=True).returncode != 0:
            self.skipTest("node is not installed")
        proxy, log = self.start_slow_proxy()
        self.use_proxy(proxy)
        code = f"""
let gap = 0, last = performance.now();
const timer = setInterval(() => {{
  const now = performance.now(); gap = Math.max(gap, now - last); last = now;
}}, 10);
const http = require('http');
function one(i) {{
  return new Promise((resolve) => {{
    const req = http.get({{host: 'example.test', port: {self.port}, path: '/n' + i,
                           agent: false}}, (res) => {{
      res.resume(); res.on('end', () => resolve(res.statusCode === 200));
    }});
    req.on('error', (e) => {{ console.error(String(e)); resolve(false); }});
  }});
}}
setTimeout(async () => {{
  const t0 = performance.now();
  const res = await Promise.all(Array.from({{length: {N}}}, (_, i) => one(i)));
  clearInterval(timer);
  console.log(JSON.stringify({{ok: res.filter(Boolean).length,
                              elapsed: (performance.now() - t0) / 1000, max_gap: gap / 1000}}));
}}, 50);
"""
        proc = self.run_via("app:tor", "node", "-e", code)
        self.assertConcurrent(proc, log)

    def test_curl_parallel_makes_50_transfers_at_once(self):
        proxy, log = self.start_slow_proxy()
        self.use_proxy(proxy)
        urls = []
        for i in range(N):
            urls += ["-o", "/dev/null", f"http://example.test:{self.port}/c{i}"]
        t0 = time.monotonic()
        # --parallel-immediate: otherwise curl waits for its first connection to see whether
        # it can multiplex the others on it (HTTP/2), which makes the transfers serial anyway.
        proc = self.run_via("app:tor", "curl", "-sS", "--parallel", "--parallel-immediate",
                            "--parallel-max", str(N), "--max-time", "20", "-w", "%{http_code}\\n", *urls)
        elapsed = time.monotonic() - t0
        self.assertOk(proc)
        self.assertEqual(proc.stdout.split(), ["200"] * N, proc.stderr)
        # curl makes two attempts per transfer (happy eyeballs after 200 ms): 100 handshakes
        # and 150 descriptors in its poll; on a loaded machine that takes several seconds.
        self.assertLess(elapsed, 10.0, "serial handshakes: curl's loop waited for each")
        self.assertGreaterEqual(len(self.proxy_lines(log, "connect")), N)
        self.assertReachedThroughProxy(self.record, "example.test", count=N)

    # ---- failures --------------------------------------------------------------------------------

    def assertFailsWith(self, mode, expected, max_ms, handshake="program"):
        proxy, log = self.start_slow_proxy(mode=mode)
        self.use_proxy(proxy, "connect_timeout: 2s", handshake=handshake)
        proc, v = self.run_c("error")
        self.assertOk(proc)
        self.assertEqual(v.get("connect"), "EINPROGRESS", proc.stdout + proc.stderr)
        self.assertLess(int(v["connect_ms"]), 500, "connect waited for the handshake")
        self.assertEqual(v.get("so_error"), expected, proc.stdout + proc.stderr)
        self.assertLess(int(v["elapsed_ms"]), max_ms, proc.stdout)
        self.assertEqual(self.proxy_lines(log, "connect"), [f"example.test:{self.port}"])
        self.assertTargetSawNothing(self.record)
        return proc

    def test_a_refused_connect_gives_econnrefused(self):
        proc = self.assertFailsWith("refuse", "ECONNREFUSED", 1900)
        self.assertIn("connection refused", proc.stderr.lower())

    def test_a_proxy_that_closes_mid_handshake_gives_econnreset(self):
        self.assertFailsWith("close", "ECONNRESET", 1900)

    def test_a_proxy_that_never_answers_gives_etimedout_within_connect_timeout(self):
        proc = self.assertFailsWith("hang", "ETIMEDOUT", 3500)
        self.assertIn("did not finish the handshake within 2000 ms", proc.stderr)

    def test_failures_when_the_broker_runs_the_handshake(self):
        for mode, expected, max_ms in (("refuse", "ECONNREFUSED", 1900),
                                       ("hang", "ETIMEDOUT", 3500)):
            with self.subTest(mode=mode):
                self.assertFailsWith(mode, expected, max_ms, handshake="broker")
                self.stop_broker()

    # ---- edge cases ------------------------------------------------------------------------------

    def assertLateAndServed(self, proc, v, mode, first_key="first_ms"):
        """The socket showed ready only after the proxy's 1 s answer, and the request went
        through it."""
        self.assertOk(proc)
        self.assertEqual(v.get("connect"), "EINPROGRESS", proc.stdout + proc.stderr)
        if first_key:
            self.assertGreaterEqual(int(v[first_key]), DELAY_MS - 100, proc.stdout)
        self.assertEqual(v.get("so_error"), "0", proc.stdout)
        self.assertEqual(v.get("status"), "200", proc.stdout + proc.stderr)
        self.assertReachedThroughProxy(self.record, "example.test", path="/" + mode)

    def test_epollet_registered_before_connect_fires_once_when_ready(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("epoll-before")
        self.assertLateAndServed(proc, v, "epoll-before")
        self.assertEqual((v["events"], v["out"], v["data"]), ("1", "1", "42"), proc.stdout)

    def test_epollet_registered_after_connect_fires_once_when_ready(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("epoll-after")
        self.assertLateAndServed(proc, v, "epoll-after")
        self.assertEqual((v["events"], v["out"], v["data"]), ("1", "1", "42"), proc.stdout)

    def test_epollet_when_the_broker_runs_the_handshake(self):
        self.use_proxy(self.start_slow_proxy()[0], handshake="broker")
        proc, v = self.run_c("epoll-after")
        self.assertLateAndServed(proc, v, "epoll-after")
        self.assertEqual((v["events"], v["out"], v["data"]), ("1", "1", "42"), proc.stdout)

    def test_epolloneshot_fires_once_when_ready(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("oneshot")
        self.assertLateAndServed(proc, v, "oneshot")
        self.assertEqual((v["events"], v["out"]), ("1", "1"), proc.stdout)

    def test_poll_for_pollin_only_never_sees_the_proxys_reply(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("pollin")
        self.assertLateAndServed(proc, v, "pollin", first_key=None)
        self.assertEqual((v["pollin"], v["revents"]), ("0", "0"), proc.stdout)

    def test_select_sees_the_socket_writable_when_ready(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("select")
        self.assertLateAndServed(proc, v, "select")
        self.assertEqual((v["select"], v["writable"]), ("1", "1"), proc.stdout)

    def test_ppoll_and_pselect_see_the_socket_writable_when_ready(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("ppoll")
        self.assertLateAndServed(proc, v, "ppoll")
        self.assertEqual((v["ppoll"], v["revents"]), ("1", str(0x004)), proc.stdout)  # POLLOUT
        proc, v = self.run_c("pselect")
        self.assertOk(proc)
        self.assertEqual((v["pselect"], v["writable"], v["so_error"], v.get("status")),
                         ("1", "1", "0", "200"), proc.stdout + proc.stderr)
        self.assertGreaterEqual(int(v["first_ms"]), DELAY_MS - 100, proc.stdout)

    def test_connect_again_gives_ealready_then_eisconn_and_getpeername_enotconn(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("again")
        self.assertLateAndServed(proc, v, "again", first_key=None)
        self.assertEqual((v["second"], v["third"]), ("EALREADY", "EISCONN"), proc.stdout)
        self.assertEqual((v["peer_pending"], v["peer_is_target"]), ("ENOTCONN", "1"), proc.stdout)
        self.assertNotIn("failed", proc.stderr)

    def test_close_while_pending_closes_the_proxy_connection_and_sends_nothing(self):
        proxy, log = self.start_slow_proxy(mode="hang")
        self.use_proxy(proxy)
        proc, v = self.run_c("close")
        self.assertOk(proc)
        self.assertEqual((v.get("connect"), v.get("closed")), ("EINPROGRESS", "1"), proc.stdout)
        # The proxy saw the request, then the connection closed with nothing more sent, while
        # the program still ran (it sleeps 3 s after its close).
        self.assertEqual(self.proxy_lines(log, "closed"),
                         [f"example.test:{self.port} after 0 bytes"], harness.read_text(log))
        self.assertTargetSawNothing(self.record)

    def test_fork_while_pending_parent_and_child_see_the_same_result(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("fork")
        self.assertOk(proc)
        self.assertEqual(v.get("connect"), "EINPROGRESS", proc.stdout + proc.stderr)
        self.assertEqual((v["parent_poll"], v["parent_so_error"]), ("1", "0"), proc.stdout)
        self.assertEqual((v["child_poll"], v["child_so_error"]), ("1", "0"), proc.stdout)
        self.assertGreaterEqual(int(v["child_ms"]), DELAY_MS - 100, proc.stdout)
        self.assertEqual(v.get("status"), "200", proc.stdout + proc.stderr)
        self.assertReachedThroughProxy(self.record, "example.test", path="/fork")

    def test_exec_while_pending_hands_over_a_connected_socket(self):
        # The socket has no FD_CLOEXEC: exec waits for the handshake (the thread that drives it
        # ends with the image), and the new program's request goes through the proxy intact.
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("exec")
        self.assertOk(proc)
        self.assertEqual(v.get("connect"), "EINPROGRESS", proc.stdout + proc.stderr)
        self.assertEqual((v.get("child_so_error"), v.get("status")), ("0", "200"),
                         proc.stdout + proc.stderr)
        self.assertReachedThroughProxy(self.record, "example.test", path="/exec")

    def test_with_optimistic_data_the_socket_is_writable_before_the_proxy_answers(self):
        # optimistic_data + pipeline: once the shim's thread has written greeting and request the
        # connect is done for the program (writable, SO_ERROR 0); its request follows, and its
        # first read takes the proxy's reply, 1 s late, off the socket (status=200 is the
        # target's answer, whole).
        self.use_proxy(self.start_slow_proxy()[0], "pipeline: true", "optimistic_data: true")
        proc, v = self.run_c("select")
        self.assertOk(proc)
        self.assertEqual(v.get("connect"), "EINPROGRESS", proc.stdout + proc.stderr)
        self.assertLess(int(v["first_ms"]), DELAY_MS // 2, proc.stdout)
        self.assertEqual((v["select"], v["writable"], v["so_error"], v.get("status")),
                         ("1", "1", "0", "200"), proc.stdout + proc.stderr)
        self.assertReachedThroughProxy(self.record, "example.test", path="/select")

    def test_reads_and_writes_while_pending_give_eagain_and_send_nothing(self):
        # As the kernel's read or write of a connecting non-blocking socket: EAGAIN, and no byte
        # goes into the handshake (the proxy would take "x" for a broken request and the connect
        # would fail): the target sees only the request, whole.
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("io-pending")
        self.assertLateAndServed(proc, v, "io-pending")
        self.assertEqual((v["write"], v["read"], v["send"], v["recv"]),
                         ("EAGAIN", "EAGAIN", "EAGAIN", "EAGAIN"), proc.stdout)

    def test_a_socket_made_blocking_while_pending_waits_to_write(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("io-blocking")
        self.assertOk(proc)
        self.assertEqual((v.get("connect"), v.get("status")), ("EINPROGRESS", "200"),
                         proc.stdout + proc.stderr)
        self.assertGreaterEqual(int(v["first_ms"]), DELAY_MS - 100, proc.stdout)
        self.assertReachedThroughProxy(self.record, "example.test", path="/io-blocking")

    def check_fast_open(self, mode):
        # sendto/sendmsg with MSG_FASTOPEN connect as connect does: without a cookie the kernel
        # gives EINPROGRESS and sends no data, the program sends once the socket is writable.
        # The target sees only the request (no stray "G"), through the proxy.
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c(mode)
        self.assertLateAndServed(proc, v, mode)
        self.assertEqual((v["second"], v["poll"]), ("EALREADY", "1"), proc.stdout)

    def test_tcp_fast_open_sendto_gives_einprogress_sends_nothing_then_ealready(self):
        self.check_fast_open("fastopen")

    def test_tcp_fast_open_sendmsg_gives_einprogress_sends_nothing_then_ealready(self):
        self.check_fast_open("fastopen-msg")

    def test_a_blocking_socket_still_waits_in_connect(self):
        self.use_proxy(self.start_slow_proxy()[0])
        proc, v = self.run_c("blocking")
        self.assertOk(proc)
        self.assertEqual(v.get("connect"), "0", proc.stdout + proc.stderr)
        self.assertGreaterEqual(int(v["connect_ms"]), DELAY_MS - 100, proc.stdout)
        self.assertEqual(v.get("status"), "200", proc.stdout)
        self.assertReachedThroughProxy(self.record, "example.test", path="/blocking")


if __name__ == "__main__":
    harness.main()
