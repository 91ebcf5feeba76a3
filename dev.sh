#!/usr/bin/env bash
# The whole system on one machine with embedded defaults: the gateway and the three
# backends, SQLite under $GALION_DATA_DIR, no Redis, no PostgreSQL. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh

export GALION_DATA_DIR="${GALION_DATA_DIR:-$PWD/data}"
export RUST_LOG="${RUST_LOG:-info}"
PROFILE="${GALION_PROFILE:-release}"

ensure_build_prereqs
echo "==> building ($PROFILE; the first build takes several minutes)"
if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi
BIN="target/$PROFILE"

mkdir -p "$GALION_DATA_DIR/logs" "$GALION_DATA_DIR/acme"
chmod 700 "$GALION_DATA_DIR"
if [ ! -s "$GALION_DATA_DIR/certs/galion.app.key" ]; then
    echo "==> creating development certificates in $GALION_DATA_DIR/certs"
    "$BIN/galion-gateway" dev-certs "$GALION_DATA_DIR/certs"
fi

for port in 8080 8443 9901 7001 7002 7003; do
    if port_open 127.0.0.1 "$port"; then
        echo "port 127.0.0.1:$port is already in use; stop whatever holds it first" >&2
        exit 1
    fi
done

PIDS=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "==> stopping"
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start() {
    local name=$1; shift
    "$@" > >(tee -a "$GALION_DATA_DIR/logs/$name.log" | sed -u "s/^/[$name] /") 2>&1 &
    PIDS+=($!)
}

# auth first: it generates the signing key and the service token the others read.
start auth "$BIN/galion-auth"
wait_port 127.0.0.1 7001 || { echo "galion-auth did not start" >&2; exit 1; }
# The gateway polls auth's revocation feed with the service token auth generated.
if [ -z "${GALION_SERVICE_TOKEN:-}" ] && [ -z "${GALION_SERVICE_TOKEN_FILE:-}" ]; then
    for _ in $(seq 1 50); do [ -s "$GALION_DATA_DIR/service-token" ] && break; sleep 0.1; done
    GALION_SERVICE_TOKEN="$(cat "$GALION_DATA_DIR/service-token")"
    export GALION_SERVICE_TOKEN
elif [ -n "${GALION_SERVICE_TOKEN_FILE:-}" ]; then
    GALION_SERVICE_TOKEN="$(cat "$GALION_SERVICE_TOKEN_FILE")"
    export GALION_SERVICE_TOKEN
fi
start users "$BIN/galion-users"
# The dev ingestion key of conf/dev.yaml (`X-API-Key: dev-ingest-key`): the gateway
# checks it, and galion-analytics checks it again and stamps events with its name.
GALION_ANALYTICS_API_KEYS="${GALION_ANALYTICS_API_KEYS:-dev-ingest:21dd9e3b3f1633b88d69b73906f1a9e594beebd9b616bf89448c0a50a8b4ad10}" \
    start analytics "$BIN/galion-analytics"
start gateway "$BIN/galion-gateway" -c conf/dev.yaml
wait_port 127.0.0.1 8080 || { echo "galion-gateway did not start" >&2; exit 1; }

cat <<MSG

  Galion is running (data in $GALION_DATA_DIR, logs in $GALION_DATA_DIR/logs).

  API      http://localhost:8080/api/v1/...   (Host galion.app; localhost maps to it)
           https://localhost:8443/...  (curl --cacert $GALION_DATA_DIR/certs/ca.pem)
  Admin    http://127.0.0.1:9901/metrics  /health/ready
           curl -H 'Authorization: Bearer dev-admin-token' http://127.0.0.1:9901/admin/config
  Try      curl -s localhost:8080/api/v1/auth/register -H 'content-type: application/json' \\
             -d '{"email":"ada@example.com","password":"correct horse battery","name":"Ada"}'
           curl -s localhost:8080/api/v1/auth/login -H 'content-type: application/json' \\
             -d '{"email":"ada@example.com","password":"correct horse battery"}'
  Mail     verification/reset mails: $GALION_DATA_DIR/mail/*.eml (links also in the auth log)
  Reload   edit conf/dev.yaml (applied on save) or: kill -HUP <gateway pid>

  Ctrl-C stops everything.
MSG

# Exit (and stop the rest) as soon as any service dies.
wait -n "${PIDS[@]}"
echo "a service exited; stopping the others" >&2
exit 1
