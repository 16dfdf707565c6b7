#!/usr/bin/env bash
# Check the NEON kernels on any Linux machine: cross-compile the C core (native/src/*.c and the
# arch files) with tools/neon_check/neon_check.c for aarch64 and run the result under
# qemu-aarch64. Needs (Debian/Ubuntu): apt-get install gcc-aarch64-linux-gnu qemu-user
#
# Builds and runs (docs/neon.md):
#   base     -march=armv8-a (the default)   under -cpu max        SDOT kernels chosen at run time
#                                           under -cpu cortex-a53 no dotprod: widening kernels only
#   dotprod  -march=armv8.2-a+dotprod       under -cpu max        SDOT compiled in natively
# and, when asked for (CONFIGS), the same sources compiled by clang (linked by CC):
#   clang          default -march              under -cpu max     widening kernels only (clang
#                                                                 builds no run-time SDOT table)
#   clang-dotprod  -march=armv8.2-a+dotprod    under -cpu max     SDOT compiled in natively
# plus static checks: the x86 files compile to nothing for aarch64, and in the base build SDOT
# instructions appear only in neon_sdot.c's object (the table installed on HWCAP_ASIMDDP), which
# has them.
#
# Environment: CC (default aarch64-linux-gnu-gcc), QEMU (default qemu-aarch64),
#              OUT (build folder, default build/neon_check), OPT (default -O2),
#              CONFIGS (default "base dotprod"; also "clang", "clang-dotprod"),
#              CLANG (default clang, run with --target=aarch64-linux-gnu),
#              SRC (tree whose native/ is built, default .).
# Prints "N passed, N failed" (all runs together) and exits non-zero on any failure.
set -u
cd "$(dirname "$0")/../.."

CC=${CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU:-qemu-aarch64}
OUT=${OUT:-build/neon_check}
OPT=${OPT:--O2}
CONFIGS=${CONFIGS:-base dotprod}
CLANG=${CLANG:-clang}
OBJDUMP=${OBJDUMP:-${CC%gcc}objdump}
NM=${NM:-${CC%gcc}nm}

for tool in "$CC" "$QEMU" "$OBJDUMP" "$NM"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "neon_check: '$tool' not found; install with: apt-get install -y gcc-aarch64-linux-gnu qemu-user" >&2
        exit 2
    fi
done

CFLAGS="$OPT -std=c11 -pthread -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter"
HARNESS=$(ls tools/neon_check/*.c | sort)
# SRC: the tree whose native/ is checked (default: this checkout; e.g. a `git archive` snapshot)
SRC=${SRC:-.}
SOURCES=$(ls "$SRC"/native/src/*.c "$SRC"/native/src/arch/*/*.c | sort)
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

build() {   # build NAME MARCH [COMPILER] -> $OUT/NAME/neon_check (linked by CC)
    local name=$1 march=$2 cc=${3:-$CC} dir="$OUT/$1" objs="" src obj extra
    rm -rf "$dir"
    mkdir -p "$dir"
    for src in $SOURCES $HARNESS; do
        obj="$dir/$(basename "$(dirname "$src")")_$(basename "${src%.c}").o"
        extra=""
        case "$src" in *arch/arm/*.c) extra="-Werror" ;; esac
        if ! $cc $CFLAGS $march $extra -I "$SRC/native/src" -I tools/neon_check -c "$src" -o "$obj"; then
            bad "[$name] compile $src"
            return 1
        fi
        objs="$objs $obj"
    done
    if ! "$CC" -static -pthread $objs -lm -o "$dir/neon_check"; then
        bad "[$name] link"
        return 1
    fi
    ok "[$name] build (${cc%% *} $OPT ${march:-(default -march)})"
}

static_checks() {   # static_checks NAME
    local dir="$OUT/$1" f syms
    for f in "$dir"/x86_*.o; do
        [ -e "$f" ] || continue
        syms=$("$NM" --defined-only "$f" | grep -v ' [aN] ' || true)
        if [ -z "$syms" ]; then ok "[$1] $(basename "$f") is empty for aarch64"
        else bad "[$1] $(basename "$f") defines symbols for aarch64: $syms"; fi
    done
    # SDOT instructions only in neon_sdot.c's object, and there
    local stray n_sdot
    stray=$(for f in "$dir"/*.o; do
        case "$f" in */arm_neon_sdot.o) continue ;; esac
        "$OBJDUMP" -d "$f" | grep -q $'\tsdot\t' && basename "$f"
    done)
    n_sdot=$("$OBJDUMP" -d "$dir/arm_neon_sdot.o" | grep -c $'\tsdot\t')
    if [ -z "$stray" ]; then ok "[$1] SDOT only in arm_neon_sdot.o (the HWCAP-selected table)"
    else bad "[$1] SDOT outside the run-time-selected kernels: $stray"; fi
    if [ "$n_sdot" -gt 0 ]; then ok "[$1] arm_neon_sdot.o has $n_sdot SDOT instructions"
    else bad "[$1] arm_neon_sdot.o has no SDOT instruction"; fi
}

run() {   # run NAME CPU EXPECT_DOTPROD
    local name=$1 cpu=$2 expect=$3 log="$OUT/$1/run-$2.log" last p f
    echo "--- [$name] $QEMU -cpu $cpu"
    "$QEMU" -cpu "$cpu" "$OUT/$name/neon_check" --expect-dotprod="$expect" >"$log" 2>&1
    local rc=$?
    grep -E '^(FAIL|cpu dotprod)' "$log" | head -40
    sed -n '/^end to end/,/^$/p' "$log"
    sed -n '/^check /,/^$/p' "$log"
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
    if [ -z "$last" ]; then
        tail -20 "$log"
        bad "[$name] -cpu $cpu: no result (exit $rc), log in $log"
        return
    fi
    p=${last%% passed*}
    f=${last#*, }; f=${f%% failed}
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then bad "[$name] -cpu $cpu: exit $rc"; fi
    echo "[$name] -cpu $cpu: $last"
}

for cfg in $CONFIGS; do
    case $cfg in
    base)
        if build base ""; then
            static_checks base
            run base max 1
            run base cortex-a53 0
        fi ;;
    dotprod)
        if build dotprod "-march=armv8.2-a+dotprod"; then
            run dotprod max 1
        fi ;;
    clang | clang-dotprod)
        march=""
        [ "$cfg" = clang-dotprod ] && march="-march=armv8.2-a+dotprod"
        if ! command -v "$CLANG" >/dev/null 2>&1; then bad "[$cfg] '$CLANG' not found"
        elif build "$cfg" "$march" "$CLANG --target=aarch64-linux-gnu"; then
            run "$cfg" max 1
        fi ;;
    *) bad "unknown config '$cfg'" ;;
    esac
done

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
