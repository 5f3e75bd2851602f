#!/bin/sh
# Runs fuzz targets of a clang -DVIA_FUZZ=ON build (docs/fuzzing.md) for RUNS executions each.
#   tests/fuzz/run.sh BUILD_DIR RUNS [TARGET...]
# TARGET is a corpus name: sam socks5 broker_request dns_query config (default: all, one after
# the other). New inputs go to $VIA_FUZZ_WORK/<target> (default /tmp/via-fuzz), never into the
# source corpus; a crash leaves its input there as crash-*; each run's log is <target>.log.
# Exits non-zero at the first target that fails.
set -eu
build=$1
runs=$2
shift 2
[ $# -gt 0 ] || set -- sam socks5 broker_request dns_query config
src=$(cd "$(dirname "$0")" && pwd)
work=${VIA_FUZZ_WORK:-/tmp/via-fuzz}
for t in "$@"; do
  case $t in
    sam | socks5) bin=${t}_reply_fuzz ;;
    *) bin=${t}_fuzz ;;
  esac
  # Long enough for a SAM line past its 8192-byte limit.
  max_len=8192
  [ "$t" = sam ] && max_len=20000
  mkdir -p "$work/$t"
  echo "== $bin: $runs runs, log $work/$t.log"
  "$build/$bin" -runs="$runs" -max_total_time=3600 -max_len=$max_len -print_final_stats=1 \
    -artifact_prefix="$work/$t/" "$work/$t" "$src/${t}_corpus" >"$work/$t.log" 2>&1 || {
    echo "$bin FAILED (see $work/$t.log)"
    exit 1
  }
  grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec' \
    "$work/$t.log"
done
