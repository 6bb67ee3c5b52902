#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs the checks
# and the whole test suite. Safe to run again; installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v git >/dev/null 2>&1 || need+=(git)
command -v find >/dev/null 2>&1 || need+=(findutils)
command -v kill >/dev/null 2>&1 || need+=(procps)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust (https://rustup.rs) and run this again" >&2
  exit 2
fi

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
