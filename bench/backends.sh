#!/usr/bin/env bash
# Backend micro-benchmarks (not a test): login req/s (argon2id-bound, by
# design), GET /me req/s on galion-auth and GET /users/me on galion-users
# (JWT verified against auth's JWKS + revocation + row lookup), SQLite,
# loopback, no gateway.
#
#   bench/backends.sh                 # uses target/release if built, else target/debug
#   BIN_DIR=target/release DURATION=20s CONNECTIONS=32 bench/backends.sh
#
# Needs wrk (or oha). Starts its own galion-auth on a scratch data dir and
# stops it on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
PORT=${PORT:-17001}
if [[ -z "${BIN_DIR:-}" ]]; then
  if [[ -x target/release/galion-auth ]]; then BIN_DIR=target/release; else BIN_DIR=target/debug; fi
fi
[[ -x "$BIN_DIR/galion-auth" ]] || { echo "build first: cargo build --release -p galion-auth" >&2; exit 1; }

DATA=$(mktemp -d)
LUA=$(mktemp --suffix=.lua)
cleanup() {
  for pid in ${AUTH_PID:-} ${USERS_PID:-}; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  rm -rf "$DATA" "$LUA"
}
trap cleanup EXIT

GALION_DATA_DIR="$DATA" GALION_AUTH_LISTEN="127.0.0.1:$PORT" GALION_ANALYTICS_URL=off RUST_LOG=warn \
  "$BIN_DIR/galion-auth" >"$DATA/auth.log" 2>&1 &
AUTH_PID=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -sf "$URL/health/ready" >/dev/null && break; sleep 0.1; done
GALION_DATA_DIR="$DATA" GALION_USERS_LISTEN="127.0.0.1:$((PORT + 1))" GALION_AUTH_URL="$URL" GALION_ANALYTICS_URL=off RUST_LOG=warn \
  "$BIN_DIR/galion-users" >"$DATA/users.log" 2>&1 &
USERS_PID=$!
USERS_URL="http://127.0.0.1:$((PORT + 1))"
for _ in $(seq 100); do curl -sf "$USERS_URL/health/ready" >/dev/null && break; sleep 0.1; done

curl -sf -XPOST "$URL/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"correct horse battery","name":"Bench"}' >/dev/null
TOKEN=$(curl -sf -XPOST "$URL/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"correct horse battery"}' | sed -E 's/.*"access_token":"([^"]+)".*/\1/')

echo "galion-auth ($BIN_DIR), $CONNECTIONS connections, $DURATION, $(nproc) cores"
if command -v oha >/dev/null; then
  echo "== POST /login"
  oha -z "$DURATION" -c "$CONNECTIONS" -m POST -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"correct horse battery"}' "$URL/login" | grep -E "Requests/sec|Success rate"
  echo "== GET /me"
  oha -z "$DURATION" -c "$CONNECTIONS" -H "authorization: Bearer $TOKEN" "$URL/me" | grep -E "Requests/sec|Success rate"
  echo "== GET /users/me (galion-users)"
  oha -z "$DURATION" -c "$CONNECTIONS" -H "authorization: Bearer $TOKEN" "$USERS_URL/users/me" | grep -E "Requests/sec|Success rate"
else
  cat >"$LUA" <<'LUA'
wrk.method = "POST"
wrk.body   = '{"email":"bench@example.com","password":"correct horse battery"}'
wrk.headers["Content-Type"] = "application/json"
LUA
  echo "== POST /login"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$LUA" "$URL/login" | grep -E "Requests/sec|Non-2xx|Latency"
  echo "== GET /me"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $TOKEN" "$URL/me" | grep -E "Requests/sec|Non-2xx|Latency"
  echo "== GET /users/me (galion-users)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $TOKEN" "$USERS_URL/users/me" | grep -E "Requests/sec|Non-2xx|Latency"
fi
