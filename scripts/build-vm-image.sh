#!/usr/bin/env bash
# Builds a Debian 12 "host" to boot under qemu: Debian's own kernel and an initramfs
# holding a debootstrapped root filesystem with systemd, python3, nodejs and bubblewrap,
# all from Debian's packages. tests/vm/test_debian12_vm.py boots it to run the sandbox
# tests where production runs them: pure cgroup v2, systemd as PID 1, Debian's Node.
# Measured facts behind each step: ../shared/notes/debian12-vm-on-these-machines.md
# (docs/testing.md in this repository summarizes them).
#
#   scripts/build-vm-image.sh [--force]      # prints the image directory on stdout
#
# Cached: the image lives in $VM_CACHE/<hash of this script>/ (vmlinuz, initrd.img,
# kernel-version) and is rebuilt only when this script changes (or with --force); other
# hashes' images are removed after a build. Concurrent builds wait for each other.
#
# Environment: VM_CACHE (default /var/cache/reflow-microsandbox/vm), DEBIAN_MIRROR
# (default: the machine's own Debian mirror from its apt sources).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
# systemd as PID 1 (dbus for systemctl/systemd-run), the actors' interpreters and the
# sandbox tools the role installs (bubblewrap, libseccomp2; util-linux's prlimit is
# Essential), kmod to load the 9p/virtio modules.
PACKAGES=systemd-sysv,dbus,kmod,python3,nodejs,bubblewrap,libseccomp2
# Modules the guest needs that Debian builds as modules: virtio PCI and 9p over virtio
# for the host folders (cgroup2 and user namespaces are built in).
MODULE_DIRS="kernel/drivers/virtio kernel/fs/9p kernel/net/9p kernel/fs/netfs kernel/fs/fscache"
VM_CACHE=${VM_CACHE:-/var/cache/reflow-microsandbox/vm}

die() { echo "build-vm-image: $*" >&2; exit 1; }
say() { echo "build-vm-image: $*" >&2; }

force=0
[ "${1:-}" = --force ] && force=1
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
for tool in debootstrap cpio dpkg-deb apt-get; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh installs it)"
done

inputs_hash=$( { cat "$0"; echo "$SUITE $PACKAGES $MODULE_DIRS"; } | sha256sum | cut -c1-16)
image=$VM_CACHE/$inputs_hash
mkdir -p "$VM_CACHE"
exec 9>"$VM_CACHE/.build.lock"
flock 9
if [ "$force" = 0 ] && [ -f "$image/initrd.img" ] && [ -f "$image/vmlinuz" ]; then
  say "up to date ($image)"
  echo "$image"
  exit 0
fi

# The mirror this machine's apt uses for bookworm main (asked of apt itself).
MIRROR=${DEBIAN_MIRROR:-$(apt-get indextargets --format '$(SITE) $(CODENAME) $(COMPONENT)' \
  2>/dev/null | awk -v s="$SUITE" '$2 == s && $3 == "main" {print $1; exit}')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

work=$(mktemp -d /var/tmp/reflow-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

say "debootstrap $SUITE with $PACKAGES from $MIRROR (about a minute)"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi

# Debian's kernel: the version linux-image-amd64 points at, from the root filesystem's
# own package lists (the same mirror state as everything else in it).
say "downloading Debian's kernel"
echo "deb $MIRROR $SUITE main" >"$rootfs/etc/apt/sources.list"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
chroot "$rootfs" apt-get -qq update >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; die "apt-get update failed"; }
kernel_pkg=$(chroot "$rootfs" apt-cache depends linux-image-amd64 \
  | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || die "cannot tell which kernel linux-image-amd64 depends on"
chroot "$rootfs" sh -c "cd /tmp && apt-get -qq download $kernel_pkg" \
  >>"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; die "apt-get download $kernel_pkg failed"; }
dpkg-deb -x "$rootfs"/tmp/"$kernel_pkg"_*.deb "$work/kernel"
kernel_version=${kernel_pkg#linux-image-}
modules=$work/kernel/lib/modules/$kernel_version
[ -d "$modules" ] || die "no modules for $kernel_version in $kernel_pkg"
mkdir -p "$rootfs/lib/modules/$kernel_version"
cp "$modules"/modules.builtin* "$modules"/modules.order "$rootfs/lib/modules/$kernel_version/"
for dir in $MODULE_DIRS; do
  mkdir -p "$rootfs/lib/modules/$kernel_version/$(dirname "$dir")"
  cp -a "$modules/$dir" "$rootfs/lib/modules/$kernel_version/$dir"
done
chroot "$rootfs" depmod "$kernel_version" || die "depmod failed"

# Stage 1 (/init): bwrap cannot pivot_root out of the initramfs (rootfs is not a mount
# it may move), so give it a tmpfs root holding bind mounts of the initramfs folders,
# then start systemd there as PID 1 (what switch_root does, without copying 250 MB).
cat >"$rootfs/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t tmpfs -o mode=0755 root /newroot
for entry in /*; do
  name=${entry#/}
  case "$name" in proc|sys|dev|run|tmp|newroot) continue ;; esac
  if [ -L "$entry" ] || [ ! -d "$entry" ]; then
    cp -a "$entry" /newroot/
  else
    mkdir "/newroot/$name"
    mount --rbind "$entry" "/newroot/$name"
  fi
done
mkdir -m 0755 /newroot/proc /newroot/sys /newroot/dev /newroot/run
mkdir -m 1777 /newroot/tmp
umount /proc
cd /newroot
mount --move . /
exec chroot . /lib/systemd/systemd
EOF
chmod 0755 "$rootfs/init"
mkdir -p "$rootfs/newroot"

# The guest's one job: mount the job folder the host shares over 9p, run its `run`
# script, print the end marker with the status on the serial console, power off.
cat >"$rootfs/usr/local/sbin/reflow-vm-job" <<'EOF'
#!/bin/sh
status=125
if modprobe -a virtio_pci 9pnet_virtio 9p \
  && mkdir -p /mnt/job \
  && mount -t 9p -o rw,trans=virtio,version=9p2000.L,msize=262144 job /mnt/job; then
  sh /mnt/job/run >/dev/console 2>&1
  status=$?
  echo "$status" >/mnt/job/status
else
  echo "reflow-vm-job: cannot mount the job folder" >/dev/console
fi
sync
echo "REFLOW-VM-DONE status=$status" >/dev/console
echo o >/proc/sysrq-trigger
EOF
chmod 0755 "$rootfs/usr/local/sbin/reflow-vm-job"
cat >"$rootfs/etc/systemd/system/reflow-vm-job.service" <<'EOF'
[Unit]
Description=Run the job the host shared, then power off
After=basic.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/reflow-vm-job
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
EOF
chroot "$rootfs" systemctl enable reflow-vm-job.service >/dev/null 2>&1
# Nothing else to wait for: no consoles to log in on, no timers, no udev hardware.
chroot "$rootfs" systemctl mask getty.target serial-getty@ttyS0.service apt-daily.timer \
  apt-daily-upgrade.timer systemd-udevd.service systemd-udevd-kernel.socket \
  systemd-udevd-control.socket systemd-remount-fs.service >/dev/null 2>&1 || true
chroot "$rootfs" systemctl set-default multi-user.target >/dev/null 2>&1
echo "debian12-vm" >"$rootfs/etc/hostname"
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/etc/resolv.conf"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

say "packing the initramfs ($kernel_version)"
mkdir -p "$work/out"
cp "$work/kernel/boot/vmlinuz-$kernel_version" "$work/out/vmlinuz"
echo "$kernel_version" >"$work/out/kernel-version"
(cd "$rootfs" && find . -print0 | cpio --null -o -H newc --quiet) >"$work/out/initrd.img"
rm -rf "$image"
mv "$work/out" "$image"
# Older images (other input hashes) are not used any more.
find "$VM_CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$inputs_hash" -exec rm -rf {} +
say "built $image ($(du -sh "$image/initrd.img" | cut -f1) initramfs)"
echo "$image"
