#!/usr/bin/env bash
# `dmf proxy` against pgbouncer (transaction pooling) and against no proxy at all, all three over
# the same PostgreSQL server (pgbench scale $SCALE, default 10) in one run:
#   - pgbench -S (select-only), 8 clients, in each protocol: -M simple, extended, prepared;
#   - TPC-B (pgbench's default script), 8 clients, -M simple;
#   - select-only with 1 client, for the latency each proxy adds over a direct connection.
# Every run is $DURATION seconds (default 10) after a checkpoint; within a round the three targets
# take turns going first, so none always gets the warmer caches. $RUNS rounds (default 5: on
# this 2-vCPU machine one 10 s run of the same proxy varies by up to 10%, with where the scheduler
# happens to put pgbench's threads and the backends); the figures are the medians, and the
# select-only simple ratio of each round is printed too, to show the spread. Latencies are
# 1000 * clients / tps, which is how pgbench computes its "latency average", kept to 0.1 us
# instead of pgbench's 1 us. pgbouncer 1.18 has no protocol-level prepared statements in transaction
# mode: its -M prepared run is reported n/a when it fails.
# dmf proxy routes to the server through dmf.routes: the server is enqueued as a cluster (nobody
# runs a scheduler or a worker, so it stays pending and its route points at the source). It runs
# with its defaults: one relay thread per CPU, idle polling on.
# Then the same with TLS on both sides of each proxy (TLS_MODES, default select-simple): pgbench
# to the proxy with sslmode=require, the proxy to the server with sslmode=require; pgbouncer with
# client_tls_sslmode and server_tls_sslmode require as the peer (targets pgbouncer-tls, dmf-tls).
# The runs without TLS have none anywhere (sslmode=disable to the server too).
# Last lines: proxy_added_latency_ms dmf=<ms> pgbouncer=<ms> (1-client latency minus direct),
# proxy_tls_ratio_vs_pgbouncer=<dmf-tls tps / pgbouncer-tls tps, select-only simple>, then
# proxy_ratio_vs_pgbouncer=<dmf tps / pgbouncer tps, select-only simple>.
# Knobs: RUNS, DURATION (s), SCALE, MODES (a subset of: select-simple select-extended
# select-prepared tpcb latency), WARMUP (s per target before the rounds, default 3), VERBOSE=1
# (every pgbench output and the proxy's log and metrics); SKIP_DMF=1 builds nothing and measures
# only direct and pgbouncer (for debugging the script itself).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || apt_install pgbouncer
PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
SCALE="${SCALE:-10}"
RUNS="${RUNS:-5}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-3}"
CLIENTS=8
THREADS=2
SKIP_DMF="${SKIP_DMF:-}"
# bench_setup builds dmf; with SKIP_DMF there is nothing to build.
if [ -n "$SKIP_DMF" ]; then cargo() { :; }; fi
bench_setup proxy

# pgbouncer runs as a daemon (as postgres: it refuses root) and dmf proxy in the background; both
# are stopped before bench_cleanup stops the clusters and removes $BASE, on any exit.
PROXY_PID=""
stop_pid() {  # stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL
    local pid="$1"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then return 0; fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
TLS_PROXY_PID=""
proxy_bench_cleanup() {
    stop_pid "$PROXY_PID"
    stop_pid "$TLS_PROXY_PID"
    [ -f "$BASE/pgbouncer-tls/pgbouncer.pid" ] && stop_pid "$(cat "$BASE/pgbouncer-tls/pgbouncer.pid")"
    [ -f "$BASE/pgbouncer/pgbouncer.pid" ] && stop_pid "$(cat "$BASE/pgbouncer/pgbouncer.pid")"
    bench_cleanup
}
trap proxy_bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the server: database bench loaded by pgbench (max_connections 120, from make_cluster)
pgbench_source "$SCALE"
# The server offers TLS (for the TLS runs); the runs without it ask for none anywhere.
TLS_DIR="$BASE/tls"; mkdir -p "$TLS_DIR"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -addext "subjectAltName = IP:127.0.0.1" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.crt" 2>/dev/null
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$TLS_DIR"
chmod 600 "$TLS_DIR/server.key"
psql -X -q "$SRC" -c "ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/server.crt'" -c "ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/server.key'" \
    -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
# The application logs in as its own role through every proxy, as a real service does (dmf's proxy
# never admits dmf's own, the route's user); direct runs too, so that every target does the same.
psql -X -q "$SRC" -c "CREATE ROLE bench_app LOGIN PASSWORD 'bench-app-pw'; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO bench_app; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO bench_app"
declare -A URL=([direct]="${SRC/postgres@/bench_app@}?sslmode=disable")

# --- pgbouncer, transaction pooling, trust on loopback
BP="$BASE/pgbouncer"
BOUNCER_PORT=$(free_port)
mkdir -p "$BP"
pgbouncer_ini "$BP" "$BOUNCER_PORT" "$SRC_PORT" bench_app bench-app-pw
# (pgbouncer's server_tls_sslmode defaults to prefer, and the server offers TLS)
echo "server_tls_sslmode = disable" >> "$BP/pgbouncer.ini"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$BP"
as_pg "$PGBOUNCER" -d -q "$BP/pgbouncer.ini" || { cat "$BP/pgbouncer.log" 2>/dev/null; exit 1; }
URL[pgbouncer]="postgres://bench_app@127.0.0.1:$BOUNCER_PORT/bench?sslmode=disable"
# pgbouncer with TLS to its clients and to the server
BPT="$BASE/pgbouncer-tls"
BOUNCER_TLS_PORT=$(free_port)
mkdir -p "$BPT"
pgbouncer_ini "$BPT" "$BOUNCER_TLS_PORT" "$SRC_PORT" bench_app bench-app-pw
cat >> "$BPT/pgbouncer.ini" <<INI
client_tls_sslmode = require
client_tls_cert_file = $TLS_DIR/server.crt
client_tls_key_file = $TLS_DIR/server.key
server_tls_sslmode = require
INI
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$BPT"
as_pg "$PGBOUNCER" -d -q "$BPT/pgbouncer.ini" || { cat "$BPT/pgbouncer.log" 2>/dev/null; exit 1; }
URL[pgbouncer-tls]="postgres://bench_app@127.0.0.1:$BOUNCER_TLS_PORT/bench?sslmode=require"
BOUNCER_VERSION="$("$PGBOUNCER" --version | head -n 1 | awk '{print $2}')"

# wait_ready NAME LOG [PID]: up to 30 s for `select 1` through target NAME; else show LOG and fail.
wait_ready() {
    local name="$1" log="$2" pid="${3:-}"
    for _ in $(seq 1 60); do
        psql -X -A -t -q "${URL[$name]}" -c "SELECT 1" >/dev/null 2>&1 && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before accepting connections:"; tail -n 40 "$log"; exit 1
        fi
        sleep 0.5
    done
    echo "$name does not accept connections after 30 s:"; tail -n 40 "$log"; exit 1
}
wait_ready pgbouncer "$BP/pgbouncer.log"
wait_ready pgbouncer-tls "$BPT/pgbouncer.log"

# --- dmf: a control plane, the server enqueued as cluster bench, and the proxy on its route
TARGETS=(direct pgbouncer)
if [ -z "$SKIP_DMF" ]; then
    CP_PORT=$(free_port); make_cluster "$BASE/cp" "$CP_PORT"
    export DMF_DATABASE_URL="postgres://postgres@127.0.0.1:$CP_PORT/postgres"
    export DMF_LOG="${DMF_LOG:-warn}"
    "$DMF" init >/dev/null
    printf '[fleet]\nname = "bench"\n[[cluster]]\nname = "bench"\nsource = "%s"\n[[cluster]]\nname = "bench_tls"\nsource = "%s"\n' \
        "$SRC?sslmode=disable" "$SRC?sslmode=require" > "$BASE/fleet.toml"
    "$DMF" enqueue "$BASE/fleet.toml" >/dev/null
    PROXY_PORT=$(free_port); METRICS_PORT=$(free_port)
    # In its own session, like pgbouncer -d (and like any service manager starts a sidecar):
    # with sched_autogroup the kernel shares CPU between sessions first, so a proxy left in this
    # script's session would compete with pgbench's threads for one session's share while
    # pgbouncer has a share of its own.
    echo '"bench_app" "bench-app-pw"' > "$BASE/users.txt"
    setsid "$DMF" proxy --cluster bench --listen "127.0.0.1:$PROXY_PORT" --metrics "127.0.0.1:$METRICS_PORT" \
        --users-file "$BASE/users.txt" >"$BASE/proxy.log" 2>&1 & PROXY_PID=$!
    URL[dmf]="postgres://bench_app@127.0.0.1:$PROXY_PORT/bench?sslmode=disable"
    wait_ready dmf "$BASE/proxy.log" "$PROXY_PID"
    TARGETS+=(dmf)
    TLS_PROXY_PORT=$(free_port)
    setsid "$DMF" proxy --cluster bench_tls --listen "127.0.0.1:$TLS_PROXY_PORT" --users-file "$BASE/users.txt" \
        --tls-cert "$TLS_DIR/server.crt" --tls-key "$TLS_DIR/server.key" --client-tls required >"$BASE/proxy-tls.log" 2>&1 & TLS_PROXY_PID=$!
    URL[dmf-tls]="postgres://bench_app@127.0.0.1:$TLS_PROXY_PORT/bench?sslmode=require"
    wait_ready dmf-tls "$BASE/proxy-tls.log" "$TLS_PROXY_PID"
fi

# Every target must show the same data.
for t in "${TARGETS[@]}"; do
    n=$(psql -X -A -t "${URL[$t]}" -c "SELECT count(*) FROM pgbench_branches")
    [ "$n" = "$SCALE" ] || { echo "$t: pgbench_branches has $n rows, expected $SCALE"; exit 1; }
done
echo "server: PostgreSQL $(psql -X -A -t "${URL[direct]}" -c "SHOW server_version" | awk '{print $1}'), pgbench scale $SCALE;" \
    "pgbouncer $BOUNCER_VERSION (transaction pooling, pool 10);" \
    "targets: ${TARGETS[*]}; $RUNS round(s) of ${DURATION} s runs"

# --- runs
read -r -a MODES <<< "${MODES:-select-simple select-extended select-prepared tpcb latency}"
declare -A LABEL=(
    [select-simple]="select-only simple" [select-extended]="select-only extended"
    [select-prepared]="select-only prepared" [tpcb]="TPC-B simple" [latency]="1-client select-only"
)
declare -A TPS=() LAT=() CPU=()
CLK_TCK=$(getconf CLK_TCK)
# proxy_ticks TARGET: the proxy process's user + system CPU time so far, in clock ticks (0 for
# direct). What a proxy costs its host matters next to what it adds to latency.
proxy_ticks() {
    local pid
    case "$1" in
        pgbouncer) pid=$(cat "$BP/pgbouncer.pid") ;;
        pgbouncer-tls) pid=$(cat "$BPT/pgbouncer.pid") ;;
        dmf) pid=$PROXY_PID ;;
        dmf-tls) pid=$TLS_PROXY_PID ;;
        *) echo 0; return ;;
    esac
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"
}
# run_pgbench TARGET MODE SECONDS [record]: one pgbench run; with record, keep its tps, latency
# and the proxy's CPU time per transaction.
run_pgbench() {
    local target="$1" mode="$2" secs="$3" record="${4:-}" out tps lat cpu n t0 clients="$CLIENTS"
    local args=(-n -T "$secs")
    case "$mode" in
        select-simple)   args+=(-S -c "$CLIENTS" -j "$THREADS" -M simple) ;;
        select-extended) args+=(-S -c "$CLIENTS" -j "$THREADS" -M extended) ;;
        select-prepared) args+=(-S -c "$CLIENTS" -j "$THREADS" -M prepared) ;;
        tpcb)            args+=(-c "$CLIENTS" -j "$THREADS" -M simple) ;;
        latency)         args+=(-S -c 1 -j 1 -M simple); clients=1 ;;
    esac
    [ -n "$record" ] && settle "$SRC_PORT"
    t0=$(proxy_ticks "$target")
    if out=$(pgbench "${args[@]}" "${URL[$target]}" 2>&1); then
        [ -n "${VERBOSE:-}" ] && printf '%s\n' "$out" | sed "s/^/  [$target $mode] /"
        [ -n "$record" ] || return 0
        tps=$(sed -n -E 's/^tps = ([0-9.]+) .*/\1/p' <<<"$out")
        if [ -z "$tps" ]; then
            printf '%s\n' "$out"; echo "cannot read tps in pgbench's output"; exit 1
        fi
        # pgbench's own "latency average" is 1000 * clients / tps, printed to 1 us; the same
        # figure from its tps keeps 0.1 us, which is the size of the differences between proxies.
        # The proxy's CPU time per transaction: n/a when pgbench did not count its transactions.
        n=$(sed -n -E 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
        read -r lat cpu < <(python3 -c 'import sys
clients, tps, ticks, n, hz = sys.argv[1:]
cpu = f"{float(ticks) * 1e6 / float(hz) / int(n):.1f}" if n.isdigit() and int(n) > 0 else "n/a"
print(f"{1000 * int(clients) / float(tps):.4f}", cpu)' "$clients" "$tps" "$(($(proxy_ticks "$target") - t0))" "$n" "$CLK_TCK")
        TPS[$target:$mode]+=" $tps"; LAT[$target:$mode]+=" $lat"; CPU[$target:$mode]+=" $cpu"
        local shown=""
        [ "$target" = direct ] || shown=$(printf '  proxy CPU %5s us/txn' "$cpu")
        printf '  %-10s %-22s %10.1f tps  %8.4f ms%s\n' "$target" "${LABEL[$mode]}" "$tps" "$lat" "$shown"
    elif [ "$target" = pgbouncer ] && [ "$mode" = select-prepared ]; then
        [ -n "${VERBOSE:-}" ] && printf '%s\n' "$out" | sed "s/^/  [$target $mode] /"
        [ -n "$record" ] || return 0
        TPS[$target:$mode]+=" n/a"; LAT[$target:$mode]+=" n/a"; CPU[$target:$mode]+=" n/a"
        printf '  %-10s %-22s        n/a      (not supported by pgbouncer %s in transaction mode: %s)\n' \
            "$target" "${LABEL[$mode]}" "$BOUNCER_VERSION" "$(grep -m 1 -o -E 'ERROR: .*' <<<"$out" | cut -c1-80)"
    else
        printf '%s\n' "$out" | tail -n 20
        echo "pgbench through $target ($mode) failed"
        [ "$target" = dmf ] && { echo "dmf proxy log:"; tail -n 40 "$BASE/proxy.log"; }
        exit 1
    fi
}

# Warm the server's caches and every target's pool (not measured).
for t in "${TARGETS[@]}"; do run_pgbench "$t" select-simple "$WARMUP"; done
NT=${#TARGETS[@]}
for run in $(seq 1 "$RUNS"); do
    echo "round $run"
    for mi in "${!MODES[@]}"; do
        # Rotate who goes first, by round and by mode.
        for k in $(seq 0 $((NT - 1))); do
            run_pgbench "${TARGETS[$(((k + run + mi) % NT))]}" "${MODES[$mi]}" "$DURATION" record
        done
    done
done

# --- the same with TLS on both sides of each proxy
read -r -a TLS_MODES <<< "${TLS_MODES:-select-simple}"
TLS_TARGETS=(pgbouncer-tls)
[ -z "$SKIP_DMF" ] && TLS_TARGETS+=(dmf-tls)
for t in "${TLS_TARGETS[@]}"; do run_pgbench "$t" select-simple "$WARMUP"; done
for run in $(seq 1 "$RUNS"); do
    echo "round $run, TLS"
    for mi in "${!TLS_MODES[@]}"; do
        for k in $(seq 0 $((${#TLS_TARGETS[@]} - 1))); do
            run_pgbench "${TLS_TARGETS[$(((k + run + mi) % ${#TLS_TARGETS[@]}))]}" "${TLS_MODES[$mi]}" "$DURATION" record
        done
    done
done

# --- report
median() {  # median VALUE...: n/a when any value is n/a
    python3 -c 'import statistics,sys; v=sys.argv[1:]; print("n/a" if "n/a" in v else statistics.median(float(x) for x in v))' "$@"
}
declare -A MED=()
for t in "${TARGETS[@]}"; do
    for m in "${MODES[@]}"; do
        # shellcheck disable=SC2086  # the lists are space-separated numbers
        if [ "$m" = latency ]; then MED[$t:$m]=$(median ${LAT[$t:$m]}); else MED[$t:$m]=$(median ${TPS[$t:$m]}); fi
    done
done
fmt() {  # fmt VALUE: one decimal, or the word as it is
    if [[ "$1" =~ ^[0-9.]+$ ]]; then printf '%.1f' "$1"; else printf '%s' "$1"; fi
}
if [ -z "$SKIP_DMF" ] && [[ " ${MODES[*]} " == *" select-simple "* ]]; then
    echo
    # shellcheck disable=SC2086  # the lists are space-separated numbers
    python3 -c 'import sys; d, p = sys.argv[1].split(), sys.argv[2].split(); print("select-only simple, dmf / pgbouncer by round: " + " ".join(f"{float(a) / float(b):.3f}" for a, b in zip(d, p)))' \
        "${TPS[dmf:select-simple]}" "${TPS[pgbouncer:select-simple]}"
fi
echo
printf 'median tps of %d round(s), %d clients, %d s each\n' "$RUNS" "$CLIENTS" "$DURATION"
printf '%-24s %16s %16s %16s\n' "" direct pgbouncer dmf
for m in select-simple select-extended select-prepared tpcb; do
    printf '%-24s %16s %16s %16s\n' "${LABEL[$m]}" "$(fmt "${MED[direct:$m]:-skipped}")" "$(fmt "${MED[pgbouncer:$m]:-skipped}")" \
        "$(fmt "${MED[dmf:$m]:-skipped}")"
done
added() {  # added TARGET: 1-client latency over direct, in ms
    [ -n "${MED[$1:latency]:-}" ] || { echo n/a; return; }
    python3 -c 'import sys; print(f"{float(sys.argv[1]) - float(sys.argv[2]):.4f}")' "${MED[$1:latency]}" "${MED[direct:latency]}"
}
lat_cell() {  # lat_cell TARGET: "0.123" or "0.150 (+0.027)"
    [ -n "${MED[$1:latency]:-}" ] || { echo skipped; return; }
    if [ "$1" = direct ]; then printf '%.4f' "${MED[$1:latency]}"; else printf '%.4f (%+.4f)' "${MED[$1:latency]}" "$(added "$1")"; fi
}
printf '%-24s %16s %16s %16s\n' "1-client latency (ms)" "$(lat_cell direct)" "$(lat_cell pgbouncer)" "$(lat_cell dmf)"
cpu_cell() {  # cpu_cell TARGET MODE: median proxy CPU per transaction, us
    [ -n "${CPU[$1:$2]:-}" ] || { echo skipped; return; }
    # shellcheck disable=SC2086  # the lists are space-separated numbers
    fmt "$(median ${CPU[$1:$2]})"
}
printf '%-24s %16s %16s %16s\n' "proxy CPU/txn, 8 cl (us)" "" "$(cpu_cell pgbouncer select-simple)" "$(cpu_cell dmf select-simple)"
printf '%-24s %16s %16s %16s\n' "proxy CPU/txn, 1 cl (us)" "" "$(cpu_cell pgbouncer latency)" "$(cpu_cell dmf latency)"

if [ -n "${VERBOSE:-}" ] && [ -z "$SKIP_DMF" ]; then
    echo "dmf proxy log:"; cut -c1-200 "$BASE/proxy.log" | tail -n 40
    echo "dmf proxy metrics:"
    python3 - "http://127.0.0.1:$METRICS_PORT/metrics" <<'PY' | grep -v '^#' | head -n 40 || true
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except OSError as e:
    print(f"  cannot read {sys.argv[1]}: {e}")
PY
fi

echo
printf 'with TLS on both sides: median tps, select-only simple: pgbouncer %s, dmf %s; proxy CPU/txn (us): pgbouncer %s, dmf %s\n' \
    "$(fmt "$(median ${TPS[pgbouncer-tls:select-simple]})")" "$(fmt "$(median ${TPS[dmf-tls:select-simple]:-n/a})")" \
    "$(cpu_cell pgbouncer-tls select-simple)" "$(cpu_cell dmf-tls select-simple)"
echo "proxy_added_latency_ms dmf=$(added dmf) pgbouncer=$(added pgbouncer)"
if [ -n "$SKIP_DMF" ] || [[ " ${TLS_MODES[*]} " != *" select-simple "* ]]; then
    echo "proxy_tls_ratio_vs_pgbouncer=n/a"
else
    printf 'proxy_tls_ratio_vs_pgbouncer=%.3f\n' "$(python3 -c 'import sys, statistics; d = [float(x) for x in sys.argv[1].split()]; p = [float(x) for x in sys.argv[2].split()]; print(statistics.median(d) / statistics.median(p))' \
        "${TPS[dmf-tls:select-simple]}" "${TPS[pgbouncer-tls:select-simple]}")"
fi
if [ -n "$SKIP_DMF" ]; then
    echo "proxy_ratio_vs_pgbouncer=n/a"
else
    printf 'proxy_ratio_vs_pgbouncer=%.3f\n' "$(python3 -c 'import sys; print(float(sys.argv[1]) / float(sys.argv[2]))' \
        "${MED[dmf:select-simple]}" "${MED[pgbouncer:select-simple]}")"
fi
