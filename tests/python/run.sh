#!/usr/bin/env bash
# Generates the Python client from the protos with grpcio-tools, starts the
# real apitoken-server on a free loopback port, and runs test_client.py
# against it. Needs python3 with grpcio, grpcio-tools and grpcio-status.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
work="$(mktemp -d)"
mkdir -p "$work/generated"
python3 -m grpc_tools.protoc -I proto --python_out="$work/generated" --grpc_python_out="$work/generated" \
  proto/apitoken/v1/apitoken.proto
touch "$work/generated/apitoken/__init__.py" "$work/generated/apitoken/v1/__init__.py"

cargo build -q -p apitoken-server
export APITOKEN_DATABASE_URL="sqlite://$work/python.db"
export APITOKEN_OWNER="$(target/debug/apitoken-server bootstrap --namespace team-a 2>/dev/null)"
target/debug/apitoken-server --listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
address=""
for _ in $(seq 1 100); do
  address="$(sed -n 's/.*address=\([0-9.:]*\).*/\1/p' "$work/server.log" | head -n 1)"
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { echo "server did not start"; cat "$work/server.log"; exit 1; }
APITOKEN_ADDRESS="$address" GENERATED="$work/generated" python3 tests/python/test_client.py
