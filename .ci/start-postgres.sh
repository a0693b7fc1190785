#!/usr/bin/env bash
# Installs PostgreSQL from Debian's packages if missing, starts a throwaway
# cluster on 127.0.0.1:${APITOKEN_PG_PORT:-55432} (trust auth, loopback only)
# and prints the admin URL for APITOKEN_TEST_POSTGRES_URL.
set -euo pipefail
port="${APITOKEN_PG_PORT:-55432}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
data="${APITOKEN_PG_DATA:-/tmp/apitoken-pg-$port}"
if ! "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q 2>/dev/null; then
  rm -rf "$data"
  mkdir -p "$data"
  chown postgres:postgres "$data"
  su postgres -c "$bin/initdb -D '$data' -U postgres --auth=trust -E UTF8" >&2
  su postgres -c "$bin/pg_ctl -D '$data' -l '$data/server.log' -w -o '-c listen_addresses=127.0.0.1 -p $port -k /tmp -c fsync=off' start" >&2
fi
"$bin/pg_isready" -h 127.0.0.1 -p "$port" >&2
echo "postgres://postgres@127.0.0.1:$port/postgres"
