#!/usr/bin/env bash
# Hydrate pgbench scale $SCALE (default 30) with dmf and with `pgcopydb clone`, same data, same
# machine, one run. Both copy schema, data, sequences and build indexes with the same parallelism
# ($JOBS). dmf's time is from entering `schema` to entering `replicating` (schema, parallel COPY
# under the slot's snapshot, indexes, subscription started); its provisioning (initdb of the target)
# is reported apart, since pgcopydb gets an already-running target.
# Each tool runs $RUNS times (default 3), alternately fresh, and which goes first alternates too; the
# ratio is of the medians. Each run starts on a quiet machine: the previous run's copy is dropped
# (pgcopydb's database, dmf's target) and every cluster checkpointed first, so that neither tool pays
# for the other's leftover background writes.
# Last line: hydrate_ratio_vs_pgcopydb=<dmf median seconds / pgcopydb median seconds>.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
command -v pgcopydb >/dev/null || apt_install pgcopydb
SCALE="${SCALE:-30}"
JOBS="${JOBS:-4}"
# dmf's copy streams (default: the same as pgcopydb's jobs); DMF_WORKER_ARGS adds worker flags
DMF_JOBS="${DMF_JOBS:-$JOBS}"
bench_setup hydrate
pgbench_source "$SCALE"
SIZE=$(psql -X -A -t "$SRC" -c "SELECT pg_size_pretty(pg_database_size('bench'))")
echo "source: $SIZE"

RUNS="${RUNS:-3}"

# --- peer: pgcopydb clone into a running empty target
PEER_PORT=$(free_port); make_cluster "$BASE/peer" "$PEER_PORT"
PEER="postgres://postgres@127.0.0.1:$PEER_PORT/bench"
PEER_TIMES=()
check_counts() {
    for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
        a=$(psql -X -A -t "$SRC" -c "SELECT count(*) FROM $t"); b=$(psql -X -A -t "$1" -c "SELECT count(*) FROM $t")
        [ "$a" = "$b" ] || { echo "$2: row count of $t differs: $a vs $b"; exit 1; }
    done
}
peer_run() {
    psql -q -X "postgres://postgres@127.0.0.1:$PEER_PORT/postgres" -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench" 2>/dev/null
    rm -rf "$BASE/pgcopydb"
    settle "$SRC_PORT" "$PEER_PORT" "$CP_PORT"
    t0=$(date +%s.%N)
    pgcopydb clone --source "$SRC" --target "$PEER" --table-jobs "$JOBS" --index-jobs "$JOBS" \
        --dir "$BASE/pgcopydb" --no-owner --no-acl >"$BASE/pgcopydb.log" 2>&1 || { tail -20 "$BASE/pgcopydb.log"; exit 1; }
    t1=$(date +%s.%N)
    PEER_TIMES+=("$(python3 -c "print($t1 - $t0)")")
    printf 'pgcopydb clone run %d: %.2f s\n' "$1" "${PEER_TIMES[-1]}"
    if [ -n "${VERBOSE:-}" ]; then grep -E "Duration|^ *[A-Z].*  [0-9.]+(s|ms)" "$BASE/pgcopydb.log" | tail -25; fi
    check_counts "$PEER" pgcopydb
    # Drop the copy now, as dmf's abort removes its target: its background writes must not land on
    # the next timed run.
    psql -q -X "postgres://postgres@127.0.0.1:$PEER_PORT/postgres" -c "DROP DATABASE bench" 2>/dev/null
}

# --- dmf: control plane, one worker; one cluster per run over the same source
CP_PORT=$(free_port); make_cluster "$BASE/cp" "$CP_PORT"
export DMF_DATABASE_URL="postgres://postgres@127.0.0.1:$CP_PORT/postgres"
export DMF_LOG=warn
"$DMF" init >/dev/null
DMF_LOG=info "$DMF" worker --local-dir "$BASE/targets" --fast-local-targets --hydrate-jobs "$DMF_JOBS" ${DMF_WORKER_ARGS:-} >"$BASE/worker.log" 2>&1 & PIDS+=($!)
"$DMF" scheduler --interval 0.2 >"$BASE/scheduler.log" 2>&1 & PIDS+=($!)
status_of() { "$DMF" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clusters"][0]["phase"])'; }
DMF_TIMES=()
dmf_run() {
    local run="$1" name="bench-$1"
    printf '[fleet]\nname = "%s"\n[[cluster]]\nname = "%s"\nsource = "%s"\n' "$name" "$name" "$SRC" > "$BASE/$name.toml"
    settle "$SRC_PORT" "$PEER_PORT" "$CP_PORT"
    "$DMF" enqueue "$BASE/$name.toml" >/dev/null
    for _ in $(seq 1 1800); do
        phase=$(status_of "$name")
        case "$phase" in replicating|validating) break;; esac
        case "$phase" in failed|aborting|aborted) tail -30 "$BASE/worker.log"; exit 1;; esac
        sleep 0.5
    done
    case "$phase" in replicating|validating) ;; *) echo "dmf did not reach replicating"; exit 1;; esac
    read -r DMF_S PROV_S < <(psql -X -A -t -F ' ' "$DMF_DATABASE_URL" -c "
      SELECT extract(epoch FROM max(at) FILTER (WHERE to_phase = 'replicating') - max(at) FILTER (WHERE to_phase = 'schema')),
             extract(epoch FROM max(at) FILTER (WHERE to_phase = 'schema') - max(at) FILTER (WHERE to_phase = 'provisioning'))
      FROM dmf.events WHERE kind = 'transition' AND cluster = '$name'")
    TARGET=$(psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT state->>'target_dsn' FROM dmf.migrations WHERE cluster = '$name'")
    check_counts "$TARGET" dmf
    DMF_TIMES+=("$DMF_S")
    printf 'dmf hydrate run %d (schema -> replicating): %.2f s (provisioning the target took %.2f s more)\n' "$run" "$DMF_S" "$PROV_S"
    # Tear down this run's slot, publication, subscription and target before the next.
    "$DMF" abort "$name" >/dev/null
    for _ in $(seq 1 240); do [ "$(status_of "$name")" = aborted ] && break; sleep 0.5; done
}

# Alternate the tools, and which goes first, so that neither always gets the warmer caches.
for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then peer_run "$run"; dmf_run "$run"; else dmf_run "$run"; peer_run "$run"; fi
done
stop_cluster "$BASE/peer"
if [ -n "${VERBOSE:-}" ]; then cut -c1-200 "$BASE/worker.log" | grep -v "DEBUG"; fi
grep -E "data copied|indexes and constraints built" "$BASE/worker.log" | sed -E 's/^[^ ]+ +INFO +/  dmf /; s/ (cluster|migration)=[^ ]+//g' || true

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
PEER_MED=$(median "${PEER_TIMES[@]}")
DMF_MED=$(median "${DMF_TIMES[@]}")
printf 'median of %d runs: dmf %.2f s, pgcopydb %.2f s\n' "$RUNS" "$DMF_MED" "$PEER_MED"
printf 'hydrate_ratio_vs_pgcopydb=%.3f\n' "$(python3 -c "print($DMF_MED / $PEER_MED)")"
