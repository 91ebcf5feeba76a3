#!/usr/bin/env bash
# Side-by-side benchmark (not a test): nginx vs galion-gateway vs a bare Pingora
# proxy built with the same release profile and allocator
# (gateway/examples/bare_proxy.rs), in front of the same origin.
#
#   bench/compare.sh                          # 3 interleaved rounds, 10 s runs, 64 conns
#   ROUNDS=5 DURATION=10s bench/compare.sh
#   ACCESS_LOG=1 bench/compare.sh             # also the gateway with its access log on
#   LOADGEN=wrk bench/compare.sh              # wrk instead of oha (cheaper per request: bench/README.md)
#   SKIP_BUILD=1 NO_INSTALL=1 bench/compare.sh
#   MODE=auth bench/compare.sh                # access control: public vs JWT vs API-key route, one gateway
#   MODE=https bench/compare.sh               # TLS termination: gateway vs nginx, same certificate
#   MODE=cache bench/compare.sh               # cache hits: gateway cache vs nginx proxy_cache
#   LOADGEN=wrk MODE=prod bench/compare.sh    # the production API route (limits, rate limit, CORS,
#                                             # security headers, JWT, 1 KiB POST) vs nginx doing that work
#   LOADGEN=wrk MODE=static bench/compare.sh  # files from disk: gateway `static:` vs nginx `root` + sendfile
#
# Layout (2 cores): every proxy runs one worker pinned to CPU 1, beside the
# origin (a second nginx, one worker, `return 200` and a 16 KiB file,
# keep-alive), as galion's backends run beside the gateway; the load generator
# has CPU 0 to itself, as remote clients would. So the proxy's core is the
# busy one and the figures measure the proxy. (ORIGIN_CPU=0 puts the origin
# with the load generator instead: there CPU 0 saturates first and req/s
# measures what each answer costs the client and origin; bench/README.md.)
# All on 127.0.0.1, free ports picked at start.
# Runs are interleaved (round r: small then 16 KiB, each through every proxy,
# proxy order rotated per round). Per run: req/s, p50, p99 (load generator),
# requests per CPU-second of the proxy process tree (utime+stime from
# /proc/PID/stat before/after, / CLK_TCK). Prints medians and the ratios
# gateway/nginx, gateway/bare, bare/nginx (median of the per-round ratios);
# raw figures go to bench/results/<timestamp>/ (gitignored). See bench/README.md.
#
# Environment:
#   MODE=plain|auth|https             plain (default): the proxies above. auth: one gateway with the
#                                     routes /pub (public), /jwt (auth: jwt, EdDSA token from a
#                                     generated JWKS file) and /key (auth: api_key, X-API-Key), targets
#                                     "pub jwt key", ratios jwt/pub and key/pub. https: nginx and the
#                                     gateway terminating TLS with the same dev-certs certificate,
#                                     targets "nginx_tls gateway_tls", keep-alive, ratio gateway_tls/nginx_tls.
#                                     cache: nginx with proxy_cache (+ proxy_cache_lock) and the gateway
#                                     with a cached route, both filled before measuring (every request a
#                                     hit), targets "nginx_cache gateway_cache", ratio gateway_cache/nginx_cache
#                                     prod: one gateway shaped like the API routes of conf/gateway.yaml
#                                     (limits, rate_limits.default keyed by IP and never reached, the host's
#                                     security headers, CORS, the internal-path deny, auth: jwt with a
#                                     revocation feed) and one nginx doing the same header work (limit_req,
#                                     add_header, forwarded headers; it cannot verify a JWT). Targets
#                                     "nginx_prod gw_pub gw_jwt nginx_post gw_post": GET /api/v1/pub (public),
#                                     GET /api/v1/jwt, POST /api/v1/post (+ 1 KiB JSON), all with the same
#                                     Bearer token (checked on jwt and post only) and an Origin
#                                     header (BENCH_ORIGIN); ratios gw_pub, gw_jwt / nginx_prod,
#                                     gw_post / nginx_post, gw_jwt / gw_pub. POST targets answer "small" only
#                                     static: files from disk, no origin involved: nginx with `root`, sendfile,
#                                     open_file_cache, try_files to /index.html and the gateway's security
#                                     headers and request id (add_header), vs the gateway's `static:` route
#                                     (spa_fallback, security headers as shipped). Scenarios /16k (16 KiB) and
#                                     /index.html (3 KiB); targets "nginx_static gateway_static"
#   BENCH_ORIGIN=https://galion.app   MODE=prod: the Origin header the load generator sends (an allowed one)
#   TLS=0|1                           MODE=prod: 1 puts every prod target behind TLS (nginx_prod and the
#                                     gateway terminating it with the same dev-certs certificate,
#                                     keep-alive): the production-shaped HTTPS comparison
#   ROUNDS=3  DURATION=10s  CONNS=64  WARMUP=2s
#   SCENARIOS="small 16k"             request paths /small (3-byte body) and /16k (16384 bytes)
#                                     (default "small" with MODE=auth and MODE=https)
#   PROXIES="nginx gateway bare"      subset/order of targets (gateway_log added by ACCESS_LOG=1;
#                                     gateway_plain: the gateway with its host's security headers off,
#                                     answering with nginx's header lines plus X-Request-Id;
#                                     bare_eq: bare_proxy with BARE_EQ=1, Pingora doing the gateway's
#                                     per-request work with its own API, the yardstick for
#                                     GATEWAY_SERVER_EXTRA='fast_path: false');
#                                     MODE=auth: "pub jwt key"; MODE=https: "nginx_tls gateway_tls";
#                                     MODE=prod: "nginx_prod gw_pub gw_jwt nginx_post gw_post"
#   ACCESS_LOG=0|1                    1: add "gateway_log", the gateway writing its access log to a file
#   LOADGEN=oha|wrk                   default oha (latency percentiles); wrk costs less CPU on CPU 0
#   LOAD_CPU=0  PROXY_CPU=1           cores for the load generator and for the proxies
#   PROXY_QUOTA=50                    each proxy (its process tree) in its own cgroup with this
#                                     percent of one core (cfs quota; cgroup v1 cpu or v2 cpu.max),
#                                     for a proxy the load core cannot saturate otherwise (cache hits):
#                                     every proxy then runs out of the same CPU budget and req/s is its
#                                     capacity per budget. Saturated means proxy CPU >= 95% of the quota;
#                                     p99 then includes the throttled intervals (10 ms period). The
#                                     cgroups are removed at exit
#   ORIGIN_CPU=$PROXY_CPU              core for the origin (0: with the load generator, the old layout)
#   SKIP_BUILD=1                      use the binaries already in target/release
#   GATEWAY_BIN=path                  another galion-gateway binary (e.g. a copy of an older build)
#   NO_INSTALL=1                      fail instead of installing missing tools
#   RESULTS_DIR=bench/results         where the raw results go
#   NOISE_PCT=15  RETRIES=2           a run during which a compiler ran, or other work took more
#                                     than NOISE_PCT% of the proxy core, is repeated up to RETRIES times
#   STEAL_PCT=3                       ... and so is a run in which the hypervisor took (steal) more than
#                                     STEAL_PCT% of either core
#   GATEWAY_SERVER_EXTRA='...'        YAML keys added to the gateway's server section, e.g.
#                                     'fast_path: false' or 'work_stealing: false'
#   GATEWAY_HOST_EXTRA='...'          YAML keys added to the gateway's host, e.g.
#                                     'security_headers: { enabled: false }' (default: as shipped)
#   WAIT_FOR_BUILDS=1                 0: do not wait for running rustc/cc/ld before each run (profiling)
#   CLIENT_COST=0|1                   1: after the timed runs, what each target's answers cost the client:
#                                     oha under valgrind --tool=callgrind, instructions per request
#                                     (marginal: the difference of a CLIENT_N and a CLIENT_N/5 run, so
#                                     oha's start-up is left out). Repeatable to the instruction, unlike
#                                     the timed runs; needs valgrind (installed if missing)
#   CLIENT_N=20000                    requests per CLIENT_COST run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=${MODE:-plain}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2s}
case $MODE in
  plain) SCENARIOS=${SCENARIOS:-"small 16k"}; PROXIES=${PROXIES:-"nginx nginx_eq gateway bare"} ;;
  auth) SCENARIOS=${SCENARIOS:-small}; PROXIES=${PROXIES:-"pub jwt key"} ;;
  https) SCENARIOS=${SCENARIOS:-small}; PROXIES=${PROXIES:-"nginx_tls gateway_tls"} ;;
  cache) SCENARIOS=${SCENARIOS:-"small 16k"}; PROXIES=${PROXIES:-"nginx_cache gateway_cache"} ;;
  prod) SCENARIOS=${SCENARIOS:-small}; PROXIES=${PROXIES:-"nginx_prod gw_pub gw_jwt nginx_post gw_post"} ;;
  static) SCENARIOS=${SCENARIOS:-"16k index.html"}; PROXIES=${PROXIES:-"nginx_static gateway_static"} ;;
  *) printf '[compare] error: MODE=%s (plain, auth, https, cache, prod, static)\n' "$MODE" >&2; exit 1 ;;
esac
BENCH_ORIGIN=${BENCH_ORIGIN:-https://galion.app}
TLS=${TLS:-0}
[[ "$TLS" == 0 || "$MODE" == prod ]] || { printf '[compare] error: TLS=1 is for MODE=prod (MODE=https is the plain route over TLS)\n' >&2; exit 1; }
# Whether the targets terminate TLS (MODE=https, or MODE=prod with TLS=1).
tls_targets() { [[ "$MODE" == https || "$TLS" == 1 ]]; }
ACCESS_LOG=${ACCESS_LOG:-0}
[[ "$MODE" == plain ]] || ACCESS_LOG=0
LOADGEN=${LOADGEN:-oha}
CLIENT_COST=${CLIENT_COST:-0}
if [[ "$CLIENT_COST" == 1 && "$LOADGEN" != oha ]]; then
  printf '[compare] note: CLIENT_COST=1 counts oha; ignored with LOADGEN=%s\n' "$LOADGEN" >&2
  CLIENT_COST=0
fi
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
ORIGIN_CPU=${ORIGIN_CPU:-$PROXY_CPU}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
if [[ "$ACCESS_LOG" == 1 && " $PROXIES " != *" gateway_log "* ]]; then
  PROXIES="$PROXIES gateway_log"
fi

log() { printf '[compare] %s\n' "$*" >&2; }
die() { printf '[compare] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes --
TMP=$(mktemp -d "${TMPDIR:-/tmp}/galion-bench.XXXXXX")
PIDS=()          # every process this script started, stopped on exit
declare -A STOP_SIG=()

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill "-${STOP_SIG[$pid]:-TERM}" "$pid" 2>/dev/null || true; fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  for d in "${CG_DIRS[@]}"; do
    for _ in $(seq 20); do rmdir "$d" 2>/dev/null && break; sleep 0.1; done
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME SIGNAL CPU CMD... : runs CMD pinned to CPU, in the background, logs in $RUN_DIR.
start() {
  local name=$1 sig=$2 cpu=$3; shift 3
  taskset -c "$cpu" "$@" >"$RUN_DIR/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  STOP_SIG[$pid]=$sig
  printf -v "PID_$name" '%s' "$pid"
}

# quota NAME PID: moves the process and its children (nginx's workers) into a
# cgroup of their own limited to PROXY_QUOTA percent of one core.
CG_DIRS=()
quota() {
  # A 10 ms period: a throttled proxy stalls for at most a few ms at a time.
  local dir p us=$((PROXY_QUOTA * 100))
  if [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
    dir=/sys/fs/cgroup/cpu/galion-bench-$$-$1
    mkdir "$dir" || die "PROXY_QUOTA: cannot create $dir"
    CG_DIRS+=("$dir")
    echo 10000 >"$dir/cpu.cfs_period_us"
    echo "$us" >"$dir/cpu.cfs_quota_us"
  elif [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    dir=/sys/fs/cgroup/galion-bench-$$-$1
    mkdir "$dir" || die "PROXY_QUOTA: cannot create $dir"
    CG_DIRS+=("$dir")
    [[ -f "$dir/cpu.max" ]] || die "PROXY_QUOTA: the cpu controller is not enabled for child cgroups (/sys/fs/cgroup/cgroup.subtree_control)"
    echo "$us 10000" >"$dir/cpu.max"
  else
    die "PROXY_QUOTA: no cgroup cpu controller (/sys/fs/cgroup/cpu or cgroup v2)"
  fi
  for p in "$2" $(pgrep -P "$2" || true); do echo "$p" >"$dir/cgroup.procs"; done
}

wait_port() { # PORT PID NAME
  local i
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { cat "$RUN_DIR/$3.log" >&2; die "$3 exited during startup"; }
    sleep 0.1
  done
  cat "$RUN_DIR/$3.log" >&2
  die "$3 is not listening on 127.0.0.1:$1 after 10 s"
}

# -------------------------------------------------------------------- tools --
need_apt=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx-light)
command -v taskset >/dev/null || need_apt+=(util-linux)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
command -v pgrep >/dev/null || need_apt+=(procps)
command -v getconf >/dev/null || need_apt+=(libc-bin)
[[ "$MODE" == plain ]] || command -v openssl >/dev/null || need_apt+=(openssl)
[[ "$LOADGEN" == wrk ]] && { command -v wrk >/dev/null || need_apt+=(wrk); }
[[ "$CLIENT_COST" == 1 ]] && { command -v valgrind >/dev/null || need_apt+=(valgrind); }
if ((${#need_apt[@]})); then
  [[ "${NO_INSTALL:-0}" == 1 ]] && die "missing: ${need_apt[*]} (NO_INSTALL=1)"
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  log "installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
if [[ "$LOADGEN" == oha ]] && ! command -v oha >/dev/null; then
  [[ "${NO_INSTALL:-0}" == 1 ]] && die "oha is missing (NO_INSTALL=1)"
  log "installing oha (cargo install oha --locked; a few minutes)"
  cargo install oha --locked
fi
NGINX=$(command -v nginx)

# oha's flags changed across versions (1.16: --output-format json, --worker-threads).
OHA_ARGS=()
if [[ "$LOADGEN" == oha ]]; then
  oha_help=$(oha --help)
  if grep -q -- '--output-format' <<<"$oha_help"; then OHA_ARGS+=(--output-format json)
  elif grep -q -- '--json' <<<"$oha_help"; then OHA_ARGS+=(--json)
  else die "this oha has neither --output-format nor --json"; fi
  grep -q -- '--worker-threads' <<<"$oha_help" && OHA_ARGS+=(--worker-threads 1)
  grep -q -- '--no-tui' <<<"$oha_help" && OHA_ARGS+=(--no-tui)
fi
# A POST body from a file: -D FILE (oha 1.x), else -d @FILE.
OHA_BODY_FILE=-D
if [[ "$LOADGEN" == oha ]] && ! grep -qE -- '(^|[ ,])-D[ ,]' <<<"$oha_help"; then OHA_BODY_FILE=-d; fi

# -------------------------------------------------------------------- build --
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries (fat LTO; slow the first time)"
  cargo build --release -p galion-gateway --bins --example bare_proxy
fi
GATEWAY=${GATEWAY_BIN:-$ROOT/target/release/galion-gateway}
BARE=$ROOT/target/release/examples/bare_proxy
[[ -x "$GATEWAY" ]] || die "build first: cargo build --release -p galion-gateway --bins --example bare_proxy"
# bare_proxy is needed only when it is measured.
[[ " $PROXIES " != *" bare"* || -x "$BARE" ]] || die "build first: cargo build --release -p galion-gateway --example bare_proxy"

# The machine must be quiet: wait for any compiler run (ours or someone else's).
compiler_running() { pgrep -x rustc >/dev/null || pgrep -x cc1 >/dev/null || pgrep -x ld >/dev/null; }
wait_quiet() {
  [[ "${WAIT_FOR_BUILDS:-1}" == 1 ]] || return 0
  local waited=0
  while compiler_running; do
    ((waited == 0)) && log "a build is running; waiting for it to finish before measuring"
    waited=1
    sleep 5
  done
}

# -------------------------------------------------------------------- ports --
declare -A USED_PORT=()
while read -r _ local _; do
  [[ "$local" == *:* ]] && USED_PORT[$((16#${local##*:}))]=1
done < <(tail -q -n +2 /proc/net/tcp /proc/net/tcp6 2>/dev/null)
read -r EPH_LOW _ </proc/sys/net/ipv4/ip_local_port_range
NEXT_PORT=$(( 20000 + RANDOM % 5000 ))
for var in P_ORIGIN P_NGINX P_NGINX_EQ P_GATEWAY P_GW_ADMIN P_GATEWAY_LOG P_GWL_ADMIN P_GATEWAY_PLAIN P_GWP_ADMIN P_BARE P_BARE_EQ P_NGINX_TLS P_GATEWAY_TLS P_GWT_ADMIN \
           P_NGINX_CACHE P_GATEWAY_CACHE P_GWC_ADMIN P_NGINX_PROD P_NGINX_STATIC P_GATEWAY_STATIC P_GWS_ADMIN; do
  # below the ephemeral range, not listening/connected now (no subshell: USED_PORT must grow)
  while [[ -n "${USED_PORT[$NEXT_PORT]:-}" ]]; do NEXT_PORT=$((NEXT_PORT + 1)); done
  ((NEXT_PORT < EPH_LOW)) || die "no free port below $EPH_LOW"
  USED_PORT[$NEXT_PORT]=1
  printf -v "$var" '%s' "$NEXT_PORT"
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN_DIR=$RESULTS_DIR/$STAMP
mkdir -p "$RUN_DIR"

# ------------------------------------------------------------------ configs --
ME_USER=$(id -un); ME_GROUP=$(id -gn)
nginx_temp_paths() { # DIR: every temp path inside DIR (Debian defaults are in /var/lib/nginx)
  local d=$1 v; v=$("$NGINX" -V 2>&1)
  mkdir -p "$d"
  echo "client_body_temp_path $d/body; proxy_temp_path $d/proxy;"
  [[ "$v" == *--without-http_fastcgi_module* ]] || echo "fastcgi_temp_path $d/fastcgi;"
  [[ "$v" == *--without-http_uwsgi_module* ]] || echo "uwsgi_temp_path $d/uwsgi;"
  [[ "$v" == *--without-http_scgi_module* ]] || echo "scgi_temp_path $d/scgi;"
}
nginx_main() { # NAME
  cat <<EOF
worker_processes 1;
user $ME_USER $ME_GROUP;
pid $TMP/$1.pid;
error_log $TMP/$1.error.log warn;
events { worker_connections 4096; }
EOF
}

# The part every measured nginx shares: temp paths, no access log, long keep-alive
# on both sides, the origin as a keep-alive upstream.
nginx_proxy_common() { # NAME
  nginx_temp_paths "$TMP/$1-tmp"
  cat <<EOF
access_log off;
keepalive_timeout 300s;
keepalive_requests 100000000;
upstream origin {
  server 127.0.0.1:$P_ORIGIN;
  keepalive 64;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
}
EOF
}
nginx_pass_origin() { echo 'proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";'; }

mkdir -p "$TMP/www" "$TMP/logs"
head -c 16384 /dev/zero | tr '\0' 'x' >"$TMP/www/16k"
# MODE=static: a front end's index (3 KiB of HTML).
{ printf '<!doctype html><title>Galion</title>\n'; head -c 4096 /dev/zero | tr '\0' 'g'; } | head -c 3072 >"$TMP/www/index.html"

nginx_main origin >"$TMP/origin.conf"
cat >>"$TMP/origin.conf" <<EOF
http {
  $(nginx_temp_paths "$TMP/origin-tmp")
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=16;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$P_ORIGIN backlog=4096;
    root $TMP/www;
    location = /small { return 200 "ok\n"; }
    location = /16k { }
$(if [[ "$MODE" == prod ]]; then
  # The gateway's revocation feed (galion-auth's /revocations): nothing revoked.
  echo "    location = /revocations { default_type application/json; return 200 '{\"revocations\":[],\"cursor\":0,\"more\":false}'; }"
fi)
  }
}
EOF

nginx_main nginx >"$TMP/nginx.conf"
cat >>"$TMP/nginx.conf" <<EOF
http {
  $(nginx_proxy_common nginx)
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      $(nginx_pass_origin)
    }
  }
}
EOF

# nginx_eq: nginx doing the per-request work the gateway does on every proxied
# request, as an nginx in front of galion would be configured: the client's Host
# kept, X-Forwarded-For/-Proto/-Host, X-Real-IP and a request id sent upstream
# (the client's, else a new one), client-sent identity headers dropped, the
# request id and the security headers (nosniff, DENY, referrer policy) on the
# response. nginx_eq_headers: those lines, for a location (they are not
# inherited into a location that sets its own; `always`: on errors too).
nginx_eq_headers() {
  cat <<EOF
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Request-Id \$galion_rid;
      proxy_set_header X-User-Id "";
      proxy_set_header X-User-Email "";
      proxy_set_header X-User-Role "";
      add_header X-Request-Id \$galion_rid always;
      add_header X-Content-Type-Options nosniff always;
      add_header X-Frame-Options DENY always;
      add_header Referrer-Policy strict-origin-when-cross-origin always;
EOF
}
nginx_main nginx_eq >"$TMP/nginx_eq.conf"
cat >>"$TMP/nginx_eq.conf" <<EOF
http {
  $(nginx_proxy_common nginx_eq)
  map \$http_x_request_id \$galion_rid { "" \$request_id; default \$http_x_request_id; }
  server {
    listen 127.0.0.1:$P_NGINX_EQ backlog=4096;
    location / {
      $(nginx_pass_origin)
$(nginx_eq_headers)
    }
  }
}
EOF

# MODE=prod: nginx doing the header work of the gateway's production API routes
# (nginx_eq's forwarded headers, request id and security headers, plus a
# limit_req keyed by address, the CORS grant for an allowed Origin, the method
# restriction, the body-size limit and the internal-path deny). It forwards the
# Authorization header but cannot verify a JWT. The rate is far above anything
# the bench reaches: no request is ever refused (the checks below and the
# warm-up make sure), so what is measured is the bookkeeping, not 429s.
PROD_RATE=1000000; PROD_BURST=1000000
nginx_prod_location() { # METHOD MAX_BODY
  cat <<EOF
      limit_except $1 { deny all; }
      client_max_body_size $2;
      limit_req zone=default burst=$PROD_BURST nodelay;
      proxy_pass http://origin/; proxy_http_version 1.1; proxy_set_header Connection "";
$(nginx_eq_headers)
      add_header Access-Control-Allow-Origin \$cors_origin always;
      add_header Access-Control-Allow-Credentials \$cors_credentials always;
      add_header Vary \$cors_vary always;$NGINX_PROD_HSTS
EOF
}
if [[ "$MODE" == prod ]]; then
  NGINX_PROD_SSL=; NGINX_PROD_CERTS=; NGINX_PROD_HSTS=
  if [[ "$TLS" == 1 ]]; then
    # The gateway's default on HTTPS.
    NGINX_PROD_HSTS=$'\n''      add_header Strict-Transport-Security "max-age=31536000" always;'
    NGINX_PROD_SSL=' ssl'
    NGINX_PROD_CERTS=$'\n'"    ssl_certificate $TMP/certs/galion.app.pem; ssl_certificate_key $TMP/certs/galion.app.key; ssl_protocols TLSv1.2 TLSv1.3;"
  fi
  nginx_main nginx_prod >"$TMP/nginx_prod.conf"
  cat >>"$TMP/nginx_prod.conf" <<EOF
http {
  $(nginx_proxy_common nginx_prod)
  map \$http_x_request_id \$galion_rid { "" \$request_id; default \$http_x_request_id; }
  # The gateway host's allow_origins; an empty value is not sent.
  map \$http_origin \$cors_origin {
    default "";
    "https://galion.app" \$http_origin;
    "~^https://[^/]+\.galion\.app\$" \$http_origin;
    "http://localhost:3000" \$http_origin;
  }
  map \$cors_origin \$cors_credentials { "" ""; default true; }
  map \$http_origin \$cors_vary { "" ""; default Origin; }
  limit_req_zone \$binary_remote_addr zone=default:10m rate=${PROD_RATE}r/s;
  limit_req_status 429;
  client_max_body_size 1m;
  server {
    listen 127.0.0.1:$P_NGINX_PROD$NGINX_PROD_SSL backlog=4096;$NGINX_PROD_CERTS
    location ~ ^(/api/v1/[^/]+)?/(metrics|health|revocations)(/|\$) { return 404; }
    location /api/v1/pub/ {
$(nginx_prod_location GET 1m)
    }
    location /api/v1/jwt/ {
$(nginx_prod_location GET 1m)
    }
    location /api/v1/post/ {
$(nginx_prod_location POST 16k)
    }
  }
}
EOF
fi

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# MODE=cache: nginx's own cache (files under $TMP, in the page cache) in front of the origin.
if [[ "$MODE" == cache ]]; then
  nginx_main nginx_cache >"$TMP/nginx_cache.conf"
  cat >>"$TMP/nginx_cache.conf" <<EOF
http {
  $(nginx_proxy_common nginx_cache)
  proxy_cache_path $TMP/nginx-cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=60m use_temp_path=off;
  server {
    listen 127.0.0.1:$P_NGINX_CACHE backlog=4096;
    location / {
      $(nginx_pass_origin)
      proxy_cache bench;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
EOF
fi

# MODE=static: nginx serving the files itself, as the seeds served the front
# ends (root + try_files), with what it has for speed (sendfile, open_file_cache)
# and the response fields the gateway adds (request id, security headers).
if [[ "$MODE" == static ]]; then
  nginx_main nginx_static >"$TMP/nginx_static.conf"
  cat >>"$TMP/nginx_static.conf" <<EOF
http {
  $(nginx_temp_paths "$TMP/nginx_static-tmp")
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  open_file_cache_min_uses 1;
  open_file_cache_errors on;
  default_type application/octet-stream;
  types { text/html html; }
  map \$http_x_request_id \$galion_rid { "" \$request_id; default \$http_x_request_id; }
  server {
    listen 127.0.0.1:$P_NGINX_STATIC backlog=4096;
    root $TMP/www;
    location / {
      try_files \$uri /index.html;
      add_header X-Request-Id \$galion_rid always;
      add_header X-Content-Type-Options nosniff always;
      add_header X-Frame-Options DENY always;
      add_header Referrer-Policy strict-origin-when-cross-origin always;
      add_header Vary Accept-Encoding;
    }
  }
}
EOF
fi

# MODE=https (and MODE=prod TLS=1): nginx terminating TLS with the gateway's dev certificate.
if tls_targets; then
  "$GATEWAY" dev-certs "$TMP/certs" >"$TMP/dev-certs.log" 2>&1 || { cat "$TMP/dev-certs.log" >&2; die "dev-certs failed"; }
  [[ -f "$TMP/certs/galion.app.pem" && -f "$TMP/certs/galion.app.key" ]] || die "dev-certs wrote no galion.app.pem/.key"
fi
if [[ "$MODE" == https ]]; then
  nginx_main nginx_tls >"$TMP/nginx_tls.conf"
  cat >>"$TMP/nginx_tls.conf" <<EOF
http {
  $(nginx_proxy_common nginx_tls)
  server {
    listen 127.0.0.1:$P_NGINX_TLS ssl backlog=4096;
    server_name localhost galion.app;
    ssl_certificate $TMP/certs/galion.app.pem;
    ssl_certificate_key $TMP/certs/galion.app.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      $(nginx_pass_origin)
    }
  }
}
EOF
fi

# MODE=auth and MODE=prod: an Ed25519 key, its JWKS as a file, one long-lived EdDSA
# token (with a jti under MODE=prod, so the revocation list is consulted), one API key.
JWT_TOKEN=; API_KEY=
if [[ "$MODE" == auth || "$MODE" == prod ]]; then
  openssl genpkey -algorithm ed25519 -out "$TMP/jwt.key" 2>/dev/null || die "openssl cannot make an Ed25519 key"
  jwk_x=$(openssl pkey -in "$TMP/jwt.key" -pubout -outform DER | tail -c 32 | b64url)
  printf '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"%s","kid":"bench","alg":"EdDSA","use":"sig"}]}\n' "$jwk_x" >"$TMP/jwks.json"
  jwt_head=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"bench"}' | b64url)
  jti=; [[ "$MODE" == prod ]] && jti=',"jti":"bench-'$(head -c 12 /dev/urandom | b64url)'"'
  jwt_body=$(printf '{"iss":"https://bench.local","aud":"bench","sub":"bench-user","role":"user","iat":%d,"exp":4102444800%s}' "$(date +%s)" "$jti" | b64url)
  printf '%s.%s' "$jwt_head" "$jwt_body" >"$TMP/jwt.msg"
  jwt_sig=$(openssl pkeyutl -sign -inkey "$TMP/jwt.key" -rawin -in "$TMP/jwt.msg" | b64url)
  JWT_TOKEN=$jwt_head.$jwt_body.$jwt_sig
  API_KEY=bench-$(head -c 24 /dev/urandom | b64url)
  API_KEY_SHA=$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)
  printf '%s\n' "$JWT_TOKEN" >"$RUN_DIR/jwt.txt"; cp "$TMP/jwks.json" "$RUN_DIR/"
fi
# MODE=prod: the POST body, 1 KiB of JSON.
if [[ "$MODE" == prod ]]; then
  shell='{"type":"bench","data":""}'; pad=$((1024 - ${#shell}))
  printf '{"type":"bench","data":"%s"}' "$(head -c "$pad" /dev/zero | tr '\0' 'x')" >"$TMP/post.json"
  [[ $(stat -c %s "$TMP/post.json") == 1024 ]] || die "post.json is not 1024 bytes"
fi

gateway_conf() { # PORT ADMIN_PORT NAME LOG(true|false) [HOST KEYS, one per line]
  local listen_key=http
  tls_targets && listen_key=https
  cat <<EOF
# Generated by bench/compare.sh (MODE=$MODE), one worker thread.
listen:
  $listen_key: 127.0.0.1:$1
  admin: 127.0.0.1:$2
server:
  threads: 1
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  pid_file: $TMP/$3.pid
  upgrade_sock: $TMP/$3.sock
EOF
  if [[ -n "${GATEWAY_SERVER_EXTRA:-}" ]]; then
    while IFS= read -r l; do printf '  %s\n' "$l"; done <<<"$GATEWAY_SERVER_EXTRA"
  fi
  cat <<EOF
access_log:
  enabled: $4
EOF
  # Not beside the config: the gateway watches that directory for edits.
  [[ "$4" == true ]] && echo "  path: $TMP/logs/$3.access.log"
  [[ "$MODE" == cache ]] && echo "cache: { max_size: 256MiB }"
  if tls_targets; then
    cat <<EOF
tls:
  certificates:
    - { hosts: [localhost, galion.app], cert: $TMP/certs/galion.app.pem, key: $TMP/certs/galion.app.key, default: true }
EOF
  fi
  if [[ "$MODE" == auth || "$MODE" == prod ]]; then
    cat <<EOF
auth:
  jwt:
    jwks_file: $TMP/jwks.json
    issuer: https://bench.local
    audience: [bench]
  api_keys:
    - { name: bench, sha256: $API_KEY_SHA, roles: [svc] }
EOF
  fi
  if [[ "$MODE" == prod ]]; then
    # As conf/gateway.yaml, but a default rate limit the bench never reaches.
    cat <<EOF
  revocation: { url: "http://127.0.0.1:$P_ORIGIN/revocations", interval: 500ms }
limits:
  max_body: 1MiB
  max_header_bytes: 32KiB
  max_connections_per_ip: 256
rate_limits:
  default: { rate: $PROD_RATE/s, burst: $PROD_BURST }
EOF
  fi
  cat <<EOF
upstreams:
  origin:
    servers: [127.0.0.1:$P_ORIGIN]
hosts:
  bench.local:
    aliases: [127.0.0.1, localhost, galion.app]
    default: true
EOF
  if [[ "$MODE" == prod ]]; then
    # The host's CORS as in conf/dev.yaml (the origins of galion.app); the
    # security headers are the host's defaults, as in conf/gateway.yaml.
    cat <<EOF
    cors:
      allow_origins: ["https://galion.app", "https://*.galion.app", "http://localhost:3000"]
      allow_credentials: true
      allow_headers: [authorization, content-type, x-request-id]
EOF
  fi
  echo "    routes:"
  if [[ "$MODE" == prod ]]; then
    cat <<EOF
      - { name: internal, regex: '^(/api/v1/[^/]+)?/(metrics|health|revocations)(/|\$)', deny: 404 }
      - { name: pub, prefix: /api/v1/pub, strip_prefix: true, methods: [GET, HEAD], upstream: origin }
      - { name: jwt, prefix: /api/v1/jwt, strip_prefix: true, methods: [GET], upstream: origin, auth: jwt }
      - { name: post, prefix: /api/v1/post, strip_prefix: true, methods: [POST], upstream: origin, auth: jwt, max_body: 16KiB }
EOF
  elif [[ "$MODE" == auth ]]; then
    cat <<EOF
      - { name: pub, prefix: /pub, strip_prefix: true, upstream: origin }
      - { name: jwt, prefix: /jwt, strip_prefix: true, upstream: origin, auth: jwt }
      - { name: key, prefix: /key, strip_prefix: true, upstream: origin, auth: api_key }
EOF
  elif [[ "$MODE" == cache ]]; then
    echo "      - { name: all, prefix: /, upstream: origin, cache: { ttl: 10m } }"
  elif [[ "$MODE" == static ]]; then
    echo "      - { name: all, prefix: /, static: { root: $TMP/www, spa_fallback: true } }"
  else
    echo "      - { name: all, prefix: /, upstream: origin }"
  fi
  # Extra keys for the host (e.g. 'security_headers: { enabled: false }'), one per line.
  local extra=${5:-${GATEWAY_HOST_EXTRA:-}}
  if [[ -n "$extra" ]]; then
    while IFS= read -r l; do printf '    %s\n' "$l"; done <<<"$extra"
  fi
}
gateway_conf "$P_GATEWAY" "$P_GW_ADMIN" gateway false >"$TMP/gateway.yaml"
gateway_conf "$P_GATEWAY_LOG" "$P_GWL_ADMIN" gateway_log true >"$TMP/gateway_log.yaml"
# The plain proxy path: no response policy on the host, so the client parses what
# nginx sends plus X-Request-Id (which the gateway always returns).
gateway_conf "$P_GATEWAY_PLAIN" "$P_GWP_ADMIN" gateway_plain false 'security_headers: { enabled: false }' >"$TMP/gateway_plain.yaml"
if [[ "$MODE" == https ]]; then
  gateway_conf "$P_GATEWAY_TLS" "$P_GWT_ADMIN" gateway_tls false >"$TMP/gateway_tls.yaml"
fi
if [[ "$MODE" == static ]]; then
  gateway_conf "$P_GATEWAY_STATIC" "$P_GWS_ADMIN" gateway_static false >"$TMP/gateway_static.yaml"
  "$NGINX" -t -q -p "$TMP" -e "$TMP/nginx-t.log" -c "$TMP/nginx_static.conf" || die "nginx_static config rejected"
  "$GATEWAY" check -c "$TMP/gateway_static.yaml" >/dev/null || die "gateway_static config rejected (above)"
fi
if [[ "$MODE" == cache ]]; then
  gateway_conf "$P_GATEWAY_CACHE" "$P_GWC_ADMIN" gateway_cache false >"$TMP/gateway_cache.yaml"
  "$NGINX" -t -q -p "$TMP" -e "$TMP/nginx-t.log" -c "$TMP/nginx_cache.conf" || die "nginx_cache config rejected"
  "$GATEWAY" check -c "$TMP/gateway_cache.yaml" >/dev/null || die "gateway_cache config rejected (above)"
fi

for f in origin.conf nginx.conf nginx_eq.conf nginx_tls.conf nginx_cache.conf nginx_prod.conf nginx_static.conf gateway.yaml gateway_log.yaml gateway_plain.yaml gateway_tls.yaml gateway_cache.yaml gateway_static.yaml; do
  [[ -f "$TMP/$f" ]] && cp "$TMP/$f" "$RUN_DIR/"
done
"$NGINX" -t -q -p "$TMP" -e "$TMP/nginx-t.log" -c "$TMP/origin.conf" || die "origin config rejected"
"$NGINX" -t -q -p "$TMP" -e "$TMP/nginx-t.log" -c "$TMP/nginx.conf" || die "nginx config rejected"
"$NGINX" -t -q -p "$TMP" -e "$TMP/nginx-t.log" -c "$TMP/nginx_eq.conf" || die "nginx_eq config rejected"
if [[ "$MODE" == prod ]]; then
  "$NGINX" -t -q -p "$TMP" -e "$TMP/nginx-t.log" -c "$TMP/nginx_prod.conf" || die "nginx_prod config rejected"
fi
if [[ "$MODE" == https ]]; then
  "$NGINX" -t -q -p "$TMP" -e "$TMP/nginx-t.log" -c "$TMP/nginx_tls.conf" || die "nginx_tls config rejected"
  "$GATEWAY" check -c "$TMP/gateway_tls.yaml" >/dev/null || die "gateway_tls config rejected (above)"
else
  "$GATEWAY" check -c "$TMP/gateway.yaml" >/dev/null || die "gateway config rejected (above)"
fi

# ------------------------------------------------------------------- start --
# A target is what the load generator hits: URL_OF (base URL), HDR_OF (request
# header lines, one per line, or empty), BODY_OF (a file sent as a POST body, or
# empty: GET), PROC_OF (the process whose CPU is counted). MODE=auth and
# MODE=prod: several routes of one gateway process.
declare -A URL_OF=() HDR_OF=() BODY_OF=() PROC_OF=()
declare -A PORT_OF=([nginx]=$P_NGINX [nginx_eq]=$P_NGINX_EQ [gateway]=$P_GATEWAY [gateway_log]=$P_GATEWAY_LOG [gateway_plain]=$P_GATEWAY_PLAIN [bare]=$P_BARE [bare_eq]=$P_BARE_EQ
                    [nginx_tls]=$P_NGINX_TLS [gateway_tls]=$P_GATEWAY_TLS
                    [nginx_cache]=$P_NGINX_CACHE [gateway_cache]=$P_GATEWAY_CACHE [nginx_prod]=$P_NGINX_PROD
                    [nginx_static]=$P_NGINX_STATIC [gateway_static]=$P_GATEWAY_STATIC)
SCHEME=http; [[ "$TLS" == 1 ]] && SCHEME=https
PROD_JWT_HDR="Authorization: Bearer $JWT_TOKEN"$'\n'"Origin: $BENCH_ORIGIN"
PROD_POST_HDR="$PROD_JWT_HDR"$'\n''Content-Type: application/json'
for p in $PROXIES; do
  case $MODE:$p in
    plain:nginx | plain:nginx_eq | plain:gateway | plain:gateway_log | plain:gateway_plain | plain:bare | plain:bare_eq)
      URL_OF[$p]=http://127.0.0.1:${PORT_OF[$p]}; PROC_OF[$p]=$p ;;
    auth:pub) URL_OF[$p]=http://127.0.0.1:$P_GATEWAY/pub; PROC_OF[$p]=gateway ;;
    auth:jwt) URL_OF[$p]=http://127.0.0.1:$P_GATEWAY/jwt; PROC_OF[$p]=gateway; HDR_OF[$p]="Authorization: Bearer $JWT_TOKEN" ;;
    auth:key) URL_OF[$p]=http://127.0.0.1:$P_GATEWAY/key; PROC_OF[$p]=gateway; HDR_OF[$p]="X-API-Key: $API_KEY" ;;
    https:nginx_tls | https:gateway_tls) URL_OF[$p]=https://127.0.0.1:${PORT_OF[$p]}; PROC_OF[$p]=$p ;;
    cache:nginx_cache | cache:gateway_cache) URL_OF[$p]=http://127.0.0.1:${PORT_OF[$p]}; PROC_OF[$p]=$p ;;
    static:nginx_static | static:gateway_static) URL_OF[$p]=http://127.0.0.1:${PORT_OF[$p]}; PROC_OF[$p]=$p ;;
    # Every GET target sends the same request (token included): the public
    # route forwards the Authorization header it does not check, so gw_jwt/gw_pub
    # is what checking the token costs, and gw_pub/nginx_prod is like for like.
    prod:gw_pub) URL_OF[$p]=$SCHEME://127.0.0.1:$P_GATEWAY/api/v1/pub; PROC_OF[$p]=gateway; HDR_OF[$p]=$PROD_JWT_HDR ;;
    prod:gw_jwt) URL_OF[$p]=$SCHEME://127.0.0.1:$P_GATEWAY/api/v1/jwt; PROC_OF[$p]=gateway; HDR_OF[$p]=$PROD_JWT_HDR ;;
    prod:gw_post) URL_OF[$p]=$SCHEME://127.0.0.1:$P_GATEWAY/api/v1/post; PROC_OF[$p]=gateway; HDR_OF[$p]=$PROD_POST_HDR; BODY_OF[$p]=$TMP/post.json ;;
    # nginx_prod gets the gateway's JWT request, token included (forwarded, not verified).
    prod:nginx_prod) URL_OF[$p]=$SCHEME://127.0.0.1:$P_NGINX_PROD/api/v1/jwt; PROC_OF[$p]=nginx_prod; HDR_OF[$p]=$PROD_JWT_HDR ;;
    prod:nginx_post) URL_OF[$p]=$SCHEME://127.0.0.1:$P_NGINX_PROD/api/v1/post; PROC_OF[$p]=nginx_prod; HDR_OF[$p]=$PROD_POST_HDR; BODY_OF[$p]=$TMP/post.json ;;
    *) die "unknown target '$p' for MODE=$MODE (plain: nginx nginx_eq gateway gateway_log gateway_plain bare bare_eq; auth: pub jwt key; https: nginx_tls gateway_tls; cache: nginx_cache gateway_cache; prod: nginx_prod gw_pub gw_jwt nginx_post gw_post)" ;;
  esac
done
PROCS=$(for p in $PROXIES; do echo "${PROC_OF[$p]}"; done | awk '!seen[$0]++' | tr '\n' ' ')
# The origin answers a POST on /small only (`return 200` reads and discards the
# body; a POST to the 16 KiB file would be a 405): POST targets skip other bodies.
skip_run() { [[ -n "${BODY_OF[$1]:-}" && "$2" != small ]]; }
for p in $PROXIES; do
  for s in $SCENARIOS; do skip_run "$p" "$s" && log "$p: POST target, /$s skipped (only /small answers a POST)"; done
done
# req_flags TARGET curl|oha: the target's request as flags: REQ_H, a `-H LINE` pair
# per header line (the same for curl, oha and wrk), and REQ_B, the method and body
# in curl's or oha's syntax (empty for a GET). wrk takes its method and body from
# its Lua script (below).
req_flags() {
  local l
  REQ_H=(); REQ_B=()
  if [[ -n "${HDR_OF[$1]:-}" ]]; then
    while IFS= read -r l; do [[ -n "$l" ]] && REQ_H+=(-H "$l"); done <<<"${HDR_OF[$1]}"
  fi
  [[ -n "${BODY_OF[$1]:-}" ]] || return 0
  case $2 in
    curl) REQ_B=(-X POST --data-binary "@${BODY_OF[$1]}" -H 'Expect:') ;;
    oha) if [[ "$OHA_BODY_FILE" == -D ]]; then REQ_B=(-m POST -D "${BODY_OF[$1]}"); else REQ_B=(-m POST -d "@${BODY_OF[$1]}"); fi ;;
  esac
}

start origin TERM "$ORIGIN_CPU" "$NGINX" -p "$TMP" -e "$TMP/origin.error.log" -c "$TMP/origin.conf" -g 'daemon off;'
# shellcheck disable=SC2154 # set by start()
wait_port "$P_ORIGIN" "$PID_origin" origin
for p in $PROCS; do
  case $p in
    nginx) start nginx TERM "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx.error.log" -c "$TMP/nginx.conf" -g 'daemon off;' ;;
    nginx_eq) start nginx_eq TERM "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx_eq.error.log" -c "$TMP/nginx_eq.conf" -g 'daemon off;' ;;
    nginx_tls) start nginx_tls TERM "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx_tls.error.log" -c "$TMP/nginx_tls.conf" -g 'daemon off;' ;;
    # Pingora: SIGINT is the fast shutdown (SIGTERM waits for the grace period).
    gateway) start gateway INT "$PROXY_CPU" env RUST_LOG=warn "$GATEWAY" -c "$TMP/gateway.yaml" ;;
    gateway_log) start gateway_log INT "$PROXY_CPU" env RUST_LOG=warn "$GATEWAY" -c "$TMP/gateway_log.yaml" ;;
    gateway_plain) start gateway_plain INT "$PROXY_CPU" env RUST_LOG=warn "$GATEWAY" -c "$TMP/gateway_plain.yaml" ;;
    gateway_tls) start gateway_tls INT "$PROXY_CPU" env RUST_LOG=warn "$GATEWAY" -c "$TMP/gateway_tls.yaml" ;;
    nginx_prod) start nginx_prod TERM "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx_prod.error.log" -c "$TMP/nginx_prod.conf" -g 'daemon off;' ;;
    nginx_cache) start nginx_cache TERM "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx_cache.error.log" -c "$TMP/nginx_cache.conf" -g 'daemon off;' ;;
    gateway_cache) start gateway_cache INT "$PROXY_CPU" env RUST_LOG=warn "$GATEWAY" -c "$TMP/gateway_cache.yaml" ;;
    nginx_static) start nginx_static TERM "$PROXY_CPU" "$NGINX" -p "$TMP" -e "$TMP/nginx_static.error.log" -c "$TMP/nginx_static.conf" -g 'daemon off;' ;;
    gateway_static) start gateway_static INT "$PROXY_CPU" env RUST_LOG=warn "$GATEWAY" -c "$TMP/gateway_static.yaml" ;;
    bare) start bare INT "$PROXY_CPU" env RUST_LOG=warn "$BARE" "127.0.0.1:$P_BARE" "127.0.0.1:$P_ORIGIN" 1 ;;
    bare_eq) start bare_eq INT "$PROXY_CPU" env RUST_LOG=warn BARE_EQ=1 "$BARE" "127.0.0.1:$P_BARE_EQ" "127.0.0.1:$P_ORIGIN" 1 ;;
  esac
  pid_var=PID_$p
  wait_port "${PORT_OF[$p]}" "${!pid_var}" "$p"
  if [[ -n "${PROXY_QUOTA:-}" ]]; then quota "$p" "${!pid_var}"; fi
done

# curl_check TARGET PATH [CURL ARGS...] -> "status size"
curl_check() {
  local p=$1 path=$2; shift 2
  req_flags "$p" curl
  curl -sS -k -o /dev/null -w '%{http_code} %{size_download}' "${REQ_H[@]}" "${REQ_B[@]}" "$@" "${URL_OF[$p]}/$path"
}
# Every target must return the origin's bodies before anything is measured.
for p in $PROXIES; do
  for s in $SCENARIOS; do
    case $s in small) want=3 ;; 16k) want=16384 ;; index.html) want=3072 ;; *) die "unknown scenario '$s' (small, 16k, index.html)" ;; esac
    skip_run "$p" "$s" && continue
    got=$(curl_check "$p" "$s")
    [[ "$got" == "200 $want" ]] || die "$p /$s answered '$got', expected '200 $want'"
  done
done
# nginx_eq must send the client what the gateway sends (same header names), or
# the comparison is not like for like; both heads are kept with the results.
# `Connection` aside: nginx always writes `keep-alive`, the gateway leaves
# HTTP/1.1 persistence implicit.
names_of() {
  req_flags "$1" curl
  curl -sSk --http1.1 -D - -o /dev/null "${REQ_H[@]}" "${REQ_B[@]}" "${URL_OF[$1]}/small" | tr -d '\r' | tee "$RUN_DIR/head-$1.txt" |
    awk -F': ' 'NR > 1 && NF > 1 && tolower($1) != "connection" {print tolower($1)}' | sort | tr '\n' ' '
}
if [[ " $PROXIES " == *" nginx_eq "* && " $PROXIES " == *" gateway "* ]]; then
  eq=$(names_of nginx_eq); gw=$(names_of gateway)
  [[ "$eq" == "$gw" ]] || die "nginx_eq answers with headers '$eq', the gateway with '$gw'"
fi
# Likewise gateway_plain must answer with nginx's header lines plus X-Request-Id only.
if [[ " $PROXIES " == *" nginx "* && " $PROXIES " == *" gateway_plain "* ]]; then
  ng=$( (names_of nginx | tr ' ' '\n'; echo x-request-id) | awk 'NF' | sort | tr '\n' ' ')
  gp=$(names_of gateway_plain)
  [[ "$ng" == "$gp" ]] || die "gateway_plain answers with headers '$gp', expected nginx's plus x-request-id: '$ng'"
fi
# MODE=auth: the protected routes must refuse a request without (or with a wrong) credential.
if [[ "$MODE" == auth ]]; then
  for path in jwt/small key/small; do
    got=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_GATEWAY/$path") || die "a check request failed (curl's error above)"
    [[ "$got" == 401 ]] || die "/$path without a credential answered $got, expected 401"
  done
  got=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${JWT_TOKEN%?}x" "http://127.0.0.1:$P_GATEWAY/jwt/small") || die "a check request failed (curl's error above)"
  [[ "$got" == 401 ]] || die "/jwt/small with a bad signature answered $got, expected 401"
  got=$(curl -sS -o /dev/null -w '%{http_code}' -H "X-API-Key: wrong" "http://127.0.0.1:$P_GATEWAY/key/small") || die "a check request failed (curl's error above)"
  [[ "$got" == 401 ]] || die "/key/small with a wrong key answered $got, expected 401"
  log "auth check: /jwt and /key answer 200 with the credential, 401 without or with a wrong one"
fi
# MODE=prod: every target answers 200 with the request id, the security headers and
# the CORS grant for BENCH_ORIGIN; the gateway's also carry RateLimit (its limiter
# ran); nginx answers with the gateway's header names but the RateLimit pair (which
# limit_req cannot write); the JWT routes refuse a missing or bad token; a refused
# Origin gets no grant; two POSTs share one connection (the body is read whole).
head_of() { # TARGET [ORIGIN]: the answer's head, CR stripped; ORIGIN: another Origin header
  local p=$1 h=() i
  req_flags "$p" curl
  for ((i = 0; i < ${#REQ_H[@]}; i += 2)); do
    [[ -n "${2:-}" && "${REQ_H[i + 1],,}" == origin:* ]] && continue
    h+=(-H "${REQ_H[i + 1]}")
  done
  [[ -n "${2:-}" ]] && h+=(-H "Origin: $2")
  curl -sSk --http1.1 -D - -o /dev/null "${h[@]}" "${REQ_B[@]}" "${URL_OF[$p]}/small" | tr -d '\r'
}
field_of() { awk -F': ' -v n="$1" 'tolower($1) == n { print substr($0, length($1) + 3); exit }'; }
if [[ "$MODE" == prod ]]; then
  for p in $PROXIES; do
    h=$(head_of "$p"); printf '%s\n' "$h" >"$RUN_DIR/head-$p.txt"
    [[ "$(head -n 1 <<<"$h")" == "HTTP/1.1 200"* ]] || die "$p: answered '$(head -n 1 <<<"$h")', expected 200"
    want="x-request-id x-content-type-options x-frame-options referrer-policy access-control-allow-origin access-control-allow-credentials vary"
    [[ "${PROC_OF[$p]}" == gateway ]] && want="$want ratelimit ratelimit-policy"
    for n in $want; do
      [[ -n "$(field_of "$n" <<<"$h")" ]] || die "$p: no $n in the answer (head in $RUN_DIR/head-$p.txt)"
    done
    [[ "$(field_of access-control-allow-origin <<<"$h")" == "$BENCH_ORIGIN" ]] || die "$p: Access-Control-Allow-Origin is not $BENCH_ORIGIN"
    [[ "$(field_of vary <<<"$h")" == *Origin* ]] || die "$p: Vary lacks Origin"
    # Refused origin: no grant.
    [[ -z "$(head_of "$p" https://evil.example | field_of access-control-allow-origin)" ]] ||
      die "$p: granted CORS to https://evil.example"
  done
  pairs=""
  [[ " $PROXIES " == *" nginx_prod "* && " $PROXIES " == *" gw_jwt "* ]] && pairs="$pairs nginx_prod:gw_jwt"
  [[ " $PROXIES " == *" nginx_prod "* && " $PROXIES " == *" gw_pub "* ]] && pairs="$pairs nginx_prod:gw_pub"
  [[ " $PROXIES " == *" nginx_post "* && " $PROXIES " == *" gw_post "* ]] && pairs="$pairs nginx_post:gw_post"
  for pair in $pairs; do
    ng=$(names_of "${pair%%:*}"); gw=$(names_of "${pair#*:}" | tr ' ' '\n' | grep -v '^ratelimit' | awk 'NF' | tr '\n' ' ')
    [[ "$ng" == "$gw" ]] || die "${pair%%:*} answers with headers '$ng', ${pair#*:} with '$gw' (RateLimit aside)"
  done
  for p in gw_jwt gw_post; do
    [[ " $PROXIES " == *" $p "* ]] || continue
    req_flags "$p" curl
    got=$(curl -sSk -o /dev/null -w '%{http_code}' -H "Origin: $BENCH_ORIGIN" "${REQ_B[@]}" "${URL_OF[$p]}/small") || die "a check request failed (curl's error above)"
    [[ "$got" == 401 ]] || die "$p without a token answered $got, expected 401"
    sig=${JWT_TOKEN##*.}; [[ "${sig:0:1}" == A ]] && bad=B || bad=A   # the signature's first 6 bits changed
    got=$(curl -sSk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${JWT_TOKEN%.*}.$bad${sig:1}" "${REQ_B[@]}" "${URL_OF[$p]}/small") || die "a check request failed (curl's error above)"
    [[ "$got" == 401 ]] || die "$p with a bad signature answered $got, expected 401"
  done
  for p in nginx_post gw_post; do
    [[ " $PROXIES " == *" $p "* ]] || continue
    req_flags "$p" curl
    got=$(curl -sSk -o /dev/null -o /dev/null -w '%{http_code}/%{num_connects} ' "${REQ_H[@]}" "${REQ_B[@]}" "${URL_OF[$p]}/small" "${URL_OF[$p]}/small") || die "a check request failed (curl's error above)"
    [[ "$got" == "200/1 200/0 " ]] || die "$p: two POSTs on one connection answered '$got', expected '200/1 200/0 '"
  done
  log "prod check: 200 with request id, security headers, CORS grant for $BENCH_ORIGIN (none for another origin), RateLimit from the gateway; JWT routes 401 without or with a bad token; POST keep-alive"
fi
# MODE=cache: after the checks above filled both caches, every request must be a hit.
if [[ "$MODE" == cache ]]; then
  for p in $PROXIES; do
    for s in $SCENARIOS; do
      st=$(curl -sS -D - -o /dev/null "${URL_OF[$p]}/$s" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache-status" {print $2}')
      [[ "$st" == HIT ]] || die "$p /$s: X-Cache-Status '$st', expected HIT"
    done
  done
  log "cache check: nginx_cache and gateway_cache answer HIT"
fi
# MODE=https (and MODE=prod TLS=1): both must serve the same certificate over TLS.
if tls_targets; then
  for p in $PROCS; do
    v=$(curl -sS --cacert "$TMP/certs/ca.pem" --resolve "localhost:${PORT_OF[$p]}:127.0.0.1" -o /dev/null \
      -w '%{http_code} %{http_version}' "https://localhost:${PORT_OF[$p]}/small") || die "$p: TLS check with the dev CA failed"
    log "$p: https://localhost (dev CA verified): $v"
  done
fi

sleep 0.5
for p in origin $PROCS; do
  pid_var=PID_$p
  kill -0 "${!pid_var}" 2>/dev/null || { tail -n 5 "$RUN_DIR/$p.log" >&2; die "$p exited after startup"; }
done

# ----------------------------------------------------------------- measure --
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # PID: utime+stime of the process (all threads) and of its children (nginx's worker)
  local total=0 p s f
  for p in "$1" $(pgrep -P "$1" || true); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }          # after "pid (comm) ": f[0] is field 3 (state)
    read -ra f <<<"$s"
    total=$((total + f[11] + f[12]))  # fields 14 utime, 15 stime
  done
  echo "$total"
}
rss_kb() { # PID: VmRSS of the process and its children
  local total=0 p v
  for p in "$1" $(pgrep -P "$1" || true); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
cpu_busy() { # CPU: "busy total steal" jiffies from /proc/stat
  # Steal (field 9: time the hypervisor ran something else) is not busy time of
  # ours; it is returned apart so a run the host disturbed can be repeated.
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6 - $9, t, $9 }' /proc/stat
}

cat >"$TMP/wrk-done.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
EOF
# wrk: one Lua script per target, its method and body (POST targets) and the
# summary line that load() reads.
for p in $PROXIES; do
  {
    if [[ -n "${BODY_OF[$p]:-}" ]]; then
      printf 'wrk.method = "POST"\n'
      printf 'local f = assert(io.open("%s", "rb")); wrk.body = f:read("*a"); f:close()\n' "${BODY_OF[$p]}"
    fi
    cat "$TMP/wrk-done.lua"
  } >"$TMP/wrk-$p.lua"
done

# load TARGET PATH DURATION OUTFILE -> prints "rps p50_ms p99_ms requests errors"
load() {
  local url=${URL_OF[$1]}/$2 dur=$3 out=$4
  req_flags "$1" oha
  if [[ "$LOADGEN" == wrk ]]; then
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$dur" "${REQ_H[@]}" -s "$TMP/wrk-$1.lua" "$url" >"$out.txt"
    tail -n 1 "$out.txt" >"$out"
    jq -r '[(.requests / (.duration_us / 1e6)), (.p50_us / 1000), (.p99_us / 1000),
            .requests, (.errors + .non2xx)] | map(tostring) | join(" ")' "$out"
  else
    local tls=()
    [[ "$url" == https:* ]] && tls=(--insecure)
    taskset -c "$LOAD_CPU" oha -z "$dur" -c "$CONNS" "${OHA_ARGS[@]}" "${tls[@]}" "${REQ_H[@]}" "${REQ_B[@]}" "$url" >"$out"
    # Requests cut off by the deadline are not errors; anything else, or a non-200, is.
    jq -r '([.statusCodeDistribution // {} | to_entries[] | .value] | add // 0) as $n
           | ([.statusCodeDistribution // {} | to_entries[] | select(.key != "200") | .value] | add // 0) as $bad
           | ([.errorDistribution // {} | to_entries[] | select(.key | test("deadline") | not) | .value] | add // 0) as $err
           | [.summary.requestsPerSec, (.latencyPercentiles.p50 * 1000), (.latencyPercentiles.p99 * 1000), $n, ($bad + $err)]
           | map(tostring) | join(" ")' "$out"
  fi
}

{
  echo "date: $STAMP"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo -) $(git diff --quiet HEAD -- gateway 2>/dev/null || echo '(gateway/ has uncommitted changes)')"
  echo "host: $(uname -srm), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "binaries: galion-gateway $(date -u -r "$GATEWAY" +%FT%TZ), bare_proxy $( [[ -x "$BARE" ]] && date -u -r "$BARE" +%FT%TZ || echo absent) (build times)"
  echo "nginx: $("$NGINX" -v 2>&1 | sed 's/.*: //')"
  if [[ $LOADGEN == oha ]]; then echo "loadgen: $(oha --version) ${OHA_ARGS[*]}"
  else echo "loadgen: $( (wrk -v 2>&1 || true) | head -1) -t1"; fi
  echo "mode=$MODE rounds=$ROUNDS duration=$DURATION conns=$CONNS proxies='$PROXIES' scenarios='$SCENARIOS' load_cpu=$LOAD_CPU proxy_cpu=$PROXY_CPU origin_cpu=$ORIGIN_CPU${PROXY_QUOTA:+ proxy_quota=$PROXY_QUOTA%}"
} >"$RUN_DIR/meta.txt"
cat "$RUN_DIR/meta.txt" >&2

wait_quiet
log "warm-up: $WARMUP per proxy and body"
for p in $PROXIES; do
  for s in $SCENARIOS; do
    skip_run "$p" "$s" && continue
    res=$(load "$p" "$s" "$WARMUP" "$TMP/warmup.json")
    # MODE=prod: a refused request (429) means the rate limit is within reach.
    [[ "$MODE" != prod || "${res##* }" == 0 ]] || die "$p /$s: ${res##* } failed or non-200 answers in the warm-up (a 429: raise PROD_RATE)"
  done
done

TSV=$RUN_DIR/runs.tsv
printf 'round\tscenario\tproxy\trps\tp50_ms\tp99_ms\trequests\terrors\twall_s\tproxy_cpu_s\treq_per_cpu_s\tproxy_cpu_pct\tload_cpu_pct\trss_mb\tloadavg\tproxy_core_other_pct\tnoisy\tload_us_per_req\tsteal_pct\tproxy_core_pct\n' >"$TSV"
read -ra PLIST <<<"$PROXIES"
NP=${#PLIST[@]}
for ((r = 1; r <= ROUNDS; r++)); do
  for s in $SCENARIOS; do
    for ((i = 0; i < NP; i++)); do
      p=${PLIST[$(((i + r - 1) % NP))]}   # rotate the order each round
      skip_run "$p" "$s" && continue
      pid_var=PID_${PROC_OF[$p]}; pid=${!pid_var}
      for ((try = 0; ; try++)); do
        kill -0 "$pid" 2>/dev/null || die "${PROC_OF[$p]} (pid $pid) died; see $RUN_DIR/${PROC_OF[$p]}.log"
        wait_quiet
        loadavg=$(cut -d' ' -f1 /proc/loadavg)
        read -r b0 t0 s0 < <(cpu_busy "$LOAD_CPU"); read -r q0 u0 v0 < <(cpu_busy "$PROXY_CPU")
        c0=$(cpu_ticks "$pid"); o0=$(cpu_ticks "$PID_origin"); w0=$(date +%s.%N)
        res=$(load "$p" "$s" "$DURATION" "$RUN_DIR/r$r-$s-$p.json")
        read -r rps p50 p99 n err <<<"$res"
        w1=$(date +%s.%N); c1=$(cpu_ticks "$pid"); o1=$(cpu_ticks "$PID_origin")
        read -r b1 t1 s1 < <(cpu_busy "$LOAD_CPU"); read -r q1 u1 v1 < <(cpu_busy "$PROXY_CPU")
        noisy=0; compiler_running && noisy=1
        rss=$(rss_kb "$pid")
        # proxy_core_other_pct: busy share of the proxy's core not used by the proxy
        # (another process, or loopback softirq work charged to no process).
        line=$(awk -v r="$r" -v s="$s" -v p="$p" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v n="$n" -v err="$err" \
          -v w0="$w0" -v w1="$w1" -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" \
          -v q0="$q0" -v q1="$q1" -v u0="$u0" -v u1="$u1" -v rss="$rss" -v la="$loadavg" -v noisy="$noisy" \
          -v noise_pct="${NOISE_PCT:-15}" -v o0="$o0" -v o1="$o1" -v shared="$([[ $ORIGIN_CPU == "$PROXY_CPU" ]] && echo 1 || echo 0)" \
          -v s0="$s0" -v s1="$s1" -v v0="$v0" -v v1="$v1" -v steal_pct="${STEAL_PCT:-3}" 'BEGIN {
            wall = w1 - w0; cpu = (c1 - c0) / hz
            # With ORIGIN_CPU=PROXY_CPU the origin is expected work on the proxy core.
            other = (u1 > u0 ? 100 * (q1 - q0) / (u1 - u0) : 0) - 100 * cpu / wall - (shared ? 100 * (o1 - o0) / hz / wall : 0)
            if (other > noise_pct) noisy = 1
            # steal_pct: the larger share of either core the hypervisor took.
            sl = (t1 > t0 ? 100 * (s1 - s0) / (t1 - t0) : 0); sp = (u1 > u0 ? 100 * (v1 - v0) / (u1 - u0) : 0)
            steal = (sl > sp ? sl : sp)
            if (steal > steal_pct) noisy = 1
            # proxy_core_pct: busy share of the proxy core, steal excluded (proxy, and the
            # origin when it shares the core).
            printf "%d\t%s\t%s\t%.0f\t%.3f\t%.3f\t%d\t%d\t%.2f\t%.2f\t%.0f\t%.0f\t%.0f\t%.1f\t%s\t%.0f\t%d\t%.2f\t%.1f\t%.0f\n",
              r, s, p, rps, p50, p99, n, err, wall, cpu, (cpu > 0 ? n / cpu : 0), 100 * cpu / wall,
              (t1 > t0 ? 100 * (b1 - b0) / (t1 - t0) : 0), rss / 1024, la, other, noisy, (n > 0 ? 1e6 * (b1 - b0) / hz / n : 0), steal,
              (u1 > u0 ? 100 * (q1 - q0) / (u1 - u0) : 0) }')
        awk -F'\t' '{ printf "[compare] round %s %-5s %-12s %7s req/s  p50 %6.2f ms  p99 %6.2f ms  %7s req/CPU-s  proxy CPU %3s%%  proxy core %3s%%  load core %3s%%%s%s\n",
          $1, $2, $3, $4, $5, $6, $11, $12, $20, $13, ($8 > 0 ? "  ERRORS " $8 : ""), ($17 ? "  NOISY (other work on proxy core " $16 "%, steal " $19 "%)" : "") }' <<<"$line" >&2
        # A run disturbed by a build, by other work on the proxy's core or by the
        # hypervisor (steal) is repeated.
        if [[ "$(cut -f17 <<<"$line")" == 0 ]] || ((try >= ${RETRIES:-2})); then break; fi
        log "repeating that run"
      done
      printf '%s\n' "$line" >>"$TSV"
    done
  done
done

# ----------------------------------------------------------------- summary --
summarize() { # TSV
  awk -F'\t' -v proxies="$PROXIES" -v scenarios="$SCENARIOS" -v rounds="$ROUNDS" -v dur="$DURATION" -v conns="$CONNS" -v quota="${PROXY_QUOTA:-}" '
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      if (n == 0) return ""
      for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    NR > 1 {
      k = $2 SUBSEP $3
      rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
      rpc[k] = rpc[k] " " $11; pcpu[k] = pcpu[k] " " $12; lcpu[k] = lcpu[k] " " $13
      rss[k] = rss[k] " " $14; errs[k] += $8; noisy += $17; lus[k] = lus[k] " " $18; core[k] = core[k] " " $20
      R[$1, $2, $3] = $4; C[$1, $2, $3] = $11; Q[$1, $2, $3] = $6; maxr = ($1 > maxr ? $1 : maxr)
    }
    # The p99 ratio swings most from round to round on a shared machine: its
    # lowest and highest per-round values are printed beside the median.
    function ratio(s, a, b,   r, q, lr, lc, lq, lo, hi, have) {
      have = 0; lr = ""; lc = ""; lq = ""; lo = ""; hi = ""
      for (r = 1; r <= maxr; r++)
        if ((r, s, a) in R && (r, s, b) in R && R[r, s, b] > 0 && C[r, s, b] > 0) {
          lr = lr " " R[r, s, a] / R[r, s, b]; lc = lc " " C[r, s, a] / C[r, s, b]; have = 1
          if (Q[r, s, b] > 0) {
            q = Q[r, s, a] / Q[r, s, b]; lq = lq " " q
            if (lo == "" || q < lo) lo = q
            if (hi == "" || q > hi) hi = q
          }
        }
      if (have) printf "  %-24s %8.2fx %10.2fx %8s %s\n", a " / " b, median(lr), median(lc), (lq == "" ? "-" : sprintf("%.2fx", median(lq))),
        (lq == "" ? "" : sprintf("(%.2f-%.2f)", lo, hi))
    }
    END {
      np = split(proxies, P, " "); ns = split(scenarios, S, " ")
      for (i = 1; i <= ns; i++) {
        s = S[i]
        printf "\n%s body (/%s), %s conns, %s per run, %s rounds, medians:\n", (s == "small" ? "small" : (s == "index.html" ? "3 KiB" : "16 KiB")), s, conns, dur, rounds
        printf "  %-12s %9s %8s %8s %11s %9s %10s %9s %12s %7s\n", "proxy", "req/s", "p50 ms", "p99 ms", "req/CPU-s", "proxy CPU", "proxy core", "load CPU", "load us/req", "RSS MB"
        for (j = 1; j <= np; j++) {
          k = s SUBSEP P[j]
          if (!(k in rps)) continue
          printf "  %-12s %9.0f %8.2f %8.2f %11.0f %8.0f%% %9.0f%% %8.0f%% %12.2f %7.1f%s\n", P[j], median(rps[k]), median(p50[k]), median(p99[k]),
            median(rpc[k]), median(pcpu[k]), median(core[k]), median(lcpu[k]), median(lus[k]), median(rss[k]), (errs[k] ? "  (" errs[k] " errors)" : "")
        }
        printf "  %-24s %9s %11s %8s %s  (median of per-round ratios)\n", "ratio", "req/s", "req/CPU-s", "p99", "(p99 range)"
        ratio(s, "gateway", "nginx"); ratio(s, "gateway", "nginx_eq"); ratio(s, "gateway", "bare"); ratio(s, "gateway", "bare_eq"); ratio(s, "bare_eq", "bare"); ratio(s, "bare", "nginx")
        ratio(s, "gateway_plain", "nginx"); ratio(s, "gateway_plain", "gateway")
        ratio(s, "gateway_log", "gateway"); ratio(s, "gateway_log", "nginx")
        ratio(s, "jwt", "pub"); ratio(s, "key", "pub"); ratio(s, "jwt", "key")
        ratio(s, "gateway_tls", "nginx_tls")
        ratio(s, "gateway_cache", "nginx_cache")
        ratio(s, "gateway_static", "nginx_static")
        ratio(s, "gw_pub", "nginx_prod"); ratio(s, "gw_jwt", "nginx_prod"); ratio(s, "gw_post", "nginx_post")
        ratio(s, "gw_jwt", "gw_pub")
        # In a closed loop the busiest core sets the pace: when the load core
        # (origin + load generator) is saturated and a proxy is not, that
        # proxy req/s and latency measure what each request costs the load core
        # (load us/req: header bytes to parse, wakeups), not the proxy.
        # A ratio is quoted only when every target in it saturated the proxy core
        # (bench/README.md); "proxy core" is the busy share of that core (the proxy,
        # and the origin when it shares the core).
        # With PROXY_QUOTA the proxy is saturated when it uses its whole quota.
        bound = ""; idle = ""
        for (j = 1; j <= np; j++) {
          k = s SUBSEP P[j]
          if (!(k in rps)) continue
          busy = (quota != "" ? 100 * median(pcpu[k]) / quota : median(core[k]))
          if (median(lcpu[k]) >= 95 && busy < 90) bound = bound " " P[j]
          else if (busy < 95) idle = idle " " P[j]
        }
        if (bound != "")
          printf "  note: load core saturated, proxy core not, for%s: their req/s and p99 are bounded by\n        the load core (load us/req); do not quote ratios with them (LOADGEN=wrk costs the load core less)\n", bound
        if (idle != "")
          printf "  note: %s for%s: not saturated; do not quote ratios with them\n", (quota != "" ? "proxy CPU below 95% of its quota" : "proxy core below 95% busy"), idle
      }
      if (noisy) printf "\nwarning: %d run(s) still disturbed after retries (column noisy in runs.tsv)\n", noisy
    }' "$1"
}
summarize "$TSV" | tee "$RUN_DIR/summary.txt"

# ------------------------------------------------------------- client cost --
# In the timed runs the load core is often the bottleneck, so what a proxy's
# answers cost the client (header lines to parse, bytes) shows in its req/s.
# callgrind counts that cost exactly, whatever the machine's noise.
client_ir() { # TARGET PATH N -> instructions oha executed
  local url=${URL_OF[$1]}/$2 tls=() out=$TMP/cg.out
  req_flags "$1" oha
  [[ "$url" == https:* ]] && tls=(--insecure)
  taskset -c "$LOAD_CPU" valgrind --tool=callgrind --callgrind-out-file="$out" \
    oha -n "$3" -c "$CONNS" "${OHA_ARGS[@]}" "${tls[@]}" "${REQ_H[@]}" "${REQ_B[@]}" "$url" >"$TMP/cg.json" 2>"$TMP/cg.err" ||
    { tail -n 5 "$TMP/cg.err" >&2; die "oha under callgrind failed for $1 /$2"; }
  [[ "$(jq -r '.statusCodeDistribution["200"] // 0' "$TMP/cg.json")" == "$3" ]] || die "$1 /$2: not all $3 answers were 200 under callgrind"
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$TMP/cg.err"
}
if [[ "$CLIENT_COST" == 1 ]]; then
  CLIENT_N=${CLIENT_N:-20000}; n0=$((CLIENT_N / 5))
  {
    printf '\nclient cost: instructions oha executes per request (callgrind, marginal over %d requests)\n' "$((CLIENT_N - n0))"
    for s in $SCENARIOS; do
      base=
      for p in $PROXIES; do
        skip_run "$p" "$s" && continue
        hi=$(client_ir "$p" "$s" "$CLIENT_N"); lo=$(client_ir "$p" "$s" "$n0")
        per=$(( (hi - lo) / (CLIENT_N - n0) ))
        [[ -z "$base" ]] && base=$per
        awk -v s="$s" -v p="$p" -v per="$per" -v base="$base" -v b="${PLIST[0]}" \
          'BEGIN { printf "  %-5s %-12s %8d instr/req  %5.2fx %s\n", s, p, per, per / base, b }'
      done
    done
  } | tee -a "$RUN_DIR/summary.txt"
fi
printf '\nraw results: %s\n' "${RUN_DIR#"$ROOT"/}"
