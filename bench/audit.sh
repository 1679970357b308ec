#!/usr/bin/env bash
# Full compare of a pgbench scale $SCALE (default 30) source/target pair with `dmf audit --full`,
# against the bare in-database scan that any exact compare must at least do: for every table,
# sum(hashtextextended(row::text, 0)) on both sides in parallel. Same pair, same machine, one run;
# the two alternate $RUNS times (default 3), each after a checkpoint, and the ratio is of the medians.
# The pair is made by dmf itself (hydrated, then paused in validating so nothing else runs).
# Last line: audit_ratio_vs_scan=<dmf median seconds / scan median seconds>.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
SCALE="${SCALE:-30}"
RUNS="${RUNS:-3}"
# dmf audit flags (chunk size, parallel chunks)
AUDIT_ARGS="${AUDIT_ARGS:-}"
bench_setup audit
pgbench_source "$SCALE"

CP_PORT=$(free_port); make_cluster "$BASE/cp" "$CP_PORT"
export DMF_DATABASE_URL="postgres://postgres@127.0.0.1:$CP_PORT/postgres"
export DMF_LOG=warn
"$DMF" init >/dev/null
"$DMF" worker --local-dir "$BASE/targets" --fast-local-targets >"$BASE/worker.log" 2>&1 & PIDS+=($!)
"$DMF" scheduler --interval 0.2 >"$BASE/scheduler.log" 2>&1 & PIDS+=($!)
printf '[fleet]\nname = "bench"\n[[cluster]]\nname = "bench"\nsource = "%s"\npause_before = ["validating"]\n' "$SRC" > "$BASE/fleet.toml"
"$DMF" enqueue "$BASE/fleet.toml" >/dev/null
echo "hydrating the target with dmf"
for _ in $(seq 1 1200); do
    state=$("$DMF" status bench --json | python3 -c 'import json,sys; c=json.load(sys.stdin)["clusters"][0]; print(c["phase"], c["paused"])')
    [ "$state" = "validating True" ] && break
    case "$state" in failed*|abort*) tail -30 "$BASE/worker.log"; exit 1;; esac
    sleep 0.5
done
[ "$state" = "validating True" ] || { echo "the pair was not ready: $state"; exit 1; }
TGT=$(psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT state->>'target_dsn' FROM dmf.migrations WHERE cluster = 'bench'")
TGT_PORT=$(python3 -c "import sys,urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).port)" "$TGT")
psql -q -X "$TGT" -c "VACUUM ANALYZE"

SCAN_SQL=""
for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
    SCAN_SQL+="SELECT '$t', count(*), sum(hashtextextended(t::text, 0)) FROM $t t; "
done
SCAN_TIMES=(); DMF_TIMES=()
scan_run() {
    settle "$SRC_PORT" "$TGT_PORT" "$CP_PORT"
    t0=$(date +%s.%N)
    psql -X -A -t "$SRC" -c "$SCAN_SQL" > "$BASE/scan_src" & a=$!
    psql -X -A -t "$TGT" -c "$SCAN_SQL" > "$BASE/scan_tgt" & b=$!
    wait $a; wait $b
    t1=$(date +%s.%N)
    cmp -s "$BASE/scan_src" "$BASE/scan_tgt" || { echo "bare scan: the sums differ"; exit 1; }
    SCAN_TIMES+=("$(python3 -c "print($t1 - $t0)")")
    printf 'bare scan run %d: %.2f s\n' "$1" "${SCAN_TIMES[-1]}"
}
dmf_run() {
    settle "$SRC_PORT" "$TGT_PORT" "$CP_PORT"
    t0=$(date +%s.%N)
    "$DMF" audit bench --full --json $AUDIT_ARGS > "$BASE/audit.json"
    t1=$(date +%s.%N)
    python3 - "$BASE/audit.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
f = r["full_compare"]
assert f["status"] == "clean", f
print(f"  dmf: {f['chunks_total']} chunks, {f['rows_compared']} rows, status {f['status']}")
PY
    DMF_TIMES+=("$(python3 -c "print($t1 - $t0)")")
    printf 'dmf audit --full run %d: %.2f s\n' "$1" "${DMF_TIMES[-1]}"
}
for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then scan_run "$run"; dmf_run "$run"; else dmf_run "$run"; scan_run "$run"; fi
done
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
SCAN_MED=$(median "${SCAN_TIMES[@]}")
DMF_MED=$(median "${DMF_TIMES[@]}")
printf 'median of %d runs: dmf %.2f s, bare scan %.2f s\n' "$RUNS" "$DMF_MED" "$SCAN_MED"
printf 'audit_ratio_vs_scan=%.3f\n' "$(python3 -c "print($DMF_MED / $SCAN_MED)")"
