#!/usr/bin/env bash
# Runs a command with DATABASE_URL pointing at a PostgreSQL server.
# If DATABASE_URL is already set it is used as is; otherwise a throwaway cluster is
# created in a temporary directory, started on a free port, and removed afterwards.
# Without PostgreSQL it fails with a clear message: it never skips silently.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

if [ -n "${DATABASE_URL:-}" ]; then
    exec "$@"
fi

find_pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) /usr/local/pgsql/bin; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if ! PG_BIN=$(find_pg_bin); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> PostgreSQL not found: installing it with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    PG_BIN=$(find_pg_bin) || {
        echo "error: PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL or set DATABASE_URL" >&2
        exit 1
    }
fi

if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "error: running as root needs a 'postgres' system user to run the throwaway cluster (initdb refuses root)" >&2
    exit 1
fi

PGDATA_DIR=$(mktemp -d /tmp/authd-pg.XXXXXX)
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDATA_DIR"; fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)

cleanup() {
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA_DIR"
}
trap cleanup EXIT

echo "==> throwaway PostgreSQL ($PG_BIN) on 127.0.0.1:$PORT" >&2
as_postgres "$PG_BIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres >/dev/null
# Durability is pointless for a throwaway test cluster; speed is not.
as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 \
    -o "-p $PORT -k $PGDATA_DIR -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { cat "$PGDATA_DIR/server.log" >&2; exit 1; }

export DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
"$@"
