#!/bin/bash
# `make archcheck`: fails when an #include or a linked symbol crosses an
# arrow the architecture forbids (docs/architecture.md "Where the code is").
#
#   scripts/archcheck.sh [--src DIR] [--build DIR]
#
# --src   the tree whose sources are scanned (default: the repository)
# --build a build directory whose objects and libraries are checked with nm
#         (default: none, includes only)
#
# What may include what (a folder may always include its own files):
#   common/base      base
#   common/engine    base (and no ZeroMQ, protobuf-c or libyaml header)
#   proto            base, engine
#   common/runtime   base, engine, proto
#   prefill_worker   base, engine, proto, runtime         (never decode_worker)
#   decode_worker    base, engine, proto, runtime         (never prefill_worker)
#   worker           base, engine, proto, runtime, prefill_worker, decode_worker
#   prefill_worker/main.c, decode_worker/main.c   base, proto, worker, their
#                    own folder (each binary's entry runs worker/'s process)
#   router           base, engine, proto, runtime         (never a worker folder)
#   client (libpdclient: pdclient, httpc)  base, proto, runtime (no engine)
#   client (pd-*.c, bench/: pd-bench)  base, engine, proto, runtime, client
#   tools            base, engine, proto, runtime
# So common/ never includes a process folder.
#
# What may link what (nm on the objects of --build):
#   engine and base objects reference nothing the runtime or proto define,
#   nor zmq_*, protobuf_c_*, yaml_*; base references nothing of the engine;
#   prefill role objects nothing the decode role defines, and back;
#   router objects nothing a worker folder defines; common/ and proto/
#   objects nothing a process folder defines; libpdclient.a neither defines
#   nor references anything the engine defines.
#
# Prints each crossing as "where: what" and ends with one summary line;
# exits 1 when there is any.
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=""
while [ $# -gt 0 ]; do
    case "$1" in
    --src) SRC=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    *) echo "usage: $0 [--src DIR] [--build DIR]" >&2; exit 2 ;;
    esac
done
cd "$SRC" || exit 2
crossings=0
cross() { echo "$1"; crossings=$((crossings + 1)); }

# ====== Includes ======

# The folder (layer) a source path belongs to, or "" outside the checked tree.
layer_of() {
    case "$1" in
    common/base/*) echo base ;;
    common/engine/*) echo engine ;;
    common/runtime/*) echo runtime ;;
    common/*) echo common ;;
    proto/*) echo proto ;;
    prefill_worker/main.c) echo prefill_main ;;
    decode_worker/main.c) echo decode_main ;;
    prefill_worker/*) echo prefill_worker ;;
    decode_worker/*) echo decode_worker ;;
    worker/*) echo worker ;;
    router/*) echo router ;;
    client/pd-*.c | client/bench/*) echo client_bin ;;
    client/*) echo client_lib ;;
    tools/*) echo tools ;;
    *) echo "" ;;
    esac
}

# Layers a layer may include (its own always).
allowed_for() {
    case "$1" in
    base) echo "base" ;;
    engine) echo "base engine" ;;
    proto) echo "base engine proto" ;;
    runtime) echo "base engine proto runtime" ;;
    prefill_worker) echo "base engine proto runtime prefill_worker" ;;
    decode_worker) echo "base engine proto runtime decode_worker" ;;
    worker) echo "base engine proto runtime prefill_worker decode_worker worker" ;;
    prefill_main) echo "base proto prefill_worker worker" ;;
    decode_main) echo "base proto decode_worker worker" ;;
    router) echo "base engine proto runtime router" ;;
    client_lib) echo "base proto runtime client_lib" ;;
    client_bin) echo "base engine proto runtime client_lib client_bin" ;;
    tools) echo "base engine proto runtime tools" ;;
    *) echo "" ;;
    esac
}

# Where "inc" included from file resolves: the file's folder first, then the
# build's -I paths (., common, client); generated headers are proto's.
resolve() {
    local file=$1 inc=$2 d
    d=$(dirname "$file")
    case "$inc" in *..*) echo ""; return ;; esac # no climbing out of the layers
    for cand in "$d/$inc" "$inc" "common/$inc" "client/$inc"; do
        [ -e "$cand" ] && { echo "$cand"; return; }
    done
    case "$inc" in proto/*) echo "$inc" ;; *) echo "" ;; esac
}

n_files=0
n_includes=0
mapfile -t files < <(find common proto prefill_worker decode_worker worker router client tools \
    -name '*.[ch]' 2>/dev/null | sort)
for f in "${files[@]}"; do
    from=$(layer_of "$f")
    [ -n "$from" ] || continue
    n_files=$((n_files + 1))
    allowed=" $(allowed_for "$from") "
    while IFS=: read -r line text; do
        n_includes=$((n_includes + 1))
        if [[ $text =~ \#[[:space:]]*include[[:space:]]*\<([^>]*)\> ]]; then
            sys=${BASH_REMATCH[1]}
            if [ "$from" = engine ] || [ "$from" = base ]; then
                case "$sys" in
                zmq.h | zmq_utils.h | protobuf-c/* | yaml.h)
                    cross "$f:$line: $from -> <$sys>: the engine links no ZeroMQ, protobuf-c or libyaml" ;;
                esac
            fi
            continue
        fi
        [[ $text =~ \#[[:space:]]*include[[:space:]]*\"([^\"]*)\" ]] || continue
        inc=${BASH_REMATCH[1]}
        target=$(resolve "$f" "$inc")
        to=$(layer_of "$target")
        if [ -z "$target" ]; then
            cross "$f:$line: #include \"$inc\" resolves to no file of the tree"
        elif [ -z "$to" ] || [ "$to" = common ]; then
            cross "$f:$line: $from -> $target: outside the layers"
        elif [[ $allowed != *" $to "* ]]; then
            cross "$f:$line: $from -> $to: #include \"$inc\" crosses a forbidden arrow"
        fi
    done < <(grep -n -E '^[[:space:]]*#[[:space:]]*include' "$f")
done
echo "# includes: $n_includes in $n_files files"

# ====== Symbols ======

if [ -n "$BUILD" ]; then
    OBJ=$BUILD/obj
    if [ ! -d "$OBJ" ]; then
        echo "archcheck: $OBJ: no objects (make all first)" >&2
        exit 2
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    objs() { # DIR... -> object paths (main.o of a role folder excluded with -m)
        local nomain=0
        [ "$1" = -m ] && { nomain=1; shift; }
        for d in "$@"; do
            [ -d "$OBJ/$d" ] || continue
            find "$OBJ/$d" -maxdepth 1 -name '*.o' | { if [ $nomain = 1 ]; then grep -v '/main\.o$'; else cat; fi; }
        done | sort
    }
    defined() { [ $# -gt 0 ] && nm -g --defined-only "$@" 2>/dev/null | awk 'NF == 3 { print $3 }' | sort -u; }
    # undef_in SET_FILE OBJ...: "obj: symbol" for each undefined symbol in SET_FILE
    undef_in() {
        local set=$1 o
        shift
        for o in "$@"; do
            nm -u "$o" 2>/dev/null | awk '{ print $NF }' | sort -u | comm -12 - "$set" |
                sed "s|^|$o: |"
        done
    }
    mapfile -t base_o < <(objs common/base)
    mapfile -t engine_o < <(objs common/engine)
    mapfile -t runtime_o < <(objs common/runtime proto gen gen/proto)
    mapfile -t prefill_o < <(objs -m prefill_worker)
    mapfile -t decode_o < <(objs -m decode_worker)
    mapfile -t worker_o < <(objs worker)
    mapfile -t router_o < <(objs router)
    mapfile -t process_o < <(objs prefill_worker decode_worker worker router client tools)
    defined "${runtime_o[@]}" >"$tmp/runtime"
    defined "${engine_o[@]}" >"$tmp/engine"
    defined "${prefill_o[@]}" >"$tmp/prefill"
    defined "${decode_o[@]}" >"$tmp/decode"
    defined "${prefill_o[@]}" "${decode_o[@]}" "${worker_o[@]}" >"$tmp/workers"
    defined "${process_o[@]}" >"$tmp/process"
    for o in "${base_o[@]}" "${engine_o[@]}"; do
        nm -u "$o" | awk '{ print $NF }' | grep -E '^(zmq_|protobuf_c_|yaml_)' |
            sed "s|^|$o: |"
    done >"$tmp/x1"
    undef_in "$tmp/runtime" "${base_o[@]}" "${engine_o[@]}" >>"$tmp/x1"
    while read -r l; do cross "$l: the engine and base link nothing of the runtime, proto, ZeroMQ, protobuf-c or libyaml"; done <"$tmp/x1"
    while read -r l; do cross "$l: base links nothing of the engine"; done < <(undef_in "$tmp/engine" "${base_o[@]}")
    while read -r l; do cross "$l: the prefill role links nothing of the decode role"; done < <(undef_in "$tmp/decode" "${prefill_o[@]}")
    while read -r l; do cross "$l: the decode role links nothing of the prefill role"; done < <(undef_in "$tmp/prefill" "${decode_o[@]}")
    while read -r l; do cross "$l: the router links nothing of a worker"; done < <(undef_in "$tmp/workers" "${router_o[@]}")
    while read -r l; do cross "$l: common/ and proto/ link nothing of a process folder"; done < <(undef_in "$tmp/process" "${base_o[@]}" "${engine_o[@]}" "${runtime_o[@]}")
    lib=$BUILD/lib/libpdclient.a
    if [ -e "$lib" ]; then
        { nm -g --defined-only "$lib" 2>/dev/null | awk 'NF == 3 { print $3 }' | sort -u |
            comm -12 - "$tmp/engine" | sed "s|^|$lib defines |"
          nm -u "$lib" 2>/dev/null | awk 'NF >= 2 { print $NF }' | sort -u |
            comm -12 - "$tmp/engine" | sed "s|^|$lib references |"
        } >"$tmp/x2"
        while read -r l; do cross "$l: libpdclient carries no engine"; done <"$tmp/x2"
    fi
    echo "# symbols: $(( ${#base_o[@]} + ${#engine_o[@]} + ${#runtime_o[@]} + ${#process_o[@]} )) objects"
fi

if [ $crossings -gt 0 ]; then
    echo "archcheck: $crossings forbidden crossing(s)"
    exit 1
fi
echo "archcheck: ok"
