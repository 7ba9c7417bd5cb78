#!/bin/bash
# CURVE encrypts the wire: a real packet capture (tcpdump on lo) of the
# client<->router, router<->worker and prefill->decode KV links while a
# request with a distinctive prompt runs shows neither the prompt text, nor
# its token ids as the router sends them (packed protobuf varints), nor the
# prefill worker's id that every KV transfer header carries. The control:
# the same capture without CURVE shows all three, each on its link, so the
# check can fail. Both captures must see real traffic on every link (the
# KV link at least one 32 KiB block).
# Skips only when tcpdump is missing or cannot capture on lo (not root /
# no CAP_NET_RAW); scripts/deps.sh installs it.
. "$(dirname "$0")/lib.sh"
require_model
plan 10
command -v tcpdump >/dev/null 2>&1 || skip_all "tcpdump not installed (scripts/deps.sh)"
probe=$(timeout 5 tcpdump -i lo -c 1 -w /dev/null 'tcp port 9' 2>&1 >/dev/null)
echo "$probe" | grep -q 'listening on lo' ||
    skip_all "tcpdump cannot capture on lo here: $(echo "$probe" | head -1)"

PROMPT="zanzibar quokka marmalade telescope"
MARKER=p1-kvmarker-Qx7
hex() { printf '%s' "$1" | od -An -tx1 | tr -d ' \n'; }
ids=$("$PD_BIN/pd-tokenize" -m "$MODEL" --no-special --hex "$(hex "$PROMPT")")
[ -n "$ids" ] && [ "${ids#ERR}" = "$ids" ] || { not_ok "prompt tokenizes" "$ids"; exit 1; }
# The ids as a packed repeated int32 carries them: one varint each.
TOKHEX=$(node -e '
    let h = "";
    for (let v of process.argv[1].trim().split(/\s+/).map(Number)) {
        do { let b = v & 127; v >>>= 7; if (v) b |= 128; h += b.toString(16).padStart(2, "0"); } while (v);
    }
    console.log(h);' "$ids")

pair() { local k; k=$("$PD_BIN/pd-cli" keygen); PUB=$(echo "$k" | sed -n 's/^public_key: "\(.*\)"$/\1/p'); SEC=$(echo "$k" | sed -n 's/^secret_key: "\(.*\)"$/\1/p'); }
pair; SPUB=$PUB; SSEC=$SEC
pair; WPUB=$PUB; WSEC=$SEC
pair; CPUB=$PUB; CSEC=$SEC

# capture NAME [curve]: a fresh cluster, a capture of its three links while
# one request runs, then the cluster stopped. Leaves $T/NAME.json
# (pcap_find.mjs) and $T/NAME.out (the stream).
capture() {
    local name=$1 curve=${2:-} r=() wk=() dk=()
    if [ -n "$curve" ]; then
        r=(--set security.curve=true --set "security.server_public_key=$SPUB"
           --set "security.server_secret_key=$SSEC" --set "security.allowed_keys=$WPUB,$CPUB")
        wk=(--set security.curve=true --set "security.server_public_key=$SPUB"
            --set "security.client_public_key=$WPUB" --set "security.client_secret_key=$WSEC")
        dk=("${wk[@]}" --set "security.server_secret_key=$SSEC" --set "security.allowed_keys=$WPUB")
        export PD_CURVE_SERVER_KEY=$SPUB PD_CURVE_PUBLIC_KEY=$CPUB PD_CURVE_SECRET_KEY=$CSEC
    else
        unset PD_CURVE_SERVER_KEY PD_CURVE_PUBLIC_KEY PD_CURVE_SECRET_KEY
    fi
    start_router "${r[@]}"
    local rp=$ROUTER_PID
    start_worker prefill $MARKER "${wk[@]}"
    local pp=$LAST_PID
    start_worker decode d1 "${dk[@]}"
    local dp=$LAST_PID
    wait_workers 2
    local kv c=${ROUTER##*:} w=${ROUTER_W##*:}
    kv=$(status_field 's.workers.find(w => w.id == "d1").kv_endpoint')
    kv=${kv##*:}
    tcpdump -i lo --immediate-mode -U -s 0 -w "$T/$name.pcap" "tcp and (port $c or port $w or port $kv)" \
        2>"$T/$name.tcpdump" &
    local tp=$!
    PIDS+=($tp)
    for _ in $(seq 1 100); do
        grep -q 'listening on' "$T/$name.tcpdump" && break
        sleep 0.05
    done
    cli generate "$PROMPT" -n 16 --ignore-eos --json >"$T/$name.out" 2>"$T/$name.err"
    echo $? >"$T/$name.rc"
    sleep 0.3 # the last segments (FIN of the client link) reach tcpdump
    kill -INT $tp
    wait $tp
    kill -TERM $rp $pp $dp
    wait $rp $pp $dp
    node tests/cluster/pcap_find.mjs "$T/$name.pcap" client=$c worker=$w kv=$kv -- \
        prompt="$(hex "$PROMPT")" tokens="$TOKHEX" marker="$(hex $MARKER)" >"$T/$name.json"
    echo "# $name: $(cat "$T/$name.json")"
}

# field NAME 'expr on j' -- a value from $T/NAME.json
field() { node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1])); console.log(eval(process.argv[2]));' "$T/$1.json" "$2"; }
served() { [ "$(cat "$T/$1.rc")" = 0 ] && grep -q '"final":true' "$T/$1.out"; }
traffic() { # NAME: every link carried bytes; the KV link at least one block
    [ "$(field "$1" 'j.links.client.bytes > 200 && j.links.worker.bytes > 200 &&
        j.links.kv.bytes >= 32768')" = true ]
}

capture plain
check "plain: the request is served" served plain
check "plain: the capture saw every link ($(field plain 'Object.entries(j.links).map(([k, l]) => k + "=" + l.bytes).join(" ")') bytes)" traffic plain
check "plain (control): the prompt text is on the client link" \
    test "$(field plain j.links.client.found.prompt)" = true
check "plain (control): the prompt's token ids are on the worker link" \
    test "$(field plain j.links.worker.found.tokens)" = true
check "plain (control): the KV headers' worker id is on the KV link" \
    test "$(field plain j.links.kv.found.marker)" = true

capture curve on
check "CURVE: the request is served" served curve
check "CURVE: the capture saw every link ($(field curve 'Object.entries(j.links).map(([k, l]) => k + "=" + l.bytes).join(" ")') bytes)" traffic curve
check "CURVE: no link shows the prompt text" \
    test "$(field curve 'Object.values(j.links).some(l => l.found.prompt)')" = false
check "CURVE: no link shows the prompt's token ids" \
    test "$(field curve 'Object.values(j.links).some(l => l.found.tokens)')" = false
check "CURVE: no link shows the KV headers' worker id" \
    test "$(field curve 'Object.values(j.links).some(l => l.found.marker)')" = false
