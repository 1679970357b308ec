#!/usr/bin/env bash
# The cutover under load, dmf against the classic pgbouncer switchover, in one run:
#   dmf: a source (pgbench scale $SCALE, default 10) migrated by a worker to a local target while
#        pgbench TPC-B runs with 8 clients through two `dmf proxy` sidecars (4 each), from the start
#        of shadow reads (5 s); the worker flips, then `dmf rollback` moves traffic back, under the
#        same load. Both loads log in as the application role `bank`, not a superuser.
#   peer: the same source, replicated by a native subscription to a second cluster, with pgbench
#        TPC-B (8 clients) through pgbouncer in transaction mode; the switchover is PAUSE, wait
#        until the subscriber's slot has confirmed the source's current LSN, copy sequences,
#        repoint and RELOAD, RESUME.
# The stall of a switchover is the longest latency of a transaction that was running at any moment
# from the hold to 100 ms after the release (from pgbench's per-transaction log); the p99 and the
# longest latency of the other transactions are printed for scale. Prints the figures, then
# flip_ratio_vs_pgbouncer=<dmf flip stall / pgbouncer stall> and flip_pause_ms=<dmf flip stall>
# last. Goal: at most 100 ms, zero failed transactions, and a ratio well under 1.
# Knobs: SCALE, LOAD_S (seconds of load around the dmf flip and rollback, default 40),
# VERBOSE=1 (pgbench outputs and the worker's log tail).
# KEEP=1 leaves the logs (pgbench per-transaction logs, dmf logs) under the bench directory.
# PROCS_LOG sets the log filter of the dmf processes (default info), e.g. info,dmf_proxy=debug.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || apt_install pgbouncer
PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
SCALE="${SCALE:-10}"
LOAD_S="${LOAD_S:-40}"
bench_setup flip
flip_cleanup() {
    [ -f "$BASE/pgbouncer/pgbouncer.pid" ] && kill "$(cat "$BASE/pgbouncer/pgbouncer.pid")" 2>/dev/null || true
    bench_cleanup
}
trap flip_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pgbench_source "$SCALE"
# the application logs in as its own role (not a superuser), as production applications do: dmf
# makes it on the target with its password and grants; the proxies hold its password
bank_role
printf '"bank" "%s"\n' "$APP_PW" > "$BASE/users.txt"
bench_control_plane
# Every dmf process in its own session, like a service (see bench/proxy.sh on autogroups).
start() {  # start NAME ARGS...: a dmf process in the background, its log in $BASE/NAME.log
    local name="$1"; shift
    DMF_LOG="${PROCS_LOG:-info}" setsid "$DMF" "$@" >"$BASE/$name.log" 2>&1 & PIDS+=($!)
}
start scheduler scheduler --interval 0.3
start worker worker --local-dir "$BASE/targets" --fast-local-targets --watch-interval 0.5 \
    --audit-window-s 2 --shadow-reads-s 5 --soak-s 3600 --hold-deadline-ms 2000
P1=$(free_port); P2=$(free_port)
start proxy1 proxy --cluster bench --listen "127.0.0.1:$P1" --users-file "$BASE/users.txt"
start proxy2 proxy --cluster bench --listen "127.0.0.1:$P2" --users-file "$BASE/users.txt"

phase() { "$DMF" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clusters"][0]["phase"])'; }
wait_phase() {  # wait_phase SECONDS PHASE...: until the cluster is in one of them
    local secs="$1"; shift
    local deadline=$((SECONDS + secs)) p
    while :; do
        p=$(phase)
        for want in "$@"; do [ "$p" = "$want" ] && return 0; done
        case "$p" in failed|aborted|aborting) echo "the migration went to $p:"; "$DMF" status; tail -n 30 "$BASE/worker.log"; exit 1 ;; esac
        if [ $SECONDS -ge $deadline ]; then echo "still $p after ${secs}s (waiting for $*)"; tail -n 30 "$BASE/worker.log"; exit 1; fi
        sleep 0.3
    done
}
state() { psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT state #>> '{$1}' FROM dmf.migrations"; }
epoch_us() { psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT (extract(epoch FROM ($1)::timestamptz) * 1e6)::int8"; }

# load NAME DSN DSN SECONDS: 8 TPC-B clients, 4 per DSN, per-transaction logs under $BASE/NAME-*
LOADS=()
load() {
    local name="$1" a="$2" b="$3" secs="$4"
    LOADS=()
    for side in a b; do
        local dsn="$a"; [ "$side" = b ] && dsn="$b"
        pgbench -n -c 4 -j 2 -T "$secs" -l --log-prefix="$BASE/$name-$side-txn" "$dsn" >"$BASE/$name-$side.out" 2>&1 & LOADS+=($!)
    done
}
# finish NAME: wait for both pgbench runs (in this shell: they are its children); fail on an error
finish() {
    local name="$1"
    for pid in "${LOADS[@]}"; do
        wait "$pid" || { tail -n 30 "$BASE/$name"-*.out; tail -n 30 "$BASE"/proxy*.log "$BASE/worker.log"; echo "pgbench ($name) failed"; exit 1; }
    done
}
# counted NAME: the transactions both runs processed (stdout is captured: errors go to stderr)
counted() {
    local name="$1" total=0 n failed
    for side in a b; do
        [ -n "${VERBOSE:-}" ] && sed "s/^/  [$name-$side] /" "$BASE/$name-$side.out" >&2
        n=$(sed -n -E 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$BASE/$name-$side.out")
        failed=$(sed -n -E 's/^number of failed transactions: ([0-9]+).*/\1/p' "$BASE/$name-$side.out")
        if [ "${failed:-0}" != 0 ]; then cat "$BASE/$name-$side.out" >&2; echo "$name: $failed failed transactions" >&2; exit 1; fi
        total=$((total + n))
    done
    echo "$total"
}
# latencies NAME FROM_US TO_US: the longest latency (ms) of a transaction running at any moment in
# [FROM, TO], then the p99 and the longest of the transactions that did not (the run's baseline)
latencies() {
    python3 - "$BASE" "$1" "$2" "$3" <<'PY'
import glob, sys
base, name, lo, hi = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
during, other = [0], []
for path in glob.glob(f"{base}/{name}-*-txn*"):
    for line in open(path):
        f = line.split()
        if len(f) < 6 or not f[2].isdigit():
            continue
        lat, end = int(f[2]), int(f[4]) * 1_000_000 + int(f[5])
        (during if end >= lo and end - lat <= hi else other).append(lat)
other.sort()
p99 = other[int(len(other) * 0.99)] if other else 0
print(f"{max(during) / 1000:.1f} {p99 / 1000:.1f} {(other[-1] if other else 0) / 1000:.1f}")
PY
}

# --- dmf: flip and rollback under load
# the load starts once the audit's full compare is done (shadow reads, 5 s before the flip), so that
# the flip is measured under the clients' load, not under the auditor's
wait_phase 300 shadow_reads
echo "dmf: hydrated and audited; 8 TPC-B clients through two proxies for ${LOAD_S} s"
load dmf "postgres://bank@127.0.0.1:$P1/bench?sslmode=disable" "postgres://bank@127.0.0.1:$P2/bench?sslmode=disable" "$LOAD_S"
wait_phase 120 flipped
sleep 3
"$DMF" rollback bench >/dev/null
wait_phase 120 rolled_back
finish dmf
DMF_TXNS=$(counted dmf) || exit 1
FLIP_HELD=$(state flip,held_ms); FLIP_AT=$(epoch_us "'$(state flip,held_at)'")
BACK_HELD=$(state rollback,held_ms); BACK_AT=$(epoch_us "'$(state rollback,held_at)'")
# the window: from the hold to 100 ms after the release (sessions open their new backend then)
read -r FLIP_STALL DMF_P99 DMF_MAX < <(latencies dmf "$FLIP_AT" "$((FLIP_AT + ${FLIP_HELD%.*} * 1000 + 100000))")
read -r BACK_STALL _ _ < <(latencies dmf "$BACK_AT" "$((BACK_AT + ${BACK_HELD%.*} * 1000 + 100000))")
ATTEMPTS=$(state flip,attempts)
echo "dmf flip steps (ms): $(state flip,timings_ms)"
[ -n "${KEEP:-}" ] && echo "dmf flip held at $FLIP_AT us for $FLIP_HELD ms; rollback held at $BACK_AT us for $BACK_HELD ms"
echo "dmf rollback steps (ms): $(state rollback,timings_ms)"
[ -n "${VERBOSE:-}" ] && tail -n 40 "$BASE/worker.log"

# --- peer: the same source replicated natively to a second cluster, pgbouncer in front
PEER_PORT=$(free_port); make_cluster "$BASE/peer" "$PEER_PORT"
PEER="postgres://postgres@127.0.0.1:$PEER_PORT/bench"
psql -q -X "postgres://postgres@127.0.0.1:$PEER_PORT/postgres" -c "CREATE DATABASE bench"
# the classic switchover makes the application's role on the new server by hand
psql -q -X "$PEER" -c "CREATE ROLE bank LOGIN"
pg_dump --schema-only --no-publications --no-subscriptions "$SRC" | psql -q -X "$PEER" >/dev/null
psql -q -X "$SRC" -c "CREATE PUBLICATION peer_pub FOR ALL TABLES"
psql -q -X "$PEER" -c "CREATE SUBSCRIPTION peer_sub CONNECTION 'host=127.0.0.1 port=$SRC_PORT dbname=bench user=postgres' PUBLICATION peer_pub"
for _ in $(seq 1 600); do
    [ "$(psql -X -A -t "$PEER" -c "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'")" = 0 ] && break
    sleep 0.5
done
BP="$BASE/pgbouncer"; BOUNCER_PORT=$(free_port); mkdir -p "$BP"
pgbouncer_ini "$BP" "$BOUNCER_PORT" "$SRC_PORT"
# the same application role; pgbouncer logs in to the servers as the user its ini names
echo '"bank" ""' >> "$BP/userlist.txt"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$BP"
as_pg "$PGBOUNCER" -d -q "$BP/pgbouncer.ini"
ADMIN="postgres://postgres@127.0.0.1:$BOUNCER_PORT/pgbouncer"
sleep 1
echo "peer: subscriber in sync; 8 TPC-B clients through pgbouncer for 20 s"
load peer "postgres://bank@127.0.0.1:$BOUNCER_PORT/bench?sslmode=disable" "postgres://bank@127.0.0.1:$BOUNCER_PORT/bench?sslmode=disable" 20
sleep 8
now_us() { python3 -c 'import time; print(int(time.time() * 1e6))'; }
PEER_FROM=$(now_us)
psql -X -q "$ADMIN" -c "PAUSE bench" >/dev/null
LSN=$(psql -X -A -t "$SRC" -c "SELECT pg_current_wal_lsn()")
until [ "$(psql -X -A -t "$SRC" -c "SELECT confirmed_flush_lsn >= '$LSN' FROM pg_replication_slots WHERE slot_name = 'peer_sub'")" = t ]; do sleep 0.002; done
psql -X -A -t "$SRC" -c "SELECT format('SELECT setval(%L, %s, true);', quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value) FROM pg_sequences WHERE last_value IS NOT NULL AND schemaname <> '_dmf'" | psql -X -q "$PEER" >/dev/null
pgbouncer_ini "$BP" "$BOUNCER_PORT" "$PEER_PORT"
echo '"bank" ""' >> "$BP/userlist.txt"
psql -X -q "$ADMIN" -c "RELOAD" >/dev/null
psql -X -q "$ADMIN" -c "RESUME bench" >/dev/null
PEER_TO=$(now_us)
finish peer
PEER_TXNS=$(counted peer) || exit 1
PEER_HELD=$(python3 -c "print(f'{($PEER_TO - $PEER_FROM) / 1000:.1f}')")
read -r PEER_STALL PEER_P99 PEER_MAX < <(latencies peer "$PEER_FROM" "$((PEER_TO + 100000))")
PEER_ROWS=$(psql -X -A -t "$PEER" -c "SELECT count(*) FROM pgbench_history")

printf '\n%-34s %12s %12s %16s %8s\n' "" "held (ms)" "stall (ms)" "transactions" "failed"
printf '%-34s %12.1f %12s %16s %8s\n' "dmf flip (attempts: $ATTEMPTS)" "$FLIP_HELD" "$FLIP_STALL" "$DMF_TXNS" 0
printf '%-34s %12.1f %12s %16s %8s\n' "dmf rollback" "$BACK_HELD" "$BACK_STALL" "(same run)" 0
printf '%-34s %12s %12s %16s %8s\n' "pgbouncer PAUSE/RELOAD/RESUME" "$PEER_HELD" "$PEER_STALL" "$PEER_TXNS" 0
echo "transactions outside the switchover windows: dmf p99 $DMF_P99 ms, longest $DMF_MAX ms (outside the flip window; includes the rollback);" \
    "pgbouncer p99 $PEER_P99 ms, longest $PEER_MAX ms"
echo "history rows on the peer after its switchover: $PEER_ROWS"
python3 -c "print(f'flip_ratio_vs_pgbouncer={$FLIP_STALL / max($PEER_STALL, 0.001):.3f}')"
echo "flip_pause_ms=$FLIP_STALL"
