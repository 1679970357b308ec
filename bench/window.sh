#!/usr/bin/env bash
# The consistency window: how long a transaction committed on the source takes to be visible on
# the target, the number dmf's auditor reports (`dmf audit`: window p50/p99), under TPC-B at a
# fixed rate, as the application role `bank` (not a superuser), while the auditor's full compare
# runs and both clusters checkpoint every CHECKPOINT_S seconds, with fsync on, as in production.
#   RATE (transactions per second, default 400), CLIENTS (8), MEASURE_S (60), SCALE (pgbench
#   scale, default 30: the full compare is still running during the measurement), SAMPLE (the
#   auditor's sample rate, default 0.1), CHECKPOINT_S (10), KEEP=1 keeps logs and data.
# Every sample the auditor took in the measured period counts: the bench prints their number,
# how many have no window and why, p50/p99 per 10-second slice, then window_p50_ms= and
# window_p99_ms= last. Goal: window_p99_ms <= 5 at RATE=400 on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
RATE="${RATE:-400}"
CLIENTS="${CLIENTS:-8}"
MEASURE_S="${MEASURE_S:-60}"
SCALE="${SCALE:-30}"
SAMPLE="${SAMPLE:-0.1}"
CHECKPOINT_S="${CHECKPOINT_S:-10}"
bench_setup window

pgbench_source "$SCALE"
# fsync on, as production runs (make_cluster turns it off for speed)
psql -q -X "postgres://postgres@127.0.0.1:$SRC_PORT/postgres" -c "ALTER SYSTEM SET fsync = on" -c "SELECT pg_reload_conf()" >/dev/null
bank_role
bench_control_plane
start() {  # start NAME ARGS...: a dmf process in its own session, its log in $BASE/NAME.log
    local name="$1"; shift
    DMF_LOG="${PROCS_LOG:-info}" setsid "$DMF" "$@" >"$BASE/$name.log" 2>&1 & PIDS+=($!)
}
start scheduler scheduler --interval 0.3
# the audit window outlasts the measurement: the cluster stays in validating throughout
start worker worker --local-dir "$BASE/targets" --watch-interval 0.5 \
    --audit-window-s $((MEASURE_S + 600)) --audit-sample-rate "$SAMPLE" --soak-s 3600

phase() { "$DMF" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clusters"][0]["phase"])'; }
deadline=$((SECONDS + 900))
until [ "$(phase)" = validating ]; do
    case "$(phase)" in failed|aborted|aborting) "$DMF" status; tail -n 30 "$BASE/worker.log"; exit 1 ;; esac
    [ $SECONDS -lt $deadline ] || { echo "not validating after 900 s"; tail -n 30 "$BASE/worker.log"; exit 1; }
    sleep 0.5
done
# the target dmf made: its postgres password is in its directory, readable by its owner only
TARGET=$(psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT state ->> 'target_dsn' FROM dmf.migrations")
TARGET_DIR=$(dirname "$(ls -d "$BASE"/targets/*/dmf.password)")
export PGPASSFILE="$BASE/target.pgpass"
target_port=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).port)' "$TARGET")
printf '127.0.0.1:%s:*:postgres:%s\n' "$target_port" "$(cat "$TARGET_DIR/dmf.password")" > "$PGPASSFILE"
chmod 600 "$PGPASSFILE"
TARGET="postgres://postgres@127.0.0.1:$target_port/postgres"
psql -q -X "$TARGET" -c "SELECT 1" >/dev/null
echo "validating; measuring $MEASURE_S s of TPC-B at $RATE tps ($CLIENTS clients as bank), sample rate $SAMPLE, checkpoints every $CHECKPOINT_S s"

# checkpoints on both clusters during the measurement
( while sleep "$CHECKPOINT_S"; do
      psql -q -X "postgres://postgres@127.0.0.1:$SRC_PORT/postgres" -c CHECKPOINT >/dev/null 2>&1 || true
      psql -q -X "$TARGET" -c CHECKPOINT >/dev/null 2>&1 || true
  done ) & PIDS+=($!)
BANK="postgres://bank@127.0.0.1:$SRC_PORT/bench"
# 5 s of load before the measured period: the sampler and the apply reach their steady state
PGPASSWORD="$APP_PW" pgbench -n -c "$CLIENTS" -j 2 -R "$RATE" -T $((MEASURE_S + 5)) "$BANK" >"$BASE/pgbench.out" 2>&1 & LOAD=$!
sleep 5
FROM=$(psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT now()")
wait "$LOAD" || { cat "$BASE/pgbench.out"; echo "pgbench failed"; exit 1; }
UNTIL=$(psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT now()")
sed -n -E 's/^(number of transactions actually processed|number of failed transactions|tps) .*/&/p' "$BASE/pgbench.out"
# the samples recorded for transactions of the measured period land a little after it
sleep 5
compare=$(psql -X -A -t "$DMF_DATABASE_URL" -c "SELECT coalesce(string_agg(status || ' ' || to_char(started_at, 'HH24:MI:SS') || '-' || coalesce(to_char(finished_at, 'HH24:MI:SS'), 'still running'), ', ' ORDER BY id), 'none') FROM dmf.audit_runs")
echo "measured $(date -d "$FROM" +%T)-$(date -d "$UNTIL" +%T); full compare runs (status start-end): $compare"
psql -X -A -t -F' ' "$DMF_DATABASE_URL" <<SQL
SELECT 'slice ' || to_char(date_trunc('second', min(at)), 'HH24:MI:SS') || ': samples ' || count(*) ||
       ', p50 ' || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY window_ms)::numeric, 2) ||
       ' ms, p99 ' || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY window_ms)::numeric, 2) || ' ms, max ' || round(max(window_ms)::numeric, 2) || ' ms'
FROM dmf.audit_samples WHERE at >= '$FROM' AND at < '$UNTIL'::timestamptz + interval '5 seconds'
GROUP BY floor(extract(epoch FROM at - '$FROM'::timestamptz) / 10) ORDER BY 1;
SQL
psql -X -A -t -F' ' "$DMF_DATABASE_URL" <<SQL
SELECT 'samples=' || count(*), 'untimed=' || count(*) FILTER (WHERE window_ms IS NULL),
       'by_status=' || (SELECT string_agg(status || ':' || n, ',') FROM (SELECT status, count(*) n FROM dmf.audit_samples WHERE at >= '$FROM' AND at < '$UNTIL'::timestamptz + interval '5 seconds' GROUP BY status) s)
FROM dmf.audit_samples WHERE at >= '$FROM' AND at < '$UNTIL'::timestamptz + interval '5 seconds';
SELECT 'window_max_ms=' || round(max(window_ms)::numeric, 2) FROM dmf.audit_samples WHERE at >= '$FROM' AND at < '$UNTIL'::timestamptz + interval '5 seconds';
SELECT 'window_p50_ms=' || round(percentile_cont(0.5) WITHIN GROUP (ORDER BY window_ms)::numeric, 2) FROM dmf.audit_samples WHERE at >= '$FROM' AND at < '$UNTIL'::timestamptz + interval '5 seconds';
SELECT 'window_p99_ms=' || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY window_ms)::numeric, 2) FROM dmf.audit_samples WHERE at >= '$FROM' AND at < '$UNTIL'::timestamptz + interval '5 seconds';
SQL
