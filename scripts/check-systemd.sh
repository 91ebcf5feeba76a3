#!/usr/bin/env bash
# Checks the shipped systemd files without touching the system: the units with
# `systemd-analyze verify` (ExecStart paths pointed at this build's binaries),
# the users and the shared database directory by applying galion.sysusers.conf
# and galion.tmpfiles.conf to an empty root in a temporary directory.
# Usage: scripts/check-systemd.sh BIN_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR="$(cd "${1:?usage: $0 BIN_DIR}" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/units"
for unit in systemd/*.service; do
    sed "s#/usr/local/bin/#$BIN_DIR/#g" "$unit" >"$WORK/units/$(basename "$unit")"
done
# verify prints problems (unknown keys, bad values, missing binaries) and
# exits non-zero on the ones it calls errors; both fail the check.
out="$(systemd-analyze verify "$WORK"/units/*.service 2>&1)" || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
    echo "$out"
    exit 1
fi

root="$WORK/root"
mkdir -p "$root/etc" "$root/var/lib"
touch "$root/etc/passwd" "$root/etc/group" "$root/etc/shadow" "$root/etc/gshadow"
out="$(systemd-sysusers --root="$root" "$PWD/systemd/galion.sysusers.conf" 2>&1)" || { echo "$out"; exit 1; }
systemd-tmpfiles --root="$root" --create "$PWD/systemd/galion.tmpfiles.conf"
fail() { echo "systemd check: $*" >&2; exit 1; }
for u in galion-gateway galion-auth galion-users galion-analytics; do
    grep -q "^$u:" "$root/etc/passwd" || fail "no user $u"
    grep -q "^User=$u$" "systemd/$u.service" || fail "$u.service does not run as $u"
done
members="$(awk -F: '$1 == "galion-accounts" { print $4 }' "$root/etc/group")"
[ "$members" = "galion-auth,galion-users" ] || fail "galion-accounts members: '$members'"
# The internet-facing gateway reaches no database and no signing key.
! grep -q "galion-gateway" <<<"$members" || fail "the gateway is in galion-accounts"
grep -q "SupplementaryGroups" systemd/galion-gateway.service && fail "the gateway has supplementary groups"
# Numeric: the scratch root's group ids mean nothing in this host's /etc/group.
mode="$(stat -c '%a %g' "$root/var/lib/galion-accounts")"
gid="$(awk -F: '$1 == "galion-accounts" { print $3 }' "$root/etc/group")"
[ "$mode" = "2770 $gid" ] || fail "accounts dir: $mode, expected 2770 and group $gid"
echo "systemd units, users and directories OK"
