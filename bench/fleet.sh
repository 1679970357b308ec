#!/usr/bin/env bash
# The fleet at size: CLUSTERS (default 400) small clusters, as databases on SOURCES (8) source
# instances, migrated to databases on TARGETS (4) pool instances (the local provider's
# target_instance mode) in waves of 50 by two workers and one scheduler, every cluster behind its
# own `dmf proxy`, TRAFFIC (40) of them with live writes as their own roles, SABOTAGED (12) of them
# sabotaged between hydration and their flip (DDL, slot dropped, subscription disabled, a row
# changed on the target, apply blocked by a lock, a table dropped), a worker SIGKILLed every 20 s,
# the control plane restarted once and one proxy killed and restarted.
#
# The driver is the test tests/fleet_scale.rs (`fleet_bench`, ignored in the suite), built in
# release mode with the release dmf. It prints per phase the p50/p99/max durations, the flip
# pauses of the clusters with traffic, the aborted clusters with their reasons, the control
# plane's peak connections and transactions per second, peak memory of the worker, scheduler and
# proxies, the leftovers of a sweep of every instance, then
#   fleet_completed=388 fleet_aborted=12 failed_txns=0 lost_writes=0 leaked=0
# and last fleet_minutes=<enqueue until every cluster settled>. It exits non-zero unless those
# counts hold. Timings: production's but audit window and shadow reads 10 s, soak 30 s, lag window
# 30 s (see fleet_bench in the test). Knobs: CLUSTERS, SOURCES, TARGETS, TRAFFIC, SABOTAGED,
# MAX_CONCURRENT, MAX_ACTIVE (60: clusters started and not finished at once), PER_SOURCE_HOST,
# TIMEOUT_S, SEED (the sabotage draw).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_build_tools
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# the fleet needs more open files and processes than a shell's defaults
ulimit -n 65536 2>/dev/null || true
cargo test --release --quiet --test fleet_scale --no-run
OUT="$(mktemp /tmp/dmf-fleet-XXXX.log)"
set +e
cargo test --release --quiet --test fleet_scale -- --ignored --exact fleet_bench --nocapture --test-threads 1 2>"$OUT.err" | tee "$OUT"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
    grep -E "panicked|fleet:" -A6 "$OUT.err" | tail -n 60
    echo "bench/fleet.sh: the fleet run failed (stderr in $OUT.err)"
    exit "$rc"
fi
grep -E "^fleet:" "$OUT.err" || true
# the figures' two last lines, as the other benches print theirs
grep -E "^fleet_completed=" "$OUT"
grep -E "^fleet_minutes=" "$OUT"
