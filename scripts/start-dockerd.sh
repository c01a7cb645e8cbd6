#!/usr/bin/env bash
# Starts dockerd in the background when no engine answers (no init system runs it here).
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd is not installed" >&2; exit 1; }
mkdir -p /var/log
nohup dockerd >/var/log/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd did not answer within 30 s; /var/log/dockerd.log says:" >&2
tail -n 20 /var/log/dockerd.log >&2
exit 1
