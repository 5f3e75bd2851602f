"""The Debian package (docs/install.md): `cpack -G DEB` builds it, dpkg unpacks it into a clean
root, and what it installs works there: the installed `via run` finds the installed shim and routes
curl through a proxy this test starts; both manual pages render without a warning; the bash
completion loads and completes a command and an overlay name of a configuration.

Slow (label `slow`): packing the Tailscale helper takes a while."""
import os
import re
import shutil
import subprocess
import tempfile

import harness


class Package(harness.ViaCase):
    root = None  # the package unpacked (dpkg -x), shared by the tests of this class
    deb = None

    @classmethod
    def setUpClass(cls):
        cls.why_not = None
        config = os.path.join(harness.BUILD, "CPackConfig.cmake")
        for tool in ("cpack", "dpkg-deb", "dpkg-shlibdeps"):
            if shutil.which(tool) is None:
                cls.why_not = f"{tool} is not installed (scripts/install-deps.sh installs it)"
                return
        if not os.path.exists(config):
            cls.why_not = f"{config} does not exist (configure the build first)"
            return
        cls.work = tempfile.mkdtemp(prefix="via-deb-")
        # -B: the package and CPack's staging go to a directory of our own, not the build tree.
        cls.cpack = subprocess.run(["cpack", "-G", "DEB", "--config", config, "-B", cls.work],
                                   capture_output=True, text=True, timeout=600)
        debs = [f for f in os.listdir(cls.work) if f.endswith(".deb")]
        if cls.cpack.returncode != 0 or len(debs) != 1:
            return  # test_cpack_builds_the_package reports it
        cls.deb = os.path.join(cls.work, debs[0])
        # A clean root with an empty dpkg database, into which dpkg itself unpacks the package
        # (its dependencies are this system's, not the root's: --force-depends). --unpack and
        # not -i: configuring would run the postinst (CPack's ldconfig call) chrooted into a
        # root that has no shell.
        cls.root = os.path.join(cls.work, "root")
        admin = os.path.join(cls.root, "var", "lib", "dpkg")
        for d in ("info", "updates", "triggers"):
            os.makedirs(os.path.join(admin, d))
        for f in ("status", "available"):
            open(os.path.join(admin, f), "w").close()
        cls.unpack = subprocess.run(["dpkg", f"--root={cls.root}", "--force-depends", "--unpack",
                                     cls.deb], capture_output=True, text=True, timeout=120)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "work", None) and os.environ.get("VIA_TEST_KEEP") != "1":
            shutil.rmtree(cls.work, True)

    def setUp(self):
        super().setUp()
        if self.why_not:
            self.skipTest(self.why_not)
        # The installed via must find the installed shim by itself.
        self.env.pop("VIA_SHIM", None)

    def installed(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def require_package(self):
        self.assertIsNotNone(self.deb, f"cpack failed:\n{self.cpack.stdout}\n{self.cpack.stderr}")
        self.assertOk(self.unpack, "dpkg --unpack into the clean root")

    def test_cpack_builds_the_package(self):
        self.require_package()
        # What dpkg recorded as installed in the clean root.
        listing = subprocess.run(["dpkg", f"--root={self.root}", "-L", "via"],
                                 capture_output=True, text=True, check=True).stdout
        paths = set(listing.split())
        for p in ("/usr/bin/via", "/usr/lib/via/libvia.so",
                  "/usr/share/man/man1/via.1", "/usr/share/man/man5/via.yaml.5",
                  "/usr/share/bash-completion/completions/via",
                  "/usr/share/zsh/vendor-completions/_via",
                  "/usr/lib/systemd/user/via-broker.service", "/usr/share/doc/via/copyright"):
            self.assertIn(p, paths)
        if os.path.exists(os.path.join(harness.BUILD, "via-tsnet")):
            self.assertIn("/usr/lib/via/via-tsnet", paths)
            with open(self.installed("/usr/share/doc/via/copyright")) as f:
                self.assertIn("tailscale.com", f.read())
        # Dependencies from dpkg-shlibdeps: Debian 12's package names, all installed here.
        depends = subprocess.run(["dpkg-deb", "-f", self.deb, "Depends"], capture_output=True,
                                 text=True, check=True).stdout
        names = [re.match(r"\s*([a-z0-9.+-]+)", d).group(1) for d in depends.split(",")]
        for lib in ("libc6", "libyaml-cpp0.7", "libssl3", "libstdc++6"):
            self.assertIn(lib, names, depends)
        # A name may be virtual (libspdlog1.10-fmt9 is provided by libspdlog1.10).
        installed = set()
        query = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Package}|${Provides}\n"],
            capture_output=True, text=True, check=True).stdout
        for line in query.splitlines():
            state, pkg, provides = line.split("|", 2)
            if state.startswith("ii"):
                installed.add(pkg)
                installed.update(re.findall(r"([a-z0-9.+-]+)(?:\s*\([^)]*\))?", provides))
        for n in names:
            self.assertIn(n, installed, f"{n} (from {depends}) is not installed here")

    def test_installed_via_run_routes_curl(self):
        self.require_namespace()
        self.require_package()
        port, log = self.start_microsocks()
        self.write_config([self.socks5_entry("px", port)])
        target, record = self.start_target()
        via = self.installed("/usr/bin/via")
        proc = subprocess.run([via, "run", "-c", self.config, "--network", "app:px", "--", "sh",
                               "-c", f"echo $LD_PRELOAD; curl -sSf http://example.test:{target}/"],
                              env=self.env, capture_output=True, text=True, timeout=60)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.splitlines()[0], self.installed("/usr/lib/via/libvia.so"))
        self.assertReachedThroughProxy(record, "example.test")
        self.assertMicrosocksConnected(log, f"example.test:{target}")
        subprocess.run([via, "stop", "-c", self.config], env=self.env, capture_output=True)

    def test_man_pages_render_without_warnings(self):
        self.require_package()
        if shutil.which("man") is None:
            self.skipTest("man (man-db) is not installed")
        for page, expect in (("/usr/share/man/man1/via.1", ["via install", "via run",
                                                            "ENVIRONMENT", "--uninstall"]),
                             ("/usr/share/man/man5/via.yaml.5", ["network.socks5", "via.program",
                                                                 "security.policy"])):
            proc = subprocess.run(["man", "--warnings", "-l", self.installed(page)],
                                  env=dict(self.env, MANWIDTH="80",
                                           LC_ALL="C.UTF-8"),
                                  capture_output=True, text=True)
            self.assertOk(proc, page)
            self.assertEqual(proc.stderr, "", page)
            for e in expect:
                self.assertIn(e, proc.stdout, page)

    def complete(self, line, config_dir=None):
        """What the installed bash completion offers for `line` (the cursor at its end)."""
        script = self.installed("/usr/share/bash-completion/completions/via")
        test = f"""
source {script}
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<<"$COMP_LINE"; [[ $COMP_LINE == *' ' ]] && COMP_WORDS+=("")
COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))
_via
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
        env = dict(self.env, PATH=self.installed("/usr/bin") + ":" + self.env["PATH"])
        proc = subprocess.run(["bash", "-c", test], env=env, capture_output=True, text=True,
                              cwd=config_dir or self.dir, timeout=30)
        self.assertOk(proc, line)
        return proc.stdout.split()

    def test_bash_completion_loads_and_completes(self):
        self.require_package()
        script = self.installed("/usr/share/bash-completion/completions/via")
        proc = subprocess.run(["bash", "-c", f"source {script}; complete -p via"],
                              capture_output=True, text=True)
        self.assertOk(proc)
        self.assertEqual(proc.stdout.strip(), "complete -F _via via")
        self.write_config([self.socks5_entry("tor", 9050), self.socks5_entry("lab", 1080)])
        self.assertEqual(self.complete("via ru"), ["run"])
        self.assertEqual(self.complete("via ins"), ["install"])
        self.assertIn("--uninstall", self.complete("via install --"))
        self.assertEqual(self.complete(f"via run -c {self.config} --network app:t"), ["tor"])
        self.assertEqual(sorted(self.complete(f"via run -c {self.config} -n ")),
                         ["app:lab", "app:tor"])
        # Without -c: the usual search (./via.yaml in the working directory).
        self.assertEqual(sorted(self.complete("via check --network ")), ["app:lab", "app:tor"])
        # With bash-completion's loader, found from the installed data directory.
        loader = "/usr/share/bash-completion/bash_completion"
        if os.path.exists(loader):
            proc = subprocess.run(
                ["bash", "-c", f"source {loader}; __load_completion via; complete -p via"],
                env=dict(self.env, XDG_DATA_DIRS=self.installed("/usr/share")),
                capture_output=True, text=True)
            self.assertOk(proc)
            self.assertEqual(proc.stdout.strip(), "complete -F _via via")
        else:
            print("note: bash-completion is not installed; its loader was not tried")

    def test_zsh_completion_completes(self):
        """The zsh function with zsh's completion builtins stubbed (compadd prints what it is
        given): no terminal is needed, and what it offers is what via __complete gave it."""
        self.require_package()
        if shutil.which("zsh") is None:
            self.skipTest("zsh is not installed")
        self.write_config([self.socks5_entry("tor", 9050), self.socks5_entry("lab", 1080)])
        script = self.installed("/usr/share/zsh/vendor-completions/_via")

        def offers(*words):
            test = f"""
compadd() {{ [[ $1 == -a ]] && print -l -- ${{(P)2}} }}
_call_program() {{ shift; eval "$@" }}
_files() {{ print FILES }}
_command_names() {{ print COMMANDS }}
_normal() {{ print "NORMAL $CURRENT $words" }}
words=("$@"); CURRENT=$#words; PREFIX=$words[-1]
source {script}
"""
            env = dict(self.env, PATH=self.installed("/usr/bin") + ":" + self.env["PATH"])
            proc = subprocess.run(["zsh", "-f", "-c", test, "zsh", *words], env=env,
                                  capture_output=True, text=True, timeout=30)
            self.assertOk(proc, words)
            return proc.stdout.split("\n")[:-1]

        self.assertIn("install", offers("via", "in"))
        self.assertEqual(sorted(offers("via", "run", "-c", self.config, "--network", "")),
                         ["app:lab", "app:tor"])
        self.assertIn("--uninstall", offers("via", "install", "--"))
        self.assertEqual(offers("via", "run", "-c", self.config, "--", "cu"), ["NORMAL 1 cu"])
        self.assertEqual(offers("via", "check", "-c", ""), ["FILES"])

    def test_user_unit_runs_the_installed_broker(self):
        self.require_package()
        with open(self.installed("/usr/lib/systemd/user/via-broker.service")) as f:
            unit = f.read()
        self.assertIn("\nExecStart=/usr/bin/via broker\n", unit)
        self.assertIn("\nUnsetEnvironment=LD_PRELOAD\n", unit)
        self.assertIn("\nWantedBy=default.target\n", unit)


if __name__ == "__main__":
    harness.main()
