#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit, property and end-to-end tests
# (real processes on loopback). The cluster-mode tests use the Redis and PostgreSQL
# named by GALION_TEST_REDIS_URL / GALION_TEST_PG_URL, else the ones answering on
# 127.0.0.1:6379 and :5432, else private ones started under target/test-services
# and stopped at the end (scripts/prereqs.sh). Nothing outside the checkout changes,
# apart from Debian packages installed when missing.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh

ensure_build_prereqs
ensure_check_tools
CHECK_DIR="$(mktemp -d)"
trap 'rm -rf "$CHECK_DIR"; stop_test_services' EXIT
ensure_redis
ensure_postgres

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets live outside the workspace (cargo-fuzz builds them with its own
# flags); compiling them here keeps them in step with the gateway's API. Running
# them is separate: fuzz/README.md.
echo "==> fuzz targets: fmt, clippy"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --locked --target-dir target -- -D warnings
# One build for everything: the binaries the end-to-end tests start and every
# test target, with one feature set (a separate `cargo build --bins` or a
# `--test` selection unifies features differently and rebuilds pingora).
echo "==> build binaries and tests"
cargo build --workspace --all-targets --locked --message-format=json-render-diagnostics \
    >"$CHECK_DIR/build.json"
# The end-to-end tests use these binaries as built here.
export GALION_TESTS_NO_BUILD=1
echo "==> galion-gateway check on the shipped configs"
# The shipped configs read their certificates from $GALION_DATA_DIR/certs (dev)
# and $GALION_TLS_DIR (production); conf/gateway.yaml reads the service token from systemd's credentials.
./target/debug/galion-gateway dev-certs "$CHECK_DIR/certs" >/dev/null
mkdir -p "$CHECK_DIR/credentials"
(umask 077 && echo check-only >"$CHECK_DIR/credentials/service-token")
for f in conf/dev.yaml conf/gateway.yaml; do
    GALION_SERVICE_TOKEN=check-only GALION_DATA_DIR="$CHECK_DIR" GALION_TLS_DIR="$CHECK_DIR/certs" \
        CREDENTIALS_DIRECTORY="$CHECK_DIR/credentials" \
        ./target/debug/galion-gateway check -c "$f" >/dev/null
done
echo "==> systemd units, users and directories"
scripts/check-systemd.sh target/debug
echo "==> monitoring: promtool check and test the alert rules"
ensure_promtool
"$PROMTOOL" check rules monitoring/prometheus/galion.rules.yml
(cd monitoring/prometheus && "$PROMTOOL" test rules galion.rules.test.yml)
"$PROMTOOL" check config --syntax-only monitoring/prometheus/prometheus.example.yml \
    monitoring/prometheus/prometheus.dev.yml
ensure_k6
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-4}"
# Every policy is decided once (gateway/src/pipeline) and rendered by two
# transports: the policy tests run again with every request on pingora's.
# (hostile, stack and differential set `server.fast_path` themselves.) The
# test binaries built above run directly, from their package's directory as
# cargo runs them.
echo "==> policy tests again with server.fast_path: false"
for t in access access_log bans limits ratelimit routing tls upstreams upgrade cache static_files; do
    exe="$(jq -r --arg t "$t" 'select(.reason == "compiler-artifact" and .target.name == $t
        and .target.kind == ["test"] and .executable != null) | .executable' "$CHECK_DIR/build.json")"
    [ -n "$exe" ] || { echo "no test binary for $t" >&2; exit 1; }
    echo "--- $t"
    (cd tests && GALION_TEST_FAST_PATH=off "$exe" --test-threads "${TEST_THREADS:-4}")
done
echo "==> all tests passed"
