#!/usr/bin/env bash
# The web console in a real browser: headless Debian chromium driven by
# Selenium (tests/browser/console_test.py) against the real apitoken-server.
#
#   tests/browser/run.sh
#
# Builds apitoken-server (tests/server.sh), makes a fresh SQLite database
# with an owner and a viewer token of team-a and an owner token of team-b
# (`apitoken-server bootstrap`), starts the server with the console on a
# free loopback port, runs the suite, stops the server (SIGTERM) and checks
# that its log holds no secret. Screenshots go to
# tests/browser/screenshots/scratch/ (ignored; failures land there too);
# `APITOKEN_SCREENSHOTS=tests/browser/screenshots tests/browser/run.sh`
# rewrites the ones the README shows.
#
# Needs: cargo, jq, python3 with tests/browser/requirements.txt, and
# Debian's chromium and chromium-driver (CHROMIUM and CHROMEDRIVER override
# their paths).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=tests/server.sh
. tests/server.sh

for tool in "${CHROMIUM:-/usr/bin/chromium}" "${CHROMEDRIVER:-/usr/bin/chromedriver}"; do
  if [ ! -x "$tool" ]; then
    echo "no $tool: apt-get install chromium chromium-driver" >&2
    exit 1
  fi
done

dir="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

binary="$(apitoken_server_binary)"
export APITOKEN_DATABASE_URL="sqlite://$dir/apitoken.db"
mint() { "$binary" bootstrap "$@" 2>>"$dir/bootstrap.log"; }
APITOKEN_OWNER="$(mint --namespace team-a)"
APITOKEN_VIEWER="$(mint --namespace team-a --name auditor --role viewer)"
APITOKEN_OTHER="$(mint --namespace team-b)"
export APITOKEN_OWNER APITOKEN_VIEWER APITOKEN_OTHER

log="$dir/server.log"
"$binary" --listen 127.0.0.1:0 --web-listen 127.0.0.1:0 >"$log" 2>&1 &
pid=$!
APITOKEN_WEB=""
for _ in $(seq 1 200); do
  APITOKEN_WEB="$(sed -n 's/.*console=\([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -n 1)"
  [ -n "$APITOKEN_WEB" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
if [ -z "$APITOKEN_WEB" ]; then
  echo "apitoken-server did not start its console; its log:" >&2
  cat "$log" >&2
  exit 1
fi
export APITOKEN_WEB="http://$APITOKEN_WEB"

status=0
python3 tests/browser/console_test.py || status=$?

kill -TERM "$pid"
server_status=0
wait "$pid" || server_status=$?
pid=""
if [ "$server_status" -ne 0 ]; then
  echo "apitoken-server exited with status $server_status; its log:" >&2
  cat "$log" >&2
  exit 1
fi
# No secret in the log: not the signed-in tokens, nor any the console made.
for secret in "$APITOKEN_OWNER" "$APITOKEN_VIEWER" "$APITOKEN_OTHER"; do
  if grep -qF "${secret:13}" "$log"; then
    echo "a signed-in token reached the server log" >&2
    exit 1
  fi
done
if grep -qE 'apitoken_[0-9A-Za-z]{49}' "$log"; then
  echo "a secret reached the server log" >&2
  exit 1
fi
exit "$status"
