#!/usr/bin/env bash
# The deployment guide's quick start in one command, on a fresh Debian 12 machine (root):
# installs what it needs, starts the Docker engine, keeps a generated Redis password in
# .env, builds every image from this repository (nothing is pulled; cached after the
# first time), then runs `docker-compose up -d`. From then on the guide's own
# `docker-compose up -d` works as it is, and so do its checks:
#
#   scripts/compose-up.sh                 # extra arguments go to docker-compose up -d
#   docker-compose ps
#   curl http://localhost:5555/health     # the balancer (HTTP API: /ready, /api/v1/rpc)
#   curl http://localhost:8080/health     # the balancer, the port Reflow uses
#   wscat -c ws://localhost:5556          # {"jsonrpc":"2.0","method":"list","params":{},"id":1}
#
# Environment: COMPOSE_ENV_FILE (default .env: where the password is kept, mode 0600,
# never overwritten), and docker-compose.yml's own variables (ports, BASE_IMAGE, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_FILE=${COMPOSE_ENV_FILE:-.env}
say() { echo "compose-up: $*"; }

scripts/setup.sh dev
scripts/start-dockerd.sh

if ! grep -qs '^REDIS_PASSWORD=.' "$ENV_FILE"; then
  (umask 077 && echo "REDIS_PASSWORD=$(openssl rand -hex 24)" >>"$ENV_FILE")
  say "generated the Redis password into $ENV_FILE (keep it: the data volume needs it)"
fi

say "building the images (cached after the first time)"
scripts/build-images.sh
scripts/build-control-plane-image.sh
scripts/build-service-images.sh

docker-compose --env-file "$ENV_FILE" up -d "$@"
say "up: docker-compose ps; curl http://localhost:8080/health; ws://localhost:5556 for Reflow"
