#!/usr/bin/env bash
# Installs Redis from Debian's packages if missing, starts a throwaway server
# on 127.0.0.1:${APITOKEN_REDIS_PORT:-56379} (loopback only, no persistence)
# unless one answers there already, and prints its URL for
# APITOKEN_TEST_REDIS_URL.
set -euo pipefail
port="${APITOKEN_REDIS_PORT:-56379}"
if ! command -v redis-server >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq redis-server >&2
fi
if ! redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
  dir="${APITOKEN_REDIS_DIR:-/tmp/apitoken-redis-$port}"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
redis-cli -h 127.0.0.1 -p "$port" ping >&2
echo "redis://127.0.0.1:$port"
