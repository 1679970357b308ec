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
    if [ -z "${DMF_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        export DMF_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
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
