#!/usr/bin/env bash
# The benchmark suite (issue 7): via, proxychains4 and torsocks side by side, in one run,
# against the same servers on loopback (microsocks as the SOCKS5 proxy, bench/echo_server.c).
# Prints a table of medians and ratios and writes a PNG of the latency distributions.
#
#   bench/run.sh [--quick] [BUILD_DIR]   (default: build; results in BUILD_DIR/bench-results)
#
# Environment (defaults in brackets, --quick's in braces): RUNS [5] {3} repetitions of figures
# 1-5; EXEC_N [2000] {500} execs per exec-cost sample; N [3000] {1000} connects per sample;
# BULK_MIB [2048] {256} MiB each way per bulk sample; GAI_N [20000] {5000} lookups per sample;
# CAP_PROCS [64], CAP_SECONDS [20] {5}, CAP_RUNS [1] for broker capacity; SESSIONS [1000],
# NAMES [100000], HOLD [10000] for broker memory (figure 7: the full case, also in --quick);
# STARTUP_N [50] via runs per sample of figure 8; FAR_N [50] {20} connects per sample of figure 9;
# FIGURES ["1 2 3 4 5 6 7 8 9"] (figure 9 needs danted: it is skipped with a note without it).
#
# Needs root (or an unprivileged user namespace) for `unshare --mount`: microsocks runs with an
# /etc/hosts of its own mapping bench.test and bench.onion to 127.0.0.1. Nothing leaves
# 127.0.0.0/8. Not part of ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0
if [ "${1:-}" = --quick ]; then
  quick=1
  shift
fi
build=$(cd "${1:-build}" && pwd)
if [ "$quick" = 1 ]; then
  RUNS=${RUNS:-3} EXEC_N=${EXEC_N:-500} N=${N:-1000} BULK_MIB=${BULK_MIB:-256}
  GAI_N=${GAI_N:-5000} CAP_SECONDS=${CAP_SECONDS:-5} FAR_N=${FAR_N:-20}
fi
RUNS=${RUNS:-5} EXEC_N=${EXEC_N:-2000} N=${N:-3000} BULK_MIB=${BULK_MIB:-2048}
GAI_N=${GAI_N:-20000} CAP_PROCS=${CAP_PROCS:-64} CAP_SECONDS=${CAP_SECONDS:-20}
CAP_RUNS=${CAP_RUNS:-1} NAMES=${NAMES:-100000} SESSIONS=${SESSIONS:-1000} HOLD=${HOLD:-10000}
FIGURES=${FIGURES:-"1 2 3 4 5 6 7 8 9"}
FAR_N=${FAR_N:-50}
STARTUP_N=${STARTUP_N:-50}
out=${OUT:-$build/bench-results}

die() { echo "bench/run.sh: $*" >&2; exit 1; }

need_tools() {
  local t
  for t in cc python3 microsocks proxychains4 torsocks unshare mount; do
    command -v "$t" >/dev/null ||
      die "$t is missing (apt-get install gcc python3 microsocks proxychains4 torsocks util-linux mount)"
  done
  [ -x "$build/via" ] && [ -f "$build/libvia.so" ] || die "no via build in $build (cmake --build $build)"
  pc_lib=$(dpkg -L libproxychains4 2>/dev/null | grep -m1 'libproxychains\.so' || true)
  [ -n "$pc_lib" ] || pc_lib=$(ls /usr/lib/*/libproxychains.so.4 2>/dev/null | head -1 || true)
  [ -f "$pc_lib" ] || die "libproxychains.so.4 not found (apt-get install libproxychains4)"
  ts_lib=$(dpkg -L torsocks 2>/dev/null | grep -m1 'libtorsocks\.so$' || true)
  [ -f "$ts_lib" ] || die "libtorsocks.so not found (apt-get install torsocks)"
}

tmp=
cleanup() {
  local pids c
  pids=$(jobs -p)
  [ -n "$pids" ] && kill $pids 2>/dev/null
  # `|| true`: under set -e a failing last command of an && list would end the trap with 1 (a
  # config whose broker never started: FIGURES without figure 2).
  for c in via via-broker via-far via-far-broker; do
    [ -n "$tmp" ] && [ -f "$tmp/$c.yaml" ] && { "$build/via" stop -c "$tmp/$c.yaml" >/dev/null 2>&1 || true; }
  done
  # danted forks its children itself; its pid file names the parent.
  [ -n "$tmp" ] && [ -f "$tmp/danted.pid" ] && { kill "$(cat "$tmp/danted.pid")" 2>/dev/null || true; }
  wait 2>/dev/null
  [ -n "$tmp" ] && rm -rf "$tmp"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  local i
  for i in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0
    sleep 0.05
  done
  die "nothing listens on 127.0.0.1:$1 ($2 did not start)"
}

setup() {
  # Figure 7 holds HOLD connections open: the client, microsocks (two descriptors each) and the
  # echo server need descriptors to match.
  # A process may be capped below that (a container's hard limit): figure 7 then splits the
  # connections over two microsocks instances, each of which needs two descriptors per
  # connection, behind two overlays of the same broker.
  ulimit -n $((2 * HOLD + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  tmp=$(mktemp -d)
  mkdir -p "$out"
  : > "$out/results.tsv"
  rm -f "$out"/samples-*.txt
  local b
  for b in exec_cost connect_cost gai_cost; do cc -O2 -o "$tmp/$b" "bench/$b.c"; done
  cc -O2 -pthread -o "$tmp/echo_server" bench/echo_server.c
  echo 'int via_bench_empty;' > "$tmp/empty.c"
  cc -O2 -shared -fPIC -o "$tmp/empty.so" "$tmp/empty.c"
  pport=$(free_port); pport2=$(free_port); eport=$(free_port); bport=$(free_port)
  printf '127.0.0.1 localhost\n127.0.0.1 bench.test\n127.0.0.1 bench.onion\n' > "$tmp/proxy-hosts"
  local p
  for p in "$pport" "$pport2"; do
    unshare --mount -- sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$tmp/proxy-hosts" \
      microsocks -i 127.0.0.1 -p "$p" >/dev/null 2>"$tmp/microsocks-$p.log" &
    [ "$p" = "$pport" ] && ms_pid=$!  # unshare and sh exec: this is microsocks' pid
  done
  "$tmp/echo_server" "$eport" 2 >/dev/null &
  echo_pid=$!
  "$tmp/echo_server" "$bport" 1 bulk >/dev/null &
  wait_port "$pport" microsocks; wait_port "$pport2" microsocks; wait_port "$eport" echo_server; wait_port "$bport" "echo_server bulk"
  cat > "$tmp/via.yaml" <<YAML
version: "1.0"
namespace: app
entries:
  - name: bench
    kind: network.socks5
    host: 127.0.0.1
    port: $pport
  - name: bench2
    kind: network.socks5
    host: 127.0.0.1
    port: $pport2
network_service:
  loopback: overlay
YAML
  # "via-broker": the same, with the broker running every handshake (`handshake: broker`).
  sed 's/^  loopback: overlay$/  loopback: overlay\n  handshake: broker/' "$tmp/via.yaml" > "$tmp/via-broker.yaml"
  printf 'strict_chain\nproxy_dns\nremote_dns_subnet 224\n[ProxyList]\nsocks5 127.0.0.1 %s\n' "$pport" > "$tmp/proxychains.conf"
  printf 'TorAddress 127.0.0.1\nTorPort %s\nAllowOutboundLocalhost 1\n' "$pport" > "$tmp/torsocks.conf"
  export XDG_RUNTIME_DIR=$tmp/run
  mkdir -m 700 "$XDG_RUNTIME_DIR"
  export TORSOCKS_CONF_FILE=$tmp/torsocks.conf PROXYCHAINS_CONF_FILE=$tmp/proxychains.conf
}

# The three tools, each running "$@" with its preload.
under_via() { "$build/via" run -q -c "$tmp/via.yaml" --network app:bench -- "$@"; }
under_via2() { "$build/via" run -q -c "$tmp/via.yaml" --network app:bench2 -- "$@"; }
under_via_broker() { "$build/via" run -q -c "$tmp/via-broker.yaml" --network app:bench -- "$@"; }
under_via_strict() { "$build/via" run -q -c "$tmp/via.yaml" --strict --network app:bench -- "$@"; }
# Strict mode without the shim: via run serves every connect and lookup (what static and Go
# programs get).
under_via_strict_noshim() {
  "$build/via" run -q -c "$tmp/via.yaml" --strict --no-shim --network app:bench -- "$@"
}
under_pc() { proxychains4 -q -f "$tmp/proxychains.conf" "$@"; }
under_ts() { torsocks "$@"; }

# record FIGURE TOOL RUN METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$out/results.tsv"; }
field() { sed -n "s/.*\\b$1=\([0-9.]*\).*/\1/p"; }  # \b: "n=" must not match "mean="
# lat FIGURE TOOL RUN COMMAND...: a connect_cost/gai_cost latency sample, p50 and p99
lat() {
  local fig=$1 tool=$2 run=$3 res
  shift 3
  if ! res=$(CONNECT_COST_SAMPLES=$out/samples-$fig-$tool-$run.txt "$@" 2>"$tmp/err"); then
    echo "  fig $fig $tool run $run FAILED: $(tail -1 "$tmp/err")" >&2
    return 0
  fi
  record "$fig" "$tool" "$run" p50_us "$(field p50 <<<"$res")"
  record "$fig" "$tool" "$run" p99_us "$(field p99 <<<"$res")"
}

fig1_exec_cost() {
  echo "figure 1: exec /bin/true x $EXEC_N, $RUNS runs" >&2
  local r e=$tmp/exec_cost
  # EXEC_COST_PRELOAD puts the library into the exec'd /bin/true only: the loading cost.
  # "via-session" has libvia.so in exec_cost too, as in a `via run` session, so its exec hook
  # (the static/setuid check and environment repair before each execve) is counted as well.
  for r in $(seq "$RUNS"); do
    record 1 none "$r" mean_us "$("$e" "$EXEC_N" /bin/true | field mean)"
    record 1 empty.so "$r" mean_us "$(EXEC_COST_PRELOAD=$tmp/empty.so "$e" "$EXEC_N" /bin/true | field mean)"
    record 1 via "$r" mean_us \
      "$(VIA_NETWORK=app:bench EXEC_COST_PRELOAD=$build/libvia.so "$e" "$EXEC_N" /bin/true | field mean)"
    record 1 via-session "$r" mean_us \
      "$(LD_PRELOAD=$build/libvia.so VIA_NETWORK=app:bench "$e" "$EXEC_N" /bin/true | field mean)"
    # The same empty library measured again: its ratio to the first shows this machine's noise
    # between two identical samples, the yardstick for the rows above.
    record 1 empty.so-again "$r" mean_us \
      "$(EXEC_COST_PRELOAD=$tmp/empty.so "$e" "$EXEC_N" /bin/true | field mean)"
    record 1 proxychains4 "$r" mean_us \
      "$(PROXYCHAINS_QUIET_MODE=1 EXEC_COST_PRELOAD=$pc_lib "$e" "$EXEC_N" /bin/true | field mean)"
    record 1 torsocks "$r" mean_us "$(EXEC_COST_PRELOAD=$ts_lib "$e" "$EXEC_N" /bin/true | field mean)"
  done
}

fig2_connect() {
  echo "figure 2: connect + 1-byte echo x $N, $RUNS runs" >&2
  local r c=$tmp/connect_cost
  for r in $(seq "$RUNS"); do
    lat 2 direct "$r" "$c" plain 127.0.0.1 "$eport" "$N"
    lat 2 floor "$r" "$c" socks5 "$pport" 127.0.0.1 "$eport" "$N"
    lat 2 via "$r" under_via "$c" plain 127.0.0.1 "$eport" "$N"
    lat 2 via-broker "$r" under_via_broker "$c" plain 127.0.0.1 "$eport" "$N"
    lat 2 via-strict "$r" under_via_strict "$c" plain 127.0.0.1 "$eport" "$N"
    lat 2 via-strict-noshim "$r" under_via_strict_noshim "$c" plain 127.0.0.1 "$eport" "$N"
    lat 2 proxychains4 "$r" under_pc "$c" plain 127.0.0.1 "$eport" "$N"
    # torsocks never proxies a loopback destination: AllowOutboundLocalhost 1 connects it
    # directly (without it, it refuses). Measured for completeness, not comparable.
    lat 2 torsocks-bypass "$r" under_ts "$c" plain 127.0.0.1 "$eport" "$N"
  done
}

fig3_connect_name() {
  echo "figure 3: connect by name (the proxy resolves it) x $N, $RUNS runs" >&2
  local r c=$tmp/connect_cost
  for r in $(seq "$RUNS"); do
    lat 3 floor "$r" "$c" socks5 "$pport" bench.test "$eport" "$N"
    lat 3 via "$r" under_via "$c" plain bench.test "$eport" "$N"
    lat 3 via-broker "$r" under_via_broker "$c" plain bench.test "$eport" "$N"
    lat 3 via-strict "$r" under_via_strict "$c" plain bench.test "$eport" "$N"
    lat 3 via-strict-noshim "$r" under_via_strict_noshim "$c" plain bench.test "$eport" "$N"
    lat 3 proxychains4 "$r" under_pc "$c" plain bench.test "$eport" "$N"
    # torsocks resolves ordinary names with Tor's RESOLVE command (microsocks refuses it);
    # only .onion names get a local cookie address and go to the proxy as ATYP 3.
    lat 3 torsocks-onion "$r" under_ts "$c" plain bench.onion "$eport" "$N"
  done
}

bulk_one() {
  local tool=$1 r=$2 res
  shift 2
  if res=$("$@" 2>"$tmp/err"); then
    record 4 "$tool" "$r" MiBps "$(field 'MiBps' <<<"${res##* }")"
  else
    echo "  fig 4 $tool run $r FAILED: $(tail -1 "$tmp/err")" >&2
  fi
}

fig4_bulk() {
  echo "figure 4: $BULK_MIB MiB up + $BULK_MIB MiB down, $RUNS runs" >&2
  local r c=$tmp/connect_cost
  for r in $(seq "$RUNS"); do
    bulk_one direct "$r" "$c" bulk plain 127.0.0.1 "$bport" "$BULK_MIB"
    bulk_one floor "$r" "$c" bulk socks5 "$pport" 127.0.0.1 "$bport" "$BULK_MIB"
    bulk_one via "$r" under_via "$c" bulk plain 127.0.0.1 "$bport" "$BULK_MIB"
    bulk_one via-strict "$r" under_via_strict "$c" bulk plain 127.0.0.1 "$bport" "$BULK_MIB"
    bulk_one proxychains4 "$r" under_pc "$c" bulk plain 127.0.0.1 "$bport" "$BULK_MIB"
    bulk_one torsocks-onion "$r" under_ts "$c" bulk plain bench.onion "$bport" "$BULK_MIB"
  done
}

# Figure 8: what `via run` itself costs per command, with and without --strict (namespaces,
# filter, the supervisor's broker connection): STARTUP_N runs of /bin/true each.
fig8_startup() {
  echo "figure 8: via run -- /bin/true x $STARTUP_N, $RUNS runs" >&2
  local r i t0 t1 tool runner
  for r in $(seq "$RUNS"); do
    for tool in via-run via-run-strict; do
      runner=under_via
      [ "$tool" = via-run-strict ] && runner=under_via_strict
      t0=$(date +%s%N)
      for i in $(seq "$STARTUP_N"); do "$runner" /bin/true || die "$tool failed"; done
      t1=$(date +%s%N)
      record 8 "$tool" "$r" mean_us "$(( (t1 - t0) / 1000 / STARTUP_N ))"
    done
  done
}

fig5_getaddrinfo() {
  echo "figure 5: getaddrinfo x $GAI_N under each tool, $RUNS runs" >&2
  local r g=$tmp/gai_cost
  # via answers a repeat lookup from the shim's cache (see docs/benchmarks.md);
  # "via-uncached" looks up a new name each time, a round trip to the broker every call.
  for r in $(seq "$RUNS"); do
    lat 5 via "$r" under_via "$g" bench.test "$GAI_N"
    lat 5 via-uncached "$r" under_via "$g" -u "r$r.bench.test" "$GAI_N"
    lat 5 proxychains4 "$r" under_pc "$g" bench.test "$GAI_N"
    lat 5 torsocks-onion "$r" under_ts "$g" bench.onion "$GAI_N"
  done
}

# Figure 9: a proxy 20 ms away. bench/delay_relay.py in front of danted (microsocks 1.0.3 cannot
# take pipelined requests) delivers every chunk 10 ms late in each direction; each sample is
# FAR_N connects by name + a 1-byte echo, one after another. via with `pipeline: true` (greeting
# and CONNECT in one write), via-optimistic with `optimistic_data: true` as well (connect returns
# once that write is done, the program's byte follows it: one round trip in all), the same
# without either (via-stepwise), the broker running the handshake
# (via-broker), the standard client floor (greeting, CONNECT, data: three round trips),
# proxychains4 and torsocks (a .onion name, which it sends to the proxy as a name).
fig9_far_proxy() {
  if ! command -v danted >/dev/null; then
    echo "figure 9 SKIPPED: danted is not installed (apt-get install dante-server)" >&2
    return 0
  fi
  echo "figure 9: connect by name + 1-byte echo through a proxy 20 ms away x $FAR_N, $RUNS runs" >&2
  local dport rport r c=$tmp/connect_cost
  dport=$(free_port); rport=$(free_port)
  cat > "$tmp/danted.conf" <<CONF
logoutput: $tmp/danted.log
internal: 127.0.0.1 port = $dport
external: 127.0.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {
  from: 127.0.0.0/8 to: 0.0.0.0/0
}
socks pass {
  from: 127.0.0.0/8 to: 0.0.0.0/0
  command: connect
}
CONF
  unshare --mount -- sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$tmp/proxy-hosts" \
    danted -f "$tmp/danted.conf" -N 2 -p "$tmp/danted.pid" >/dev/null 2>&1 &
  python3 bench/delay_relay.py "$rport" "$dport" --delay-ms 10 >/dev/null 2>&1 &
  wait_port "$dport" danted; wait_port "$rport" delay_relay
  local far
  for far in far far-broker; do
    cat > "$tmp/via-$far.yaml" <<YAML
version: "1.0"
namespace: app
entries:
  - name: far
    kind: network.socks5
    host: 127.0.0.1
    port: $rport
    pipeline: true
  - name: far-optimistic
    kind: network.socks5
    host: 127.0.0.1
    port: $rport
    pipeline: true
    optimistic_data: true
  - name: far-stepwise
    kind: network.socks5
    host: 127.0.0.1
    port: $rport
network_service:
  loopback: overlay
YAML
  done
  echo '  handshake: broker' >> "$tmp/via-far-broker.yaml"
  printf 'strict_chain\nproxy_dns\nremote_dns_subnet 224\n[ProxyList]\nsocks5 127.0.0.1 %s\n' "$rport" > "$tmp/proxychains-far.conf"
  printf 'TorAddress 127.0.0.1\nTorPort %s\nAllowOutboundLocalhost 1\n' "$rport" > "$tmp/torsocks-far.conf"
  far_via() { "$build/via" run -q -c "$tmp/via-far.yaml" --network "app:$1" -- "${@:2}"; }
  far_via_broker() { "$build/via" run -q -c "$tmp/via-far-broker.yaml" --network app:far -- "$@"; }
  for r in $(seq "$RUNS"); do
    lat 9 floor "$r" "$c" socks5 "$rport" bench.test "$eport" "$FAR_N"
    lat 9 via "$r" far_via far "$c" plain bench.test "$eport" "$FAR_N"
    lat 9 via-optimistic "$r" far_via far-optimistic "$c" plain bench.test "$eport" "$FAR_N"
    lat 9 via-stepwise "$r" far_via far-stepwise "$c" plain bench.test "$eport" "$FAR_N"
    lat 9 via-broker "$r" far_via_broker "$c" plain bench.test "$eport" "$FAR_N"
    lat 9 proxychains4 "$r" env PROXYCHAINS_CONF_FILE="$tmp/proxychains-far.conf" \
      proxychains4 -q -f "$tmp/proxychains-far.conf" "$c" plain bench.test "$eport" "$FAR_N"
    lat 9 torsocks-onion "$r" env TORSOCKS_CONF_FILE="$tmp/torsocks-far.conf" \
      torsocks "$c" plain bench.onion "$eport" "$FAR_N"
  done
}

# Reads the broker's pid from `via status`, its CPU ticks and RSS from /proc.
broker_pid() { "$build/via" status -c "${1:-$tmp/via.yaml}" 2>/dev/null | sed -n 's/^broker pid \([0-9]*\).*/\1/p'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# "TOTAL IDLE" jiffies of all cores together, from /proc/stat.
machine_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $5 + $6; exit}' /proc/stat; }

# A session that keeps the broker up while we read it: its program is a sleep we kill later.
# start_holder [RUNNER CONFIG] (default: under_via, via.yaml).
start_holder() {
  local runner=${1:-under_via} config=${2:-$tmp/via.yaml}
  rm -f "$tmp/holder.pid"
  "$runner" sh -c 'echo $$ > "$0"; exec sleep 600' "$tmp/holder.pid" &
  holder_job=$!
  for _ in $(seq 100); do [ -s "$tmp/holder.pid" ] && break; sleep 0.05; done
  holder=$(cat "$tmp/holder.pid" 2>/dev/null) || die "via run did not start"
  bpid=$(broker_pid "$config")
  [ -n "$bpid" ] || die "no broker pid from via status"
}
stop_holder() {
  kill "$holder" 2>/dev/null || true
  wait "$holder_job" 2>/dev/null || true
}

fig6_capacity() {
  echo "figure 6: $CAP_PROCS concurrent clients for $CAP_SECONDS s ($CAP_RUNS runs)" >&2
  local r t0 t1 total hz tool runner config
  hz=$(getconf CLK_TCK)
  # via: the programs run the SOCKS5 handshakes (the broker only counts them); via-broker:
  # `handshake: broker`, every connect handed to the broker and back.
  for tool in via via-broker; do
    if [ "$tool" = via ]; then
      runner=under_via config=$tmp/via.yaml
    else
      runner=under_via_broker config=$tmp/via-broker.yaml
    fi
    start_holder "$runner" "$config"
    for r in $(seq "$CAP_RUNS"); do
      local m0 e0 m1 e1 s0 s1
      m0=$(cpu_ticks "$ms_pid"); e0=$(cpu_ticks "$echo_pid"); s0=$(machine_ticks)
      t0=$(cpu_ticks "$bpid")
      "$runner" sh -c 'for i in $(seq "$1"); do
          CONNECT_COST_SECONDS=$2 "$3" plain 127.0.0.1 "$4" 100000000 > "$5.$i" 2>&1 & done; wait' \
        sh "$CAP_PROCS" "$CAP_SECONDS" "$tmp/connect_cost" "$eport" "$tmp/cap" ||
        echo "  fig 6: some clients failed: $(grep -h failed "$tmp"/cap.* | head -1)" >&2
      t1=$(cpu_ticks "$bpid")
      m1=$(cpu_ticks "$ms_pid"); e1=$(cpu_ticks "$echo_pid"); s1=$(machine_ticks)
      total=$(cat "$tmp"/cap.* | field n | awk '{s += $1} END {print s + 0}')
      # What limited the rate: shares of one core for microsocks and the echo server, and how
      # busy the whole machine was (1 = every core busy).
      record 6 "$tool" "$r" microsocks_cpu_share "$(awk -v d=$((m1 - m0)) -v hz="$hz" -v s="$CAP_SECONDS" 'BEGIN {printf "%.2f", d / hz / s}')"
      record 6 "$tool" "$r" echo_cpu_share "$(awk -v d=$((e1 - e0)) -v hz="$hz" -v s="$CAP_SECONDS" 'BEGIN {printf "%.2f", d / hz / s}')"
      record 6 "$tool" "$r" machine_busy "$(awk -v a="$s0" -v b="$s1" 'BEGIN {split(a, x); split(b, y); printf "%.2f", 1 - (y[2] - x[2]) / (y[1] - x[1])}')"
      record 6 "$tool" "$r" connects_per_s "$(awk -v n="$total" -v s="$CAP_SECONDS" 'BEGIN {printf "%.0f", n / s}')"
      record 6 "$tool" "$r" broker_cpu_us_per_connect \
        "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$total" 'BEGIN {printf "%.2f", n ? d * 1e6 / hz / n : 0}')"
      record 6 "$tool" "$r" broker_cpu_share "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$CAP_SECONDS" 'BEGIN {printf "%.2f", d / hz / s}')"
      rm -f "$tmp"/cap.*
    done
    stop_holder
  done
}

# wait_line FILE PATTERN: until a background helper has printed its "ready" line.
wait_line() {
  local i
  for i in $(seq 1200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}

fig7_memory() {
  echo "figure 7: broker RSS with $SESSIONS sessions, $NAMES names, $HOLD open routed connections" >&2
  local sock
  via_stop
  start_holder
  sock=$("$build/via" status -c "$tmp/via.yaml" | sed -n 's/.*, socket \([^,]*\),.*/\1/p')
  record 7 via 1 rss_kib_idle "$(rss_kib "$bpid")"
  # Sessions as `via run` opens them; the pipes keep the helpers alive until we close them.
  mkfifo "$tmp/mem.in" "$tmp/hold.in"
  python3 bench/mem_load.py "$sock" app:bench "$SESSIONS" < "$tmp/mem.in" > "$tmp/mem.out" 2>&1 &
  local mem_job=$!
  exec 7> "$tmp/mem.in"
  wait_line "$tmp/mem.out" sessions= || die "fig 7: sessions did not open: $(cat "$tmp/mem.out")"
  record 7 via 1 rss_kib_sessions "$(rss_kib "$bpid")"
  under_via "$tmp/gai_cost" -u bench.test "$NAMES" >/dev/null || echo "  fig 7: name lookups failed" >&2
  record 7 via 1 rss_kib_sessions_names "$(rss_kib "$bpid")"
  # Half through each proxy (see setup), all through this one broker.
  under_via "$tmp/connect_cost" hold 127.0.0.1 "$eport" $((HOLD / 2)) < "$tmp/hold.in" > "$tmp/hold.out" 2>&1 &
  local hold_job=$!
  under_via2 "$tmp/connect_cost" hold 127.0.0.1 "$eport" $((HOLD - HOLD / 2)) < "$tmp/hold.in" > "$tmp/hold2.out" 2>&1 &
  local hold_job2=$!
  exec 8> "$tmp/hold.in"
  wait_line "$tmp/hold.out" held= || echo "  fig 7: holding connections failed: $(tail -1 "$tmp/hold.out")" >&2
  wait_line "$tmp/hold2.out" held= || echo "  fig 7: holding connections failed: $(tail -1 "$tmp/hold2.out")" >&2
  record 7 via 1 routed_connections_open "$(($(field held < "$tmp/hold.out") + $(field held < "$tmp/hold2.out")))"
  record 7 via 1 rss_kib_all "$(rss_kib "$bpid")"
  record 7 via 1 broker_fds_all "$(ls "/proc/$bpid/fd" | wc -l)"
  exec 7>&- 8>&-
  wait "$mem_job" "$hold_job" "$hold_job2" 2>/dev/null || true
  stop_holder
}

# Stops the broker, so that a figure starts from a fresh one.
via_stop() { "$build/via" stop -c "$tmp/via.yaml" >/dev/null 2>&1 || true; sleep 0.2; }

main() {
  need_tools
  setup
  {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: nproc=$(nproc), $(uname -r), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "via: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'); proxychains4 $(dpkg-query -W -f '${Version}' proxychains4 2>/dev/null);" \
      "torsocks $(dpkg-query -W -f '${Version}' torsocks 2>/dev/null); microsocks $(dpkg-query -W -f '${Version}' microsocks 2>/dev/null)"
    echo "command: bench/run.sh$([ "$quick" = 1 ] && echo ' --quick')"
    echo "RUNS=$RUNS FAR_N=$FAR_N EXEC_N=$EXEC_N N=$N BULK_MIB=$BULK_MIB GAI_N=$GAI_N CAP_PROCS=$CAP_PROCS CAP_SECONDS=$CAP_SECONDS SESSIONS=$SESSIONS NAMES=$NAMES HOLD=$HOLD"
  } > "$out/machine.txt"
  local f
  for f in $FIGURES; do
    case $f in
      1) fig1_exec_cost ;; 2) fig2_connect ;; 3) fig3_connect_name ;; 4) fig4_bulk ;;
      5) fig5_getaddrinfo ;; 6) fig6_capacity ;; 7) fig7_memory ;; 8) fig8_startup ;;
      9) fig9_far_proxy ;;
      *) die "unknown figure $f" ;;
    esac
  done
  python3 bench/report.py "$out" | tee "$out/report.md"
}

main
