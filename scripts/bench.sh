#!/usr/bin/env bash
# Benchmarks, measured side by side in one run (figures and ratios, never pass/fail timings):
#  1. per-task overhead of the loop outside the agent (claim -> bundle -> clone on the worker ->
#     fetch back -> push -> journal), with a no-op agent over N tasks, against the same agent run
#     N times directly;
#  2. peak RSS of the controller during `cwo run`;
#  9. the repository's workflow (.cwo/workflow.toml), local provider, one worker
#     (scripts/bench-workflow.sh, runnable alone): the setup cache (cache_key vs none: wall time,
#     setup runs, the cache tar's size), the cost of reading usage from 20,000 opencode step_finish
#     lines vs plain lines (wall time, controller peak RSS), and what a verify command adds per task.
#  3. 100 small commands over one cwo SSH connection vs 100 runs of the OpenSSH client, against
#     the same loopback sshd (needs openssh-server; skipped with a message without it);
#  4. cwo's own time in `cwo up` with provider = "gcp" against the fake Compute API (zero
#     latency) and the loopback sshd, and `cwo status` / `cwo reap --dry-run` over 1,000 managed
#     instances in the fake.
#  7. fleets: the same queue on 1, 4 and 8 workers, locally and on the fake Compute API (speed-up,
#     agent-busy / billed time, the controller's RSS, `cwo status` with 8 live);
#  8. a fleet's VMs on GCP (examples/fleet_create_bench.rs): k = 1, 4, 8 VMs through one
#     regionInstances.bulkInsert + a setMetadata per VM vs k concurrent single inserts, until
#     every VM is RUNNING, on the fake Compute API with 300 ms operations: wall time and API
#     requests, also with room for only 2 VMs in the first zone.
#  6. GitHub against the fake GitHub (examples/github_bench.rs): the pull-request step's per-task
#     overhead and requests, and an idle `cwo run`'s requests and rate-limit points per hour
#     against 100 open labelled issues (goal: 0 points, every idle poll answered 304).
#  5. the native bootstrap against the Ansible playbook on fresh isolated test hosts, then again
#     on the same hosts with nothing to change (needs root, debootstrap, tinyproxy and the
#     ansible-core venv that scripts/test.sh makes).
# 10. a worker from a baked image against a fresh one (scripts/bench-image.sh, runnable alone): host
#     up -> agent can start, the full native bootstrap on a fresh test host vs the reuse check on
#     a copy of a baked one, with and without two extra packages (needs root, debootstrap, tinyproxy).
# 11. `cwo serve` on the local provider (scripts/bench-serve.sh, runnable alone): a signed webhook
#     delivery to the task's claim with poll_interval = "1h" (against what polling waits), the
#     server's added peak RSS over `cwo run` on an idle project, and GET /api/v1/state with 8 live
#     workers and 1,000 tasks (goal <= 50 ms) against `cwo status --format json`.
# Usage: scripts/bench.sh [TASKS]   (default 20; section 9 takes at most 12: scripts/bench-workflow.sh
# [TASKS] runs it alone)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20}"
cargo build --locked --release --quiet
cargo build --locked --release --quiet --example ssh_bench --example fake_gce --example github_bench --example fleet_create_bench
CWO="$PWD/target/release/cwo"
SSH_BENCH="$PWD/target/release/examples/ssh_bench"
FAKE_GCE="$PWD/target/release/examples/fake_gce"
GITHUB_BENCH="$PWD/target/release/examples/github_bench"
FLEET_BENCH="$PWD/target/release/examples/fleet_create_bench"
WORK="$(mktemp -d)"
SSHD_PID=""; FAKE_PIDS=""
trap '[ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null; for p in $FAKE_PIDS; do kill "$p" 2>/dev/null; done; rm -rf "$WORK"' EXIT
# The toolchain stays where it is when HOME moves (bench-bootstrap.sh runs cargo again).
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export HOME="$WORK/home" CWO_NO_PROGRESS=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
mkdir -p "$HOME" "$WORK/origin.git" "$WORK/proj"
git -C "$WORK/origin.git" init -q --bare
git -C "$WORK/proj" init -q -b main
# A project of realistic size: 200 files, a few commits.
for i in $(seq 1 200); do printf 'line %s\n' $(seq 1 50) > "$WORK/proj/file$i.txt"; done
printf '.juggle/\ncwo.toml\n' > "$WORK/proj/.gitignore"
git -C "$WORK/proj" add -A && git -C "$WORK/proj" commit -qm init
git -C "$WORK/proj" remote add origin "$WORK/origin.git"
cat > "$WORK/noop-agent.sh" <<'AGENT'
git commit -q --allow-empty -m "no-op"
AGENT
cat > "$WORK/proj/cwo.toml" <<TOML
poll_interval = "100ms"
state_dir = "$WORK/state"
[agent]
command = ["sh", "$WORK/noop-agent.sh"]
TOML
for i in $(seq 1 "$N"); do "$CWO" -C "$WORK/proj" -q task add "task $i" >/dev/null; done

# The agent alone, N times, in a clone (what the loop cannot avoid).
git clone -q "$WORK/proj" "$WORK/direct"
t0=$(date +%s%N)
for i in $(seq 1 "$N"); do (cd "$WORK/direct" && sh "$WORK/noop-agent.sh"); done
t1=$(date +%s%N)
direct_ms=$(( (t1 - t0) / 1000000 ))

# The loop, with the controller's own peak RSS sampled from /proc.
t0=$(date +%s%N)
"$CWO" -C "$WORK/proj" run --once 2>"$WORK/run.log" &
pid=$!
peak_kb=0
while kill -0 "$pid" 2>/dev/null; do
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$hwm" ] && [ "$hwm" -gt "$peak_kb" ] && peak_kb=$hwm
  sleep 0.02
done
wait "$pid"
t1=$(date +%s%N)
loop_ms=$(( (t1 - t0) / 1000000 ))
done_count=$(git -C "$WORK/origin.git" for-each-ref refs/heads/cwo | wc -l)
[ "$done_count" -eq "$N" ] || { echo "only $done_count of $N branches were pushed" >&2; cat "$WORK/run.log" >&2; exit 1; }

overhead_ms=$(( (loop_ms - direct_ms) / N ))
echo "tasks:                       $N (all pushed)"
echo "agent alone, $N runs:        ${direct_ms} ms"
echo "cwo run --once, $N tasks:    ${loop_ms} ms  ($(awk "BEGIN {printf \"%.1f\", $loop_ms / ($direct_ms > 0 ? $direct_ms : 1)}")x the agent alone)"
echo "per-task overhead:           ${overhead_ms} ms   (goal <= 1000 ms: $(awk "BEGIN {print ($overhead_ms <= 1000) ? \"met\" : \"NOT met\"}"))"
echo "controller peak RSS:         $((peak_kb / 1024)).$(( (peak_kb % 1024) * 10 / 1024 )) MB   (goal <= 25 MB: $(awk "BEGIN {print ($peak_kb <= 25600) ? \"met\" : \"NOT met\"}"))"
echo "cwo's own summary:           $(tail -n 1 "$WORK/run.log")"

# 9. The repository's workflow: setup cache, reading usage from the agent's output, verify.
scripts/bench-workflow.sh "$N"

# 3. SSH: one cwo connection vs the OpenSSH client, same sshd, same commands.
if [ ! -x /usr/sbin/sshd ]; then
  echo "ssh commands:                skipped (no /usr/sbin/sshd; scripts/test.sh installs openssh-server)"
  exit 0
fi
[ "$(id -u)" = 0 ] && mkdir -p /run/sshd
S="$WORK/sshd"; mkdir -p "$S"
ssh-keygen -q -t ed25519 -N "" -f "$S/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$S/client_key"
cp "$S/client_key.pub" "$S/authorized_keys"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ME=$(id -un)
cat > "$S/sshd_config" <<CONF
Port $PORT
ListenAddress 127.0.0.1
HostKey $S/host_key
PidFile $S/sshd.pid
AuthorizedKeysFile $S/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
AllowUsers $ME
LogLevel ERROR
MaxStartups 200
CONF
/usr/sbin/sshd -D -e -f "$S/sshd_config" 2>"$S/log" &
SSHD_PID=$!
for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
M=100
cwo_ms=$("$SSH_BENCH" "$ME@127.0.0.1:$PORT" "$S/client_key" "$M")
t0=$(date +%s%N)
for i in $(seq 1 "$M"); do
  ssh -F /dev/null -i "$S/client_key" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$ME@127.0.0.1" echo "$i" >/dev/null
done
t1=$(date +%s%N)
openssh_ms=$(( (t1 - t0) / 1000000 ))
# OpenSSH with connection sharing (ControlMaster): the same one-connection design, for reference.
MUX="-o ControlMaster=auto -o ControlPersist=30 -o ControlPath=$S/mux"
t0=$(date +%s%N)
for i in $(seq 1 "$M"); do
  ssh -F /dev/null -i "$S/client_key" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR $MUX "$ME@127.0.0.1" echo "$i" >/dev/null
done
t1=$(date +%s%N)
mux_ms=$(( (t1 - t0) / 1000000 ))
ssh -F /dev/null -o ControlPath="$S/mux" -O exit "$ME@127.0.0.1" 2>/dev/null || true
ratio() { awk "BEGIN {printf \"%.1f\", $1 / ($2 > 0 ? $2 : 1)}"; }
echo "ssh, $M commands, one cwo connection:     ${cwo_ms} ms"
echo "ssh, $M runs of the OpenSSH client:       ${openssh_ms} ms  (cwo is $(ratio "$openssh_ms" "$cwo_ms")x faster)"
echo "ssh, $M commands, OpenSSH ControlMaster:  ${mux_ms} ms  (ratio to cwo $(ratio "$mux_ms" "$cwo_ms"))"
echo "  (each command still starts a login shell on the host; its startup files dominate the per-command time)"

# 4. GCP against the fake Compute API: cwo's own time in `up`, and listing 1,000 VMs.
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>"$WORK/last.err" || { cat "$WORK/last.err" >&2; return 1; }; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
start_fake() { # args: fake arguments; sets FAKE_URL
  "$FAKE_GCE" "$@" > "$WORK/fake.url" &
  FAKE_PIDS="$FAKE_PIDS $!"
  for _ in $(seq 1 100); do [ -s "$WORK/fake.url" ] && break; sleep 0.05; done
  FAKE_URL=$(head -n1 "$WORK/fake.url"); : > "$WORK/fake.url"
}
gcp_project() { # args: dir url
  mkdir -p "$1"; git -C "$1" init -q -b main; git -C "$1" commit -q --allow-empty -m init
  cat > "$1/cwo.toml" <<TOML
provider = "gcp"
state_dir = "$1.state"
[gcp]
project = "bench"
endpoint = "$2"
credentials = "anonymous"
ssh_source = "127.0.0.1/32"
ssh_user = "$ME"
ssh_port = $PORT
[ssh]
workspace = "$1.ws"
# The "VM" is this machine's loopback sshd: never bootstrap it.
[bootstrap]
method = "none"
[agent]
command = ["sh"]
TOML
}
start_fake bench 127.0.0.1 "$S/authorized_keys" "$S/host_key.pub"
gcp_project "$WORK/gcp-up" "$FAKE_URL"
up_ms=$(ms "$CWO" -C "$WORK/gcp-up" up)
down_ms=$(ms "$CWO" -C "$WORK/gcp-up" down)
echo "gcp: cwo up (fake API, loopback sshd):   ${up_ms} ms   (goal <= 1000 ms: $(awk "BEGIN {print ($up_ms <= 1000) ? \"met\" : \"NOT met\"}")) · cwo down ${down_ms} ms"
start_fake bench 127.0.0.1 - - 1000 gcp-many
gcp_project "$WORK/gcp-many" "$FAKE_URL"
status_ms=$(ms "$CWO" -C "$WORK/gcp-many" status --format json)
reap_ms=$(ms "$CWO" -C "$WORK/gcp-many" reap --dry-run)
listed=$("$CWO" -C "$WORK/gcp-many" status --format json 2>/dev/null | grep -c '"unjournaled"' || true)
echo "gcp: cwo status over 1,000 VMs:          ${status_ms} ms   (goal <= 2000 ms: $(awk "BEGIN {print ($status_ms <= 2000) ? \"met\" : \"NOT met\"}"); ${listed} listed)"
echo "gcp: cwo reap --dry-run over 1,000 VMs:  ${reap_ms} ms   (goal <= 2000 ms: $(awk "BEGIN {print ($reap_ms <= 2000) ? \"met\" : \"NOT met\"}"))"

# 7. Fleets: the same queue on 1, 4 and 8 workers, locally and on the fake Compute API.
cat > "$WORK/sleep-agent.sh" <<'AGENT'
sleep 2
git commit -q --allow-empty -m "work"
AGENT
# What the journal says of a finished run: attempt-seconds, billed worker-seconds (each worker
# from its provider's creation time to its confirmed deletion), and the peak of live workers.
fleet_figures() { # args: journal
  python3 - "$1" <<'PY'
import sqlite3, sys
from datetime import datetime
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
db = sqlite3.connect(sys.argv[1])
busy = sum(t(e) - t(s) for s, e in db.execute(
    "SELECT started_at, ended_at FROM attempts WHERE ended_at IS NOT NULL"))
rows = [(t(c), t(d)) for c, d in db.execute(
    "SELECT created_at, deleted_at FROM workers WHERE created_at IS NOT NULL AND deleted_at IS NOT NULL")]
billed = sum(d - c for c, d in rows)
edges = sorted([(c, 1) for c, _ in rows] + [(d, -1) for _, d in rows])
live = peak = 0
for _, step in edges:
    live += step
    peak = max(peak, live)
print(f"{busy:.1f} {billed:.1f} {peak} {len(rows)}")
PY
}
fleet_project() { # args: dir provider max [fake url]
  mkdir -p "$1"; git -C "$1" init -q -b main; git -C "$1" commit -q --allow-empty -m init
  git init -q --bare "$1.origin.git"; git -C "$1" remote add origin "$1.origin.git"
  {
    echo "provider = \"$2\""
    echo "poll_interval = \"100ms\""
    echo "state_dir = \"$1.state\""
    echo "[workers]"
    echo "max = $3"
    echo "[agent]"
    echo "command = [\"sh\", \"$WORK/sleep-agent.sh\"]"
    if [ "$2" = gcp ]; then
      cat <<TOML
[gcp]
project = "bench"
endpoint = "$4"
credentials = "anonymous"
ssh_source = "127.0.0.1/32"
ssh_user = "$ME"
ssh_port = $PORT
[ssh]
workspace = "$1.ws"
[bootstrap]
method = "none"
TOML
    fi
  } > "$1/cwo.toml"
  for i in $(seq 1 "$N"); do "$CWO" -C "$1" -q task add "task $i" >/dev/null; done
}
fleet_run() { # args: provider max; prints "wall_ms busy billed peak workers rss_kb"
  # Called in a subshell ($(...)): its fake is stopped here, not by the EXIT trap.
  local dir="$WORK/fleet-$1-$2" url="" fake_pid=""
  if [ "$1" = gcp ]; then
    FAKE_GCE_PROVISIONING_MS=300 start_fake bench 127.0.0.1 "$S/authorized_keys" "$S/host_key.pub"
    url="$FAKE_URL"; fake_pid="${FAKE_PIDS##* }"
  fi
  fleet_project "$dir" "$1" "$2" "$url"
  local t0 t1 pid hwm peak_kb=0
  t0=$(date +%s%N)
  "$CWO" -C "$dir" run --once 2>"$dir.log" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$hwm" ] && [ "$hwm" -gt "$peak_kb" ] && peak_kb=$hwm
    sleep 0.05
  done
  wait "$pid" || { echo "fleet run ($1, max $2) failed:" >&2; tail -n 20 "$dir.log" >&2; exit 1; }
  t1=$(date +%s%N)
  local pushed
  pushed=$(git -C "$dir.origin.git" for-each-ref refs/heads/cwo | wc -l)
  [ "$pushed" -eq "$N" ] || { echo "fleet run ($1, max $2): only $pushed of $N pushed" >&2; tail -n 20 "$dir.log" >&2; exit 1; }
  echo "$(( (t1 - t0) / 1000000 )) $(fleet_figures "$dir.state/journal.sqlite") $peak_kb"
  [ -z "$fake_pid" ] || kill "$fake_pid" 2>/dev/null || true
}
for provider in local gcp; do
  base_ms=""
  for max in 1 4 8; do
    read -r wall busy billed peak made rss <<<"$(fleet_run "$provider" "$max")"
    [ -z "$base_ms" ] && base_ms=$wall
    speedup=$(ratio "$base_ms" "$wall")
    util=$(awk "BEGIN {printf \"%.2f\", $busy / ($billed > 0 ? $billed : 1)}")
    goal=""
    [ "$max" = 4 ] && goal=" (goal >= 3.5x: $(awk "BEGIN {print ($speedup >= 3.5) ? \"met\" : \"NOT met\"}"))"
    [ "$max" = 8 ] && goal=" (goal >= 6x: $(awk "BEGIN {print ($speedup >= 6) ? \"met\" : \"NOT met\"}"))"
    printf 'fleet %-5s max %s: %6s ms, %5sx%s · busy/billed %s s/%s s = %s (goal >= 0.9: %s) · peak %s live of %s created · RSS %s MB\n' \
      "$provider" "$max" "$wall" "$speedup" "$goal" "$busy" "$billed" "$util" \
      "$(awk "BEGIN {print ($util >= 0.9) ? \"met\" : \"NOT met\"}")" "$peak" "$made" \
      "$(awk "BEGIN {printf \"%.1f\", $rss / 1024}")"
    [ "$max" = 8 ] && echo "  controller peak RSS with 8 workers: goal <= 40 MB: $(awk "BEGIN {print ($rss <= 40960) ? \"met\" : \"NOT met\"}")"
  done
done
# `cwo status` with 8 live workers: a fleet brought up and held by a run that waits on one task.
status_dir="$WORK/fleet-status"
FAKE_GCE_PROVISIONING_MS=0 start_fake bench 127.0.0.1 "$S/authorized_keys" "$S/host_key.pub"
N_SAVED=$N; N=8
fleet_project "$status_dir" gcp 8 "$FAKE_URL"
N=$N_SAVED
sed -i 's/^sleep 2$/sleep 30/' "$WORK/sleep-agent.sh"
"$CWO" -C "$status_dir" run 2>"$status_dir.log" &
run_pid=$!
for _ in $(seq 1 300); do
  [ "$("$CWO" -C "$status_dir" status --format json 2>/dev/null | grep -c '"state": "ready"' || true)" -ge 8 ] && break
  sleep 0.1
done
status8_ms=$(ms "$CWO" -C "$status_dir" status)
status8_json_ms=$(ms "$CWO" -C "$status_dir" status --format json)
live8=$("$CWO" -C "$status_dir" status --format json 2>/dev/null | grep -c '"state": "ready"' || true)
kill -INT "$run_pid"; kill -INT "$run_pid" 2>/dev/null || true; wait "$run_pid" || true
sed -i 's/^sleep 30$/sleep 2/' "$WORK/sleep-agent.sh"
echo "fleet: cwo status with $live8 live workers: ${status8_ms} ms (table), ${status8_json_ms} ms (json)"

# 8. Creating a fleet's VMs on GCP: one bulk insert + setMetadata per VM vs k single inserts.
"$FLEET_BENCH" 1 4 8

# 6. GitHub: the pull-request step and the idle poll, against the fake GitHub.
"$GITHUB_BENCH" "$CWO" "$WORK/github" 10 20

# 5. Native bootstrap vs the Ansible playbook on fresh isolated test hosts.
"$(dirname "$0")/bench-bootstrap.sh"

# 10. A worker from a baked image vs the full bootstrap on a fresh isolated test host.
"$(dirname "$0")/bench-image.sh"

# 11. `cwo serve`: webhook -> claim, the server's memory, the state API with 8 workers and 1,000 tasks.
"$(dirname "$0")/bench-serve.sh"
