#!/usr/bin/env bash
# Runs the README's grpcurl walk-through verbatim against a freshly started
# apitoken-server, with a real grpcurl, then checks what a reader would see.
# Needs cargo, grpcurl and jq on PATH; the default address 127.0.0.1:50051 must be free.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="$(mktemp -d)"
export APITOKEN_DATABASE_URL="sqlite://$work/walkthrough.db"
export APITOKEN_LOG=info

# The binary's path from cargo (CARGO_TARGET_DIR and profiles honoured).
# shellcheck source=tests/server.sh
. tests/server.sh
server_bin="$(apitoken_server_binary)"
"$server_bin" >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check >/dev/null 2>&1; then break; fi
  sleep 0.2
done

# The block between the walkthrough markers, without the fences.
awk '/<!-- walkthrough:begin -->/{on=1; next} /<!-- walkthrough:end -->/{on=0} on && !/^```/' README.md >"$work/walkthrough.sh"
test -s "$work/walkthrough.sh"
# Through a pipe: the walk-through's `tee /dev/stderr` would truncate a file.
bash -euo pipefail "$work/walkthrough.sh" 2>&1 | cat >"$work/out.txt" || {
  echo "walk-through failed:"; cat "$work/out.txt"; echo "server log:"; cat "$work/server.log"; exit 1
}

fail() { echo "walk-through check failed: $1"; cat "$work/out.txt"; exit 1; }
grep -qx 'apitoken.v1.ApiTokenService' "$work/out.txt" || fail "reflection lists the service"
grep -q '"status": "SERVING"' "$work/out.txt" || fail "health is SERVING"
grep -q '"name": "namespaces/team-a/apitokens/ci-deploy"' "$work/out.txt" || fail "token created"
grep -q '"state": "STATE_REVOKED"' "$work/out.txt" || fail "token revoked"
grep -q '"reason":"TOKEN_INVALID"' "$work/out.txt" || fail "old secret refused after regenerate"
grep -q 'old secret refused, as expected' "$work/out.txt" || fail "old secret refused"
grep -q '"reason":"TOKEN_REVOKED"' "$work/out.txt" || fail "revoked token refused with TOKEN_REVOKED"
grep -q 'revoked token refused, as expected' "$work/out.txt" || fail "revoked token refused"

# Graceful stop, and no secret in the server's log.
kill -TERM "$server"
wait "$server" || fail "server exit status"
trap - EXIT
grep -q 'stopped' "$work/server.log" || fail "server stopped gracefully"
for secret in $(grep -oE 'apitoken_[0-9A-Za-z]{49}' "$work/out.txt" | sort -u); do
  if grep -q "${secret:13}" "$work/server.log"; then fail "a secret reached the server log"; fi
done
count=$(grep -oE 'apitoken_[0-9A-Za-z]{49}' "$work/out.txt" | sort -u | wc -l)
[ "$count" -ge 2 ] || fail "secrets were shown"
echo "grpcurl walk-through: 1 passed, 0 failed"
