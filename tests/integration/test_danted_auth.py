"""RFC 1929 username/password against a real danted, and isolate_streams' fresh credentials.

danted authenticates `username` against the system user `viatest` (scripts/install-deps.sh
creates it); a second danted uses a PAM service that accepts any credentials, so the random
isolation usernames can be read from its log, one per connection.
"""
import re
import subprocess

import harness

USER, PASSWORD = "viatest", "via-test-password"


class DantedAuth(harness.ViaCase):
    def setUp(self):
        super().setUp()
        if subprocess.run(["id", USER], capture_output=True).returncode != 0:
            self.skipTest(f"system user {USER} missing (run scripts/install-deps.sh as root)")
        self.port, self.record = self.start_target()

    def test_username_password_reaches_danted(self):
        port, log = self.start_danted("username")
        self.write_config([self.socks5_entry("dante", port, f"username: {USER}",
                                             f"password: {PASSWORD}")])
        self.assertOk(self.run_via("app:dante", "curl", "-sSf", f"http://example.test:{self.port}/"))
        self.assertReachedThroughProxy(self.record, "example.test")
        self.assertEqual(harness.danted_users(log), [USER])
        self.assertIn((3, f"example.test.{self.port}"), harness.danted_requests(log))

    def test_wrong_password_fails_and_target_sees_nothing(self):
        port, log = self.start_danted("username")
        self.write_config([self.socks5_entry("dante", port, f"username: {USER}",
                                             "password: wrong")])
        proc = self.run_via("app:dante", "curl", "-sS", f"http://example.test:{self.port}/")
        self.assertFailed(proc, codes=(7, 97))
        self.assertIn("rejected username/password", proc.stderr)
        self.assertTargetSawNothing(self.record)
        # The attempt did reach danted, which refused it: the failure is the password's.
        self.assertIn(f'system password authentication failed for user "{USER}"',
                      harness.read_text(log))
        self.assertEqual(harness.danted_users(log), [])

    def test_isolate_streams_uses_a_new_username_per_connection(self):
        port, log = self.start_danted("pam.username", pam_service="via-test-sockd")
        self.write_config([self.socks5_entry("tor", port, "isolate_streams: true",
                                             f"username: {USER}", "password: ignored")])
        url = f"http://example.test:{self.port}/"
        for _ in range(3):  # three processes
            self.assertOk(self.run_via("app:tor", "curl", "-sSf", url))
        code = ("import urllib.request\n"
                f"for _ in range(3): urllib.request.urlopen('{url}').read()\n")
        self.assertOk(self.run_via("app:tor", harness.PYTHON, "-c", code))  # one process
        self.assertReachedThroughProxy(self.record, "example.test", count=6)
        names = harness.danted_users(log)
        self.assertEqual(len(names), 6, names)
        self.assertEqual(len(set(names)), 6, names)  # 3 processes and 3 connects of one process
        self.assertTrue(all(re.fullmatch(r"[0-9a-f]{16}", n) for n in names), names)


if __name__ == "__main__":
    harness.main()
