#!/usr/bin/env bash
# Builds the images of the stack's off-the-shelf services (Redis, nginx, Prometheus and the
# Redis, nginx and node exporters) from Debian's packages on the local base image, as
# docker-compose.yml's `build:` entries do,
# for `docker stack deploy` (which builds nothing) and the quick start. Nothing is pulled.
# The engine's build cache makes a second run take a second or two.
#
#   scripts/build-service-images.sh
#
# Environment: BASE_IMAGE (default reflow-microsandbox/debian-base:bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-reflow-microsandbox/debian-base:bookworm}
die() { echo "build-service-images: $*" >&2; exit 1; }
command -v docker >/dev/null || die "the docker CLI is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/start-dockerd.sh starts one)"
if [ "$BASE_IMAGE" = reflow-microsandbox/debian-base:bookworm ]; then
  scripts/build-base-image.sh
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for service in redis nginx prometheus; do
  image=reflow-microsandbox/compose-$service:latest
  if ! DOCKER_BUILDKIT=0 docker build --network bridge -f "docker/$service.Dockerfile" \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" docker >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "docker build of $image failed (log above)"
  fi
  echo "build-service-images: $image"
done
for exporter in redis nginx node; do
  image=reflow-microsandbox/compose-$exporter-exporter:latest
  if ! DOCKER_BUILDKIT=0 docker build --network bridge -f docker/exporter.Dockerfile \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      --build-arg "EXPORTER_PACKAGE=prometheus-$exporter-exporter" -t "$image" docker >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "docker build of $image failed (log above)"
  fi
  echo "build-service-images: $image"
done
