#!/bin/sh
# Builds the Debian rootfs the isolated test hosts boot from (DESIGN §4), once; later runs reuse it.
# Usage: build-rootfs.sh DIR. Writes DIR.tmp first and renames it, so a half-built tree is never used.
# The rootfs is what a cloud image gives: sshd, sudo, curl, python3 (Debian's GCE images have
# them), an admin login with passwordless sudo,
# and the CA certificates of the machine running the tests (so HTTPS through its proxy verifies).
set -eu
dir=$1
[ -d "$dir" ] && exit 0
tmp=$dir.tmp
rm -rf "$tmp"
mkdir -p "$(dirname "$dir")"
mirror=${CWO_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
debootstrap --variant=minbase --include=openssh-server,sudo,ca-certificates,curl,procps,python3,python3-apt \
  bookworm "$tmp" "$mirror" >"$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; exit 1; }
chroot "$tmp" useradd -m -s /bin/sh admin
echo 'admin ALL=(ALL) NOPASSWD:ALL' > "$tmp/etc/sudoers.d/admin"
chmod 440 "$tmp/etc/sudoers.d/admin"
sed -i 's/^admin:!:/admin:*:/' "$tmp/etc/shadow"
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$tmp/usr/local/share/ca-certificates/"
  chroot "$tmp" update-ca-certificates >/dev/null 2>&1
fi
# Host keys are made per host at start; none is baked in.
rm -f "$tmp"/etc/ssh/ssh_host_*
cp /bin/busybox "$tmp/usr/local/bin/busybox"
apt_lists=$(ls "$tmp/var/lib/apt/lists" | wc -l)
echo "rootfs built: $(du -sm "$tmp" | cut -f1) MB, $apt_lists apt list files" >&2
mv "$tmp" "$dir"
