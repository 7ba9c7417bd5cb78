#!/bin/bash
# deploy/keys.sh -- CURVE keys for a pdserve cluster, one file per role.
#
#   deploy/keys.sh DIR          writes into DIR (created, mode 700):
#     router.yaml   security: the router's key pair; allowed: the workers', the clients' and
#                   its HTTP front's keys (the front is a client of the router: its pair too)
#     prefill.yaml  security: the router's public key; the workers' key pair
#     decode.yaml   the same, and the router's key pair with the workers' key as the only
#                   one allowed on its KV port (a decode worker is a CURVE server too)
#     client.env    PD_CURVE_SERVER_KEY, PD_CURVE_PUBLIC_KEY, PD_CURVE_SECRET_KEY for
#                   pd-cli, pd-bench and libpdclient (`set -a; . DIR/client.env; set +a`)
#   deploy/keys.sh DIR --add-client NAME
#                   another client key pair (DIR/client-NAME.env), its public key added
#                   to router.yaml's allow-list (restart the router to apply)
#
# Each .yaml is a config file holding only a `security` section: load it after
# the cluster's config (--config BASE --config DIR/ROLE.yaml, PD_CONFIG_EXTRA in
# the image, a compose secret or a Kubernetes Secret). Files are mode 600; when
# run as root they are given to uid 10001, the image's pdserve user, so that a
# container can read them (otherwise: chown 10001 DIR/*.yaml).
# Keys come from pd-cli keygen ($BUILD/bin/pd-cli, else the pdserve:latest image).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: deploy/keys.sh DIR [--add-client NAME]}
BUILD=${BUILD:-build}

keygen() { # sets PUB and SEC
    local k
    if [ -x "$BUILD/bin/pd-cli" ]; then
        k=$("$BUILD/bin/pd-cli" keygen)
    else
        k=$(docker run --rm pdserve:latest keygen)
    fi
    PUB=$(echo "$k" | sed -n 's/^public_key: "\(.*\)"$/\1/p')
    SEC=$(echo "$k" | sed -n 's/^secret_key: "\(.*\)"$/\1/p')
    [ ${#PUB} = 40 ] && [ ${#SEC} = 40 ] || { echo "keys: pd-cli keygen failed" >&2; exit 1; }
}

write() { # FILE: stdin into FILE, mode 600, owned by the image's user when root
    (umask 077 && cat >"$1")
    [ "$(id -u)" = 0 ] && chown 10001:10001 "$1"
    return 0
}

# Z85 keys may contain characters YAML treats specially: single-quoted.
q() { printf "'%s'" "$1"; }

if [ "${2:-}" = --add-client ]; then
    name=${3:?--add-client NAME}
    [[ $name =~ ^[A-Za-z0-9_-]{1,32}$ ]] || { echo "keys: NAME: letters, digits, - and _" >&2; exit 2; }
    [ -f "$DIR/router.yaml" ] || { echo "keys: $DIR/router.yaml missing: run deploy/keys.sh $DIR first" >&2; exit 1; }
    server=$(sed -n "s/^  server_public_key: '\(.*\)'$/\1/p" "$DIR/router.yaml")
    keygen
    printf 'PD_CURVE_SERVER_KEY=%s\nPD_CURVE_PUBLIC_KEY=%s\nPD_CURVE_SECRET_KEY=%s\n' \
        "$(q "$server")" "$(q "$PUB")" "$(q "$SEC")" | write "$DIR/client-$name.env"
    sed "s/^  allowed_keys: \[\(.*\)\]$/  allowed_keys: [\1, $(q "$PUB" | sed 's/[&/\]/\\&/g')]/" \
        "$DIR/router.yaml" | write "$DIR/router.yaml.new"
    mv "$DIR/router.yaml.new" "$DIR/router.yaml"
    echo "keys: client $name: $DIR/client-$name.env; its key is allowed in $DIR/router.yaml (restart the router)"
    exit 0
fi

mkdir -p "$DIR"
chmod 700 "$DIR"
keygen; SPUB=$PUB; SSEC=$SEC   # the router (and the decode workers' KV port)
keygen; WPUB=$PUB; WSEC=$SEC   # every worker
keygen; CPUB=$PUB; CSEC=$SEC   # clients
keygen; HPUB=$PUB; HSEC=$SEC   # the router's HTTP front, a client of the router
write "$DIR/router.yaml" <<EOF
security:
  curve: true
  server_public_key: $(q "$SPUB")
  server_secret_key: $(q "$SSEC")
  client_public_key: $(q "$HPUB")
  client_secret_key: $(q "$HSEC")
  allowed_keys: [$(q "$WPUB"), $(q "$HPUB"), $(q "$CPUB")]
EOF
write "$DIR/prefill.yaml" <<EOF
security:
  curve: true
  server_public_key: $(q "$SPUB")
  client_public_key: $(q "$WPUB")
  client_secret_key: $(q "$WSEC")
EOF
write "$DIR/decode.yaml" <<EOF
security:
  curve: true
  server_public_key: $(q "$SPUB")
  server_secret_key: $(q "$SSEC")
  client_public_key: $(q "$WPUB")
  client_secret_key: $(q "$WSEC")
  allowed_keys: [$(q "$WPUB")]
EOF
write "$DIR/client.env" <<EOF
PD_CURVE_SERVER_KEY=$(q "$SPUB")
PD_CURVE_PUBLIC_KEY=$(q "$CPUB")
PD_CURVE_SECRET_KEY=$(q "$CSEC")
EOF
echo "keys: wrote $DIR/router.yaml, prefill.yaml, decode.yaml (configs with a security section)" \
    "and client.env (for pd-cli: set -a; . $DIR/client.env; set +a)"
