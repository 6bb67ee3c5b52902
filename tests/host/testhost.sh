#!/bin/sh
# An isolated test host (DESIGN §4): the cached Debian rootfs under an overlay (a fresh host in
# about a second), sshd inside it, in its own network namespace, reaching the package registries
# only through tinyproxy listening on the host side of its veth pair. Nothing on the machine
# running the tests changes outside DIR and the namespace; `down` undoes everything `up` did,
# swap included, and keeps DIR/upper: what the host changed, on top of its lower layers.
#
#   testhost.sh up DIR ROOTFS [BASE]  -> writes DIR/env (IP, PROXY, KEY, HOSTKEY, NS, ...)
#   testhost.sh down DIR
#   testhost.sh inspect DIR COMMAND   -> runs COMMAND (sh) in a stopped host's files, read-only
#
# BASE is the DIR of a stopped host: the new host starts from a copy of it, the stand-in for a VM
# booted from an image made of that host (`cwo image build`). Its upper dir becomes a lower
# layer above BASE's own layers (overlayfs takes several lower dirs, top first, and honours the
# whiteouts of a former upper dir there), so the copy costs nothing and BASE stays as it was.
set -eu
cmd=$1
dir=$(cd "$2" && pwd)

down() {
  [ -f "$dir/env" ] || return 0
  # shellcheck disable=SC1091
  . "$dir/env"
  if [ -n "${UNSHARE_PID:-}" ] && kill -0 "$UNSHARE_PID" 2>/dev/null; then
    inner=$(cat "/proc/$UNSHARE_PID/task/$UNSHARE_PID/children" 2>/dev/null | cut -d' ' -f1)
    if [ -n "$inner" ] && grep -q . /proc/swaps; then
      # swapoff inside the host's mount namespace, where /swapfile is the bound file.
      nsenter -t "$inner" -m chroot "$dir/merged" sh -c \
        'grep -q "^/swapfile " /proc/swaps && swapoff /swapfile' 2>/dev/null || true
    fi
    kill -KILL "$UNSHARE_PID" 2>/dev/null || true
    # The overlay goes with the host's last process; a copy may then use DIR/upper as a layer.
    n=0
    while { kill -0 "$UNSHARE_PID" || { [ -n "$inner" ] && kill -0 "$inner"; }; } 2>/dev/null && [ "$n" -lt 100 ]; do
      sleep 0.05; n=$((n + 1))
    done
  fi
  [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true
  ip link del "$VETH" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -f "$dir/env"
}

case $cmd in
down) down; exit 0 ;;
inspect)
  [ ! -f "$dir/env" ] || { echo "testhost.sh inspect: $dir is still running; stop it first" >&2; exit 2; }
  # A private mount namespace: the read-only overlay is gone when COMMAND ends.
  exec unshare --mount --propagation private sh -c '
mount -t overlay overlay -o "ro,lowerdir=$1/upper:$(cat "$1/lower")" "$1/merged" || exit 1
exec chroot "$1/merged" sh -c "$2"' inspect "$dir" "$3" ;;
up) ;;
*) echo "usage: testhost.sh up DIR ROOTFS [BASE] | down DIR | inspect DIR COMMAND" >&2; exit 2 ;;
esac

rootfs=$3
lower=$rootfs
if [ -n "${4:-}" ]; then
  base=$(cd "$4" && pwd)
  # A running host's upper dir is not a layer another mount may read (overlayfs: undefined).
  [ ! -f "$base/env" ] || { echo "testhost.sh up: base $base is still running; stop it first" >&2; exit 2; }
  lower=$base/upper:$(cat "$base/lower")
fi
# The first free slot names the namespace, the veth pair and a /30 of the test-only range.
i=1
while ! ip netns add "cwoth$i" 2>/dev/null; do
  i=$((i + 1))
  [ "$i" -le 250 ] || { echo "no free test-host slot" >&2; exit 1; }
done
ns=cwoth$i
vh=cwoth$i-h
vc=cwoth$i-c
hip=10.213.$i.1
cip=10.213.$i.2
cat > "$dir/env" <<ENV
NS=$ns
VETH=$vh
IP=$cip
PROXY=http://$hip:18888
ENV
trap 'down' INT TERM
trap '[ "$?" = 0 ] || down' EXIT

ip link add "$vh" type veth peer name "$vc" netns "$ns"
ip addr add "$hip/30" dev "$vh"
ip link set "$vh" up
ip netns exec "$ns" ip addr add "$cip/30" dev "$vc"
ip netns exec "$ns" ip link set "$vc" up
ip netns exec "$ns" ip link set lo up

cat > "$dir/tinyproxy.conf" <<CONF
User nobody
Group nogroup
Port 18888
Listen $hip
Allow $cip
Timeout 300
MaxClients 50
ConnectPort 443
ConnectPort 80
DisableViaHeader Yes
LogLevel Warning
CONF
tinyproxy -d -c "$dir/tinyproxy.conf" > "$dir/tinyproxy.log" 2>&1 &
echo "PROXY_PID=$!" >> "$dir/env"

mkdir -p "$dir/upper" "$dir/work" "$dir/merged"
echo "$lower" > "$dir/lower"
# /swapfile is this file bound over the overlay's (overlayfs cannot hold an active swap file).
# A copy's is therefore new and empty, and its bootstrap allocates swap again: an artefact of
# test hosts; a VM booted from an image finds the swap file the image holds.
: > "$dir/swapfile"
rm -f "$dir/hostkey" "$dir/hostkey.pub" "$dir/key" "$dir/key.pub"
ssh-keygen -q -t ed25519 -N '' -C testhost -f "$dir/hostkey"
ssh-keygen -q -t ed25519 -N '' -C cwo-test -f "$dir/key"
echo "KEY=$dir/key" >> "$dir/env"
echo "HOSTKEY='$(cut -d' ' -f1,2 "$dir/hostkey.pub")'" >> "$dir/env"

ip netns exec "$ns" unshare --mount --pid --fork --kill-child --propagation private sh -c '
set -e
d=$1; r=$2; m=$d/merged
mount -t overlay overlay -o "lowerdir=$r,upperdir=$d/upper,workdir=$d/work" "$m"
mount -t proc proc "$m/proc"
mount -t tmpfs -o mode=755 tmpfs "$m/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r name major minor <<EOF
$n
EOF
  mknod -m 666 "$m/dev/$name" c "$major" "$minor"
done
mkdir "$m/dev/pts" "$m/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$m/dev/pts"
ln -s pts/ptmx "$m/dev/ptmx"
mount -t tmpfs -o mode=755 tmpfs "$m/run"
mkdir -p "$m/run/sshd"
mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
touch "$m/swapfile"
mount --bind "$d/swapfile" "$m/swapfile"
# A host key of its own and the admin login with its key, on a copy too: on GCE the guest agent
# writes both at boot (the login from the instance metadata), and an image holds neither.
install -m 600 "$d/hostkey" "$m/etc/ssh/ssh_host_ed25519_key"
install -m 644 "$d/hostkey.pub" "$m/etc/ssh/ssh_host_ed25519_key.pub"
install -d -m 700 "$m/home/admin/.ssh"
install -m 600 "$d/key.pub" "$m/home/admin/.ssh/authorized_keys"
chroot "$m" chown -R admin:admin /home/admin/.ssh
# No init runs here, so what the init of a VM would start at boot, because a package enabled it,
# is started by hand. The only such service the bootstrap installs is cron (for the watchdog);
# the rootfs has none, so only a copy of a bootstrapped host starts it.
if [ -x "$m/usr/sbin/cron" ]; then chroot "$m" /usr/sbin/cron; fi
exec chroot "$m" /usr/sbin/sshd -D -e -h /etc/ssh/ssh_host_ed25519_key
' testhost "$dir" "$lower" > "$dir/sshd.log" 2>&1 &
echo "UNSHARE_PID=$!" >> "$dir/env"

# Ready when sshd answers with its banner.
n=0
until banner=$(timeout 1 bash -c "exec 3<>/dev/tcp/$cip/22 && head -c 4 <&3" 2>/dev/null) && [ "$banner" = SSH- ]; do
  n=$((n + 1))
  if [ "$n" -gt 100 ]; then
    echo "test host sshd did not come up; its log:" >&2
    cat "$dir/sshd.log" >&2
    exit 1
  fi
  sleep 0.1
done
