#!/usr/bin/env bash
# Builds the sandbox runner images the Docker backend starts (cached):
#   1. the local Debian bookworm base (scripts/build-base-image.sh; skipped when
#      BASE_IMAGE names another image, e.g. the official python/node images on a machine
#      that can pull: then both images build FROM that one base unless
#      PYTHON_BASE_IMAGE / NODE_BASE_IMAGE say otherwise),
#   2. docker/python-runner.Dockerfile and docker/node-runner.Dockerfile, each with the
#      runner file from control/runners baked in.
# An image is rebuilt only when its inputs change: the hash of its Dockerfile, its runner
# file and its base image id is stored as a label and compared. The runner's own sha256 is
# a second label, which the backend compares with the control plane's runner at start.
#
#   scripts/build-images.sh [--force]
#
# Exits non-zero with a message saying what is missing when the images cannot be built.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_BASE=reflow-microsandbox/debian-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
PYTHON_BASE_IMAGE=${PYTHON_BASE_IMAGE:-$BASE_IMAGE}
NODE_BASE_IMAGE=${NODE_BASE_IMAGE:-$BASE_IMAGE}
PYTHON_IMAGE=${PYTHON_IMAGE:-reflow-microsandbox/python-runner:latest}
NODE_IMAGE=${NODE_IMAGE:-reflow-microsandbox/node-runner:latest}
INPUTS_LABEL=io.reflow.microsandbox.image-inputs
RUNNER_LABEL=io.reflow.microsandbox.runner-sha256

die() { echo "build-images: $*" >&2; exit 1; }

force=()
[ "${1:-}" = --force ] && force=(--force)

command -v docker >/dev/null || die "the docker CLI is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/start-dockerd.sh starts one)"

# One build at a time on this machine (tests and the test command may both call this).
exec 9>/tmp/reflow-microsandbox-build-images.lock
flock -w 900 9 || die "another build-images.sh held the lock for 15 minutes"

if [ "$PYTHON_BASE_IMAGE" = "$LOCAL_BASE" ] || [ "$NODE_BASE_IMAGE" = "$LOCAL_BASE" ]; then
  BASE_IMAGE=$LOCAL_BASE scripts/build-base-image.sh "${force[@]}" \
    || die "the local base image $LOCAL_BASE could not be built (see above)"
fi

build() { # build IMAGE DOCKERFILE RUNNER BASE
  local image=$1 dockerfile=$2 runner=$3 base=$4
  [ -f "$runner" ] || die "$runner does not exist: the runner must be in place to build $image"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    docker pull "$base" >/dev/null 2>&1 \
      || die "base image $base is not present and cannot be pulled (leave BASE_IMAGE unset to build the local Debian base)"
  fi
  local base_id runner_sha inputs current
  base_id=$(docker image inspect -f '{{.Id}}' "$base")
  runner_sha=$(sha256sum "$runner" | cut -d' ' -f1)
  inputs=$( { cat "$dockerfile"; echo "$runner_sha $base_id"; } | sha256sum | cut -c1-16)
  current=$(docker image inspect -f "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" "$image" \
    2>/dev/null || true)
  if [ ${#force[@]} = 0 ] && [ "$current" = "$inputs" ]; then
    echo "build-images: $image is up to date ($inputs)"
    return
  fi
  echo "build-images: building $image from $base"
  local log
  log=$(mktemp)
  if ! docker build --network bridge -f "$dockerfile" --build-arg "BASE_IMAGE=$base" \
      --label "$INPUTS_LABEL=$inputs" --label "$RUNNER_LABEL=$runner_sha" \
      -t "$image" "$(dirname "$runner")" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    die "docker build of $image failed (output above)"
  fi
  rm -f "$log"
  echo "build-images: built $image ($inputs)"
}

build "$PYTHON_IMAGE" docker/python-runner.Dockerfile control/runners/python_runner.py "$PYTHON_BASE_IMAGE"
build "$NODE_IMAGE" docker/node-runner.Dockerfile control/runners/node_runner.js "$NODE_BASE_IMAGE"
# Layers of earlier builds that no tag names any more.
docker image prune -f --filter "label=$INPUTS_LABEL" >/dev/null 2>&1 || true
