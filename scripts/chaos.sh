#!/usr/bin/env bash
# The crash (chaos) test as a soak: N seeded trials of tests/test_chaos.rs (kill -9 of the
# controller in one phase, then the next run), the counts table on stdout, cargo's output and
# every failing trial's evidence on stderr. Exit status: the test's.
# Usage: scripts/chaos.sh [N] [SEED]   (default: 70 trials, a seed from the clock)
# CWO_CHAOS_JOBS sets how many trials run at once (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-70}"
case "$N" in '' | *[!0-9]*) echo "error: N must be a whole number, got '$N'" >&2; exit 2 ;; esac
REPORT="$(mktemp)"
trap 'rm -f "$REPORT"' EXIT
export CWO_CHAOS_TRIALS="$N" CWO_CHAOS_REPORT="$REPORT"
if [ -n "${2:-}" ]; then export CWO_CHAOS_SEED="$2"; fi
status=0
cargo test --locked --test runner test_chaos:: -- --nocapture >&2 || status=$?
if [ -s "$REPORT" ]; then
  cat "$REPORT"
else
  # Skipped (no sshd here) or stopped early: no soak happened, which is not a pass.
  echo "error: the chaos test wrote no counts (skipped, or it did not get to the end; see above)" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
