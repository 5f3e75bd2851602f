#!/usr/bin/env bash
# Installs what via needs to build and to run its tests on Debian 12 (run as root).
# With --bench, also what the benchmark suite needs (bench/run.sh): the tools it compares via
# with (proxychains4, torsocks) and matplotlib for its plot. CI does not run the benchmarks.
# With --demo, only what the quick start needs (scripts/demo.sh: build via and libvia.so, run
# microsocks, curl and a small Python web server): no test servers, users or Go modules.
# Idempotent and quiet: only missing packages are installed (apt-get update runs only then).
# Also creates the test fixtures that need root: the `viatest` user (danted's username
# authentication) and the PAM service `via-test-sockd` (accepts any credentials, so that
# isolate_streams' random usernames can be observed in danted's log). The packages' own
# services (danted, dnsmasq, tor, i2pd) are never left running: the tests start their own servers
# (tests/tor/tor_network.py runs a private Tor network; Debian's tor on 9050 is not used).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: run as root (it uses apt-get and creates a test user)" >&2
  exit 1
fi

packages=(
  build-essential cmake ninja-build pkg-config
  libyaml-cpp-dev libspdlog-dev libc-ares-dev libssl-dev libgtest-dev googletest clang-format
  dante-server microsocks dnsmasq tor i2pd
  curl wget git python3 openssl iproute2 util-linux procps ca-certificates tcpdump strace
  bind9-dnsutils
  # The package test (tests/integration/test_package.py): cpack's DEB generator runs file and
  # dpkg-shlibdeps; man renders the manual pages; the bash completion is also loaded through
  # bash-completion's loader; zsh runs the zsh completion.
  dpkg-dev file man-db bash-completion zsh
)
demo=0
if [ "${1:-}" = --bench ]; then
  packages+=(proxychains4 libproxychains4 torsocks python3-matplotlib)
elif [ "${1:-}" = --demo ]; then
  demo=1
  packages=(
    build-essential cmake ninja-build pkg-config
    libyaml-cpp-dev libspdlog-dev libc-ares-dev libssl-dev
    microsocks curl python3 util-linux ca-certificates
  )
elif [ -n "${1:-}" ]; then
  echo "install-deps.sh: unknown option $1 (--bench adds the benchmark suite's tools, --demo" \
       "installs only what scripts/demo.sh needs)" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

export DEBIAN_FRONTEND=noninteractive
updated=0
apt_update() {
  if [ "$updated" = 0 ]; then
    apt-get update -qq
    updated=1
  fi
}

# Go is optional (the test that a Go program is refused skips without it).
if [ "$demo" = 0 ] && ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
  missing+=(golang-go)
fi

# Node is optional (its test skips without it); use Debian's when none is installed yet.
if [ "$demo" = 0 ] && ! command -v node >/dev/null 2>&1; then
  apt_update
  if apt-cache show nodejs >/dev/null 2>&1; then
    missing+=(nodejs)
  else
    echo "install-deps.sh: nodejs is not available from apt; the node test will be skipped"
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  apt_update
  # Keep the packages' init scripts from starting their daemons during installation.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  status=0
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  if [ "$added_policy" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  if [ "$status" != 0 ]; then
    echo "install-deps.sh: apt-get install failed ($status)" >&2
    exit "$status"
  fi
fi
[ "$demo" = 1 ] && exit 0

# If systemd runs the packages' services anyway, stop and disable them.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for svc in danted dnsmasq tor tor@default i2pd; do
    if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl disable --now --quiet "$svc" 2>/dev/null || true
    fi
  done
fi

# Without systemd: keep Debian's tor (SocksPort 9050) from starting at boot, and stop it if its
# init script started it (it acts on its own pid file only).
if [ ! -d /run/systemd/system ] && [ -x /etc/init.d/tor ]; then
  update-rc.d tor disable >/dev/null 2>&1 || true
  if [ -s /run/tor/tor.pid ]; then
    /etc/init.d/tor stop >/dev/null 2>&1 || true
  fi
fi

# The danted test's system user (RFC 1929 username/password checked against the system).
if ! id viatest >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin viatest
fi
echo 'viatest:via-test-password' | chpasswd

# danted's second test config: any username/password is accepted.
pam_file=/etc/pam.d/via-test-sockd
pam_text='# via integration tests: danted (pam.servicename via-test-sockd) accepts any credentials.
auth    sufficient pam_permit.so
account sufficient pam_permit.so'
if [ "$(cat "$pam_file" 2>/dev/null)" != "$pam_text" ]; then
  printf '%s\n' "$pam_text" > "$pam_file"
fi

# Go modules for network.tailscale's helper (overlays/tailscale/tsnet, built by cmake as
# via-tsnet) and for the tests' local tailnet (tests/tailnet: testcontrol + DERP + STUN, a tsnet
# peer, tailscaled).
# tailscale.com v1.102.5 needs Go >= 1.26.6 (this machine kind ships Go in /usr/local/go; Debian
# 12's golang-go is 1.19, too old). `go list -deps` fetches exactly the modules the builds need
# from the Go module proxy, into the module cache; it compiles nothing.
go_bin=$(command -v go || true)
[ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go
if [ -z "$go_bin" ]; then
  echo "install-deps.sh: no Go toolchain: network.tailscale is unavailable and its tests skip" >&2
elif ! GOTOOLCHAIN=local "$go_bin" version | grep -Eq 'go1\.(2[7-9]|[3-9][0-9])|go1\.26\.([6-9]|[1-9][0-9])'; then
  echo "install-deps.sh: $("$go_bin" version) is older than go1.26.6: network.tailscale is" \
       "unavailable and its tests skip" >&2
else
  root=$(cd "$(dirname "$0")/.." && pwd)
  (cd "$root/overlays/tailscale/tsnet" && GOTOOLCHAIN=local "$go_bin" list -deps . >/dev/null)
  (cd "$root/tests/tailnet" &&
     GOTOOLCHAIN=local "$go_bin" list -deps ./control ./peer tailscale.com/cmd/tailscaled >/dev/null)
fi
