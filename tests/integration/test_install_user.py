"""`via install --user` (docs/install.md): afterwards a login shell and a service started the
way systemd's user manager starts one run a program named in a via.program rule routed (the
proxy saw it), without `via run`; `--uninstall` leaves the home directory byte for byte as it
was; it never replaces a file it did not write."""
import os
import shutil
import stat
import subprocess

import harness

GENERATOR = "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
PATH = "/usr/local/bin:/usr/bin:/bin"


def snapshot(top):
    """Every entry under `top`: path -> (type, mode, content or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), f.read())
    return out


class InstallUser(harness.ViaCase):
    def setUp(self):
        super().setUp()
        # A home with a profile that does not end with a newline, a ~/.config that exists, and
        # the config (kept out of the home, so that the home's snapshot is only the home's).
        self.home = os.path.join(self.dir, "home")
        os.makedirs(os.path.join(self.home, ".config", "other"))
        with open(os.path.join(self.home, ".profile"), "w") as f:
            f.write("# my profile\nexport FROM_PROFILE=1")
        os.chmod(os.path.join(self.home, ".profile"), 0o600)
        with open(os.path.join(self.home, ".bashrc"), "w") as f:
            f.write("alias ll='ls -l'\n")
        with open(os.path.join(self.home, ".config", "other", "settings"), "w") as f:
            f.write("x=1\n")
        self.before = snapshot(self.home)
        self.env = dict(self.env, HOME=self.home)
        self.env.pop("XDG_CONFIG_HOME", None)

    def install(self, *args):
        return subprocess.run([harness.VIA, "install", "--user", *args], env=self.env,
                              capture_output=True, text=True, timeout=30)

    def routed_config(self):
        """A config whose via.program rule sends curl through microsocks; (microsocks log,
        target port, target record)."""
        port, log = self.start_microsocks()
        self.write_config([self.socks5_entry("px", port),
                           ["name: curl", "kind: via.program", "match: {exe: curl}",
                            "network: app:px"]])
        target, record = self.start_target()
        return log, target, record

    def test_login_shell_and_user_service_route_a_ruled_program(self):
        self.require_namespace()
        log, target, record = self.routed_config()
        proc = self.install("-c", self.config)
        self.assertOk(proc)
        self.assertIn("LD_PRELOAD=", proc.stdout)  # the lines cron needs
        # A login shell with nothing inherited: only what ~/.profile sets.
        login = subprocess.run(
            ["env", "-i", f"HOME={self.home}", f"XDG_RUNTIME_DIR={self.runtime}", f"PATH={PATH}",
             "bash", "-l", "-c", f"curl -sSf http://example.test:{target}/login"],
            capture_output=True, text=True, timeout=60)
        self.assertOk(login)
        self.assertReachedThroughProxy(record, "example.test", path="/login")
        self.assertMicrosocksConnected(log, f"example.test:{target}")

        # A user service: the environment systemd's user manager gives it, from environment.d.
        # A real `systemd-run --user` would use the user manager's environment.d, read at its
        # start from the real HOME, not this test's: the start is emulated in either case.
        manager = subprocess.run(["systemctl", "--user", "is-system-running"],
                                 capture_output=True, env=self.env).returncode == 0
        if os.access(GENERATOR, os.X_OK):
            # systemd's own environment.d generator (what the user manager runs at start).
            gen = subprocess.run([GENERATOR], env={"HOME": self.home}, capture_output=True,
                                 text=True, check=True)
            service_env = dict(l.split("=", 1) for l in gen.stdout.splitlines() if "=" in l)
            how = "systemd's environment.d generator"
        else:
            service_env = {}
            path = os.path.join(self.home, ".config", "environment.d", "60-via.conf")
            with open(path) as f:
                for line in f:
                    if line.strip() and not line.startswith("#"):
                        k, v = line.rstrip("\n").split("=", 1)
                        # ${LD_PRELOAD:+:$LD_PRELOAD} with nothing set before: empty.
                        service_env[k] = v.replace("${LD_PRELOAD:+:$LD_PRELOAD}", "")
            how = "60-via.conf read as systemd would (no generator here)"
        print(f"note: {'a' if manager else 'no'} user systemd runs here; a service start is "
              f"emulated with {how}")
        self.assertEqual(service_env["VIA_CONFIG"], self.config)
        service_env.update(HOME=self.home, XDG_RUNTIME_DIR=self.runtime, PATH=PATH)
        service = subprocess.run(["curl", "-sSf", f"http://example.test:{target}/service"],
                                 env=service_env, capture_output=True, text=True, timeout=60)
        self.assertOk(service)
        self.assertReachedThroughProxy(record, "example.test", count=2)
        self.assertEqual(self.records(record)[1]["path"], "/service")

        self.assertOk(self.install("--uninstall"))
        self.assertEqual(snapshot(self.home), self.before)

    def test_install_is_idempotent_and_uninstall_restores_the_home(self):
        self.write_config([self.socks5_entry("px", 1080)])
        self.assertOk(self.install("-c", self.config))
        once = snapshot(self.home)
        self.assertIn(os.path.join(".config", "environment.d", "60-via.conf"), once)
        self.assertIn(os.path.join(".config", "systemd", "user", "via-broker.service"), once)
        profile = once[".profile"][2].decode()
        self.assertTrue(profile.startswith("# my profile\nexport FROM_PROFILE=1\n"
                                           "# >>> via install --user >>>\n"), profile)
        self.assertTrue(profile.endswith("# <<< via install --user <<<\n"), profile)
        self.assertEqual(once[".profile"][1], 0o600)
        self.assertOk(self.install("-c", self.config))
        self.assertEqual(snapshot(self.home), once)
        self.assertOk(self.install("--uninstall"))
        self.assertEqual(snapshot(self.home), self.before)
        # Nothing left to undo: still the same.
        proc = self.install("--uninstall")
        self.assertOk(proc)
        self.assertIn("nothing to undo", proc.stdout)
        self.assertEqual(snapshot(self.home), self.before)

    def test_text_added_around_the_block_stays(self):
        self.write_config([self.socks5_entry("px", 1080)])
        self.assertOk(self.install("-c", self.config))
        with open(os.path.join(self.home, ".profile"), "a") as f:
            f.write("export AFTER=1\n")
        self.assertOk(self.install("--uninstall"))
        with open(os.path.join(self.home, ".profile")) as f:
            self.assertEqual(f.read(), "# my profile\nexport FROM_PROFILE=1\nexport AFTER=1\n")

    def test_bash_profile_gets_the_block_too(self):
        # bash -l reads ~/.bash_profile instead of ~/.profile when it exists.
        bash_profile = os.path.join(self.home, ".bash_profile")
        with open(bash_profile, "w") as f:
            f.write("[ -f ~/.bashrc ] && . ~/.bashrc\n")
        before = snapshot(self.home)
        self.write_config([self.socks5_entry("px", 1080)])
        self.assertOk(self.install("-c", self.config))
        proc = subprocess.run(["env", "-i", f"HOME={self.home}", f"PATH={PATH}", "bash", "-l",
                               "-c", 'echo "$VIA_CONFIG"'], capture_output=True, text=True)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), self.config)
        self.assertOk(self.install("--uninstall"))
        self.assertEqual(snapshot(self.home), before)

    def test_never_replaces_a_file_it_did_not_write(self):
        envd = os.path.join(self.home, ".config", "environment.d")
        os.makedirs(envd)
        with open(os.path.join(envd, "60-via.conf"), "w") as f:
            f.write("MINE=1\n")
        before = snapshot(self.home)
        self.write_config([self.socks5_entry("px", 1080)])
        proc = self.install("-c", self.config)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn("was not written by `via install --user`", proc.stderr)
        self.assertEqual(snapshot(self.home), before)
        self.assertOk(self.install("--uninstall"))
        self.assertEqual(snapshot(self.home), before)

    def test_a_config_that_does_not_load_is_refused(self):
        self.write_config([["name: tor", "kind: network.socks5", "host: 127.0.0.1",
                            "port: 70000"]])
        proc = self.install("-c", self.config)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("invalid port", proc.stderr)
        self.assertEqual(snapshot(self.home), self.before)

    def test_usage(self):
        proc = subprocess.run([harness.VIA, "install"], env=self.env, capture_output=True,
                              text=True)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("install needs --user", proc.stderr)
        proc = subprocess.run([harness.VIA, "install", "--help"], env=self.env,
                              capture_output=True, text=True)
        self.assertOk(proc)
        for s in ("--uninstall", "environment.d", "~/.profile", "via-broker.service",
                  "Exit status"):
            self.assertIn(s, proc.stdout)


if __name__ == "__main__":
    harness.main()
