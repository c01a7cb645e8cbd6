#!/usr/bin/env bash
# Builds the control-plane image docker-compose.yml runs (docker/control-plane.Dockerfile),
# FROM the local debootstrap base, with no registry and no PyPI access in the build:
#   1. the base image (scripts/build-base-image.sh; cached),
#   2. build/wheelhouse: the project's wheel and its dependencies' wheels, resolved for the
#      base image's own python3 (scripts/wheelhouse.py --probe-image: uv resolves for its
#      version and glibc, the host's pip downloads, so the host's package mirrors and
#      certificates apply but not the host's Python version),
#   3. docker build with BASE_IMAGE, installing from the wheelhouse only.
# Cached: the image carries a label with the hash of its inputs (the control/ sources,
# pyproject.toml, the Dockerfile, this script, scripts/wheelhouse.py, the base image id)
# and is rebuilt only when that changes (or with --force).
#
#   scripts/build-control-plane-image.sh [--force]
#
# Environment: CONTROL_PLANE_IMAGE (default reflow-microsandbox/control-plane:latest),
# BASE_IMAGE (default reflow-microsandbox/debian-base:bookworm), PYTHON (default
# .venv/bin/python: any Python 3.9+ with pip and uv runs scripts/wheelhouse.py; its version
# does not matter).
set -euo pipefail
cd "$(dirname "$0")/.."

CONTROL_PLANE_IMAGE=${CONTROL_PLANE_IMAGE:-reflow-microsandbox/control-plane:latest}
BASE_IMAGE=${BASE_IMAGE:-reflow-microsandbox/debian-base:bookworm}
PYTHON=${PYTHON:-.venv/bin/python}
DOCKERFILE=docker/control-plane.Dockerfile
WHEELHOUSE=build/wheelhouse
HASH_LABEL=io.reflow.microsandbox.control-plane-inputs

die() { echo "build-control-plane-image: $*" >&2; exit 1; }

force=0
[ "${1:-}" = --force ] && force=1

command -v docker >/dev/null || die "the docker CLI is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/start-dockerd.sh starts one)"
[ -x "$PYTHON" ] || die "$PYTHON not found (scripts/setup.sh dev creates .venv)"

# One build at a time (the compose test and the test command may both call this).
exec 9>/tmp/reflow-microsandbox-build-control-plane.lock
flock -w 900 9 || die "another build held the lock for 15 minutes"

if [ "$BASE_IMAGE" = reflow-microsandbox/debian-base:bookworm ]; then
  BASE_IMAGE=$BASE_IMAGE scripts/build-base-image.sh
fi
base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE") || die "no base image $BASE_IMAGE"

inputs_hash=$( {
  cat "$0" "$DOCKERFILE" .dockerignore pyproject.toml scripts/wheelhouse.py
  find control -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
  echo "$base_id"
} | sha256sum | cut -c1-16)
current=$(docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" \
  "$CONTROL_PLANE_IMAGE" 2>/dev/null || true)
if [ "$force" = 0 ] && [ "$current" = "$inputs_hash" ]; then
  echo "build-control-plane-image: $CONTROL_PLANE_IMAGE is up to date ($inputs_hash)"
  exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "build-control-plane-image: wheels for $BASE_IMAGE's python3 into $WHEELHOUSE"
if ! "$PYTHON" scripts/wheelhouse.py "$WHEELHOUSE" --probe-image "$BASE_IMAGE" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "the wheelhouse could not be built (log above)"
fi

echo "build-control-plane-image: building $CONTROL_PLANE_IMAGE FROM $BASE_IMAGE"
if ! DOCKER_BUILDKIT=0 docker build --network bridge -f "$DOCKERFILE" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "$HASH_LABEL=$inputs_hash" \
  -t "$CONTROL_PLANE_IMAGE" . >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  die "docker build failed (log above)"
fi
# Layers of earlier builds that no tag names any more.
docker image prune -f --filter "label=$HASH_LABEL" >/dev/null 2>&1 || true
echo "build-control-plane-image: built $CONTROL_PLANE_IMAGE ($inputs_hash)"
