#!/usr/bin/env bash
# Conformance: client libraries' own test suites, run directly against a PostgreSQL server and
# then through `dmf proxy` in front of the same server. A test that fails only through the proxy
# is a difference an application can see (issue 22). Not part of CI: the suites take minutes and
# fetch their dependencies (crates.io, npm).
#
#   SUITES="tokio-postgres node-postgres" bash bench/conformance.sh
#
# Prints, per suite, `<suite>_direct_failed=N`, `<suite>_proxy_failed=N`, then each test that
# fails through the proxy only, and last `<suite>_proxy_only_failures=N`. KEEP=1 keeps the logs.
#
# The server is set up as the suites' own CI does: `postgres` trusted over TCP (tokio-postgres
# logs in without a password), pass_user/md5_user/scram_user with password methods, hstore, citext
# and ltree, SSL on. The proxy routes to it as its own role (`dmf_admin`): trust never admits the
# route's user, so `postgres` stays an application role. Clients log in to the proxy with
# `--client-auth server`: each is asked what the server asks of its user (trust for `postgres`,
# a clear-text password, MD5 or SCRAM for the others), checked against the users file, which the
# proxy also logs them in to the server with.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_build_tools
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
SUITES="${SUITES:-tokio-postgres node-postgres}"
cargo build --quiet --bin dmf
DMF="$CARGO_TARGET_DIR/debug/dmf"
BASE="$(mktemp -d /tmp/dmf-conformance-XXXX)"
chmod 755 "$BASE"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for d in "$BASE"/server "$BASE"/cp; do [ -f "$d/data/PG_VERSION" ] && stop_cluster "$d"; done
    if [ -n "${KEEP:-}" ]; then echo "KEEP: logs in $BASE" >&2; else rm -rf "$BASE"; fi
}
trap cleanup EXIT

# --- the server, as the suites' CI sets it up
PG_PORT=$(free_port)
make_cluster "$BASE/server" "$PG_PORT"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout "$BASE/server/data/server.key" -out "$BASE/server/data/server.crt" 2>/dev/null
[ "$(id -u)" = 0 ] && chown postgres:postgres "$BASE/server/data/server."* && chmod 600 "$BASE/server/data/server.key"
echo "ssl = on" >> "$BASE/server/data/postgresql.auto.conf"
hba="$BASE/server/data/pg_hba.conf"
{ printf 'host all pass_user 127.0.0.1/32 password\nhost all md5_user 127.0.0.1/32 md5\nhost all scram_user 127.0.0.1/32 scram-sha-256\n'
  printf 'host all scram_test 127.0.0.1/32 scram-sha-256\nhost all scram_unicode_test 127.0.0.1/32 scram-sha-256\nhost all dmf_admin 127.0.0.1/32 scram-sha-256\n'
  cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$hba"
as_pg "$DMF_PG_BIN/pg_ctl" -D "$BASE/server/data" -l "$BASE/server/log" -w restart >/dev/null
SERVER="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
psql -q -X "$SERVER" <<'SQL'
CREATE ROLE pass_user PASSWORD 'password' LOGIN;
SET password_encryption = 'md5';
CREATE ROLE md5_user PASSWORD 'password' LOGIN;
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user PASSWORD 'password' LOGIN;
CREATE ROLE scram_test PASSWORD 'test4scram' LOGIN;
CREATE ROLE scram_unicode_test PASSWORD U&'IX-\2168' LOGIN;
CREATE ROLE dmf_admin SUPERUSER LOGIN PASSWORD 'dmf-admin-pw';
ALTER ROLE postgres PASSWORD 'postgres';
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE EXTENSION ltree;
SQL

# --- the control plane and the proxy
CP_PORT=$(free_port)
make_cluster "$BASE/cp" "$CP_PORT"
export DMF_DATABASE_URL="postgres://postgres@127.0.0.1:$CP_PORT/postgres" DMF_LOG="${DMF_LOG:-warn}"
"$DMF" init >/dev/null
export CONF_SOURCE_PW=dmf-admin-pw
printf '[fleet]\nname = "conformance"\n[[cluster]]\nname = "conf"\nsource = "postgres://dmf_admin@127.0.0.1:%s/postgres?sslmode=disable"\nsource_password_env = "CONF_SOURCE_PW"\n' "$PG_PORT" > "$BASE/fleet.toml"
"$DMF" enqueue "$BASE/fleet.toml" >/dev/null
printf '"pass_user" "password"\n"md5_user" "password"\n"scram_user" "password"\n"postgres" "postgres"\n"scram_test" "test4scram"\n' > "$BASE/users.txt"
printf '"scram_unicode_test" "IX-\xe2\x85\xa8"\n' >> "$BASE/users.txt"
PX_PORT=$(free_port)
# TLS for clients too, as the server offers it (node-postgres's ssl tests connect with it)
"$DMF" proxy --cluster conf --listen "127.0.0.1:$PX_PORT" --client-auth server --users-file "$BASE/users.txt" \
    --tls-cert "$BASE/server/data/server.crt" --tls-key "$BASE/server/data/server.key" >"$BASE/proxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$PX_PORT") 2>/dev/null && break; sleep 0.1; done
echo "server on $PG_PORT, dmf proxy on $PX_PORT"

# report SUITE DIRECT_RESULTS PROXY_RESULTS: files of "name<TAB>ok|failed" lines
report() {
    local suite="$1" direct="$2" proxy="$3"
    local nd np
    nd=$(grep -c $'\tfailed$' "$direct" || true)
    np=$(grep -c $'\tfailed$' "$proxy" || true)
    echo "${suite}_tests=$(wc -l < "$direct")"
    echo "${suite}_direct_failed=$nd"
    echo "${suite}_proxy_failed=$np"
    local only
    only=$(comm -13 <(grep $'\tfailed$' "$direct" | cut -f1 | sort) <(grep $'\tfailed$' "$proxy" | cut -f1 | sort))
    [ -n "$only" ] && echo "$only" | sed "s/^/  ${suite} fails through the proxy only: /"
    echo "${suite}_proxy_only_failures=$(printf '%s' "$only" | grep -c . || true)"
}

tokio_postgres() {
    local crate
    crate=$(ls -d "$HOME"/.cargo/registry/src/*/tokio-postgres-0.7.* 2>/dev/null | sort -V | tail -1)
    if [ -z "$crate" ]; then
        cargo fetch --quiet >/dev/null 2>&1 || true
        crate=$(ls -d "$HOME"/.cargo/registry/src/*/tokio-postgres-0.7.* | sort -V | tail -1)
    fi
    for side in direct proxy; do
        local port=$PG_PORT; [ "$side" = proxy ] && port=$PX_PORT
        rm -rf "$BASE/tp-$side"; cp -r "$crate" "$BASE/tp-$side"
        # the suite's server is at port 5433 (and its Unix socket in /var/run/postgresql)
        sed -i "s/5433/$port/g; s#/var/run/postgresql#$BASE/server#g" "$BASE/tp-$side/tests/test/main.rs" "$BASE/tp-$side/tests/test/runtime.rs"
        ( cd "$BASE/tp-$side" && CARGO_TARGET_DIR="${CONFORMANCE_TARGET_DIR:-/var/tmp/dmf-conformance-target}" \
            timeout 1800 cargo test --all-features --test test -- --test-threads=1 >"$BASE/tp-$side.log" 2>&1 ) || true
        { grep -E '^test .* \.\.\. (ok|FAILED)$' "$BASE/tp-$side.log" || true; } | sed -E 's/^test (.*) \.\.\. ok$/\1\tok/; s/^test (.*) \.\.\. FAILED$/\1\tfailed/' | sort > "$BASE/tp-$side.results"
    done
    report tokio_postgres "$BASE/tp-direct.results" "$BASE/tp-proxy.results"
}

node_postgres() {
    local mirror="${NODE_POSTGRES_GIT:-/work/.mirror/brianc+node-postgres/repo}"
    if [ ! -d "$mirror" ]; then
        echo "node-postgres: no mirror at $mirror (fetch github:brianc/node-postgres with the search tool, or set NODE_POSTGRES_GIT)" >&2
        return
    fi
    mkdir -p "$BASE/np"
    git --git-dir="$mirror" archive HEAD packages/pg | tar -x -C "$BASE/np"
    local pg="$BASE/np/packages/pg"
    node -e '
        const fs = require("fs"); const p = JSON.parse(fs.readFileSync(process.argv[1]));
        p.devDependencies = { async: "2.6.4", bluebird: "3.7.2", co: "4.6.0", "pg-copy-streams": "0.3.0" };
        delete p.optionalDependencies; delete p.peerDependencies; delete p.scripts;
        fs.writeFileSync(process.argv[1], JSON.stringify(p, null, 2));' "$pg/package.json"
    ( cd "$pg" && npm install --silent --no-audit --no-fund >"$BASE/np-install.log" 2>&1 )
    chmod 600 "$pg/test/unit/client/pgpass.file" 2>/dev/null || true
    for side in direct proxy; do
        local port=$PG_PORT; [ "$side" = proxy ] && port=$PX_PORT
        : > "$BASE/np-$side.results"
        while read -r f; do
            if ( cd "$pg" && PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGPASSWORD=postgres PGDATABASE=postgres PGTESTNOSSL=true \
                SCRAM_TEST_PGUSER=scram_test SCRAM_TEST_PGPASSWORD=test4scram TEST_SKIP_NATIVE=true \
                timeout 120 node "$f" >>"$BASE/np-$side.log" 2>&1 ); then
                printf '%s\tok\n' "$f" >> "$BASE/np-$side.results"
            else
                printf '%s\tfailed\n' "$f" >> "$BASE/np-$side.results"
            fi
        done < <(cd "$pg" && find test/integration -name '*-tests.js' | sort)
        sort -o "$BASE/np-$side.results" "$BASE/np-$side.results"
    done
    report node_postgres "$BASE/np-direct.results" "$BASE/np-proxy.results"
}

for s in $SUITES; do
    case "$s" in
        tokio-postgres) tokio_postgres ;;
        node-postgres) node_postgres ;;
        *) echo "unknown suite $s" >&2; exit 2 ;;
    esac
done
