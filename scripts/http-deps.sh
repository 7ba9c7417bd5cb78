#!/bin/sh
# Installs the HTTP front's test dependencies under tests/http: the official
# `openai` npm client and `parse-prometheus-text-format` (used by
# tests/cluster/t_http.sh). Only the npm registry is used.
set -e
cd "$(dirname "$0")/../tests/http"
if [ -f node_modules/.pd-installed ] && [ node_modules/.pd-installed -nt package.json ]; then
    exit 0
fi
echo "http-deps: npm install (openai, parse-prometheus-text-format) under tests/http"
npm install --omit=optional --no-audit --no-fund --loglevel=error 2>&1 | grep -v "Unknown user config" || true
test -f node_modules/openai/package.json || { echo "http-deps: install failed" >&2; exit 1; }
test -f node_modules/parse-prometheus-text-format/package.json || { echo "http-deps: install failed" >&2; exit 1; }
touch node_modules/.pd-installed
