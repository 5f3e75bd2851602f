#!/usr/bin/env bash
# The quick start: installs dependencies (unless VIA_SKIP_DEPS=1), builds, and routes curl
# through a local SOCKS5 proxy (microsocks) to a local web server, by a name that only the
# proxy can resolve. Everything runs on loopback and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${VIA_SKIP_DEPS:-0}" != 1 ]; then
  ./scripts/install-deps.sh --demo
fi
# Only the two parts the demo runs: not the Tailscale helper (Go), the tests or the fuzzers.
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build_dir" -j "$(nproc)" --target via via_shim >/dev/null
via=$build_dir/via

tmp=$(mktemp -d)
pids=()
cleanup() {
  "$via" stop -c "$tmp/via.yaml" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
export XDG_RUNTIME_DIR=$tmp/run
mkdir -m 700 "$XDG_RUNTIME_DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

proxy_port=$(free_port)
web_port=$(free_port)

# The proxy resolves demo.test from its own hosts file; this machine's resolver never sees it.
host=demo.test
printf '127.0.0.1 localhost\n127.0.0.1 demo.test\n' > "$tmp/proxy-hosts"
if [ "$(id -u)" = 0 ] && unshare --mount true 2>/dev/null; then
  unshare --mount -- sh -c 'mount --bind "$0" /etc/hosts && exec microsocks -i 127.0.0.1 -p "$1" -b 127.0.0.2' \
    "$tmp/proxy-hosts" "$proxy_port" > "$tmp/microsocks.log" 2>&1 &
else
  echo "(not root: the demo uses 127.0.0.1 as the host name instead of demo.test)"
  host=127.0.0.1
  microsocks -i 127.0.0.1 -p "$proxy_port" -b 127.0.0.2 > "$tmp/microsocks.log" 2>&1 &
fi
pids+=($!)
python3 tests/integration/target_server.py "$web_port" "$tmp/web.jsonl" > /dev/null 2>&1 &
pids+=($!)
wait_port "$proxy_port"
wait_port "$web_port"

cat > "$tmp/via.yaml" <<YAML
version: "1.0"
namespace: app
entries:
  - name: demo
    kind: network.socks5
    host: 127.0.0.1
    port: $proxy_port
network_service:
  loopback: overlay      # the demo's web server is on loopback too: route it anyway
YAML

echo "\$ curl -s http://127.0.0.1:$web_port/                      # direct"
curl -s "http://127.0.0.1:$web_port/"; echo
echo "\$ via run --network app:demo -- curl -s http://$host:$web_port/   # through the proxy"
routed=$("$via" run -c "$tmp/via.yaml" --network app:demo -- curl -s "http://$host:$web_port/")
echo "$routed"
echo
echo "The web server answers with the address it saw: 127.0.0.1 directly, 127.0.0.2 (the"
echo "proxy's outgoing address) through via. The proxy's log shows what it was asked for:"
sed 's/^/  microsocks: /' "$tmp/microsocks.log"

# Fail the demo if what the far side saw does not match.
if [ "$routed" != '{"ip": "127.0.0.2"}' ] || ! grep -q "connected to $host:$web_port" "$tmp/microsocks.log"; then
  echo "demo FAILED: the request did not go through the proxy as expected" >&2
  exit 1
fi
echo "demo OK"
