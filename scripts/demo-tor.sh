#!/usr/bin/env bash
# The Tor demo (root): a private, offline Tor network (tests/tor/tor_network.py: 3 directory
# authorities, 3 exits, a client, an onion service) inside a network namespace of its own
# (only `lo`: nothing can reach the real Tor network), then
#   via run --network app:tor -- curl http://127.0.0.1:PORT/      through an exit
#   via run --network app:tor -- curl http://<56 chars>.onion/     by name, no local lookup
# and, from Tor's control port, the circuit each of three isolated connections used.
# Installs dependencies unless VIA_SKIP_DEPS=1; BUILD_DIR as for demo.sh. Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "demo-tor.sh: run as root (the Tor network runs in a network namespace of its own)" >&2
  exit 1
fi
if [ "${VIA_DEMO_IN_NS:-0}" != 1 ]; then
  if [ "${VIA_SKIP_DEPS:-0}" != 1 ]; then
    ./scripts/install-deps.sh
  fi
  ./scripts/build.sh >/dev/null
  exec unshare --net --mount -- env VIA_DEMO_IN_NS=1 "$0" "$@"
fi
ip link set lo up
via=$(realpath "${BUILD_DIR:-build}/via")

tmp=$(mktemp -d)
pids=()
cleanup() {
  "$via" stop -c "$tmp/via.yaml" >/dev/null 2>&1 || true
  python3 tests/tor/tor_network.py down "$tmp/tor" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
export XDG_RUNTIME_DIR=$tmp/run
mkdir -m 700 "$XDG_RUNTIME_DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

echo "Starting a private Tor network (about 30-60 s)..."
python3 tests/tor/tor_network.py up "$tmp/tor" > "$tmp/net.json"
field() { python3 -c "import json,sys; print(json.load(open('$tmp/net.json'))['$1'])"; }
socks_port=$(field socks_port)
control_port=$(field client_control_port)
cookie=$(field client_cookie)
onion=$(field onion)
onion_port=$(field onion_target_port)

web_port=$(free_port)
python3 tests/integration/target_server.py "$web_port" "$tmp/web.jsonl" > /dev/null 2>&1 &
pids+=($!)
python3 tests/integration/target_server.py "$onion_port" "$tmp/onion.jsonl" > /dev/null 2>&1 &
pids+=($!)
wait_port "$web_port"
wait_port "$onion_port"

cat > "$tmp/via.yaml" <<YAML
version: "1.0"
namespace: app
entries:
  - name: tor
    kind: network.socks5
    host: 127.0.0.1
    port: $socks_port
    isolate_streams: true
    connect_timeout: 60s
network_service:
  loopback: overlay      # the demo's web server is on loopback: send it through Tor anyway
YAML
run() { "$via" run -c "$tmp/via.yaml" --network app:tor -- "$@"; }

# Watch the client's streams on its control port (cookie authentication).
python3 - "$control_port" "$cookie" "$tmp/streams.log" <<'PY' &
import binascii, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"AUTHENTICATE " + binascii.hexlify(open(sys.argv[2], "rb").read()) +
          b"\r\nSETEVENTS STREAM\r\n")
with open(sys.argv[3], "w") as out:
    for line in s.makefile("rb"):
        text = line.decode(errors="replace").strip()
        if text.startswith("650 STREAM") and " SUCCEEDED " in text:
            f = text.split()
            out.write(f"stream {f[2]} on circuit {f[4]} to {f[5]}\n")
            out.flush()
PY
pids+=($!)
sleep 0.5

echo
echo "\$ via run --network app:tor -- curl -s http://127.0.0.1:$web_port/"
routed=$(run curl -s --max-time 60 "http://127.0.0.1:$web_port/")
echo "$routed      (an exit on this host connected to it, so it sees a loopback address)"
echo
echo "\$ via run --network app:tor -- curl -s http://$onion/"
hidden=$(run curl -s --max-time 60 -o /dev/null -w '%{http_code} via %{remote_ip}' "http://$onion/")
echo "$hidden      (curl connected to a fake address; Tor got the name)"
echo
echo "\$ via run --network app:tor -- python3 (three connections, isolate_streams: true)"
run python3 -c "
import urllib.request
for i in range(3):
    urllib.request.urlopen('http://127.0.0.1:$web_port/iso%d' % i, timeout=60).read()
"
sleep 1
echo "Tor's control port saw:"
sed 's/^/  /' "$tmp/streams.log"

circuits=$(grep "127.0.0.1:$web_port" "$tmp/streams.log" | awk '{print $5}' | tail -3 | sort -u | wc -l)
if [ "$(wc -l < "$tmp/web.jsonl")" != 4 ] || [ "$(wc -l < "$tmp/onion.jsonl")" != 1 ] ||
   [[ "$hidden" != "200 via 198.18."* ]] || [ "$circuits" != 3 ]; then
  echo "demo FAILED: not everything went through Tor as expected" >&2
  exit 1
fi
echo "demo OK: 4 requests through exits, 1 to the onion service, 3 connections on 3 circuits"
