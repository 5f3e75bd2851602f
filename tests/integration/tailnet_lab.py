"""The local tailnet of the Tailscale tests (tailscale.com's testcontrol with DERP and STUN, tsnet
peer nodes, via's node helper), shared by test_tailscale.py and test_routes_headline.py.

TailnetLab is a mixin for a harness.ViaCase: setUp_tailnet() checks the binaries and the
namespace's link, start_control() and start_peer() start the far side, ts_entry() writes via's
network.tailscale entry for it.
"""
import json
import os
import subprocess

import harness

TAILNET = os.path.join(harness.BUILD, "tailnet")
HELPER = os.path.join(harness.BUILD, "via-tsnet")
CONTROL = os.path.join(TAILNET, "control")
PEER = os.path.join(TAILNET, "peer")
TAILSCALED = os.path.join(TAILNET, "tailscaled")
AUTH_KEY = "tskey-via-test-0123456789"
DOMAIN = "tailnet.test"

def _ensure_link():
    """tsnet waits for a non-loopback interface before it talks to control."""
    if subprocess.run(["ip", "link", "show", "via-ts0"], capture_output=True).returncode == 0:
        return
    subprocess.run(["ip", "link", "add", "via-ts0", "type", "veth", "peer", "name", "via-ts1"],
                   check=True)
    subprocess.run(["ip", "addr", "add", "192.0.2.1/24", "dev", "via-ts0"], check=True)
    for dev in ("via-ts0", "via-ts1"):
        subprocess.run(["ip", "link", "set", dev, "up"], check=True)



class TailnetLab:
    """Helpers for a harness.ViaCase (self.spawn, self.dir, self.fail)."""

    def setUp_tailnet(self, domain=DOMAIN):
        self.require_namespace()
        for path in (HELPER, CONTROL, PEER):
            if not os.access(path, os.X_OK):
                self.skipTest(f"{path} was not built (needs Go and the tailscale.com module: "
                              "scripts/install-deps.sh, then cmake --build build)")
        _ensure_link()
        self.control_url = self.start_control(domain=domain)

    # ---- the tailnet -------------------------------------------------------------------------
    def _json_line(self, proc, log, key, timeout=60):
        found = {}

        def ready():
            for line in harness.read_lines(log):
                if line.startswith("{") and key in line:
                    found.update(json.loads(line))
                    return True
            return proc.poll() is not None
        harness.wait_for(ready, timeout=timeout, interval=0.1)
        if not found:
            self.fail(f"{os.path.basename(log)} did not start:\n{harness.read_text(log)[-3000:]}")
        return found

    def start_control(self, auth_key=AUTH_KEY, log_name="control.log", domain=DOMAIN):
        """A control server (MagicDNS suffix `domain`); the first one started is
        self.control_admin's."""
        p, log = self.spawn([CONTROL, "-authkey", auth_key, "-magicdns", domain], log_name)
        info = self._json_line(p, log, "control_url")
        if not hasattr(self, "control_admin"):
            self.control_admin = info["control_url"]
        return info["control_url"]

    def start_peer(self, hostname, ports=(7000,), http=(8000,)):
        """A tsnet node that listens on `ports` (line protocol) and `http` (HTTP) and records
        every connection."""
        record = os.path.join(self.dir, f"{hostname}.jsonl")
        open(record, "w").close()
        p, log = self.spawn([PEER, "-hostname", hostname, "-dir", os.path.join(self.dir, hostname),
                             "-control", self.control_url, "-authkey", AUTH_KEY,
                             "-listen", ",".join(map(str, ports)),
                             "-http", ",".join(map(str, http)), "-record", record],
                            f"{hostname}.log")
        info = self._json_line(p, log, "admin", timeout=90)
        info["record"] = record
        return info

    def ts_entry(self, name, hostname, *extra, auth_key=AUTH_KEY, control_url=None,
                 timeout="60s"):
        lines = [f"name: {name}", "kind: network.tailscale", f"hostname: {hostname}",
                 f"control_url: {control_url or self.control_url}", f"helper: {HELPER}",
                 f"connect_timeout: {timeout}"]
        if auth_key is not None:
            lines.append(f"auth_key: {auth_key}")
        return lines + list(extra)

