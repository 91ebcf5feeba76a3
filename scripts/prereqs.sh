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

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 100); do port_open "$1" "$2" && return 0; sleep 0.1; done
    return 1
}

ensure_redis() {
    port_open 127.0.0.1 6379 && return 0
    command -v redis-server >/dev/null || apt_install redis-server
    echo "==> starting redis on 127.0.0.1:6379"
    mkdir -p /tmp/galion-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp/galion-redis --logfile /tmp/galion-redis/redis.log
    wait_port 127.0.0.1 6379 || { echo "redis did not start" >&2; exit 1; }
}

ensure_postgres() {
    port_open 127.0.0.1 5432 && return 0
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    echo "==> starting postgresql on 127.0.0.1:5432"
    local v; v="$(ls /etc/postgresql | sort -V | tail -1)"
    # Tests connect as postgres without a password over loopback.
    local hba="/etc/postgresql/$v/main/pg_hba.conf"
    if ! grep -q "galion-tests" "$hba" 2>/dev/null; then
        as_root sh -c "printf '# galion-tests\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | cat - '$hba' > '$hba.new' && mv '$hba.new' '$hba'"
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || as_root pg_ctlcluster "$v" main start
    wait_port 127.0.0.1 5432 || { echo "postgresql did not start" >&2; exit 1; }
}
