#!/bin/sh
# Installs the Debian packages pdserve needs, only those missing.
# Needs root (or sudo) when something is missing; says so clearly.
set -e
PKGS="build-essential pkg-config libzmq3-dev libsodium-dev libprotobuf-c-dev protobuf-c-compiler \
libopenblas-dev libyaml-dev libjemalloc-dev libmicrohttpd-dev libjansson-dev libpcre2-dev \
libxxhash-dev libcmocka-dev clang libclang-rt-14-dev gnuplot-nox nodejs npm cppcheck tcpdump curl"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        # nodejs/npm may come from elsewhere (nodesource, nvm): a working node is enough.
        case "$p" in
        nodejs) command -v node >/dev/null 2>&1 && continue ;;
        npm) command -v npm >/dev/null 2>&1 && continue ;;
        esac
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
echo "deps: missing Debian packages:$missing"
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
        echo "deps: not root; installing with sudo (you may be asked for a password)"
    else
        echo "deps: installing them needs root. Run as root: apt-get install$missing" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
