#!/usr/bin/env bash
# Builds the local Debian bookworm base image for the sandbox runner images, for machines
# that cannot pull from a registry: debootstrap a minimal root filesystem and `docker import`
# it. Cached: the image carries a label with the hash of this script and its package list,
# and is rebuilt only when that hash changes (or with --force).
#
#   scripts/build-base-image.sh [--force]
#
# Environment: BASE_IMAGE (default reflow-microsandbox/debian-base:bookworm),
# DEBIAN_MIRROR (default: the machine's own Debian mirror from its apt sources).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-reflow-microsandbox/debian-base:bookworm}
SUITE=bookworm
# What goes into the base besides minbase: python3 runs the Python actors (stdlib only);
# the Node image adds Debian's nodejs on top in its Dockerfile.
PACKAGES=python3
HASH_LABEL=io.reflow.microsandbox.base-inputs

die() { echo "build-base-image: $*" >&2; exit 1; }

force=0
[ "${1:-}" = --force ] && force=1

command -v docker >/dev/null || die "the docker CLI is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/start-dockerd.sh starts one)"

inputs_hash=$( { cat "$0"; echo "$SUITE $PACKAGES"; } | sha256sum | cut -c1-16)
current=$(docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$BASE_IMAGE" \
  2>/dev/null || true)
if [ "$force" = 0 ] && [ "$current" = "$inputs_hash" ]; then
  echo "build-base-image: $BASE_IMAGE is up to date ($inputs_hash)"
  exit 0
fi

# The mirror: the first Debian URI of this machine's apt sources (deb822 or one-line form).
mirror_from_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' "$f"
  done | head -n1
  if [ -f /etc/apt/sources.list ]; then
    awk '$1 == "deb" && $2 !~ /^\[/ && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list
  fi
}
MIRROR=${DEBIAN_MIRROR:-$(mirror_from_sources | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${MIRROR%/debian}/debian-security

command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
[ "$(id -u)" = 0 ] || die "debootstrap needs root"

work=$(mktemp -d /var/tmp/reflow-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

echo "build-base-image: debootstrap $SUITE from $MIRROR (about a minute)"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi

# Apt sources for builds FROM this image (the Node image installs nodejs with apt).
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# Keep the image small: no package lists, downloaded .debs, docs, man pages or locales.
# The dpkg excludes keep later `apt-get install` in derived images small as well.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-reflow-small" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/01-reflow-small" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

echo "build-base-image: importing as $BASE_IMAGE"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change "LABEL $HASH_LABEL=$inputs_hash" \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + $PACKAGES (debootstrap)\"" \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$BASE_IMAGE" >/dev/null
echo "build-base-image: built $BASE_IMAGE ($inputs_hash)"
