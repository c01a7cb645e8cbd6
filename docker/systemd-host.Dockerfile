# A Debian 12 "host" that boots systemd as PID 1, for Molecule's multi-host scenario.
# Built FROM the local debootstrap base (no registry here: scripts/build-base-image.sh),
# by scripts/build-host-image.sh. It stands in for a fresh cloud VM: systemd, dbus,
# python3 for Ansible, sudo and curl; the roles install everything else themselves.
#
# Runs without --privileged: the container needs /sys/fs/cgroup mounted rw, tmpfs on
# /run and /run/lock, the host cgroup namespace, and /lib/systemd/systemd as its command
# (molecule/default/molecule.yml sets all four).
ARG BASE_IMAGE=reflow-microsandbox/debian-base:bookworm
FROM ${BASE_IMAGE}

ENV container=docker \
    DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      systemd systemd-sysv dbus \
      python3 python3-apt sudo curl ca-certificates procps iproute2 \
 && apt-get clean
# The package lists stay, as on a cloud image: Ansible's apt cache_valid_time judges
# them by the lists directory's age, and an emptied directory looks freshly updated.

# Mask the units that make no sense in a container (udev, kernel filesystems, consoles):
# they would only wait for hardware and leave the system "degraded".
RUN systemctl mask \
      systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      systemd-modules-load.service sys-kernel-debug.mount sys-kernel-tracing.mount \
      sys-kernel-config.mount systemd-remount-fs.service getty.target console-getty.service \
 && systemctl set-default multi-user.target

STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
