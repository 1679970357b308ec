#!/usr/bin/env bash
# Builds dmf and runs `dmf demo`: a throwaway local control plane and fleet, hydrated and
# replicating under a live workload, then a report. Extra arguments go to `dmf demo`.
# Installs what the build and the demo need when missing (root with apt; see README, Requirements).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_build_tools
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# The `demo` profile (Cargo.toml): optimised, without release's whole-program optimisation.
bin="$CARGO_TARGET_DIR/demo/dmf"
if [ ! -x "$bin" ]; then
    echo "building dmf: the first build takes about 8 minutes on 2 cores (crates downloaded, then compiled); later runs rebuild only what changed" >&2
fi
quiet=(--quiet)
[ -t 2 ] && quiet=()   # on a terminal, cargo's progress bar shows how far the build is
cargo build --profile demo "${quiet[@]}" --bin dmf
exec "$bin" demo "$@"
