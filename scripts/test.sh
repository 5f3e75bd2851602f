#!/usr/bin/env bash
# Installs dependencies (unless VIA_SKIP_DEPS=1), builds into build/ (or $BUILD_DIR), and runs
# every unit and integration test with ctest. Extra arguments go to ctest (e.g. -L integration,
# -R dns_leak). The exit status is ctest's.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${VIA_SKIP_DEPS:-0}" != 1 ]; then
  ./scripts/install-deps.sh
fi
./scripts/build.sh
# Test files run in parallel, one per core: each integration file re-executes itself in network and
# mount namespaces of its own (tests/integration/harness.py), so they share no port, socket or
# broker. VIA_TEST_JOBS=1 runs them one at a time.
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure --timeout 900 \
  -j "${VIA_TEST_JOBS:-$(nproc)}" "$@"
