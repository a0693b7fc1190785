#!/usr/bin/env bash
# Runs the README's shell blocks as a reader would, against the real
# apitoken-server on 127.0.0.1:50051 (the README's address; it must be free):
#
#   1. in order, in one shell, on one database: "The first token", the
#      grpcurl walk-through, the command line, and the example service;
#   2. the walk-through alone on a fresh database.
#
# A block is the ```sh fence after a `<!-- readme-test: NAME -->` line, up to
# `<!-- readme-test: end -->` or the next marker. Each run is
# `bash -euo pipefail`, so any unexpected error stops it loudly; then the
# output is checked for what a reader would see, and the server's log for
# secrets. Needs cargo, grpcurl and jq.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="$(mktemp -d)"
export APITOKEN_LOG=info
# shellcheck source=tests/server.sh
. tests/server.sh
server_bin="$(apitoken_server_binary)"
# Built before the blocks run, so their `cargo run`s are quick.
cargo build -q -p apitoken-cli -p apitoken-example

block() {
  awk -v name="$1" '
    /<!-- readme-test: / { on = ($3 == name); fence = 0; next }
    on && /^```/ { fence = !fence; if (!fence) on = 0; next }
    on && fence { print }
  ' README.md
}

server=""
start_server() {
  export APITOKEN_DATABASE_URL="sqlite://$work/$1.db"
  "$server_bin" >"$work/$1.server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    if grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check >/dev/null 2>&1; then return; fi
    sleep 0.2
  done
  echo "apitoken-server did not start:"; cat "$work/$1.server.log"; exit 1
}
stop_server() {
  kill -TERM "$server"
  wait "$server" || { echo "server exit status $?"; cat "$work/$1.server.log"; exit 1; }
  grep -q 'stopped' "$work/$1.server.log" || { echo "server did not stop gracefully"; exit 1; }
  for secret in $(grep -oE 'apitoken_[0-9A-Za-z]{49}' "$work/$1.out" | sort -u); do
    if grep -q "${secret:13}" "$work/$1.server.log"; then echo "a secret reached the server log"; exit 1; fi
  done
}
trap '[ -z "$server" ] || kill "$server" 2>/dev/null || true; pkill -f "target/.*/apitoken-example" 2>/dev/null || true' EXIT

run() {
  local name="$1"; shift
  : >"$work/$name.sh"
  for part in "$@"; do
    block "$part" >>"$work/$name.sh"
    [ -s "$work/$name.sh" ] || { echo "README has no block '$part'"; exit 1; }
  done
  # Through a pipe: the blocks' `tee /dev/stderr` would truncate a file.
  (cd "$root" && bash -euo pipefail "$work/$name.sh") 2>&1 | cat >"$work/$name.out" || {
    echo "README run '$name' failed at an unexpected error:"; cat "$work/$name.out"
    echo "server log:"; cat "$work/$name.server.log"; exit 1
  }
}

expect() {
  grep -q -- "$2" "$work/$1.out" || { echo "README run '$1': expected $3"; cat "$work/$1.out"; exit 1; }
}

# The README's addresses must be free (another server or example left
# running would answer instead, or take the port).
for port in 50051 50060; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port is in use: stop what listens there first"; exit 1
  fi
done

# 1. In order, one database.
start_server in-order
run in-order first-token walkthrough cli example
stop_server in-order
expect in-order 'apitoken.v1.ApiTokenService' "reflection to list the service"
expect in-order '"status": "SERVING"' "health SERVING"
expect in-order '"name": "namespaces/team-a/apitokens/ci-deploy"' "the walk-through's token"
expect in-order '"reason":"TOKEN_INVALID"' "the old secret refused with TOKEN_INVALID"
expect in-order '"reason":"TOKEN_REVOKED"' "the revoked token refused with TOKEN_REVOKED"
expect in-order 'namespaces/team-a/apitokens/nightly-backup' "the CLI's token"
expect in-order 'inventory.v1.InventoryService' "the example's reflection"
expect in-order '"apiToken": "namespaces/team-a/apitokens/inventory-app"' "WhoAmI through the layer"
expect in-order '"reason":"ROLE_TOO_LOW"' "the example refusing an editor's delete"
count=$(grep -oE 'apitoken_[0-9A-Za-z]{49}' "$work/in-order.out" | sort -u | wc -l)
[ "$count" -ge 3 ] || { echo "secrets were not shown"; exit 1; }

# 2. The walk-through alone, fresh database.
start_server fresh
run fresh walkthrough
stop_server fresh
expect fresh '"state": "STATE_REVOKED"' "the token revoked"
expect fresh '"reason":"TOKEN_REVOKED"' "the revoked token refused"

echo "README: in order (first token, walk-through, CLI, example) and walk-through on a fresh database: 2 passed, 0 failed"
