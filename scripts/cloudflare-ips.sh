#!/usr/bin/env bash
# Prints Cloudflare's current edge ranges as a `trusted_proxies.cloudflare:` list
# for the gateway config, from https://www.cloudflare.com/ips-v4 and ips-v6.
# The gateway compiles in the list of its release (`cloudflare: builtin`); use
# this when Cloudflare publishes a change before the next release:
#
#   scripts/cloudflare-ips.sh > /etc/galion/cloudflare.yaml   # review, then paste
#   galion-gateway check -c /etc/galion/gateway.yaml && systemctl reload galion-gateway
set -euo pipefail
fetch() { curl -fsS --max-time 10 "https://www.cloudflare.com/$1"; }
v4="$(fetch ips-v4)"
v6="$(fetch ips-v6)"
echo "  cloudflare:"
for net in $v4 $v6; do
    # Only CIDRs: a broken download must not become a trusted range.
    if [[ "$net" =~ ^[0-9a-fA-F:.]+/[0-9]{1,3}$ ]]; then
        echo "    - $net"
    else
        echo "unexpected entry: $net" >&2
        exit 1
    fi
done
