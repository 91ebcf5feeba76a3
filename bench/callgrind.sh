#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable to the
# instruction where the timed runs of compare.sh move by several percent.
#
#   bench/callgrind.sh                      # gateway (fast_path on and off) and bare
#   TARGETS="gateway_slow bare" N=5000 bench/callgrind.sh
#   GATEWAY_HOST_EXTRA='security_headers: { enabled: false }' bench/callgrind.sh
#
# Each target runs under valgrind in front of an nginx origin serving 100
# bytes; curl sends WARMUP requests on one keep-alive connection, the counters
# are zeroed (callgrind_control -z), N more requests are sent and the counters
# dumped (-d). Printed: instructions per request, and the ratio to bare.
# The dump files stay under $OUT (default: a new directory under
# bench/results) for callgrind_annotate --inclusive=yes.
#
# Targets: gateway (fast path on), gateway_slow (server.fast_path: false),
# bare (examples/bare_proxy), bare_eq (bare_proxy with BARE_EQ=1: Pingora doing
# the gateway's per-request work with its own API), prod_pub and prod_jwt (compare.sh MODE=prod's
# shape: default rate limit, security headers, CORS host, a public route and
# an `auth: jwt` route; both sent the same Bearer token and Origin, so
# prod_jwt - prod_pub is what checking the token costs), cache_small and
# cache_16k (a cached route; every measured request a hit). The prod targets
# take FAST_PATH=false for pingora's transport. Needs the release build
# (cargo build --release -p galion-gateway --bins --example bare_proxy),
# valgrind, nginx and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGETS=${TARGETS:-"bare gateway_slow gateway"}
N=${N:-2000}
WARMUP=${WARMUP:-200}
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-$ROOT/bench/results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
die() { printf '[callgrind] error: %s\n' "$*" >&2; exit 1; }
for t in valgrind callgrind_control callgrind_annotate curl openssl; do
  command -v "$t" >/dev/null || die "$t is not installed"
done
[[ -x "$NGINX" ]] || die "nginx is not installed"
[[ -x "$BIN/galion-gateway" && -x "$BIN/examples/bare_proxy" ]] ||
  die "build first: cargo build --release -p galion-gateway --bins --example bare_proxy"
mkdir -p "$OUT"
TMP=$(mktemp -d)
# nginx's workers (www-data when started as root) must read the origin's files.
chmod 755 "$TMP"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f "$TMP/origin.pid" ]] && kill "$(cat "$TMP/origin.pid")" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_ORIGIN=$(free_port)
mkdir -p "$TMP/www" "$TMP/logs"
head -c 100 /dev/zero | tr '\0' a >"$TMP/www/small"
head -c 16384 /dev/zero | tr '\0' b >"$TMP/www/16k"
cat >"$TMP/origin.conf" <<EOF
worker_processes 1;
pid $TMP/origin.pid;
error_log $TMP/logs/origin.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_ORIGIN; root $TMP/www; }
}
EOF
"$NGINX" -p "$TMP" -c "$TMP/origin.conf" -e "$TMP/logs/origin.err"

# What every target's config starts with: listeners, one worker, no access
# log, the origin, and the host up to its routes (each target adds those and
# any other top-level section after them).
common_conf() { # PORT ADMIN FAST_PATH
  cat <<EOF
listen:
  http: 127.0.0.1:$1
  admin: 127.0.0.1:$2
server:
  threads: 1
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: $TMP/gw-$1.pid
  upgrade_sock: $TMP/gw-$1.sock
  fast_path: $3
access_log:
  enabled: false
upstreams:
  origin:
    servers: [127.0.0.1:$P_ORIGIN]
hosts:
  bench.local:
    aliases: [127.0.0.1, localhost]
    default: true
EOF
}

gateway_conf() { # PORT ADMIN FAST_PATH
  common_conf "$@"
  cat <<EOF
    routes:
      - { name: all, prefix: /, upstream: origin }
EOF
  if [[ -n "${GATEWAY_HOST_EXTRA:-}" ]]; then
    while IFS= read -r l; do printf '    %s\n' "$l"; done <<<"$GATEWAY_HOST_EXTRA"
  fi
}

cache_conf() { # PORT ADMIN
  common_conf "$1" "$2" true
  cat <<EOF
    routes:
      - { name: all, prefix: /, upstream: origin, cache: { ttl: 10m } }
cache:
  max_size: 64MiB
EOF
}

# The prod targets' HS256 secret (a file the gateway reads, 0600) and token.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
head -c 32 /dev/urandom | b64url >"$TMP/hs256.secret"; chmod 600 "$TMP/hs256.secret"
jwt_msg=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url).$(printf '{"iss":"https://bench.local","aud":"bench","sub":"bench-user","role":"user","jti":"bench-1","exp":4102444800}' | b64url)
JWT=$jwt_msg.$(printf '%s' "$jwt_msg" | openssl dgst -sha256 -hmac "$(cat "$TMP/hs256.secret")" -binary | b64url)

prod_conf() { # PORT ADMIN
  common_conf "$1" "$2" "${FAST_PATH:-true}"
  cat <<EOF
    cors:
      allow_origins: ["https://galion.app", "https://*.galion.app", "http://localhost:3000"]
      allow_credentials: true
      allow_headers: [authorization, content-type, x-request-id]
    routes:
      - { name: internal, regex: '^(/api/v1/[^/]+)?/(metrics|health|revocations)(/|\$)', deny: 404 }
      - { name: pub, prefix: /api/v1/pub, strip_prefix: true, methods: [GET, HEAD], upstream: origin }
      - { name: jwt, prefix: /api/v1/jwt, strip_prefix: true, methods: [GET], upstream: origin, auth: jwt }
auth:
  jwt:
    hs256_secret_file: $TMP/hs256.secret
    issuer: https://bench.local
    audience: [bench]
limits:
  max_body: 1MiB
  max_header_bytes: 32KiB
  max_connections_per_ip: 256
rate_limits:
  default: { rate: 1000000/s, burst: 1000000 }
EOF
}

declare -A PER=()
for t in $TARGETS; do
  port=$(free_port); admin=$(free_port)
  out=$OUT/$t.callgrind
  case $t in
    bare | bare_eq) cmd=("$BIN/examples/bare_proxy" "127.0.0.1:$port" "127.0.0.1:$P_ORIGIN" 1) ;;
    gateway | gateway_slow)
      fp=true; [[ $t == gateway_slow ]] && fp=false
      gateway_conf "$port" "$admin" "$fp" >"$TMP/$t.yaml"
      cmd=("$BIN/galion-gateway" -c "$TMP/$t.yaml") ;;
    prod_pub | prod_jwt)
      prod_conf "$port" "$admin" >"$TMP/$t.yaml"
      cmd=("$BIN/galion-gateway" -c "$TMP/$t.yaml") ;;
    cache_small | cache_16k)
      cache_conf "$port" "$admin" >"$TMP/$t.yaml"
      cmd=("$BIN/galion-gateway" -c "$TMP/$t.yaml") ;;
    *) die "unknown target $t (gateway, gateway_slow, bare, bare_eq, prod_pub, prod_jwt, cache_small, cache_16k)" ;;
  esac
  hdr=()
  case $t in
    prod_*) hdr=(-H "Authorization: Bearer $JWT" -H "Origin: https://galion.app") ;;
  esac
  # The environment is set here, not through env(1): valgrind would measure env.
  eq=0; [[ $t == bare_eq ]] && eq=1
  RUST_LOG=warn BARE_EQ=$eq valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >"$OUT/$t.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  url=http://127.0.0.1:$port/small
  case $t in
    prod_pub) url=http://127.0.0.1:$port/api/v1/pub/small ;;
    prod_jwt) url=http://127.0.0.1:$port/api/v1/jwt/small ;;
    cache_16k) url=http://127.0.0.1:$port/16k ;;
  esac
  for _ in $(seq 1 240); do curl -fs "${hdr[@]}" -o /dev/null "$url" && break; sleep 0.5; done
  # Cache targets ask for the same URL every time (the count in the fragment,
  # which is not sent): every request after the first is a hit.
  w="?w=" q="?q="
  case $t in cache_*) w="#" q="#" ;; esac
  curl -fs "${hdr[@]}" -o /dev/null "$url$w[1-$WARMUP]" || die "$t: warm-up requests failed (log: $OUT/$t.log)"
  callgrind_control -z "$pid" >/dev/null 2>&1
  codes=$(curl -s "${hdr[@]}" -o /dev/null -w '%{http_code}\n' "$url$q[1-$N]" | sort | uniq -c | awk '{printf "%s×%s ", $1, $2}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  [[ "$codes" == "$N×200 " ]] || die "$t: answers $codes, expected $N×200"
  total=$(callgrind_annotate "$out.1" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  [[ -n "$total" ]] || die "$t: no totals in $out.1"
  PER[$t]=$((total / N))
done
printf 'instructions per request (callgrind, %d keep-alive requests after %d of warm-up; %s)\n' "$N" "$WARMUP" "$(git rev-parse --short HEAD)"
for t in $TARGETS; do
  if [[ -n "${PER[bare]:-}" && $t != bare ]]; then
    printf '  %-14s %8d   bare / %s %.2fx\n' "$t" "${PER[$t]}" "$t" "$(awk -v a="${PER[bare]}" -v b="${PER[$t]}" 'BEGIN {print a / b}')"
  else
    printf '  %-14s %8d\n' "$t" "${PER[$t]}"
  fi
done
printf 'dumps: %s/<target>.callgrind.1 (callgrind_annotate --inclusive=yes)\n' "$OUT"
