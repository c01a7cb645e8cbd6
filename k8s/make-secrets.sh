#!/usr/bin/env bash
# Writes OVERLAY/secrets.env, the file the overlay's secretGenerator turns into the
# microsandbox-secrets Secret: a random Redis password and one random auth token
# (hex, so neither needs escaping in a URL). Never overwrites an existing file; the file
# is ignored by git. Add tokens comma-separated (auth-tokens=a,b) to rotate them.
#
#   k8s/make-secrets.sh k8s/overlays/trial
set -euo pipefail
overlay=${1:?usage: k8s/make-secrets.sh OVERLAY_DIR}
[ -f "$overlay/kustomization.yaml" ] || { echo "make-secrets: $overlay has no kustomization.yaml" >&2; exit 2; }
file=$overlay/secrets.env
if [ -e "$file" ]; then
  echo "make-secrets: $file exists; left as it is"
  exit 0
fi
umask 077
{
  echo "redis-password=$(openssl rand -hex 24)"
  echo "auth-tokens=$(openssl rand -hex 24)"
} >"$file"
echo "make-secrets: wrote $file (the auth token is what Reflow appends as &token=...)"
