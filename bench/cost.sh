#!/usr/bin/env bash
# Measures what the shim costs a process that opens no socket, and what one routed connect
# costs, on this machine. Servers: microsocks and a TCP echo server on loopback.
# usage: bench/cost.sh [BUILD_DIR]      (results go to stdout; docs/performance.md has a run)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/exec_cost" bench/exec_cost.c
cc -O2 -o "$tmp/connect_cost" bench/connect_cost.c
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pport=$(free_port); eport=$(free_port)
microsocks -i 127.0.0.1 -p "$pport" >/dev/null 2>&1 &
python3 bench/echo_server.py "$eport" >/dev/null &
sleep 0.5
cat > "$tmp/via.yaml" <<YAML
version: "1.0"
namespace: app
entries:
  - name: bench
    kind: network.socks5
    host: 127.0.0.1
    port: $pport
network_service:
  loopback: overlay
YAML
export XDG_RUNTIME_DIR=$tmp/run; mkdir -m 700 "$XDG_RUNTIME_DIR"
echo "machine: $(nproc) cores, $(uname -r)"
runs=${RUNS:-3}
for i in $(seq "$runs"); do
  echo "exec /bin/true, no preload:        $("$tmp/exec_cost" 2000 /bin/true)"
  echo "exec /bin/true, libvia.so loaded:  $(LD_PRELOAD=$PWD/$build/libvia.so VIA_NETWORK=app:bench "$tmp/exec_cost" 2000 /bin/true)"
done
n=${N:-3000}
for i in $(seq "$runs"); do
  echo "connect+echo, direct:                $("$tmp/connect_cost" plain 127.0.0.1 "$eport" "$n")"
  echo "connect+echo, client speaks SOCKS5:  $("$tmp/connect_cost" socks5 "$pport" 127.0.0.1 "$eport" "$n")"
  echo "connect+echo, via run (routed):      $("$build/via" run -q -c "$tmp/via.yaml" --network app:bench -- "$tmp/connect_cost" plain 127.0.0.1 "$eport" "$n")"
done
"$build/via" stop -c "$tmp/via.yaml" >/dev/null 2>&1 || true
