#!/bin/bash
# `make fuzz`: builds every tests/fuzz/fuzz_<name>.c as a libFuzzer target
# (clang, ASan + UBSan) linked against common/**/*.c, and runs each one for a
# fixed number of inputs. Prints one TAP line per target:
#   ok - fuzz_<name> (N runs)      /      not ok - fuzz_<name> ...
#
#   scripts/fuzz.sh [name ...]     only these targets (e.g. "gguf")
#
# Env:
#   FUZZ_RUNS      inputs per target (default 20000)
#   FUZZ_BUILD     build directory (default build-fuzz)
#   FUZZ_MAX_TIME  seconds per target, 0 = no limit (default 0)
#   FUZZ_CC        compiler (default clang)
#
# Seeds come from tests/fuzz/corpus/<name>/ (read only); new inputs that
# libFuzzer finds go to $FUZZ_BUILD/corpus/<name>/, crashes to
# $FUZZ_BUILD/crashes/. A dictionary tests/fuzz/<name>.dict is used if present.
# A target that needs sources beyond common/**/*.c names them on a line
#   // fuzz-sources: router/router.c router/requests.c
# (or " * fuzz-sources: ..." inside a comment); they are compiled like
# common/**/*.c and linked into that target only.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${FUZZ_BUILD:-build-fuzz}
RUNS=${FUZZ_RUNS:-20000}
MAX_TIME=${FUZZ_MAX_TIME:-0}
CC=${FUZZ_CC:-clang}
JOBS=$(nproc 2>/dev/null || echo 2)

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "fuzz: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2
    exit 1
fi

PKGS=$(sed -n 's/^PKGS[[:space:]]*:=[[:space:]]*//p' Makefile)
# shellcheck disable=SC2086 # PKGS is a list
PKG_CFLAGS=$(pkg-config --cflags $PKGS 2>/dev/null)
# shellcheck disable=SC2086
PKG_LIBS=$(pkg-config --libs $PKGS 2>/dev/null)
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -D_GNU_SOURCE -O1 -g -pthread -I . -I common -I $OUT/gen -I client $PKG_CFLAGS"

mkdir -p "$OUT/obj" "$OUT/gen/proto" "$OUT/logs" "$OUT/crashes"
# One fuzz build at a time per build dir (make test and make asan may overlap).
exec 9>"$OUT/.lock"
flock 9

# ====== Generated protobuf code (some common/**/*.c include it) ======

for p in proto/*.proto; do
    [ -e "$p" ] || continue
    base=$(basename "$p" .proto)
    if [ ! -e "$OUT/gen/proto/$base.pb-c.c" ] || [ "$p" -nt "$OUT/gen/proto/$base.pb-c.c" ]; then
        protoc-c --proto_path=proto --c_out="$OUT/gen/proto" "$p" || echo "fuzz: protoc-c failed on $p" >&2
    fi
done

# ====== Objects (rebuilt when the source or any common header is newer) ======

# shellcheck disable=SC2012 # our own file names
newest_header=$(ls -t common/*.h common/*/*.h proto/*.h router/*.h "$OUT"/gen/proto/*.h 2>/dev/null | head -1)

compile_one() {
    local src=$1 objdir=${2:-$OUT/obj} obj extra=""
    obj=$objdir/$(echo "$src" | tr '/' '_' | sed 's/\.c$/.o/')
    case "$src" in
    *_avx2.c) extra="-mavx2 -mfma -mf16c" ;;
    *_avx512.c) extra="-mavx2 -mfma -mf16c -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx512vnni" ;;
    esac
    # Up to date: an object (or a recorded failure) newer than its inputs.
    for done_file in "$obj" "$obj.failed"; do
        if [ -e "$done_file" ] && [ ! "$src" -nt "$done_file" ] &&
            { [ -z "$NEWEST_HEADER" ] || [ ! "$NEWEST_HEADER" -nt "$done_file" ]; }; then
            [ "$done_file" = "$obj.failed" ] &&
                echo "fuzz: warning: $src does not compile with $CC (skipped; see $obj.log)" >&2
            return 0
        fi
    done
    rm -f "$obj" "$obj.failed"
    # shellcheck disable=SC2086
    if ! $CC $CFLAGS $SAN -fsanitize=fuzzer-no-link $extra -w -c "$src" -o "$obj" 2>"$obj.log"; then
        rm -f "$obj"
        touch "$obj.failed"
        echo "fuzz: warning: $src does not compile with $CC (skipped; see $obj.log)" >&2
    fi
}
export -f compile_one
export OUT CC CFLAGS SAN NEWEST_HEADER="$newest_header"

mapfile -t common_src < <(find common proto "$OUT/gen/proto" -name '*.c' | sort)
# shellcheck disable=SC2016 # $1 expands in the child bash
printf '%s\0' "${common_src[@]}" | xargs -0 -r -n 1 -P "$JOBS" bash -c 'compile_one "$1"' _
# The archive holds the objects of today's sources only: an object left by a
# file since moved or removed must not stand in for the new one.
common_obj=()
for src in "${common_src[@]}"; do
    obj=$OUT/obj/$(echo "$src" | tr '/' '_' | sed 's/\.c$/.o/')
    [ -e "$obj" ] && common_obj+=("$obj")
done
rm -f "$OUT/libfuzzcommon.a"
ar rcs "$OUT/libfuzzcommon.a" "${common_obj[@]}"

# ====== Targets ======

targets=()
if [ $# -gt 0 ]; then
    for n in "$@"; do targets+=("tests/fuzz/fuzz_${n#fuzz_}.c"); done
else
    for f in tests/fuzz/fuzz_*.c; do [ -e "$f" ] && targets+=("$f"); done
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no targets in tests/fuzz/" >&2
    exit 1
fi

failed=0
for src in "${targets[@]}"; do
    name=$(basename "$src" .c)        # fuzz_gguf
    short=${name#fuzz_}               # gguf
    bin=$OUT/$name
    log=$OUT/logs/$name.log
    extra_objs=()
    extra_inc=()
    extra_src=$(sed -n 's/^[[:space:]/*]*fuzz-sources:[[:space:]]*//p' "$src" | head -1)
    mkdir -p "$OUT/obj-extra"
    for e in $extra_src; do
        compile_one "$e" "$OUT/obj-extra"
        eobj=$OUT/obj-extra/$(echo "$e" | tr '/' '_' | sed 's/\.c$/.o/')
        [ -e "$eobj" ] && extra_objs+=("$eobj")
        extra_inc+=("-I" "$(dirname "$e")")
    done
    # shellcheck disable=SC2086
    if ! $CC $CFLAGS $SAN -fsanitize=fuzzer "${extra_inc[@]}" "$src" "${extra_objs[@]}" "$OUT/libfuzzcommon.a" \
        -o "$bin" $PKG_LIBS -lm 2>"$log"; then
        echo "not ok - $name (build failed)"
        sed 's/^/# /' "$log" | head -20
        failed=$((failed + 1))
        continue
    fi
    mkdir -p "$OUT/corpus/$short"
    dirs=("$OUT/corpus/$short")
    [ -d "tests/fuzz/corpus/$short" ] && dirs+=("tests/fuzz/corpus/$short")
    dict=()
    [ -f "tests/fuzz/$short.dict" ] && dict=("-dict=tests/fuzz/$short.dict")
    t0=$SECONDS
    "$bin" -runs="$RUNS" -max_total_time="$MAX_TIME" -malloc_limit_mb=512 -rss_limit_mb=2048 \
        -timeout=10 -artifact_prefix="$OUT/crashes/$short-" "${dict[@]}" "${dirs[@]}" \
        >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "ok - $name ($RUNS runs, $((SECONDS - t0))s)"
    else
        echo "not ok - $name (exit $rc; log $log, crashes in $OUT/crashes/)"
        grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -10 | sed 's/^/# /'
        failed=$((failed + 1))
    fi
done
[ $failed -eq 0 ]
