#!/usr/bin/env bash
# Benchmark (section 9 of scripts/bench.sh, runnable alone):
# The repository's workflow (.cwo/workflow.toml), on the local provider, one worker,
# tasks_per_worker = 1, N tasks through `cwo run --once`, measured side by side:
#  a. the setup cache: a setup that costs real time and leaves a 20 MB tree of 500 untracked files
#     (like `npm ci`), with cache_key = ["package-lock.json"] vs without: wall time, per task, how
#     many times setup ran, and the size of the cache tar on the worker;
#  b. reading the agent's output: 20,000 opencode `step_finish` lines (the shape of
#     tests/fixtures/opencode-1.18.33-events.jsonl) vs 20,000 plain lines of the same length vs
#     no output, 1 task each, median of 3: wall time and the controller's peak RSS;
#  c. verify: command = ["true"] vs no [verify]: the time it adds per task.
# Usage: scripts/bench-workflow.sh [TASKS]   (default 6, at most 12: the section stays near 2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-6}"
[ "$N" -gt 12 ] && N=12
[ "$N" -lt 2 ] && N=2 # the cache can only hit from the second task on
cargo build --locked --release --quiet
CWO="$PWD/target/release/cwo"
FIXTURE="$PWD/tests/fixtures/opencode-1.18.33-events.jsonl"
WORK="$(mktemp -d)"
# Every project's run ends with `--once`, which tears its worker down; one left by a failed run is
# taken down here before the directory goes.
trap 'for d in "$WORK"/p-*/; do [ -f "$d/cwo.toml" ] && "$CWO" -C "$d" down >/dev/null 2>&1; done; rm -rf "$WORK"' EXIT
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export HOME="$WORK/home" CWO_NO_PROGRESS=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@localhost GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@localhost
mkdir -p "$HOME"
ratio() { awk "BEGIN {printf \"%.2f\", $1 / ($2 > 0 ? $2 : 1)}"; }
mb() { awk "BEGIN {printf \"%.1f\", $1 / 1048576}"; }

# A project whose workflow file (stdin) is committed, its origin, and `tasks` tasks.
wf_project() { # args: name agent-script tasks; stdin: .cwo/workflow.toml
  local dir="$WORK/p-$1"
  mkdir -p "$dir/.cwo"; git -C "$dir" init -q -b main
  cat > "$dir/.cwo/workflow.toml"
  for i in $(seq 1 50); do printf 'line %s\n' $(seq 1 50) > "$dir/file$i.txt"; done
  echo '{"lockfileVersion": 3, "packages": {}}' > "$dir/package-lock.json"
  printf '.juggle/\ncwo.toml\n' > "$dir/.gitignore"
  git -C "$dir" add -A && git -C "$dir" commit -qm init
  git init -q --bare "$dir.origin.git"; git -C "$dir" remote add origin "$dir.origin.git"
  cat > "$dir/cwo.toml" <<TOML
poll_interval = "100ms"
state_dir = "$dir.state"
[workers]
max = 1
tasks_per_worker = 1
[agent]
command = ["sh", "$2"]
TOML
  for i in $(seq 1 "$3"); do "$CWO" -C "$dir" -q task add "task $i" >/dev/null; done
}

# `cwo run --once` in project `name`: prints "wall_ms peak_rss_kb cache_tar_bytes cache_tar_files".
# The controller's peak RSS comes from /proc; the cache tar is looked for on the worker while the
# run lasts, since the worker's workspace goes with the worker at the end of the run.
wf_run() { # args: name expected-pushed-branches
  local dir="$WORK/p-$1" t0 t1 pid hwm peak_kb=0 tar_bytes=0 tar_files=0 size f
  t0=$(date +%s%N)
  "$CWO" -C "$dir" run --once 2>"$dir.log" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$hwm" ] && [ "$hwm" -gt "$peak_kb" ] && peak_kb=$hwm
    for f in "$dir.state"/workers/*/workspace/setup-cache/*.tar; do
      [ -f "$f" ] || continue
      size=$(stat -c %s "$f" 2>/dev/null || echo 0)
      if [ "$size" -gt "$tar_bytes" ]; then
        tar_bytes=$size
        tar_files=$(tar -tf "$f" 2>/dev/null | wc -l || echo 0)
      fi
    done
    sleep 0.05
  done
  wait "$pid" || { echo "workflow run ($1) failed:" >&2; tail -n 20 "$dir.log" >&2; exit 1; }
  t1=$(date +%s%N)
  local pushed
  pushed=$(git -C "$dir.origin.git" for-each-ref refs/heads/cwo | wc -l)
  [ "$pushed" -eq "$2" ] || { echo "workflow run ($1): $pushed of $2 branches pushed" >&2; tail -n 20 "$dir.log" >&2; exit 1; }
  echo "$(( (t1 - t0) / 1000000 )) $peak_kb $tar_bytes $tar_files"
}

cat > "$WORK/noop-agent.sh" <<'AGENT'
git commit -q --allow-empty -m "no-op"
AGENT

# a. The setup cache. The setup appends to a count file, then writes what `npm ci` would.
SETUP_SH='sleep 1; mkdir -p deps && head -c 20M /dev/urandom > deps/blob && for i in $(seq 1 500); do echo $i > deps/f$i; done'
setup_toml() { # args: count-file [cache_key line]
  printf '[setup]\ncommands = [["sh", "-c", "echo ran >> %s; %s"]]\n%s\n' "$1" "$SETUP_SH" "$2"
}
setup_toml "$WORK/setup-ran.cached" 'cache_key = ["package-lock.json"]' | wf_project cached "$WORK/noop-agent.sh" "$N"
setup_toml "$WORK/setup-ran.uncached" "" | wf_project uncached "$WORK/noop-agent.sh" "$N"
read -r cached_ms _ tar_bytes tar_files <<<"$(wf_run cached "$N")"
read -r uncached_ms _ _ _ <<<"$(wf_run uncached "$N")"
cached_runs=$(wc -l < "$WORK/setup-ran.cached")
uncached_runs=$(wc -l < "$WORK/setup-ran.uncached")
hits=$(grep -c 'setup skipped: restored' "$WORK/p-cached.log" || true)
tar_note="seen on the worker during the run"
if [ "$tar_bytes" -eq 0 ]; then
  # Never seen (the run was faster than the sampling): made again the way cwo makes it.
  git clone -q "$WORK/p-cached" "$WORK/tar-check"
  (cd "$WORK/tar-check" && sh -c "$SETUP_SH" && git ls-files -o --directory > "$WORK/tar.list" && tar -cf "$WORK/cache.tar" -T "$WORK/tar.list")
  tar_bytes=$(stat -c %s "$WORK/cache.tar"); tar_files=$(tar -tf "$WORK/cache.tar" | wc -l)
  tar_note="not seen during the run: made again in a checkout with git ls-files -o --directory + tar"
fi
echo "workflow a. setup cache, $N tasks, setup = sleep 1 + 20 MB of 501 untracked files:"
echo "  without cache_key:        ${uncached_ms} ms  ($(( uncached_ms / N )) ms/task), setup ran ${uncached_runs} of $N times"
echo "  cache_key = [lockfile]:   ${cached_ms} ms  ($(( cached_ms / N )) ms/task), setup ran ${cached_runs} of $N times, restored ${hits} times"
echo "  ratio uncached/cached:    $(ratio "$uncached_ms" "$cached_ms")x · saved $(( (uncached_ms - cached_ms) / (N - 1) )) ms per cache hit"
echo "  cache tar on the worker:  $(mb "$tar_bytes") MB, $tar_files entries ($tar_note)"

# b. Reading the agent's output: opencode's step_finish lines vs plain lines of the same length.
STEPS=20000
step=$(grep -m1 '"type":"step_finish"' "$FIXTURE")
plain=$(awk -v n="${#step}" 'BEGIN {s = "plain agent output: "; while (length(s) < n) s = s "."; print s}')
# (`yes` ends on SIGPIPE when head has its lines: not a failure here.)
{ yes "$step" || true; } | head -n "$STEPS" > "$WORK/steps.jsonl"
{ yes "$plain" || true; } | head -n "$STEPS" > "$WORK/plain.txt"
for kind in steps plain quiet; do
  case $kind in
    steps) out="cat $WORK/steps.jsonl" ;;
    plain) out="cat $WORK/plain.txt" ;;
    quiet) out=":" ;;
  esac
  printf '%s\ngit commit -q --allow-empty -m "%s"\n' "$out" "$kind" > "$WORK/$kind-agent.sh"
  : | wf_project "out-$kind" "$WORK/$kind-agent.sh" 0
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
declare -A out_ms out_kb
for kind in steps plain quiet; do
  walls=(); rsss=()
  for rep in 1 2 3; do
    "$CWO" -C "$WORK/p-out-$kind" -q task add "output $rep" >/dev/null
    read -r w r _ _ <<<"$(wf_run "out-$kind" "$rep")"
    walls+=("$w"); rsss+=("$r")
  done
  out_ms[$kind]=$(median "${walls[@]}"); out_kb[$kind]=$(median "${rsss[@]}")
done
read -r steps_read tokens <<<"$(python3 - "$WORK/p-out-steps.state/journal.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(*db.execute("SELECT COALESCE(SUM(steps), 0), COALESCE(SUM(input_tokens + output_tokens), 0) FROM attempt_usage").fetchone())
PY
)"
echo "workflow b. agent output, 1 task, median of 3 (line length ${#step} bytes):"
echo "  $STEPS step_finish lines:  ${out_ms[steps]} ms, controller peak RSS $(mb "$(( out_kb[steps] * 1024 ))") MB  (journal: $steps_read steps, $tokens tokens over 3 attempts)"
echo "  $STEPS plain lines:        ${out_ms[plain]} ms, controller peak RSS $(mb "$(( out_kb[plain] * 1024 ))") MB"
echo "  no output:                ${out_ms[quiet]} ms, controller peak RSS $(mb "$(( out_kb[quiet] * 1024 ))") MB"
echo "  reading tokens per line:  $(( out_ms[steps] - out_ms[plain] )) ms per $STEPS lines ($(ratio "${out_ms[steps]}" "${out_ms[plain]}")x the plain lines); following $STEPS plain lines: $(( out_ms[plain] - out_ms[quiet] )) ms"

# c. Verify: ["true"] vs no [verify].
printf '[verify]\ncommand = ["true"]\n' | wf_project verify "$WORK/noop-agent.sh" "$N"
: | wf_project noverify "$WORK/noop-agent.sh" "$N"
read -r verify_ms _ _ _ <<<"$(wf_run verify "$N")"
read -r noverify_ms _ _ _ <<<"$(wf_run noverify "$N")"
passed=$(grep -c '\[cwo\] verify: passed' "$WORK/p-verify.log" || true)
echo "workflow c. verify, $N tasks:"
echo "  no [verify]:               ${noverify_ms} ms  ($(( noverify_ms / N )) ms/task)"
echo "  command = [\"true\"]:        ${verify_ms} ms  ($(( verify_ms / N )) ms/task), passed $passed of $N times"
echo "  added per task:            $(( (verify_ms - noverify_ms) / N )) ms"

# Nothing left behind: every project's `cwo status` shows no live worker.
left=0
for d in "$WORK"/p-*/; do
  live=$("$CWO" -C "$d" status --format json 2>/dev/null | python3 -c 'import json, sys; print(sum(w["state"] != "deleted" for w in json.load(sys.stdin)["workers"]))')
  left=$(( left + live ))
done
echo "  workers left after the section: $left"
