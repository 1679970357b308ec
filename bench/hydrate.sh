#!/usr/bin/env bash
# Hydrate pgbench scale $SCALE (default 30) with dmf and with `pgcopydb clone`, same data, same
# machine, one run. Both copy schema, data, sequences and build indexes with the same parallelism
# ($JOBS). dmf's time is from entering `schema` to entering `replicating` (schema, parallel COPY
# under the slot's snapshot, indexes, subscription started); its provisioning (initdb of the target)
# is reported apart, since pgcopydb gets an already-running target.
# Last line: hydrate_ratio_vs_pgcopydb=<dmf seconds / pgcopydb seconds>.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
command -v pgcopydb >/dev/null || apt_install pgcopydb
SCALE="${SCALE:-30}"
JOBS="${JOBS:-4}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --quiet --bin dmf
DMF="$CARGO_TARGET_DIR/release/dmf"

BASE="$(mktemp -d /tmp/dmf-bench-hydrate-XXXX)"
chmod 755 "$BASE"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for d in "$BASE"/*/ "$BASE"/targets/*/; do [ -f "$d/data/PG_VERSION" ] && stop_cluster "$d"; done
    rm -rf "$BASE"
}
trap cleanup EXIT

SRC_PORT=$(free_port); make_cluster "$BASE/source" "$SRC_PORT"
SRC="postgres://postgres@127.0.0.1:$SRC_PORT/bench"
as_pg "$DMF_PG_BIN/psql" -q -h 127.0.0.1 -p "$SRC_PORT" -U postgres -d postgres -c "CREATE DATABASE bench"
echo "loading pgbench scale $SCALE"
pgbench -i -q -s "$SCALE" "$SRC" >/dev/null 2>&1
# pgbench_history has no key: dmf's preflight refuses to publish such a table. Same data for both.
psql -q -X "$SRC" -c "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY" -c "VACUUM ANALYZE"
SIZE=$(psql -X -A -t "$SRC" -c "SELECT pg_size_pretty(pg_database_size('bench'))")
echo "source: $SIZE"

# --- pgcopydb clone into a running empty target
PEER_PORT=$(free_port); make_cluster "$BASE/peer" "$PEER_PORT"
as_pg "$DMF_PG_BIN/psql" -q -h 127.0.0.1 -p "$PEER_PORT" -U postgres -d postgres -c "CREATE DATABASE bench"
PEER="postgres://postgres@127.0.0.1:$PEER_PORT/bench"
t0=$(date +%s.%N)
pgcopydb clone --source "$SRC" --target "$PEER" --table-jobs "$JOBS" --index-jobs "$JOBS" \
    --dir "$BASE/pgcopydb" --no-owner --no-acl >"$BASE/pgcopydb.log" 2>&1 || { tail -20 "$BASE/pgcopydb.log"; exit 1; }
t1=$(date +%s.%N)
PEER_S=$(python3 -c "print($t1 - $t0)")
stop_cluster "$BASE/peer"
printf 'pgcopydb clone: %.2f s\n' "$PEER_S"

# --- dmf: control plane, one worker, the fleet of one
CP_PORT=$(free_port); make_cluster "$BASE/cp" "$CP_PORT"
export DMF_DATABASE_URL="postgres://postgres@127.0.0.1:$CP_PORT/postgres"
export DMF_LOG=warn
"$DMF" init >/dev/null
cat > "$BASE/fleet.toml" <<TOML
[fleet]
name = "bench"
[[cluster]]
name = "bench"
source = "$SRC"
TOML
"$DMF" enqueue "$BASE/fleet.toml" >/dev/null
DMF_LOG=info "$DMF" worker --local-dir "$BASE/targets" --fast-local-targets --hydrate-jobs "$JOBS" >"$BASE/worker.log" 2>&1 & PIDS+=($!)
"$DMF" scheduler --interval 0.2 >"$BASE/scheduler.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 1800); do
    phase=$("$DMF" status bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clusters"][0]["phase"])')
    [ "$phase" = replicating ] && break
    case "$phase" in failed|aborting|aborted) tail -30 "$BASE/worker.log"; exit 1;; esac
    sleep 0.5
done
[ "$phase" = replicating ] || { echo "dmf did not reach replicating"; exit 1; }
read -r DMF_S PROV_S < <(psql -X -A -t -F ' ' "$DMF_DATABASE_URL" -c "
  SELECT extract(epoch FROM max(at) FILTER (WHERE to_phase = 'replicating') - max(at) FILTER (WHERE to_phase = 'schema')),
         extract(epoch FROM max(at) FILTER (WHERE to_phase = 'schema') - max(at) FILTER (WHERE to_phase = 'provisioning'))
  FROM dmf.events WHERE kind = 'transition'")
TARGET=$(psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT state->>'target_dsn' FROM dmf.migrations")
for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
    a=$(psql -X -A -t "$SRC" -c "SELECT count(*) FROM $t"); b=$(psql -X -A -t "$TARGET" -c "SELECT count(*) FROM $t")
    [ "$a" = "$b" ] || { echo "row count of $t differs: $a vs $b"; exit 1; }
done
grep -E "transition|activity finished|slot created|data copied|indexes and constraints built|hydrated" "$BASE/worker.log" | sed -E 's/^[^ ]+ +INFO +/  /; s/ (cluster|migration)=[^ ]+//g' | cut -c1-150 || true
printf 'dmf hydrate (schema -> replicating): %.2f s (provisioning the target took %.2f s more)\n' "$DMF_S" "$PROV_S"
printf 'hydrate_ratio_vs_pgcopydb=%.3f\n' "$(python3 -c "print($DMF_S / $PEER_S)")"
