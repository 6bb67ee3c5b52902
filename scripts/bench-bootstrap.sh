#!/usr/bin/env bash
# Benchmark (part of scripts/bench.sh, runnable alone):
# Native bootstrap vs the Ansible playbook, side by side on fresh isolated test hosts (the
# tests' debootstrap rootfs in a network namespace, registries through tinyproxy), to the same
# end state (tests/test_bootstrap.rs compares the two hosts with one state probe), then again
# on the same hosts with nothing to change. Needs root, debootstrap, tinyproxy and
# target/ansible-venv (scripts/test.sh makes all of them).
# Usage: scripts/bench-bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet
CWO="$PWD/target/release/cwo"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; return 1; }; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
ratio() { awk "BEGIN {printf \"%.1f\", $1 / ($2 > 0 ? $2 : 1)}"; }
ANSIBLE="$PWD/target/ansible-venv/bin/ansible-playbook"
if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null || ! command -v tinyproxy >/dev/null || [ ! -x "$ANSIBLE" ]; then
  echo "bootstrap: skipped (needs root, debootstrap, tinyproxy and target/ansible-venv; run scripts/test.sh once)"
  exit 0
fi
ROOTFS="$PWD/target/testhost/bookworm-3"
mkdir -p "$PWD/target/testhost"
flock "$PWD/target/testhost/.lock" sh tests/host/build-rootfs.sh "$ROOTFS"
HA="$WORK/host-native"; HB="$WORK/host-ansible"
mkdir -p "$HA" "$HB"
trap 'sh tests/host/testhost.sh down "$HA"; sh tests/host/testhost.sh down "$HB"; rm -rf "$WORK"' EXIT
sh tests/host/testhost.sh up "$HA" "$ROOTFS"
sh tests/host/testhost.sh up "$HB" "$ROOTFS"
hostenv() { sed -n "s/^$2=//p" "$1/env" | tr -d "'"; }
PROXY=$(hostenv "$HA" PROXY)
mkdir -p "$WORK/bs"
printf 'state_dir = "%s"\n[bootstrap]\nswap = "1G"\nproxy = "%s"\n' "$WORK/bs-state" "$PROXY" > "$WORK/bs/cwo.toml"
"$CWO" -C "$WORK/bs" bootstrap script --login-user admin > "$WORK/bootstrap.sh"
known() { echo "$(hostenv "$1" IP) $(hostenv "$1" HOSTKEY)" > "$1/known_hosts"; }
known "$HA"; known "$HB"
native() {
  ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o UserKnownHostsFile="$HA/known_hosts" \
    -i "$(hostenv "$HA" KEY)" "admin@$(hostenv "$HA" IP)" 'sudo sh -s' < "$WORK/bootstrap.sh" > "$WORK/native.out"
}
# The same inventory and variables cwo writes for bootstrap.method = "ansible".
PROXY_B=$(hostenv "$HB" PROXY)
cat > "$WORK/inventory.json" <<INV
{"all":{"hosts":{"bench":{"ansible_host":"$(hostenv "$HB" IP)","ansible_user":"admin",
 "ansible_ssh_private_key_file":"$(hostenv "$HB" KEY)",
 "ansible_ssh_common_args":"-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile=$HB/known_hosts -o StrictHostKeyChecking=yes"}}}}
INV
printf '{"cwo_swap_mb":1024,"cwo_proxy":"%s","cwo_login_user":"admin"}\n' "$PROXY_B" > "$WORK/vars.json"
playbook() {
  ANSIBLE_CONFIG="$PWD/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1 "$ANSIBLE" -i "$WORK/inventory.json" \
    -e "@$WORK/vars.json" ansible/provision.yml > "$WORK/ansible.out"
}
nf=$(ms native); af=$(ms playbook)
sleep 1   # the fresh run reloaded sshd on both hosts
nr=$(ms native); ar=$(ms playbook)
changed_native=$(grep -c '	changed	' "$WORK/native.out" || true)
changed_ansible=$(sed -n 's/.*changed=\([0-9]*\).*/\1/p' "$WORK/ansible.out")
echo "bootstrap, fresh host:   native ${nf} ms, ansible ${af} ms  (native is $(ratio "$af" "$nf")x faster; goal >= 4x)"
echo "bootstrap, re-run:       native ${nr} ms, ansible ${ar} ms  (native is $(ratio "$ar" "$nr")x faster; goal >= 20x; changed on re-run: native ${changed_native}, ansible ${changed_ansible})"
echo "  (fresh: both install the same packages with dpkg and download opencode through the proxy; dpkg's own time is the floor)"
