#!/bin/bash
# CURVE: with security.curve on, every link is authenticated and encrypted;
# the router and the decode workers' KV ingress accept only the public keys
# in security.allowed_keys (ZAP). A client or a worker with an unknown key
# is refused; allowed ones are served, token-identical to pd-run.
. "$(dirname "$0")/lib.sh"
require_model
plan 7
pair() { local k; k=$("$PD_BIN/pd-cli" keygen); PUB=$(echo "$k" | sed -n 's/^public_key: "\(.*\)"$/\1/p'); SEC=$(echo "$k" | sed -n 's/^secret_key: "\(.*\)"$/\1/p'); }
pair; SPUB=$PUB; SSEC=$SEC
pair; WPUB=$PUB; WSEC=$SEC
pair; CPUB=$PUB; CSEC=$SEC
pair; XPUB=$PUB; XSEC=$SEC
SERVER=(--set security.curve=true --set "security.server_public_key=$SPUB"
        --set "security.server_secret_key=$SSEC" --set "security.allowed_keys=$WPUB,$CPUB")
WORKER=(--set security.curve=true --set "security.server_public_key=$SPUB"
        --set "security.client_public_key=$WPUB" --set "security.client_secret_key=$WSEC")
start_router "${SERVER[@]}"
start_worker prefill p1 "${WORKER[@]}"
# A decode worker is a CURVE server too (its KV ingress).
start_worker decode d1 "${WORKER[@]}" --set "security.server_secret_key=$SSEC" \
    --set "security.allowed_keys=$WPUB"
export PD_CURVE_SERVER_KEY=$SPUB PD_CURVE_PUBLIC_KEY=$CPUB PD_CURVE_SECRET_KEY=$CSEC
wait_workers 2
ok "workers with allowed keys register over CURVE"
N=4
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "over CURVE"

out=$(PD_CURVE_PUBLIC_KEY=$XPUB PD_CURVE_SECRET_KEY=$XSEC timeout 20 "$PD_BIN/pd-cli" \
    --router "$ROUTER" generate hello -n 4 --timeout 1500 2>&1)
rc=$?
refused_logged() { grep 'event=peer_refused mechanism=CURVE' "$T/router.log" | grep -qF "key=$XPUB"; }
check "a client with an unknown key is refused" bash -c "[ $rc = 1 ]"
check "the refusal is logged with the client's key" refused_logged
out=$(env -u PD_CURVE_SERVER_KEY timeout 20 "$PD_BIN/pd-cli" --router "$ROUTER" \
    generate hello -n 4 --timeout 1500 2>&1)
check "a plain-text client is not served" test $? = 1
start_worker decode intruder --set security.curve=true --set "security.server_public_key=$SPUB" \
    --set "security.client_public_key=$XPUB" --set "security.client_secret_key=$XSEC" \
    --set "security.server_secret_key=$SSEC"
sleep 1.5
check "a worker with an unknown key never registers" test "$(n_workers)" = 2
