#!/bin/bash
# make archcheck (scripts/archcheck.sh): the tree passes, and each forbidden
# arrow, planted once in a copy of the tree, makes it fail naming the
# crossing: an #include (engine -> runtime, engine -> ZeroMQ, base ->
# engine, prefill <-> decode, router -> worker, common -> a process folder,
# libpdclient -> engine) and a linked symbol (an engine object calling
# zmq_send, a prefill object calling the decode role, libpdclient carrying
# an engine object).
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
ok() { echo "ok - $*"; }
not_ok() { echo "not ok - $1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | head -5 | sed 's/^/# /'; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# The plan: the clean tree, then one result per plant and per symbols line.
echo "1..$((1 + $(grep -c '^plant ' "$0") + $(grep -c '^symbols ' "$0")))"

out=$(scripts/archcheck.sh --build "$BUILD" 2>&1)
if [ $? = 0 ]; then ok "the tree crosses no forbidden arrow ($(echo "$out" | grep '^#' | tr -d '#' | tr '\n' ';'))"
else not_ok "the tree crosses no forbidden arrow" "$out"; fi

DIRS=(common proto prefill_worker decode_worker worker router client tools)
# plant FILE LINE EXPECT NAME: a copy of the sources with LINE added after
# FILE's first #include; archcheck must fail with EXPECT in its output.
plant() {
    local file=$1 line=$2 expect=$3 name=$4
    rm -rf "$T/src"
    mkdir -p "$T/src"
    cp -r "${DIRS[@]}" "$T/src/"
    awk -v l="$line" '{ print } !done && /^#include/ { print l; done = 1 }' "$file" >"$T/src/$file"
    local o rc
    o=$(scripts/archcheck.sh --src "$T/src" 2>&1)
    rc=$?
    if [ $rc = 1 ] && echo "$o" | grep -qF "$expect"; then
        ok "planted $name: archcheck fails ($(echo "$o" | grep -F "$expect" | head -1))"
    else
        not_ok "planted $name: archcheck fails naming '$expect'" "rc=$rc $o"
    fi
}
plant common/engine/kvcache.c '#include "runtime/net.h"' \
    'common/engine/kvcache.c:' "engine -> runtime"
plant common/engine/forward.c '#include <zmq.h>' 'engine -> <zmq.h>' "engine -> ZeroMQ"
plant common/engine/sampler.c '#include "proto/codec.h"' 'engine -> proto' "engine -> proto"
plant common/base/log.c '#include "engine/model.h"' 'base -> engine' "base -> engine"
plant prefill_worker/prefill.c '#include "decode_worker/decode.h"' \
    'prefill_worker -> decode_worker' "prefill -> decode"
plant decode_worker/batch.c '#include "prefill_worker/prefill.h"' \
    'decode_worker -> prefill_worker' "decode -> prefill"
plant router/sched.c '#include "worker/worker.h"' 'router -> worker' "router -> worker"
plant router/router.c '#include "prefill_worker/prefill.h"' 'router -> prefill_worker' \
    "router -> prefill role"
plant common/runtime/net.c '#include "router/router.h"' 'runtime -> router' "common -> router"
plant client/pdclient.c '#include "engine/tokenizer.h"' 'client_lib -> engine' \
    "libpdclient -> engine"

# Symbols: a copy of the build's objects with one planted crossing each.
symbols() { # NAME EXPECT SETUP...
    local name=$1 expect=$2
    shift 2
    rm -rf "$T/b"
    mkdir -p "$T/b"
    cp -r "$BUILD/obj" "$BUILD/lib" "$T/b/"
    "$@" || { not_ok "planted $name: setup"; return; }
    local o rc
    o=$(scripts/archcheck.sh --build "$T/b" 2>&1)
    rc=$?
    if [ $rc = 1 ] && echo "$o" | grep -qF "$expect"; then
        ok "planted $name: archcheck fails ($(echo "$o" | grep -F "$expect" | head -1))"
    else
        not_ok "planted $name: archcheck fails naming '$expect'" "rc=$rc $o"
    fi
}
cc_obj() { # OBJ CODE
    printf '%s\n' "$2" >"$T/p.c" && ${CC:-cc} -c "$T/p.c" -o "$1"
}
symbols "engine object calling zmq_send" 'planted.o: zmq_send' \
    cc_obj "$T/b/obj/common/engine/planted.o" \
    'int zmq_send(void *, const void *, unsigned long, int); int f(void) { return zmq_send(0, 0, 0, 0); }'
symbols "engine object calling the runtime" 'planted.o: pd_net_close' \
    cc_obj "$T/b/obj/common/engine/planted.o" \
    'void pd_net_close(void *); void f(void) { pd_net_close(0); }'
symbols "prefill object calling the decode role" 'planted.o: pd_decode_take' \
    cc_obj "$T/b/obj/prefill_worker/planted.o" \
    'int pd_decode_take(void *, void *); int f(void) { return pd_decode_take(0, 0); }'
symbols "libpdclient carrying an engine object" 'libpdclient.a defines pd_tok_' \
    ar r "$T/b/lib/libpdclient.a" "$BUILD/obj/common/engine/tokenizer.o"
