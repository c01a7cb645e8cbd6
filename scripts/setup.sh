#!/usr/bin/env bash
# Installs everything the control plane and its tests need on Debian 12, as root.
# Idempotent: apt and pip skip what is already there; safe to run on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  bubblewrap            # the embedded sandbox backend (Linux namespaces)
  python3 python3-venv  # the control plane's interpreter, and the Python actors' interpreter
  nodejs                # the JavaScript actors' interpreter
  libseccomp2           # compiles the sandbox seccomp filter
  redis-server          # the state store the tests run against
  nginx-light           # the load balancer config is checked with nginx -t
  prometheus            # promtool checks the rendered scrape config and alert rules
  prometheus-redis-exporter prometheus-nginx-exporter prometheus-node-exporter  # exporter /metrics checked in tests
  docker.io docker-compose debootstrap  # the Docker backend, images and compose stack
  iproute2 procps curl ca-certificates git
  openssl               # the TLS balancer test makes a self-signed certificate
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps apt from starting daemons we start ourselves (no init system here).
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nodejs may already be provided outside apt (/usr/bin/node): that is fine too.
command -v node >/dev/null || { echo "setup: node not found" >&2; exit 1; }
# npm installs deployed functions' Node dependencies (Node.js from nodesource bundles it).
if ! command -v npm >/dev/null; then
  echo "setup: installing npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${1:-run}
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  if [ "${1:-run}" = dev ]; then
    .venv/bin/pip install -q -e '.[dev]'
  else
    .venv/bin/pip install -q -e .
  fi
  touch "$stamp"
fi
