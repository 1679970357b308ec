# Shared by scripts/*.sh and bench/*.sh: make sure PostgreSQL server binaries and clients exist.

pg_bin_dir() {
    if [ -n "${DMF_PG_BIN:-}" ]; then echo "$DMF_PG_BIN"; return; fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "missing: $* — install these packages (Debian: apt-get install $*) and run again" >&2
        exit 1
    fi
    apt_update_once
    DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq "$@" >/dev/null
}

# apt_update_once: refresh the package lists once per run (look-ups find nothing before it).
apt_update_once() {
    if [ -z "${DMF_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        export DMF_APT_UPDATED=1
    fi
}

ensure_postgres() {
    local bin
    bin="$(pg_bin_dir)"
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pg_restore" ]; then
        echo "installing PostgreSQL server binaries" >&2
        apt_install postgresql postgresql-client
        bin="$(pg_bin_dir)"
    fi
    if ! command -v pgbench >/dev/null && [ ! -x "$bin/pgbench" ]; then
        apt_install postgresql-contrib
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "the postgres user is missing (initdb refuses root); reinstall the postgresql package" >&2
        exit 1
    fi
    export DMF_PG_BIN="$bin"
    export PATH="$bin:$PATH"
}

# --- what the build needs -----------------------------------------------------------------------
# pg_query builds PostgreSQL's parser and generates its Rust bindings with bindgen, which loads
# libclang at build time through clang-sys; ring and libfuzzer build C and C++. A fresh machine
# often has `libclang-cpp.so.N` (LLVM's C++ library, which clang-sys skips) and no libclang, or a
# libclang without clang's own headers, and then the build fails minutes in. These functions look
# where clang-sys looks, so that "found" here means the build will find it too.

# is_elf64 FILE: FILE is a 64-bit ELF object (clang-sys rejects a library of the wrong class).
is_elf64() {
    [ "$(od -An -tx1 -N5 "$1" 2>/dev/null | tr -d ' \n')" = "7f454c4602" ]
}

# libclang_dirs [ROOT]: the directories clang-sys searches for libclang, in its order. With ROOT
# (a test's fake file system) only its fixed directories, under ROOT, as clang-sys's own tests do.
libclang_dirs() {
    local root="${1:-}" dir prefix
    if [ -z "$root" ]; then
        if [ -n "${LIBCLANG_PATH:-}" ]; then echo "$LIBCLANG_PATH"; return; fi
        prefix="$("${LLVM_CONFIG_PATH:-llvm-config}" --prefix 2>/dev/null | head -n 1)" || true
        [ -n "$prefix" ] && printf '%s\n' "$prefix/bin" "$prefix/lib" "$prefix/lib64"
        local -a paths=()
        IFS=: read -r -a paths <<<"${LD_LIBRARY_PATH:-}:${LIBRARY_PATH:-}"
        for dir in "${paths[@]}"; do [ -n "$dir" ] && echo "$dir"; done
    fi
    for dir in "$root"/usr/local/llvm*/lib* "$root"/usr/local/lib*/*/* "$root"/usr/local/lib*/* \
               "$root"/usr/local/lib* "$root"/usr/lib*/*/* "$root"/usr/lib*/* "$root"/usr/lib*; do
        [ -d "$dir" ] && echo "$dir"
    done
}

# find_libclang [ROOT]: prints the first libclang that clang-sys would load (the names it globs
# for, less `libclang-cpp`, 64-bit ELF), or fails.
find_libclang() {
    local dir file
    # LIBCLANG_PATH may name the library itself, which clang-sys accepts too
    if [ -z "${1:-}" ] && [ -f "${LIBCLANG_PATH:-}" ]; then
        case "${LIBCLANG_PATH##*/}" in
            *-cpp.*) ;;
            libclang.so|libclang-*.so|libclang.so.*|libclang-*.so.*)
                if is_elf64 "$LIBCLANG_PATH"; then echo "$LIBCLANG_PATH"; return 0; fi ;;
        esac
        return 1
    fi
    while IFS= read -r dir; do
        for file in "$dir"/libclang.so "$dir"/libclang-*.so "$dir"/libclang.so.* "$dir"/libclang-*.so.*; do
            case "${file##*/}" in *-cpp.*) continue ;; esac
            if [ -f "$file" ] && is_elf64 "$file"; then echo "$file"; return 0; fi
        done
    done < <(libclang_dirs "${1:-}")
    return 1
}

# find_clang_headers [ROOT]: prints the directory of clang's own headers (`stddef.h`) that
# bindgen's clang will search, or fails: one named by `-isystem` or `-I` in
# BINDGEN_EXTRA_CLANG_ARGS, else an installed resource directory. Debian's libclang looks in
# /usr/lib/llvm-N/lib/clang/*/include even when it was unpacked elsewhere, so headers beside a
# relocated libclang count only when named in BINDGEN_EXTRA_CLANG_ARGS.
find_clang_headers() {
    local root="${1:-}" arg prefix header dir take=""
    local -a dirs=()
    for arg in ${BINDGEN_EXTRA_CLANG_ARGS:-}; do
        if [ -n "$take" ]; then dirs+=("$arg"); take=""; continue; fi
        case "$arg" in
            -isystem|-I) take=1 ;;
            -isystem*) dirs+=("${arg#-isystem}") ;;
            -I*) dirs+=("${arg#-I}") ;;
        esac
    done
    for dir in "${dirs[@]}"; do
        if [ -f "$dir/stddef.h" ]; then echo "$dir"; return 0; fi
    done
    # the headers of the libclang's own LLVM version when it shows one (llvm-N in its real path,
    # or libclang-N.so): another version's headers do not parse with it
    local lib version="*"
    if lib="$(find_libclang "$root")"; then
        lib="$(readlink -f "$lib")"
        if [[ "$lib" =~ /llvm-([0-9]+)/ ]] || [[ "${lib##*/}" =~ ^libclang-([0-9]+)[.] ]]; then
            version="${BASH_REMATCH[1]}"
        fi
    fi
    dirs=()
    if [ -z "$root" ]; then
        prefix="$("${LLVM_CONFIG_PATH:-llvm-config}" --prefix 2>/dev/null | head -n 1)" || true
        [ -n "$prefix" ] && dirs+=("$prefix/lib")
    fi
    dirs+=("$root"/usr/lib/llvm-$version/lib "$root"/usr/lib "$root"/usr/local/lib "$root"/usr/lib64)
    for dir in "${dirs[@]}"; do
        for header in "$dir"/clang/$version*/include/stddef.h; do
            if [ -f "$header" ]; then dirname "$header"; return 0; fi
        done
    done
    return 1
}

# check_build_tools [ROOT]: prints "ok" or "missing: <what>" for each thing the build needs.
check_build_tools() {
    local root="${1:-}" lib headers
    if lib="$(find_libclang "$root")"; then echo "ok: libclang $lib"
    else echo "missing: libclang (a libclang.so or libclang-N.so.M that clang-sys loads; libclang-cpp is not it)"; fi
    if headers="$(find_clang_headers "$root")"; then echo "ok: clang headers $headers"
    else echo "missing: clang's headers (stddef.h in clang's resource directory, or in a directory BINDGEN_EXTRA_CLANG_ARGS names with -isystem)"; fi
    if [ -z "$root" ]; then
        # (CC may carry a wrapper and flags, as in "ccache gcc": its first word is the program)
        local cc="${CC:-cc}"
        if command -v "${cc%% *}" >/dev/null; then echo "ok: C compiler"; else echo "missing: C compiler ($cc)"; fi
        if command -v cargo >/dev/null; then echo "ok: cargo"; else echo "missing: cargo (a Rust toolchain: rustup.rs)"; fi
    fi
}

# libclang_packages: Debian's packages for libclang and clang's headers, of the distribution's
# default LLVM (libclang-dev depends on libclang-N-dev); the two small ones instead of the 240 MB
# development package with its static libraries.
libclang_packages() {
    local n
    n="$(apt-cache depends libclang-dev 2>/dev/null | sed -n 's/.*Depends: libclang-\([0-9][0-9]*\)-dev$/\1/p' | head -n 1)"
    if [ -n "$n" ]; then echo "libclang1-$n libclang-common-$n-dev"; else echo "libclang-dev"; fi
}

# ensure_cxx: a C++ compiler (libfuzzer, for bench/fuzz.sh), installed when missing.
ensure_cxx() {
    local cxx="${CXX:-c++}"
    command -v "${cxx%% *}" >/dev/null || apt_install g++
}

# ensure_build_tools: what `cargo build` needs besides the Rust toolchain, installed when missing
# (root with apt), otherwise named with the way to install it by hand. Called before every build.
ensure_build_tools() {
    local missing
    missing="$(check_build_tools | grep '^missing' || true)"
    [ -z "$missing" ] && return 0
    if grep -q 'missing: cargo' <<<"$missing"; then
        echo "$missing" >&2
        echo "install a Rust toolchain (https://rustup.rs) and run again" >&2
        exit 1
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "$missing" >&2
        echo "the build needs libclang and clang's headers (Debian: libclang1-N libclang-common-N-dev, or" >&2
        echo "libclang-dev) and a C/C++ compiler (build-essential); without root, unpack libclang into your home" >&2
        echo "and set LIBCLANG_PATH and BINDGEN_EXTRA_CLANG_ARGS — README, Requirements, says how" >&2
        exit 1
    fi
    local packages=""
    apt_update_once
    grep -q 'missing: libclang\|missing: clang' <<<"$missing" && packages="$(libclang_packages)"
    grep -q 'compiler' <<<"$missing" && packages="$packages build-essential"
    echo "installing $packages (pg_query's bindgen loads libclang; pg_query and ring build C)" >&2
    # shellcheck disable=SC2086
    apt_install $packages
    missing="$(check_build_tools | grep '^missing' || true)"
    if [ -n "$missing" ]; then
        echo "$missing" >&2
        echo "still missing after installing $packages: install it by hand (see README, Requirements)" >&2
        exit 1
    fi
}

# What the tests need besides PostgreSQL and the build: openssl (a test certificate), psycopg 3 (a
# real Python client of the proxy), moto in server mode with boto3 (the local AWS API emulator of
# the aws provider's tests).
ensure_test_tools() {
    command -v openssl >/dev/null || apt_install openssl
    # the dashboard's browser test drives headless Chromium through the DevTools protocol
    command -v chromium >/dev/null || apt_install chromium
    if ! python3 -c 'import psycopg' >/dev/null 2>&1; then
        echo "installing psycopg 3" >&2
        python3 -m pip install -q "psycopg[binary]" 2>/dev/null \
            || python3 -m pip install -q --break-system-packages "psycopg[binary]" \
            || apt_install python3-psycopg
    fi
    # the version the aws tests were written against: they name the operations it lacks
    if ! python3 -c 'import sys, moto.server, boto3, werkzeug; sys.exit(moto.__version__ != "5.2.1")' >/dev/null 2>&1; then
        echo "installing moto[server] 5.2.1 (local AWS API emulator)" >&2
        python3 -m pip install -q "moto[server]==5.2.1" 2>/dev/null \
            || python3 -m pip install -q --break-system-packages "moto[server]==5.2.1"
    fi
}

# Run a PostgreSQL server program, as postgres when root (initdb and pg_ctl refuse root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# make_cluster DIR PORT: initdb + start a throwaway cluster configured like dmf's local provider
# in fast mode (logical replication on, fsync off).
make_cluster() {
    local dir="$1" port="$2"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
    as_pg "$DMF_PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
    cat >> "$dir/data/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_worker_processes = 32
max_connections = 120
shared_buffers = 128MB
maintenance_work_mem = 256MB
fsync = off
full_page_writes = off
CONF
    echo "host replication all 127.0.0.1/32 trust" >> "$dir/data/pg_hba.conf"
    as_pg "$DMF_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
}

stop_cluster() {
    as_pg "$DMF_PG_BIN/pg_ctl" -D "$1/data" -m immediate -w stop >/dev/null 2>&1 || true
}

# Benchmarks: build the release dmf ($DMF), make a workspace ($BASE) for the clusters and the
# background processes ($PIDS) they start, and stop and remove all of it on exit.
bench_setup() {
    ensure_build_tools
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
    cargo build --release --quiet --bin dmf
    DMF="$CARGO_TARGET_DIR/release/dmf"
    BASE="$(mktemp -d "/tmp/dmf-bench-$1-XXXX")"
    chmod 755 "$BASE"
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for d in "$BASE"/*/ "$BASE"/targets/*/; do [ -f "$d/data/PG_VERSION" ] && stop_cluster "$d"; done
    if [ -n "${KEEP:-}" ]; then echo "KEEP: logs and data left in $BASE" >&2; else rm -rf "$BASE"; fi
}

# pgbench_source SCALE: a source cluster in $BASE/source with database bench loaded by pgbench
# (pgbench_history gets a key: dmf's preflight refuses to publish a table without one); sets
# $SRC_PORT and $SRC.
pgbench_source() {
    SRC_PORT=$(free_port); make_cluster "$BASE/source" "$SRC_PORT"
    SRC="postgres://postgres@127.0.0.1:$SRC_PORT/bench"
    psql -q -X "postgres://postgres@127.0.0.1:$SRC_PORT/postgres" -c "CREATE DATABASE bench"
    echo "loading pgbench scale $1"
    pgbench -i -q -s "$1" "$SRC" >/dev/null 2>&1
    psql -q -X "$SRC" -c "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY" -c "VACUUM ANALYZE"
}

# bank_role: the application's own role `bank` on the source (not a superuser), with TPC-B's
# grants and a fresh password in $APP_PW, as production applications log in (dmf makes it on the
# target with its password and grants).
bank_role() {
    APP_PW="bench-app-$RANDOM$RANDOM"
    psql -q -X "$SRC" <<SQL
CREATE ROLE bank LOGIN PASSWORD '$APP_PW';
GRANT SELECT, UPDATE ON pgbench_accounts, pgbench_tellers, pgbench_branches TO bank;
GRANT INSERT ON pgbench_history TO bank;
GRANT USAGE ON SEQUENCE pgbench_history_hid_seq TO bank;
SQL
}

# bench_control_plane: a control plane in $BASE/cp ($DMF_DATABASE_URL) with $SRC enqueued as
# cluster `bench` of fleet `bench`, and $BASE/targets for the local targets the worker makes.
bench_control_plane() {
    CP_PORT=$(free_port); make_cluster "$BASE/cp" "$CP_PORT"
    export DMF_DATABASE_URL="postgres://postgres@127.0.0.1:$CP_PORT/postgres"
    export DMF_LOG="${DMF_LOG:-warn}"
    "$DMF" init >/dev/null
    printf '[fleet]\nname = "bench"\n[[cluster]]\nname = "bench"\nsource = "%s"\n' "$SRC" > "$BASE/fleet.toml"
    "$DMF" enqueue "$BASE/fleet.toml" >/dev/null
    mkdir -p "$BASE/targets"
}

# settle PORT...: before a timed run, checkpoint these clusters and let the disk settle, so that a
# run does not pay for the previous one's background writes.
settle() {
    for port in "$@"; do
        psql -q -X "postgres://postgres@127.0.0.1:$port/postgres" -c "CHECKPOINT" >/dev/null
    done
    sync
    sleep 1
}

# pgbouncer_ini DIR LISTEN_PORT SERVER_PORT [USER PASSWORD]: a pgbouncer config in DIR
# (transaction pooling, trust on loopback, the admin console for postgres) serving database bench
# of the server on SERVER_PORT; rewrite it and RELOAD to repoint a running pgbouncer. Its server
# logins are as postgres, or with USER as each client's own user (USER's PASSWORD in its auth file,
# pgbouncer's convention, for servers that ask for one).
pgbouncer_ini() {
    local dir="$1" listen="$2" server="$3" user="${4:-}" password="${5:-}"
    local as="user=postgres"
    echo '"postgres" ""' > "$dir/userlist.txt"
    if [ -n "$user" ]; then
        as=""
        printf '"%s" "%s"\n' "$user" "$password" >> "$dir/userlist.txt"
    fi
    cat > "$dir/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$server dbname=bench $as

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $listen
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 10
max_client_conn = 100
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
INI
}
