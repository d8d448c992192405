#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the test suite and print its URL.
# Uses Debian's PostgreSQL packages (installing them if missing, when run as root); the server lives in
# its own data directory on its own port and socket, so it touches no system cluster.
set -euo pipefail

PGPORT="${LEADLINE_TEST_PGPORT:-54329}"
PGDATA="${LEADLINE_TEST_PGDATA:-/tmp/leadline-test-pg}"
PGSOCK="/tmp"
URL="postgresql+asyncpg://postgres@127.0.0.1:${PGPORT}/postgres"

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing PostgreSQL from Debian's packages..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) >&2
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  else
    echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
  fi
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

if as_pg "$bindir/pg_isready -q -h 127.0.0.1 -p $PGPORT"; then
  echo "$URL"
  exit 0
fi
if [ ! -f "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDATA"
  as_pg "$bindir/initdb -D $PGDATA -U postgres -A trust -E UTF8 --no-sync" >/dev/null
fi
as_pg "$bindir/pg_ctl -D $PGDATA -l $PGDATA/server.log -w -t 60 \
  -o '-p $PGPORT -k $PGSOCK -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200' start" >/dev/null
echo "$URL"
