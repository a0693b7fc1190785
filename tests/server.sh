# Shared by the test scripts (source it, don't run it): builds and starts the
# real apitoken-server for end-to-end tests.
#
#   apitoken_server_binary          builds apitoken-server, prints its path
#   apitoken_server_start DIR       starts it on 127.0.0.1 (a free port) with
#                                   SQLite in DIR and an owner token of
#                                   namespace team-a; sets APITOKEN_ADDRESS,
#                                   APITOKEN_OWNER, APITOKEN_SERVER_PID,
#                                   APITOKEN_SERVER_LOG
#   apitoken_server_stop            stops it (SIGTERM), fails unless it stopped
#                                   cleanly and its log holds no secret
#
# The binary's path comes from cargo itself (`--message-format=json`), so
# CARGO_TARGET_DIR, build.target-dir and profiles are honoured: no
# hard-coded target/debug. Needs cargo and jq.

apitoken_server_binary() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ -n "${APITOKEN_SERVER_BIN:-}" ]; then
    printf '%s\n' "$APITOKEN_SERVER_BIN"
    return
  fi
  local binary
  binary="$(cd "$root" && cargo build -q -p apitoken-server --bin apitoken-server --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "apitoken-server"
                  and (.target.kind | index("bin"))) | .executable')"
  if [ ! -x "$binary" ]; then
    echo "apitoken_server_binary: cargo reported no apitoken-server executable" >&2
    return 1
  fi
  # Cached for the rest of this shell: the build ran once.
  APITOKEN_SERVER_BIN="$binary"
  printf '%s\n' "$binary"
}

apitoken_server_start() {
  local dir="$1" binary
  binary="$(apitoken_server_binary)" || return 1
  APITOKEN_SERVER_BIN="$binary"
  mkdir -p "$dir"
  export APITOKEN_DATABASE_URL="sqlite://$dir/apitoken.db"
  APITOKEN_OWNER="$("$binary" bootstrap --namespace team-a 2>"$dir/bootstrap.log")" || {
    echo "bootstrap failed:" >&2
    cat "$dir/bootstrap.log" >&2
    return 1
  }
  export APITOKEN_OWNER
  APITOKEN_SERVER_LOG="$dir/server.log"
  "$binary" --listen 127.0.0.1:0 >"$APITOKEN_SERVER_LOG" 2>&1 &
  APITOKEN_SERVER_PID=$!
  APITOKEN_ADDRESS=""
  local _
  for _ in $(seq 1 200); do
    APITOKEN_ADDRESS="$(sed -n 's/.*address=\([0-9.]*:[0-9]*\).*/\1/p' "$APITOKEN_SERVER_LOG" | head -n 1)"
    [ -n "$APITOKEN_ADDRESS" ] && break
    kill -0 "$APITOKEN_SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$APITOKEN_ADDRESS" ]; then
    echo "apitoken-server did not start; its log:" >&2
    cat "$APITOKEN_SERVER_LOG" >&2
    kill "$APITOKEN_SERVER_PID" 2>/dev/null || true
    return 1
  fi
  export APITOKEN_ADDRESS
}

apitoken_server_stop() {
  [ -n "${APITOKEN_SERVER_PID:-}" ] || return 0
  local pid="$APITOKEN_SERVER_PID" status=0
  APITOKEN_SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "apitoken-server exited with status $status; its log:" >&2
    cat "$APITOKEN_SERVER_LOG" >&2
    return 1
  fi
  # Secrets never reach the log: not the owner's, nor any the clients made
  # (they print none, so the owner's and the prefix are what can be checked).
  if grep -q "${APITOKEN_OWNER:13}" "$APITOKEN_SERVER_LOG" || grep -qE 'apitoken_[0-9A-Za-z]{49}' "$APITOKEN_SERVER_LOG"; then
    echo "a secret reached the server log" >&2
    return 1
  fi
}
