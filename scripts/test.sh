#!/usr/bin/env bash
# Every test of dmf: installs what it needs when missing (PostgreSQL server binaries, pgbench,
# pg_dump; libclang and clang's headers for pg_query, a C/C++ compiler; openssl, psycopg 3,
# moto[server]), runs the scripts' own tests, unit tests and the end-to-end tests against throwaway
# local clusters, then a short fuzz run of the proxy's protocol decoders.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_build_tools
ensure_test_tools
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
echo "== scripts"
bash scripts/lib_test.sh 2>&1 | tee "$log" || status=$?
echo "== cargo build"
cargo build --workspace --all-targets --quiet
echo "== tests"
# End-to-end tests start many PostgreSQL servers each; two at a time is what 2 cores take.
cargo test --workspace --quiet --no-fail-fast -- --test-threads="${DMF_TEST_THREADS:-2}" 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole suite (cargo's last line is the doc-tests' "0 passed").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
echo "== fuzz"
bash bench/fuzz.sh || status=1
exit "$status"
