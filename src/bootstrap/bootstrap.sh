# cwo native bootstrap: makes a fresh VM ready for the agent. POSIX sh (busybox ash, dash).
# The settings above this line were rendered by cwo. Idempotent: run it again and every step
# says "ok". One line per step on stdout, tab-separated:
#   cwo-step <name> <changed|ok|skipped|failed> <milliseconds> <detail>
# Everything the steps' commands print goes to $CWO_STATE/bootstrap.out; a failure prints its tail.
umask 022
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
LC_ALL=C
export LC_ALL
if [ -n "$CWO_PROXY" ]; then
  http_proxy=$CWO_PROXY; https_proxy=$CWO_PROXY; HTTP_PROXY=$CWO_PROXY; HTTPS_PROXY=$CWO_PROXY
  export http_proxy https_proxy HTTP_PROXY HTTPS_PROXY
fi
[ "$(id -u)" = 0 ] || { echo "cwo bootstrap: must run as root (got uid $(id -u))" >&2; exit 90; }
mkdir -p "$CWO_STATE" /etc/cwo
OUT=$CWO_STATE/bootstrap.out
LOG=$CWO_STATE/bootstrap.log
MARK=$CWO_STATE/bootstrap.done

# One bootstrap at a time (GCE may run it as startup-script and user-data while cwo connects).
lock=$CWO_STATE/bootstrap.lock
i=0
while ! mkdir "$lock" 2>/dev/null; do
  holder=$(cat "$lock/pid" 2>/dev/null || true)
  if [ -n "$holder" ] && ! kill -0 "$holder" 2>/dev/null; then rm -rf "$lock"; continue; fi
  i=$((i + 1))
  if [ "$i" -gt 1200 ]; then echo "cwo bootstrap: $lock held by pid $holder for 10 minutes" >&2; exit 91; fi
  sleep 0.5
done
echo $$ > "$lock/pid"
trap 'rm -rf "$lock"' EXIT
trap 'exit 130' INT TERM HUP

# The VM already ran this very script at boot (startup-script / user-data): say so. The steps
# still run, as a check that finds everything in place (a fraction of a second) and finishes
# what boot could not, such as the login's keys when the guest agent created the login later.
if [ "$CWO_MODE" = reuse ] && [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$CWO_HASH" ]; then
  echo "cwo-reused	$CWO_HASH"
fi
: > "$OUT"
: > "$LOG.tmp"

now_ms() { # milliseconds since boot, from /proc/uptime (busybox date has no %N everywhere)
  read -r up _ < /proc/uptime
  s=${up%.*}; c=${up#*.}
  echo $((s * 1000 + ${c#0} * 10))
}
step_start() { t0=$(now_ms); }
report() { # name status detail
  line=$(printf 'cwo-step\t%s\t%s\t%s\t%s' "$1" "$2" "$(($(now_ms) - t0))" "$3")
  echo "$line"
  echo "$line" >> "$LOG.tmp"
}
fail() { # name detail: report, show the commands' output, stop
  [ -n "${oc_pid:-}" ] && kill "$oc_pid" 2>/dev/null
  report "$1" failed "$2"
  echo "--- last output of step $1 ---" >&2
  tail -n 25 "$OUT" >&2
  exit 1
}
run() { # a command whose output goes to the log
  echo "+ $*" >> "$OUT"
  "$@" >> "$OUT" 2>&1
}
same_content() { # file, expected text
  [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}

if [ -f /etc/alpine-release ]; then OS=alpine
elif command -v apt-get >/dev/null 2>&1; then OS=debian
else OS=unknown; fi

# --- swap ---------------------------------------------------------------------------------------
step_start
if [ "$CWO_SWAP_MB" = 0 ]; then
  report swap skipped "bootstrap.swap = off"
else
  f=/swapfile
  want=$((CWO_SWAP_MB * 1048576))
  changed=
  have=$(wc -c < "$f" 2>/dev/null || echo 0)
  active=
  grep -q "^$f " /proc/swaps && active=1
  if [ "$have" != "$want" ]; then
    [ -n "$active" ] && { run swapoff "$f" || fail swap "swapoff $f failed"; active=; }
    run fallocate -l "$want" "$f" 2>/dev/null \
      || run dd if=/dev/zero of="$f" bs=1048576 count="$CWO_SWAP_MB" \
      || fail swap "cannot allocate $CWO_SWAP_MB MiB at $f (disk full?)"
    run mkswap "$f" || fail swap "mkswap $f failed"
    changed=1
  fi
  if [ "$(stat -c %a "$f")" != 600 ]; then chmod 600 "$f"; changed=1; fi
  if ! grep -qs "^$f[[:space:]]" /etc/fstab; then
    echo "$f none swap sw 0 0" >> /etc/fstab
    changed=1
  fi
  if [ "$OS" = alpine ] && command -v rc-update >/dev/null 2>&1 \
    && ! rc-update show boot 2>/dev/null | grep -q '^ *swap '; then
    run rc-update add swap boot && changed=1
  fi
  if [ -z "$active" ]; then
    if ! run swapon "$f"; then
      run mkswap "$f" && run swapon "$f" \
        || fail swap "swapon $f refused (the filesystem may not support swap files)"
    fi
    changed=1
  fi
  if [ -n "$changed" ]; then report swap changed "$CWO_SWAP_MB MiB at $f"
  else report swap ok "$CWO_SWAP_MB MiB at $f"; fi
fi

# --- opencode download, overlapping the package manager -----------------------------------------
# The build is a tarball on the npm registry (no node needed). When curl or wget is already here,
# it downloads in the background while apt/apk work; otherwise after the packages step.
oc_state=none
if [ "$CWO_OPENCODE" != none ]; then
  case $(uname -m) in
    x86_64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) arch= ;;
  esac
  pkg=opencode-linux-$arch
  if [ "$arch" = x64 ] && ! grep -qw avx2 /proc/cpuinfo; then pkg=$pkg-baseline; fi
  [ "$OS" = alpine ] && pkg=$pkg-musl
  ocdir=/usr/local/lib/cwo/$pkg-$CWO_OPENCODE
  ocurl=${CWO_NPM_REGISTRY%/}/$pkg/-/$pkg-$CWO_OPENCODE.tgz
  if [ -z "$arch" ]; then oc_state=unsupported
  elif [ -x "$ocdir/opencode" ] && [ "$(readlink /usr/local/bin/opencode)" = "$ocdir/opencode" ]; then
    oc_state=present
  else
    oc_state=wanted
  fi
fi
fetch_opencode() { # download and unpack into $ocdir.tmp; output to $OUT.opencode
  rm -rf "$ocdir.tmp" && mkdir -p "$ocdir.tmp" || return 1
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 "$ocurl" | tar -xzf - -C "$ocdir.tmp"
  else
    wget -qO- "$ocurl" | tar -xzf - -C "$ocdir.tmp"
  fi
}
oc_pid=
if [ "$oc_state" = wanted ] && { command -v curl || command -v wget; } >/dev/null 2>&1; then
  fetch_opencode > "$OUT.opencode" 2>&1 &
  oc_pid=$!
fi

# --- packages -----------------------------------------------------------------------------------
step_start
missing=
case $OS in
  debian)
    for p in $CWO_PACKAGES_DEBIAN; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
      export DEBIAN_FRONTEND=noninteractive
      # unsafe-io: dpkg skips its fsyncs (a third of the install time here); a worker is
      # throwaway, and one that lost power mid-install is deleted, not repaired.
      set -- -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-unsafe-io -o Acquire::Languages=none
      [ -n "$CWO_PROXY" ] && set -- "$@" -o "Acquire::http::Proxy=$CWO_PROXY" -o "Acquire::https::Proxy=$CWO_PROXY"
      # Package lists younger than a day are used as they are; an install that fails on them
      # (a package moved on) refreshes them and tries again.
      # shellcheck disable=SC2086
      if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n 1)" ] \
        || ! run apt-get "$@" install -y -q --no-install-recommends $missing; then
        run apt-get "$@" update -q || fail packages "apt-get update failed"
        # shellcheck disable=SC2086
        run apt-get "$@" install -y -q --no-install-recommends $missing \
          || fail packages "apt-get install$missing failed"
      fi
    fi ;;
  alpine)
    for p in $CWO_PACKAGES_ALPINE; do
      apk info -e "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    # shellcheck disable=SC2086
    [ -z "$missing" ] || run apk add --no-cache $missing || fail packages "apk add$missing failed" ;;
  *) fail packages "no apt-get and not Alpine: cannot install packages here" ;;
esac
if [ -n "$missing" ]; then report packages changed "installed$missing"
else report packages ok "all present"; fi

# --- opencode -----------------------------------------------------------------------------------
step_start
case $oc_state in
  none) report opencode skipped "bootstrap.opencode = none" ;;
  unsupported) fail opencode "no opencode build for $(uname -m)" ;;
  present) report opencode ok "$pkg $CWO_OPENCODE" ;;
  wanted)
    if [ -n "$oc_pid" ]; then wait "$oc_pid"; fetched=$?
    else fetch_opencode > "$OUT.opencode" 2>&1; fetched=$?; fi
    cat "$OUT.opencode" >> "$OUT" 2>/dev/null; rm -f "$OUT.opencode"
    [ "$fetched" = 0 ] || fail opencode "download failed: $ocurl"
    [ -x "$ocdir.tmp/package/bin/opencode" ] || fail opencode "$ocurl has no package/bin/opencode"
    mv "$ocdir.tmp/package/bin/opencode" "$ocdir.tmp/opencode" && rm -rf "$ocdir.tmp/package"
    rm -rf "$ocdir" && mv "$ocdir.tmp" "$ocdir"
    ln -sf "$ocdir/opencode" /usr/local/bin/opencode
    report opencode changed "$pkg $CWO_OPENCODE" ;;
esac

# --- the work user ------------------------------------------------------------------------------
step_start
changed=
u=$CWO_USER
if ! id "$u" >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then run useradd -m -s /bin/sh "$u" || fail user "useradd $u failed"
  else run adduser -D -s /bin/sh "$u" || fail user "adduser $u failed"; fi
  changed=1
fi
# A locked password ("!") makes sshd without PAM refuse keys; "*" means no password, not locked.
if grep -q "^$u:!" /etc/shadow 2>/dev/null; then
  sed -i "s/^$u:![^:]*:/$u:*:/" /etc/shadow && changed=1
fi
home=$(getent passwd "$u" 2>/dev/null | cut -d: -f6)
[ -n "$home" ] || home=$(grep "^$u:" /etc/passwd | cut -d: -f6)
for d in "$CWO_WORKSPACE" "$CWO_STATE"; do
  if [ ! -d "$d" ]; then mkdir -p "$d"; changed=1; fi
  if [ "$(stat -c %U "$d")" != "$u" ]; then chown "$u:" "$d" || chown "$u" "$d"; changed=1; fi
done
# The login's keys are a worker's own: an image (bake) carries none.
if [ "$CWO_MODE" != bake ] && [ -n "$CWO_LOGIN_USER" ] && [ "$CWO_LOGIN_USER" != "$u" ]; then
  lhome=$(getent passwd "$CWO_LOGIN_USER" 2>/dev/null | cut -d: -f6)
  src=$lhome/.ssh/authorized_keys
  dst=$home/.ssh/authorized_keys
  if [ -f "$src" ] && ! cmp -s "$src" "$dst"; then
    mkdir -p "$home/.ssh" && cp "$src" "$dst"
    chmod 700 "$home/.ssh" && chmod 600 "$dst"
    chown -R "$u:" "$home/.ssh" 2>/dev/null || chown -R "$u" "$home/.ssh"
    changed=1
  fi
fi
if [ -n "$changed" ]; then report user changed "$u owns $CWO_WORKSPACE"
else report user ok "$u owns $CWO_WORKSPACE"; fi

# --- sshd hardening -----------------------------------------------------------------------------
step_start
want='# cwo: keys only, no root login
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PubkeyAuthentication yes'
conf=/etc/ssh/sshd_config
if grep -qi '^Include /etc/ssh/sshd_config.d/\*.conf' "$conf" 2>/dev/null; then
  target=/etc/ssh/sshd_config.d/60-cwo.conf
  if same_content "$target" "$want"; then sshd_changed=
  else mkdir -p /etc/ssh/sshd_config.d && printf '%s\n' "$want" > "$target"; sshd_changed=1; fi
else
  # No drop-in directory: the first value of a keyword wins, so the block goes on top.
  if head -n 5 "$conf" | grep -q '^# cwo: keys only'; then sshd_changed=
  else
    { printf '%s\n' "$want"; cat "$conf"; } > "$conf.cwo" && mv "$conf.cwo" "$conf"
    sshd_changed=1
  fi
fi
if [ -n "$sshd_changed" ] && [ "$CWO_MODE" = bake ]; then
  # An image's sshd reads the file when it boots. Reloading here would race with the clean
  # step below, which removes the host keys a reloading sshd needs.
  sshd=$(command -v sshd || echo /usr/sbin/sshd)
  run "$sshd" -t || fail sshd "sshd -t rejects the configuration"
  report sshd changed "no passwords, no root login (read at boot)"
elif [ -n "$sshd_changed" ]; then
  sshd=$(command -v sshd || echo /usr/sbin/sshd)
  run "$sshd" -t || fail sshd "sshd -t rejects the configuration"
  pid=$(cat /run/sshd.pid 2>/dev/null || cat /var/run/sshd.pid 2>/dev/null || true)
  if [ -n "$pid" ]; then kill -HUP "$pid"
  elif command -v systemctl >/dev/null 2>&1; then run systemctl reload ssh || run systemctl reload sshd
  elif command -v rc-service >/dev/null 2>&1; then run rc-service sshd reload; fi
  report sshd changed "no passwords, no root login"
else
  report sshd ok "no passwords, no root login"
fi

# --- agent environment --------------------------------------------------------------------------
step_start
if same_content /etc/cwo/agent.env "$CWO_AGENT_ENV"; then report agent-env ok /etc/cwo/agent.env
else
  printf '%s\n' "$CWO_AGENT_ENV" > /etc/cwo/agent.env
  report agent-env changed /etc/cwo/agent.env
fi

# --- idle watchdog ------------------------------------------------------------------------------
step_start
changed=
if ! same_content /usr/local/sbin/cwo-watchdog "$CWO_WATCHDOG_SCRIPT"; then
  printf '%s\n' "$CWO_WATCHDOG_SCRIPT" > /usr/local/sbin/cwo-watchdog
  chmod 755 /usr/local/sbin/cwo-watchdog
  changed=1
fi
wconf="IDLE_MINUTES=$CWO_IDLE_MINUTES
HEARTBEAT=$CWO_STATE/heartbeat
WORKSPACE=$CWO_WORKSPACE
ACTION=$CWO_WATCHDOG_ACTION_Q
LOG=/var/log/cwo-watchdog.log"
if ! same_content /etc/cwo/watchdog.conf "$wconf"; then
  printf '%s\n' "$wconf" > /etc/cwo/watchdog.conf
  changed=1
fi
entry='* * * * * /usr/local/sbin/cwo-watchdog'
if [ "$OS" = alpine ]; then
  tab=/etc/crontabs/root
  grep -qsF "$entry" "$tab" || { mkdir -p /etc/crontabs && echo "$entry" >> "$tab"; changed=1; }
  if command -v rc-update >/dev/null 2>&1 && ! rc-update show default 2>/dev/null | grep -q '^ *crond '; then
    run rc-update add crond default && changed=1
  fi
  rc-service crond status >/dev/null 2>&1 || { run rc-service crond start; changed=1; }
else
  tab=/etc/cron.d/cwo-watchdog
  if ! same_content "$tab" "* * * * * root /usr/local/sbin/cwo-watchdog"; then
    echo "* * * * * root /usr/local/sbin/cwo-watchdog" > "$tab"
    chmod 644 "$tab"
    changed=1
  fi
  if [ -d /run/systemd/system ]; then
    systemctl is-active -q cron || { run systemctl enable --now cron; changed=1; }
  elif ! { [ -f /run/crond.pid ] && kill -0 "$(cat /run/crond.pid)" 2>/dev/null; }; then
    run cron || fail watchdog "cannot start cron"
    changed=1
  fi
fi
if [ "$CWO_MODE" != bake ] && [ ! -f "$CWO_STATE/heartbeat" ]; then
  touch "$CWO_STATE/heartbeat"; chown "$u" "$CWO_STATE/heartbeat"
fi
if [ -n "$changed" ]; then report watchdog changed "idle $CWO_IDLE_MINUTES min: $CWO_WATCHDOG_ACTION"
else report watchdog ok "idle $CWO_IDLE_MINUTES min: $CWO_WATCHDOG_ACTION"; fi

# --- host key -----------------------------------------------------------------------------------
step_start
k=/etc/ssh/ssh_host_ed25519_key.pub
i=0
while [ ! -f "$k" ] && [ "$i" -lt 60 ]; do sleep 1; i=$((i + 1)); done
# Booted from a baked image whose host keys were removed, and nothing made new ones (Google's
# guest agent and Alpine's sshd service do): make them, and start sshd with them.
if [ ! -f "$k" ] && command -v ssh-keygen >/dev/null 2>&1; then
  run ssh-keygen -A
  if command -v systemctl >/dev/null 2>&1; then run systemctl restart ssh || run systemctl restart sshd
  elif command -v rc-service >/dev/null 2>&1; then run rc-service sshd restart; fi
fi
[ -f "$k" ] || fail hostkey "$k does not exist"
if [ "$CWO_GCE" = 1 ] && command -v curl >/dev/null 2>&1; then
  curl -sf -m 5 -X PUT -H "Metadata-Flavor: Google" --data "$(cut -d' ' -f2 "$k")" \
    http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/hostkeys/ssh-ed25519 \
    >> "$OUT" 2>&1 || true
fi
report hostkey ok "$(cut -d' ' -f1,2 "$k")"

mv "$LOG.tmp" "$LOG"
echo "$CWO_HASH" > "$MARK"

# --- clean (bake only) --------------------------------------------------------------------------
# `bake` makes this host the source of an image (`cwo image build`): everything above stays, and
# what belongs to one host goes, so each VM booted from the image gets its own. Host keys are
# made again at boot (Google's guest agent on its images; the sshd service on Alpine and
# Ubuntu); an empty machine-id is filled at boot by systemd (Alpine has none).
if [ "$CWO_MODE" = bake ]; then
  step_start
  rm -f /etc/ssh/ssh_host_*
  [ -f /etc/machine-id ] && : > /etc/machine-id
  rm -f /var/lib/dbus/machine-id
  for h in /root /home/*; do
    [ -d "$h" ] || continue
    rm -f "$h/.ssh/authorized_keys" "$h/.ssh/authorized_keys2" "$h"/.*_history "$h/.lesshst"
  done
  rm -f "$CWO_STATE/heartbeat"
  find "$CWO_WORKSPACE" -mindepth 1 -maxdepth 1 ! -name setup-cache -exec rm -rf {} + 2>/dev/null
  # Logs: rotated ones go, live ones are emptied (services keep their files open).
  find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete 2>/dev/null
  find /var/log -type f -exec truncate -s 0 {} + 2>/dev/null
  rm -rf /var/log/journal/* 2>/dev/null
  # Package caches (the lists stay: a worker that needs more packages refreshes old ones).
  if [ "$OS" = debian ]; then run apt-get clean; else rm -rf /var/cache/apk/*; fi
  # First-boot agents must run again on each VM: cloud-init (Ubuntu), tiny-cloud (Alpine).
  if command -v cloud-init >/dev/null 2>&1; then
    run cloud-init clean --logs --seed || fail clean "cloud-init clean failed: VMs from the image would skip their first boot"
  fi
  if command -v tiny-cloud >/dev/null 2>&1; then
    run tiny-cloud --bootstrap incomplete || fail clean "tiny-cloud --bootstrap incomplete failed: VMs from the image would skip their first boot"
  fi
  # systemd's random seed would be the same on every VM from the image.
  rm -f /var/lib/systemd/random-seed
  rm -rf /tmp/* /var/tmp/* 2>/dev/null
  # This host's step timings: the image keeps only the mark saying which script it ran.
  rm -f "$OUT" "$OUT.opencode" "$LOG"
  sync
  report clean changed "host keys, machine-id, authorized_keys, logs and history removed"
  rm -f "$LOG.tmp"
fi
