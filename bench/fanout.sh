#!/usr/bin/env bash
# Route-change fan-out: how long a route change takes to reach every proxy of one cluster, with
# PROXIES (default 100) `dmf proxy` sidecars of that cluster on one control plane (each with one
# relay thread and idle polling off, as a fleet's sidecars run, each logged in to the control plane
# as the cluster's proxy role, not as a superuser), measured by `dmf route set ...
# --wait-ms`, which returns once every live proxy acknowledged the new epoch:
#   - a change while the proxies listen (they just started: a route is listened to for
#     --listen-after-change-s after a start or a change; 15 here, the least, 60 by default);
#   - a hold once every proxy's route is at rest (polled every 4 s, not listened to): the wake
#     (a new epoch, read at each proxy's next poll) and then the hold, together;
#   - the release right after it (listening again).
# Prints each time in ms, and last fanout_hold_from_rest_ms=, then fanout_listening_ms=.
# Knobs: PROXIES, REST_S (how long to wait for the routes to be at rest, default 25).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
PROXIES="${PROXIES:-100}"
REST_S="${REST_S:-25}"
bench_setup fanout
ulimit -n 65536 2>/dev/null || true

CP_PORT=$(free_port); make_cluster "$BASE/cp" "$CP_PORT"
psql -q -X "postgres://postgres@127.0.0.1:$CP_PORT/postgres" -c "ALTER SYSTEM SET max_connections = 1000" >/dev/null
as_pg "$DMF_PG_BIN/pg_ctl" -D "$BASE/cp/data" -l "$BASE/cp/log" -w restart >/dev/null
SRC_PORT=$(free_port); make_cluster "$BASE/source" "$SRC_PORT"
psql -q -X "postgres://postgres@127.0.0.1:$SRC_PORT/postgres" -c "CREATE DATABASE app"
SRC="postgres://postgres@127.0.0.1:$SRC_PORT/app"
export DMF_DATABASE_URL="postgres://postgres@127.0.0.1:$CP_PORT/postgres"
export DMF_LOG="${DMF_LOG:-warn}"
"$DMF" init >/dev/null
printf '[fleet]\nname = "fanout"\n[[cluster]]\nname = "app"\nsource = "%s"\n' "$SRC" > "$BASE/fleet.toml"
"$DMF" enqueue "$BASE/fleet.toml" >/dev/null
echo '"app" "app-pw"' > "$BASE/users.txt"
# the proxies log in to the control plane as their own role, a member of dmf_proxy (made by dmf
# init: it may read the routes and keep its own row), as in production
psql -q -X "$DMF_DATABASE_URL" -c "CREATE ROLE app_proxy LOGIN IN ROLE dmf_proxy"
PROXY_CP_URL="postgres://app_proxy@127.0.0.1:$CP_PORT/postgres"

echo "starting $PROXIES proxies of cluster app"
for i in $(seq 1 "$PROXIES"); do
    port=$(free_port)
    DMF_DATABASE_URL="$PROXY_CP_URL" setsid "$DMF" proxy --cluster app --listen "127.0.0.1:$port" --users-file "$BASE/users.txt" --threads 1 --idle-poll-us 0 \
        --listen-after-change-s 15 \
        >"$BASE/proxy-$i.log" 2>&1 &
    PIDS+=($!)
done
cp_count() { psql -X -A -t "$DMF_DATABASE_URL" -c "$1"; }
for _ in $(seq 1 120); do
    [ "$(cp_count "SELECT count(*) FROM dmf.proxies WHERE cluster = 'app' AND heartbeat_at > now() - interval '5 seconds'")" = "$PROXIES" ] && break
    sleep 0.5
done
live=$(cp_count "SELECT count(*) FROM dmf.proxies WHERE cluster = 'app' AND heartbeat_at > now() - interval '5 seconds'")
[ "$live" = "$PROXIES" ] || { echo "only $live of $PROXIES proxies registered"; tail -n 20 "$BASE/proxy-1.log"; exit 1; }

# route set ARGS...: the milliseconds until every live proxy acknowledged the change
route_set_ms() {
    local t0 t1 out
    t0=$(date +%s%N)
    out=$("$DMF" route set app "$@" --wait-ms 30000 --json)
    t1=$(date +%s%N)
    local applied
    applied=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["applied_by"])' <<<"$out")
    [ "$applied" = "$PROXIES" ] || { echo "route set $*: applied by $applied of $PROXIES proxies"; exit 1; }
    echo $(( (t1 - t0) / 1000000 ))
}
listening=$(cp_count "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %dmf_route_%'")
echo "proxies listening after their start: $listening"
listening_ms=$(route_set_ms --mode split_reads --read "$SRC")
echo "a change to $PROXIES listening proxies: $listening_ms ms"
route_set_ms --mode primary >/dev/null
echo "waiting ${REST_S} s for the routes to be at rest"
sleep "$REST_S"
listening=$(cp_count "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %dmf_route_%'")
echo "proxies listening at rest: $listening"
[ "$listening" = 0 ] || { echo "the routes are not at rest after ${REST_S} s"; exit 1; }
hold_ms=$(route_set_ms --hold)
echo "a hold reaching $PROXIES proxies at rest (wake by their poll, then the hold): $hold_ms ms"
release_ms=$(route_set_ms --release)
echo "the release right after (listening): $release_ms ms"
echo "fanout_release_ms=$release_ms"
echo "fanout_hold_from_rest_ms=$hold_ms"
echo "fanout_listening_ms=$listening_ms"
