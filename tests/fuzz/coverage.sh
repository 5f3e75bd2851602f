#!/bin/sh
# Source coverage of the code under test reached by a fuzz target's corpus (docs/fuzzing.md):
# builds the target with clang's coverage instrumentation as a standalone replay driver
# (standalone_main.h, no mutations), replays the given corpus directories, and reports lines
# and branches per file under test.
#   tests/fuzz/coverage.sh TARGET CORPUS_DIR...      (TARGET: sam socks5 broker_request ...)
set -eu
t=$1
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${VIA_FUZZ_WORK:-/tmp/via-fuzz}/coverage
mkdir -p "$out"
case $t in
  sam) src="tests/fuzz/sam_reply_fuzz.cc overlays/i2p/sam.cc" files="overlays/i2p/sam.cc" libs=-lcrypto ;;
  socks5) src=tests/fuzz/socks5_reply_fuzz.cc files=common/socks5_client.h libs= ;;
  broker_request)
    src="tests/fuzz/broker_request_fuzz.cc broker/dns_message.cc broker/fake_address_pool.cc"
    files="common/wire.h broker/dns_message.cc broker/fake_address_pool.cc" libs= ;;
  dns_query)
    src="tests/fuzz/dns_query_fuzz.cc broker/dns_message.cc broker/fake_address_pool.cc"
    files="broker/dns_message.cc" libs= ;;
  config)
    src="tests/fuzz/config_fuzz.cc config/*.cc broker/fake_address_pool.cc"
    files="config/*.cc" libs=-lyaml-cpp ;;
  *) echo "unknown target $t" >&2; exit 2 ;;
esac
cd "$root"
# shellcheck disable=SC2086
clang++ -std=c++20 -O1 -g -I. -fprofile-instr-generate -fcoverage-mapping -DVIA_VERSION='"cov"' \
  -DVIA_SHIM_INSTALL_PATH='"/x"' -DVIA_TSNET_INSTALL_PATH='"/x"' $src common/paths.cc $libs \
  -o "$out/$t"
LLVM_PROFILE_FILE="$out/$t.profraw" "$out/$t" -n 0 "$@" >/dev/null
llvm-profdata merge -o "$out/$t.profdata" "$out/$t.profraw"
# shellcheck disable=SC2086
llvm-cov report "$out/$t" -instr-profile="$out/$t.profdata" $files
