#!/usr/bin/env bash
# Runs the k6 scenarios against a running gateway (./dev.sh by default) and
# prints, per scenario, requests/s, p99 and the share of failed requests.
#
#   ./dev.sh &                      # in another terminal
#   bench/load.sh                   # api, spike, stress (in that order)
#   bench/load.sh api               # one scenario
#   BASE_URL=https://staging.galion.app HOST=galion.app SPREAD=0 bench/load.sh api
#
# Each scenario's own variables pass through (VUS, DURATION, MAX_VUS, ...:
# see the header of bench/k6/<name>.js). k6 comes from PATH, else it is
# installed under target/tools/k6 (scripts/prereqs.sh). Against production,
# list the load generator in `rate_limits.exempt` and set SPREAD=0.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
ensure_k6
command -v jq >/dev/null || apt_install jq
export BASE_URL="${BASE_URL:-http://127.0.0.1:8080}"
export HOST="${HOST:-galion.app}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
status=0
printf '%-8s %12s %10s %10s %8s\n' scenario "req/s" "p99 ms" "failed" result
for name in "${@:-api spike stress}"; do
    for s in $name; do
        if "$GALION_K6" run --quiet --summary-export "$OUT/$s.json" "bench/k6/$s.js" >"$OUT/$s.log" 2>&1; then
            result=ok
        else
            result=FAILED
            status=1
        fi
        if [ -s "$OUT/$s.json" ]; then
            jq -r --arg s "$s" --arg r "$result" '[$s,
                (.metrics.http_reqs.rate // 0 | floor),
                (.metrics.http_req_duration["p(99)"] // 0 | . * 10 | round / 10),
                ((.metrics.http_req_failed.value // 0) * 100 | . * 100 | round / 100 | tostring + "%"),
                $r] | @tsv' "$OUT/$s.json" | awk -F'\t' '{ printf "%-8s %12s %10s %10s %8s\n", $1, $2, $3, $4, $5 }'
        else
            printf '%-8s %12s %10s %10s %8s\n' "$s" - - - "$result"
            tail -20 "$OUT/$s.log"
        fi
    done
done
exit "$status"
