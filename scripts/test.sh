#!/usr/bin/env bash
# Every test of dmf: installs what it needs when missing (PostgreSQL server binaries, pgbench,
# pg_dump), then runs unit tests and the end-to-end tests against throwaway local clusters.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "== cargo build"
cargo build --workspace --all-targets --quiet
echo "== tests"
# End-to-end tests start many PostgreSQL servers each; two at a time is what 2 cores take.
cargo test --workspace --quiet -- --test-threads="${DMF_TEST_THREADS:-2}"
