#!/bin/bash
# scripts/docker-deps.sh -- what the container and multi-host tests and
# `make image` need, from Debian 12's packages: docker.io (the daemon and
# client), docker-compose (v1, 1.29: Debian 12 has no compose v2 plugin),
# debootstrap (the base image when no registry is reachable) and iproute2
# (network namespaces, veth, bridges, tc). Installs what is missing (as root)
# and starts dockerd when it is not running (no systemd needed: it is
# started in the background, logging to /var/log/pdserve-dockerd.log).
#
# Exit 0 when docker answers; 1 with the reason otherwise (the tests then
# print a skip line naming it).
set -u
PKGS="docker.io docker-compose debootstrap iproute2"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "docker-deps: missing Debian packages:$missing (run as root: apt-get install$missing)" >&2
        exit 1
    fi
    echo "docker-deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >/tmp/pdserve-docker-apt.log 2>&1 || {
        echo "docker-deps: apt-get install$missing failed; see /tmp/pdserve-docker-apt.log" >&2
        exit 1
    }
fi
docker_ok() { timeout 10 docker info >/dev/null 2>&1; }
docker_ok && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "docker-deps: dockerd is not running and starting it needs root" >&2
    exit 1
fi
if ! pgrep -x dockerd >/dev/null; then
    echo "docker-deps: starting dockerd (log: /var/log/pdserve-dockerd.log)"
    # setsid: the daemon outlives the make or test that started it.
    setsid dockerd >/var/log/pdserve-dockerd.log 2>&1 </dev/null &
fi
for _ in $(seq 1 60); do
    docker_ok && exit 0
    sleep 0.5
done
echo "docker-deps: dockerd does not answer; last lines of its log:" >&2
tail -n 5 /var/log/pdserve-dockerd.log >&2 2>/dev/null
exit 1
