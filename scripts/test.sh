#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs the checks
# and the whole test suite. Safe to run again; installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v git >/dev/null 2>&1 || need+=(git)
# The fake GitHub serves pushes through git http-backend (in git); its own tests drive it with curl.
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v find >/dev/null 2>&1 || need+=(findutils)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
command -v setsid >/dev/null 2>&1 || need+=(util-linux)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
# Isolated test hosts (bootstrap, Ansible, swap): a Debian rootfs in a network namespace.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)
command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The real opencode (npm) runs against a local fake LLM; its grep and glob tools need rg on PATH,
# or opencode tries to download ripgrep from github.com.
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v rg >/dev/null 2>&1 || need+=(ripgrep)
# Headless Chromium for the browser tests (tests/common/browser.rs). They skip without it, so it is
# installed on its own and a failure only warns.
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
if [ "${#need[@]}" -gt 0 ] || [ "${#want[@]}" -gt 0 ]; then
  echo "installing: ${need[*]} ${want[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  [ "${#need[@]}" -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  [ "${#want[@]}" -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want[@]}" >/dev/null \
    || echo "warning: installing ${want[*]} failed; the browser tests will skip" >&2
fi
# sshd, started by the tests on loopback as root, insists on its privilege separation directory.
if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then mkdir -p /run/sshd && chmod 0755 /run/sshd; fi
# ansible-core for the playbook tests, in a venv under target/ (nothing system-wide).
if [ ! -x target/ansible-venv/bin/ansible-playbook ]; then
  echo "installing ansible-core into target/ansible-venv" >&2
  /usr/bin/python3 -m venv target/ansible-venv
  target/ansible-venv/bin/pip install -q 'ansible-core>=2.17,<2.21'
fi
# opencode, pinned to bootstrap.opencode's default (src/config/bootstrap.rs), under target/ too.
# tests/test_opencode.rs finds it there and fails (saying to run this script) when it is missing.
OPENCODE_VERSION=1.18.33
# The version is read from package.json: running the binary, even for --version, writes into HOME.
if ! grep -qs "\"version\": \"$OPENCODE_VERSION\"" target/opencode/node_modules/opencode-ai/package.json; then
  echo "installing opencode-ai@$OPENCODE_VERSION into target/opencode" >&2
  mkdir -p target/opencode
  # Its postinstall runs the binary, which writes its XDG dirs: into a HOME of its own, not yours.
  mkdir -p target/opencode/home
  HOME="$PWD/target/opencode/home" npm install --prefix target/opencode --no-audit --no-fund --loglevel=error "opencode-ai@$OPENCODE_VERSION"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust (https://rustup.rs) and run this again" >&2
  exit 2
fi

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
