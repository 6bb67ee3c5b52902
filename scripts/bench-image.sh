#!/usr/bin/env bash
# Benchmark (part of scripts/bench.sh, runnable alone):
# A worker from a baked image (`cwo image build`) against a fresh one, on isolated test hosts (the
# tests' debootstrap rootfs in a network namespace, registries through tinyproxy): the time from
# "host up" (sshd answers) to "the agent can start" (the bootstrap is done and a login as the
# work user runs `command -v opencode`), with
#   (a) the full native bootstrap on a fresh host, then
#   (b) the reuse check (`sh script reuse`) on a host started from a copy of host (a) baked
#       afterwards (`sh script bake`, untimed: the image is built once, workers boot many times).
# Then the same with bootstrap.packages extended by two packages, on two new hosts: the full
# bootstrap grows with the package manager's work, the check from the image should stay flat.
# The full bootstrap downloads every package through the proxy (and refreshes the package lists
# first when the rootfs's are older than a day), so its time follows the network's; the check
# from the image makes no download at all. Both pay the same two SSH logins.
# A copy is the baked host's overlay upper dir as a lower layer (tests/host/testhost.sh up DIR
# ROOTFS BASE), with its own host key and the admin's key, as a VM booted from an image.
# Needs root, debootstrap and tinyproxy (scripts/test.sh installs them).
# Usage: scripts/bench-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null || ! command -v tinyproxy >/dev/null; then
  echo "image: skipped (needs root, debootstrap and tinyproxy; run scripts/test.sh once)"
  exit 0
fi
cargo build --locked --release --quiet
CWO="$PWD/target/release/cwo"
WORK="$(mktemp -d)"
HOSTS=""
trap 'for h in $HOSTS; do sh tests/host/testhost.sh down "$h"; done; rm -rf "$WORK"' EXIT
ROOTFS="$PWD/target/testhost/bookworm-3"
mkdir -p "$PWD/target/testhost"
flock "$PWD/target/testhost/.lock" sh tests/host/build-rootfs.sh "$ROOTFS"
EXTRA='"jq", "gcc"'

now() { date +%s%N; }
ms_since() { echo $(( ($(now) - $1) / 1000000 )); }
ratio() { awk "BEGIN {printf \"%.1f\", $1 / ($2 > 0 ? $2 : 1)}"; }
hostenv() { sed -n "s/^$2=//p" "$1/env" | tr -d "'"; }
# up NAME [BASE]: starts a host (from BASE's files when given); prints nothing, records its time.
up() {
  mkdir -p "$WORK/$1"
  HOSTS="$HOSTS $WORK/$1"
  local t0; t0=$(now)
  sh tests/host/testhost.sh up "$WORK/$1" "$ROOTFS" ${2:+"$WORK/$2"}
  echo "$(ms_since "$t0")" > "$WORK/$1.up_ms"
  echo "$(hostenv "$WORK/$1" IP) $(hostenv "$WORK/$1" HOSTKEY)" > "$WORK/$1/known_hosts"
}
on() { # on HOST USER COMMAND...: OpenSSH with the host's key pinned
  local h="$WORK/$1" user=$2; shift 2
  ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o UserKnownHostsFile="$h/known_hosts" \
    -o StrictHostKeyChecking=yes -i "$(hostenv "$h" KEY)" "$user@$(hostenv "$h" IP)" "$@"
}
# script HOST PACKAGES: what `cwo bootstrap script --login-user admin` prints for that host.
script() {
  mkdir -p "$WORK/cfg-$1"
  printf 'state_dir = "%s"\n[bootstrap]\nswap = "1G"\nproxy = "%s"\npackages = [%s]\n' \
    "$WORK/state" "$(hostenv "$WORK/$1" PROXY)" "$2" > "$WORK/cfg-$1/cwo.toml"
  "$CWO" -C "$WORK/cfg-$1" bootstrap script --login-user admin > "$WORK/$1.sh"
}
# ready HOST SCRIPT MODE: the bootstrap in MODE, then the work user's login finds opencode (sshd
# may be re-reading its settings for a moment after a bootstrap changed them). Prints the time.
ready() {
  local t0 n=0; t0=$(now)
  on "$1" admin "sudo sh -s $3" < "$WORK/$2.sh" > "$WORK/$1.$3.out" 2> "$WORK/$1.$3.err" \
    || { cat "$WORK/$1.$3.out" "$WORK/$1.$3.err" >&2; return 1; }
  ms_since "$t0" > "$WORK/$1.$3.script_ms"
  until on "$1" cwo 'command -v opencode' > "$WORK/$1.login" 2> "$WORK/$1.login.err"; do
    n=$((n + 1))
    grep -q 'Connection refused' "$WORK/$1.login.err" && [ "$n" -lt 100 ] \
      || { cat "$WORK/$1.login.err" >&2; return 1; }
    sleep 0.05
  done
  [ "$(cat "$WORK/$1.login")" = /usr/local/bin/opencode ] || { echo "$1: no opencode" >&2; return 1; }
  ms_since "$t0"
}
step_ms() { awk -F'\t' -v s="$2" '$1 == "cwo-step" && $2 == s {print $4}' "$WORK/$1"; }
changed() { awk -F'\t' '$1 == "cwo-step" && $3 == "changed" {printf "%s ", $2}' "$WORK/$1"; }

# pair FRESH COPY PACKAGES: (a) on FRESH, bake FRESH, stop it, (b) on COPY started from it.
pair() {
  up "$1"
  script "$1" "$3"
  full=$(ready "$1" "$1" run)
  on "$1" admin "sudo sh -s bake" < "$WORK/$1.sh" > "$WORK/$1.bake.out"
  grep -q "^cwo-step	clean	changed	" "$WORK/$1.bake.out" || { echo "$1: the bake did not clean" >&2; cat "$WORK/$1.bake.out" >&2; return 1; }
  sh tests/host/testhost.sh down "$WORK/$1"
  up "$2" "$1"
  # The copy runs the script it was baked with (its hash is the image's marker); that script's
  # proxy is the other host's, out of this one's reach: the check must need no network.
  reuse=$(ready "$2" "$1" reuse)
  grep -q "^cwo-reused	" "$WORK/$2.reuse.out" || { echo "$2: the check did not find the image's marker" >&2; cat "$WORK/$2.reuse.out" >&2; return 1; }
  local t0; t0=$(now)
  on "$2" admin true
  login=$(ms_since "$t0")
  sh tests/host/testhost.sh down "$WORK/$2"
}

pair fresh copy ""
full_ms=$full; reuse_ms=$reuse; login_ms=$login
pair fresh-x copy-x "$EXTRA"
full_x_ms=$full; reuse_x_ms=$reuse

steps() { awk -F'\t' '$1 == "cwo-step" {printf "%s%s %s ms", n++ ? ", " : "", $2, $4}' "$WORK/$1"; }
signed() { if [ "$1" -ge 0 ]; then echo "+$1"; else echo "$1"; fi; }
extra=${EXTRA//\"/}
echo "image: host up -> agent can start (bootstrap over SSH, then a login as the work user finds opencode); fresh host with the full bootstrap vs a copy of a baked host with the check:"
echo "  base packages: fresh ${full_ms} ms, from the image ${reuse_ms} ms  (the image is $(ratio "$full_ms" "$reuse_ms")x faster; goal >= 10x)"
echo "  + ${extra}:    fresh ${full_x_ms} ms ($(signed $((full_x_ms - full_ms))) ms), from the image ${reuse_x_ms} ms ($(signed $((reuse_x_ms - reuse_ms))) ms)  (the image is $(ratio "$full_x_ms" "$reuse_x_ms")x faster; packages step: fresh $(step_ms fresh-x.run.out packages) ms vs $(step_ms fresh.run.out packages) ms, from the image $(step_ms copy-x.reuse.out packages) ms vs $(step_ms copy.reuse.out packages) ms)"
echo "  from the image: the script over SSH $(cat "$WORK/copy.reuse.script_ms") ms (steps: $(steps copy.reuse.out)); one SSH login alone here: ${login_ms} ms"
echo "  changed from the image: $(changed copy.reuse.out)(swap: a copy's /swapfile is a new file on test hosts; on GCE it is inside the image)"
echo "  host up (not counted): fresh $(cat "$WORK/fresh.up_ms") ms, copy $(cat "$WORK/copy.up_ms") ms"
