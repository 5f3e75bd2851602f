#!/usr/bin/env bash
# Installs what via needs to build and to run its tests on Debian 12 (run as root).
# Idempotent. Also creates the test fixtures that need root: the `viatest` user (danted's
# username authentication) and the PAM service `via-test-sockd` (accepts any credentials, so
# that isolate_streams' random usernames can be observed in danted's log).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: run as root (it uses apt-get and creates a test user)" >&2
  exit 1
fi

packages=(
  build-essential cmake ninja-build pkg-config
  libyaml-cpp-dev libspdlog-dev libc-ares-dev libssl-dev libgtest-dev googletest clang-format
  dante-server microsocks dnsmasq
  curl wget git python3 openssl iproute2 util-linux procps
)
command -v node >/dev/null 2>&1 || packages+=(nodejs)

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # danted and dnsmasq would be started by their packages (and danted's default config fails
  # to start, which fails the install): keep services from starting while installing.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    own_policy=1
  fi
  apt-get update -qq
  rc=0
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
  if [ "$rc" != 0 ]; then
    echo "install-deps.sh: apt-get install failed ($rc)" >&2
    exit "$rc"
  fi
fi

# The packages' own services are not used: tests start their own servers.
for svc in danted dnsmasq; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

if ! id viatest >/dev/null 2>&1; then
  useradd --no-create-home --shell /usr/sbin/nologin viatest
fi
echo 'viatest:via-test-password' | chpasswd

cat > /etc/pam.d/via-test-sockd <<'PAM'
# via's integration tests: danted accepts any username/password through this service.
auth    sufficient pam_permit.so
account sufficient pam_permit.so
PAM
