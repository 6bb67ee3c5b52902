#!/usr/bin/env bash
# The demo: builds cwo and runs the whole loop on the embedded local provider with a scripted
# agent, against a throwaway repository (no cloud account, no LLM). Installs git if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v git >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq git >/dev/null
fi
cargo build --locked --release --quiet
exec ./target/release/cwo demo "$@"
