#!/usr/bin/env bash
# Builds the systemd "host" image that Molecule's hosts run (docker/systemd-host.Dockerfile),
# FROM the local debootstrap base (built first by scripts/build-base-image.sh; cached).
# Cached: the image carries a label with the hash of its inputs (this script, the
# Dockerfile, the base image's id) and is rebuilt only when that changes (or with --force).
#
#   scripts/build-host-image.sh [--force]
#
# Environment: HOST_IMAGE (default reflow-microsandbox/systemd-host:bookworm),
# BASE_IMAGE (default reflow-microsandbox/debian-base:bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."

HOST_IMAGE=${HOST_IMAGE:-reflow-microsandbox/systemd-host:bookworm}
BASE_IMAGE=${BASE_IMAGE:-reflow-microsandbox/debian-base:bookworm}
DOCKERFILE=docker/systemd-host.Dockerfile
HASH_LABEL=io.reflow.microsandbox.host-inputs

die() { echo "build-host-image: $*" >&2; exit 1; }

force=0
[ "${1:-}" = --force ] && force=1

command -v docker >/dev/null || die "the docker CLI is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/start-dockerd.sh starts one)"

BASE_IMAGE=$BASE_IMAGE scripts/build-base-image.sh
base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE") || die "no base image $BASE_IMAGE"

inputs_hash=$( { cat "$0" "$DOCKERFILE"; echo "$base_id"; } | sha256sum | cut -c1-16)
current=$(docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$HOST_IMAGE" \
  2>/dev/null || true)
if [ "$force" = 0 ] && [ "$current" = "$inputs_hash" ]; then
  echo "build-host-image: $HOST_IMAGE is up to date ($inputs_hash)"
  exit 0
fi

echo "build-host-image: building $HOST_IMAGE FROM $BASE_IMAGE"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The Dockerfile alone on stdin is the whole context: it copies nothing in.
if ! DOCKER_BUILDKIT=0 docker build -q \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "$HASH_LABEL=$inputs_hash" \
  -t "$HOST_IMAGE" - <"$DOCKERFILE" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "docker build failed (log above)"
fi
echo "build-host-image: built $HOST_IMAGE ($inputs_hash)"
