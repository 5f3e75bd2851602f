"""Pipelined SOCKS5 (`pipeline: true` on a network.socks5 entry).

The greeting, the credentials (configured or isolation ones) and the CONNECT request go out in one
write: one round trip to the proxy instead of two or three. A recording relay
(bench/delay_relay.py) sits between the program and the proxy and logs each chunk the client
wrote and whether the proxy had answered anything yet: that is what the proxy's side saw. Both
handshake engines are checked (the shim's, `handshake: program`, and the broker's, `handshake:
broker`), against danted, which takes pipelined requests, and microsocks 1.0.3, which does not
(it reads one message per recv() and drops the rest).
"""
import re

import harness

def request(name, port):
    """The CONNECT request for `name`:`port` (ATYP 3), as hex."""
    return (bytes([5, 1, 0, 3, len(name)]) + name.encode() + port.to_bytes(2, "big")).hex()


def auth(user, password):
    return (bytes([1, len(user)]) + user.encode() + bytes([len(password)]) +
            password.encode()).hex()


class Pipeline(harness.ViaCase):
    def setUp(self):
        super().setUp()
        self.start_dns()
        self.port, self.record = self.start_target()

    def fetch(self, host="example.test", timeout=30):
        return self.run_via("app:tor", "curl", "-sS", "--max-time", "20",
                            f"http://{host}:{self.port}/pipelined", timeout=timeout)

    def assertFirstWrite(self, chunks, expected_hex):
        """The first connection's first write carried `expected_hex`, in one piece, before the
        proxy said anything; connections made by wait_port have no chunks and are skipped."""
        conns = sorted({c["conn"] for c in chunks})
        self.assertTrue(conns, "the relay saw no write")
        first = [c for c in chunks if c["conn"] == conns[0]]
        self.assertEqual(first[0]["seq"], 0)
        self.assertFalse(first[0]["answered"], first)
        self.assertEqual(first[0]["hex"], expected_hex, first)

    def test_the_shim_pipelines_greeting_credentials_and_connect_through_danted(self):
        proxy, log = self.start_danted(method="pam.username", pam_service="via-test-sockd")
        relay, chunks = self.start_tap_relay(proxy)
        self.write_config([self.socks5_entry("tor", relay, "username: alice",
                                             "password: secret", "pipeline: true")])
        proc = self.fetch()
        self.assertOk(proc)
        self.assertReachedThroughProxy(self.record, "example.test", path="/pipelined")
        self.assertFirstWrite(chunks(), "050102" + auth("alice", "secret") +
                              request("example.test", self.port))
        self.assertEqual(harness.danted_requests(log), [(3, f"example.test.{self.port}")])
        self.assertIn("alice", harness.danted_users(log))
        self.assertEqual(self.dns_queries(".test"), [])

    def test_isolation_credentials_are_pipelined_too(self):
        proxy, log = self.start_danted(method="pam.username", pam_service="via-test-sockd")
        relay, chunks = self.start_tap_relay(proxy)
        self.write_config([self.socks5_entry("tor", relay, "isolate_streams: true",
                                             "pipeline: true")])
        proc = self.fetch()
        self.assertOk(proc)
        self.assertReachedThroughProxy(self.record, "example.test")
        first = chunks()[0]
        self.assertFalse(first["answered"], first)
        m = re.fullmatch(r"050102" r"0110((?:3[0-9]|6[1-6]){16})10((?:3[0-9]|6[1-6]){16})(.*)",
                         first["hex"])
        self.assertIsNotNone(m, first)
        self.assertEqual(m.group(1), m.group(2), "the isolation credential is user and password")
        self.assertEqual(m.group(3), request("example.test", self.port))
        self.assertIn(bytes.fromhex(m.group(1)).decode(), harness.danted_users(log))

    def test_the_broker_pipelines_when_it_runs_the_handshake(self):
        proxy, log = self.start_danted(method="none")
        relay, chunks = self.start_tap_relay(proxy)
        self.write_config([self.socks5_entry("tor", relay, "pipeline: true")],
                          service={"handshake": "broker"})
        proc = self.fetch()
        self.assertOk(proc)
        self.assertReachedThroughProxy(self.record, "example.test")
        self.assertFirstWrite(chunks(), "050100" + request("example.test", self.port))
        self.assertEqual(harness.danted_requests(log), [(3, f"example.test.{self.port}")])

    def test_strict_mode_pipelines_for_a_static_program(self):
        # A static program: the shim cannot cover it, `via run --strict` places its connect and
        # runs the handshake with the same machine and the same plan.
        self.require_namespace()
        exe = self.static_gai_client()
        proxy, log = self.start_danted(method="none")
        relay, chunks = self.start_tap_relay(proxy)
        self.write_config([self.socks5_entry("tor", relay, "pipeline: true")])
        proc = self.via("run", "--strict", "--network", "app:tor", "--", exe, "example.test",
                        str(self.port), "static")
        self.assertOk(proc)
        self.assertReachedThroughProxy(self.record, "example.test", path="/static")
        self.assertFirstWrite(chunks(), "050100" + request("example.test", self.port))
        self.assertEqual(harness.danted_requests(log), [(3, f"example.test.{self.port}")])

    def test_without_pipeline_the_greeting_goes_alone(self):
        proxy, log = self.start_microsocks()
        relay, chunks = self.start_tap_relay(proxy)
        self.write_config([self.socks5_entry("tor", relay)])  # pipeline: false, the default
        proc = self.fetch()
        self.assertOk(proc)
        self.assertReachedThroughProxy(self.record, "example.test")
        got = chunks()
        self.assertEqual([(c["hex"], c["answered"]) for c in got[:2]],
                         [("050100", False), (request("example.test", self.port), True)], got)
        self.assertMicrosocksConnected(log, f"example.test:{self.port}")

    def test_pipeline_false_works_with_microsocks_and_credentials(self):
        proxy, log = self.start_microsocks(user="bob", password="hunter2")
        for handshake in ("program", "broker"):
            with self.subTest(handshake=handshake):
                self.write_config([self.socks5_entry("tor", proxy, "username: bob",
                                                     "password: hunter2", "pipeline: false")],
                                  service={"handshake": handshake}, name=f"{handshake}.yaml")
                self.assertOk(self.fetch())
        self.assertReachedThroughProxy(self.record, "example.test", count=2)
        self.assertEqual(harness.microsocks_destinations(log),
                         [f"example.test:{self.port}"] * 2)

    def test_microsocks_cannot_take_it_and_the_timeout_says_so(self):
        # microsocks 1.0.3 answers the greeting and drops the request that came with it.
        proxy, log = self.start_microsocks()
        for handshake in ("program", "broker"):
            with self.subTest(handshake=handshake):
                self.write_config([self.socks5_entry("tor", proxy, "pipeline: true",
                                                     "connect_timeout: 1s")],
                                  service={"handshake": handshake}, name=f"{handshake}.yaml")
                proc = self.fetch()
                self.assertFailed(proc)
                said = proc.stderr + "\n".join(self.broker_log())
                self.assertIn("did not finish the handshake within 1000 ms (it answered the "
                              "greeting but not the request sent with it", said)
                self.assertIn("needs `pipeline: false`", said)
        self.assertEqual(harness.microsocks_destinations(log), [])
        self.assertTargetSawNothing(self.record)


if __name__ == "__main__":
    harness.main()
