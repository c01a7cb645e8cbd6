#!/usr/bin/env bash
# Renders the docker-compose stack's configs from templates/ with the same playbook and
# roles' defaults Ansible uses (ansible/render.yml, inventory compose/inventory.yml):
#
#   compose/render.sh [OUT_DIR]      # default: compose/ itself
#
# k8s/render.sh renders the Kubernetes ConfigMaps' files the same way, with INVENTORY
# (default compose/inventory.yml), PROMETHEUS_SD_NAME (the DNS name whose addresses are
# the replicas, default microsandbox), RENDER_NOTE (default docker-compose) and
# PROMETHEUS_DNS_SD_JOBS (default none: exporter jobs, e.g. "nginx", whose static
# targets become DNS discoveries of every address of their host name, each keeping its
# host label).
#
# Two adjustments the templates cannot express yet, both deterministic:
#   - redis.conf loses its requirepass line: the password comes from REDIS_PASSWORD at
#     start (docker-compose.yml), so no secret is ever written here. A throw-away random
#     value satisfies the role's preflight during rendering.
#   - prometheus.yml's microsandbox job discovers the replicas by DNS (type A on the
#     service name) instead of one static target, so --scale needs no re-render.
# tests/deploy/test_compose.py renders into a temporary directory and compares, so the
# committed files cannot drift from the templates.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-compose}
INVENTORY=${INVENTORY:-compose/inventory.yml}
PROMETHEUS_SD_NAME=${PROMETHEUS_SD_NAME:-microsandbox}
RENDER_NOTE=${RENDER_NOTE:-docker-compose}
ANSIBLE_PLAYBOOK=${ANSIBLE_PLAYBOOK:-.venv/bin/ansible-playbook}
PYTHON=${PYTHON:-.venv/bin/python}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
throwaway=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
if ! ANSIBLE_STDOUT_CALLBACK=ansible.builtin.minimal "$ANSIBLE_PLAYBOOK" \
    -i "$INVENTORY" ansible/render.yml \
    -e "render_dest=$work" -e "redis_requirepass=$throwaway" >"$work/log" 2>&1; then
  cat "$work/log" >&2
  echo "render: ansible/render.yml failed (output above)" >&2
  exit 1
fi

mkdir -p "$out/rules"
sed '/^requirepass /d' "$work/redis/redis.conf" >"$out/redis.conf"
cp "$work/microsandbox/microsandbox.yaml" "$out/microsandbox.yaml"
cp "$work/nginx/nginx-loadbalancer.conf" "$out/nginx-loadbalancer.conf"
cp "$work/prometheus/microsandbox-alerts.yml" "$out/rules/microsandbox-alerts.yml"
"$PYTHON" - "$work/prometheus/prometheus.yml" "$out/prometheus.yml" "$PROMETHEUS_SD_NAME" \
  "$RENDER_NOTE" "${PROMETHEUS_DNS_SD_JOBS:-}" <<'PY'
import sys

import yaml

source, dest, sd_name, note, sd_jobs = sys.argv[1:]
text = open(source, encoding="utf-8").read()
header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
config = yaml.safe_load(text)
for job in config["scrape_configs"]:
    if job["job_name"] == "microsandbox":
        port = job["static_configs"][0]["targets"][0].rsplit(":", 1)[1]
        del job["static_configs"]
        job["dns_sd_configs"] = [
            {"names": [sd_name], "type": "A", "port": int(port), "refresh_interval": "5s"}
        ]
    elif job["job_name"] in sd_jobs.split():
        (static,) = job.pop("static_configs")
        ((host, port),) = (t.rsplit(":", 1) for t in static["targets"])
        job["dns_sd_configs"] = [
            {"names": [host], "type": "A", "port": int(port), "refresh_interval": "5s"}
        ]
        job["relabel_configs"] = [
            {"target_label": label, "replacement": value}
            for label, value in static.get("labels", {}).items()
        ]
class Dumper(yaml.SafeDumper):
    """Indents sequences under their key, as yamllint's default expects."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


with open(dest, "w", encoding="utf-8") as out:
    out.write("---\n" + header)
    out.write(f"# {note}: the microsandbox job finds every replica by DNS (compose/render.sh).\n")
    yaml.dump(config, out, Dumper=Dumper, sort_keys=False)
PY
echo "render: wrote $out/{redis.conf,microsandbox.yaml,nginx-loadbalancer.conf,prometheus.yml,rules/}"
