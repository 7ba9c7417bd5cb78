#!/bin/sh
# Installs the Kubernetes manifest checker's dependencies under
# tests/deploy/k8s-check (used by tests/deploy/t_manifests.sh): the npm
# packages kubernetes-models (the API's OpenAPI schemas, compiled) and yaml.
# Only the npm registry is used, and only here: the check itself reads
# nothing from the network.
set -e
cd "$(dirname "$0")/../tests/deploy/k8s-check"
if [ -f node_modules/.pd-installed ] && [ node_modules/.pd-installed -nt package.json ]; then
    exit 0
fi
echo "k8s-deps: npm install (kubernetes-models, yaml) under tests/deploy/k8s-check"
npm install --omit=optional --no-audit --no-fund --loglevel=error 2>&1 | grep -v "Unknown user config" || true
test -f node_modules/kubernetes-models/package.json || { echo "k8s-deps: install failed" >&2; exit 1; }
test -f node_modules/yaml/package.json || { echo "k8s-deps: install failed" >&2; exit 1; }
touch node_modules/.pd-installed
