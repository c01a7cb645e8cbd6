#!/usr/bin/env bash
# Renders the files of k8s/base's ConfigMaps (k8s/base/config/) from templates/, with
# the same playbook and roles' defaults Ansible and docker-compose use
# (ansible/render.yml through compose/render.sh, inventory k8s/inventory.yml):
#
#   k8s/render.sh [OUT_DIR]      # default: k8s/base/config
#
# Prometheus discovers the pods through the headless Service microsandbox-metrics, and
# the balancer's pods (their nginx exporters) through balancer-metrics.
# tests/deploy/test_k8s.py renders into a temporary directory and compares, so the
# committed files cannot drift from the templates.
set -euo pipefail
cd "$(dirname "$0")/.."
INVENTORY=k8s/inventory.yml PROMETHEUS_SD_NAME=microsandbox-metrics RENDER_NOTE=kubernetes \
  PROMETHEUS_DNS_SD_JOBS=nginx \
  exec compose/render.sh "${1:-k8s/base/config}"
