#!/usr/bin/env bash
# The test command (README, .ci/run): installs and starts everything the tests need,
# then runs the linters, the type checker and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh dev
# The Docker engine and the locally built images (cached); on a machine where this is
# impossible the docker tests skip with the reason recorded in .docker-unavailable.
rm -f .docker-unavailable
if ! scripts/start-dockerd.sh > .dockerd.log 2>&1; then
  echo "docker engine could not be started (see .dockerd.log)" > .docker-unavailable
elif ! scripts/build-images.sh; then
  echo "the sandbox images could not be built (see the output above)" > .docker-unavailable
fi

echo "== ruff";   .venv/bin/ruff check control tests bench monitoring docker scripts
echo "== mypy";   .venv/bin/mypy control monitoring docker/nginx_upstream_sync.py scripts/wheelhouse.py
echo "== pytest"; .venv/bin/pytest "$@"
