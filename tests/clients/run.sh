#!/usr/bin/env bash
# Clients generated from proto/ by `buf generate` (buf.gen.yaml), each driven
# against the real apitoken-server: tests/clients/{python,typescript,go}.
#
#   tests/clients/run.sh [python|typescript|go|all]...   (default: all)
#
# Generates gen/ from the checked-in protos with the documented command
# (`tests/clients/tools/node_modules/.bin/buf generate`), builds each program, and runs it
# against a fresh server (127.0.0.1, a free port, SQLite in a temp dir, an
# owner token from `apitoken-server bootstrap --namespace team-a`; see
# tests/server.sh). Each language's example in README.md ("From any
# language") is built and run the same way, as it stands. Needs: cargo, jq, node with `npm ci --prefix tests/clients/tools`
# (CI links tests/clients/tools/node_modules to its cache), python3 with
# tests/clients/python/requirements.txt, and Go 1.19+ with protoc-gen-go, protoc-gen-go-grpc and grpc-go/genproto in GOPATH
# (Debian: golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
# golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev).
# Functions below chain with && or `|| return`: they run under `if`, where
# `set -e` does not apply.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=tests/server.sh
. tests/server.sh

languages=("$@")
[ "${#languages[@]}" -gt 0 ] || languages=(all)
if [ "${languages[*]}" = all ]; then languages=(python typescript go); fi
for language in "${languages[@]}"; do
  case "$language" in
    python | typescript | go) ;;
    *) echo "usage: $0 [python|typescript|go|all]..." >&2; exit 2 ;;
  esac
done

node_modules="$root/tests/clients/tools/node_modules"
if [ ! -x "$node_modules/.bin/buf" ]; then
  echo "no buf in tests/clients/tools/node_modules: run 'npm ci --prefix tests/clients/tools' first" >&2
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/apitoken-clients.XXXXXX")"
cleanup() {
  apitoken_server_stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

timed() {
  local label="$1" start=$SECONDS status=0
  shift
  "$@" || status=$?
  printf -- '-- %s: %ss\n' "$label" "$((SECONDS - start))"
  return "$status"
}

generate() {
  tests/clients/tools/node_modules/.bin/buf generate
}

# The README's example for a language ("From any language"), as it stands.
readme_example() {
  awk -v lang="$1" '
    $0 == "<!-- client-example:" lang ":begin -->" { on = 1; next }
    $0 == "<!-- client-example:" lang ":end -->" { on = 0 }
    on && !/^```/' README.md
}

# Runs a README example and checks what it prints: the verified token's
# name, then the status and the ErrorInfo reason of the revoked token.
check_example() {
  local output
  if ! output="$("$@" 2>&1)"; then
    printf 'FAIL readme_example: exited non-zero:\n%s\n' "$output"
    return 1
  fi
  printf '%s\n' "$output" | sed 's/^/     | /'
  if ! grep -qx 'namespaces/team-a/apitokens/readme-example' <<<"$output" ||
    ! grep -qxiE 'unauthenticated TOKEN_REVOKED' <<<"$output"; then
    echo "FAIL readme_example: expected the token's name, then 'UNAUTHENTICATED TOKEN_REVOKED'"
    return 1
  fi
  echo "ok   readme_example"
}

build_python() {
  readme_example python >"$work/readme_example.py" && [ -s "$work/readme_example.py" ]
}
run_python() {
  export PYTHONPATH="$root/gen/python${PYTHONPATH:+:$PYTHONPATH}"
  python3 tests/clients/python/client.py && check_example python3 "$work/readme_example.py"
}

# The program and gen/ts are compiled together, in a copy that mirrors the
# repository's layout and sees the npm packages as node_modules.
build_typescript() {
  local build="$work/typescript"
  mkdir -p "$build/gen" "$build/tests/clients" &&
    cp -R gen/ts "$build/gen/ts" &&
    cp -R tests/clients/typescript "$build/tests/clients/typescript" &&
    rm -rf "$build/tests/clients/typescript/dist" &&
    ln -s "$(readlink -f "$node_modules")" "$build/node_modules" &&
    echo '{ "private": true, "type": "module" }' >"$build/package.json" &&
    readme_example typescript >"$build/readme_example.ts" && [ -s "$build/readme_example.ts" ] &&
    "$node_modules/.bin/tsc" -p "$build/tests/clients/typescript/tsconfig.json"
}
run_typescript() {
  local dist="$work/typescript/tests/clients/typescript/dist"
  node "$dist/tests/clients/typescript/client.js" && check_example node "$dist/readme_example.js"
}

# GOPATH mode, offline: Debian's grpc-go and genproto in /usr/share/gocode,
# the generated package under its go_package import path.
go_env() {
  GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$work/gopath:${APITOKEN_GOPATH:-/usr/share/gocode}" \
    "$@"
}
build_go() {
  local src="$work/gopath/src/apitoken.internal" unformatted
  readme_example go >"$work/readme_example.go" || return 1
  unformatted="$(gofmt -l tests/clients/go "$work/readme_example.go")" || return 1
  [ -z "$unformatted" ] || { echo "gofmt: not formatted: $unformatted" >&2; return 1; }
  mkdir -p "$src/gen/go" "$src/tests/clients" &&
    cp -R gen/go/apitoken "$src/gen/go/apitoken" &&
    cp -R gen/go/envoy "$src/gen/go/envoy" &&
    cp -R tests/clients/go "$src/tests/clients/go" &&
    mkdir -p "$src/readme_example" && cp "$work/readme_example.go" "$src/readme_example/main.go" &&
    (cd "$src/tests/clients/go" && go_env go vet . && go_env go build -o "$work/go-client" .) &&
    (cd "$src/readme_example" && go_env go vet . && go_env go build -o "$work/go-readme-example" .)
}
run_go() {
  "$work/go-client" && check_example "$work/go-readme-example"
}

timed "buf generate" generate
# Every program ends by calling Envoy's `Check` as a proxy would: the
# servers serve it with this policy (every path under /api/ needs a viewer
# of team-a).
printf 'namespace team-a\nrequire /api/** viewer\npublic /healthz\n' >"$work/ext-authz-policy.txt"
export APITOKEN_EXT_AUTHZ_POLICY="$work/ext-authz-policy.txt"
start=$SECONDS
APITOKEN_SERVER_BIN="$(apitoken_server_binary)"
export APITOKEN_SERVER_BIN
printf -- '-- build apitoken-server: %ss\n' "$((SECONDS - start))"

failed=()
for language in "${languages[@]}"; do
  printf '\n== %s client\n' "$language"
  if ! timed "build $language" "build_$language"; then
    failed+=("$language (build)")
    continue
  fi
  apitoken_server_start "$work/server-$language"
  if ! timed "run $language" "run_$language"; then
    failed+=("$language")
    echo "server log (last 40 lines):"
    tail -n 40 "$APITOKEN_SERVER_LOG"
    apitoken_server_stop || true
  elif ! apitoken_server_stop; then
    failed+=("$language (server)")
  fi
done

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "clients failed: ${failed[*]}"
  echo "client programs: $((${#languages[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
  exit 1
fi
echo "client programs: ${#languages[@]} passed, 0 failed"
