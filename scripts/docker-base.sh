#!/bin/bash
# scripts/docker-base.sh -- make sure the image deploy/Dockerfile builds FROM
# (debian:bookworm-slim) exists in the local docker daemon.
#
#   1. already present: nothing to do;
#   2. `docker pull` works (a registry is reachable): pulled;
#   3. otherwise it is built here, and the script says so: `debootstrap
#      --variant=minbase bookworm` from the Debian mirror apt is configured
#      with (/etc/apt/sources.list*), trimmed like the official slim image
#      (no docs, man pages, locales or apt lists), then `docker import`ed
#      under the same tag, labelled org.pdserve.base=debootstrap.
#
# Env: BASE_IMAGE (default debian:bookworm-slim), DEBIAN_MIRROR (default: the
# first Debian URI in apt's sources), DOCKER (default docker).
# Needs root for debootstrap (the image build already needs the daemon).
set -euo pipefail
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
DOCKER=${DOCKER:-docker}
SUITE=bookworm

if $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    exit 0
fi
if timeout 60 $DOCKER pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "docker-base: pulled $BASE_IMAGE"
    exit 0
fi
echo "docker-base: $BASE_IMAGE cannot be pulled (no registry reachable);" \
    "building it locally with debootstrap --variant=minbase $SUITE"

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # deb822 (.sources: "URIs: ...") or one-line ("deb URI suite ...") entries;
    # the first one that serves the main suite (not -security).
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { u = $2 } /^Suites:/ && u ~ /debian\/?$/ && u !~ /security/ { print u; exit }')
    [ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" && $2 ~ /debian\/?$/ && $2 !~ /security/ { print $2; exit }')
fi
[ -n "$mirror" ] || { echo "docker-base: no Debian mirror in apt's sources; set DEBIAN_MIRROR" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "docker-base: debootstrap missing (scripts/docker-deps.sh)" >&2; exit 1; }

root=$(mktemp -d /tmp/pd-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
t0=$SECONDS
debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || {
    echo "docker-base: debootstrap failed; last lines of $root.log:" >&2
    tail -n 20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"
# What the official slim image leaves out (docker-library/debian's slimify):
# documentation, man pages, non-English locales, apt's caches and lists.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
# apt inside the image keeps no downloaded packages or caches, as in the
# official image (its /etc/apt/apt.conf.d/docker-*).
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
# The image's apt uses the same mirror this machine's apt uses.
echo "deb $mirror $SUITE main" >"$root/etc/apt/sources.list"
tar -C "$root" --numeric-owner -c . |
    $DOCKER import --change 'CMD ["bash"]' \
        --change 'LABEL org.pdserve.base=debootstrap' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$BASE_IMAGE" >/dev/null
echo "docker-base: built $BASE_IMAGE locally in $((SECONDS - t0)) s" \
    "($($DOCKER image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
