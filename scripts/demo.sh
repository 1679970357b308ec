#!/usr/bin/env bash
# Builds dmf and runs `dmf demo`: a throwaway local control plane and fleet, hydrated and
# replicating under a live workload, then a report. Extra arguments go to `dmf demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --bin dmf
exec "$CARGO_TARGET_DIR/release/dmf" demo "$@"
