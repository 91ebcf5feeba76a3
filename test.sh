#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit, property and end-to-end tests
# (real processes on loopback; the cluster-mode tests use the Redis and PostgreSQL
# on 127.0.0.1, started here when they are not running).
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh

ensure_build_prereqs
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
echo "==> build binaries"
cargo build --workspace --bins --locked
echo "==> galion-gateway check on the shipped configs"
# The shipped configs read the service token from the environment and their
# certificates from $GALION_DATA_DIR/certs (dev) and $GALION_TLS_DIR (production).
CHECK_DIR="$(mktemp -d)"
trap 'rm -rf "$CHECK_DIR"' EXIT
./target/debug/galion-gateway dev-certs "$CHECK_DIR/certs" >/dev/null
for f in conf/dev.yaml conf/gateway.yaml; do
    GALION_SERVICE_TOKEN=check-only GALION_DATA_DIR="$CHECK_DIR" GALION_TLS_DIR="$CHECK_DIR/certs" \
        ./target/debug/galion-gateway check -c "$f" >/dev/null
done
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-4}"
# Every policy is decided once (gateway/src/pipeline) and rendered by two
# transports: the policy tests run again with every request on pingora's.
# (hostile, stack and differential set `server.fast_path` themselves.)
echo "==> policy tests again with server.fast_path: false"
GALION_TEST_FAST_PATH=off cargo test --workspace --locked \
    --test access --test access_log --test bans --test limits --test ratelimit \
    --test routing --test tls --test upstreams --test upgrade --test cache --test static_files \
    -- --test-threads "${TEST_THREADS:-4}"
echo "==> all tests passed"
