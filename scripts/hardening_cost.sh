#!/usr/bin/env bash
# The cost of each hardening mitigation (core/mitigations.h): builds the
# release library with one HAK_HARDEN_<NAME>=1 at a time (out/harden/NAME),
# plus none and all (the out/secure build), and runs bench_random_mixed
# (16..1039 B) and larson against each and against glibc: median of RUNS
# interleaved runs, and callgrind instructions for bench_random_mixed.
#   bash scripts/hardening_cost.sh [--quick]     (make bench-hardening)
# Writes the table to stdout and out/harden/cost.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=5
RM_ARGS="2000000 8192 42"
LARSON_ARGS="1 8 1024 1000 10000 42 1"
if [ "${1:-}" = --quick ]; then RUNS=3; RM_ARGS="500000 8192 42"; LARSON_ARGS="0.3 8 1024 1000 10000 42 1"; fi

NAMES=(CANARY GUARD_PAGES RANDOM_ORDER QUARANTINE ZERO_ON_FREE ZERO_SIZE_GUARD)
CFLAGS=$(make -s print-release-cflags)
make -s out/release/bench_random_mixed out/release/larson out/release/libhakmem.so out/secure/libhakmem.so
build() { # build NAME FLAGS...
    local dir=out/harden/$1
    shift
    mkdir -p "$dir/obj"
    for src in core/*.c; do
        # shellcheck disable=SC2086
        cc $CFLAGS "$@" -c "$src" -o "$dir/obj/$(basename "$src" .c).o"
    done
    cc -shared -o "$dir/libhakmem.so" "$dir"/obj/*.o -pthread -Wl,-z,now -Wl,--version-script=core/exports.map
}
# QUARANTINE and ZERO_ON_FREE need CANARY (mitigations.h): measured with it
needs() { case $1 in QUARANTINE | ZERO_ON_FREE) echo "-DHAK_HARDEN_CANARY=1" ;; esac; }
for n in "${NAMES[@]}"; do
    # shellcheck disable=SC2046
    build "$n" "-DHAK_HARDEN_$n=1" $(needs "$n")
done

libs=(glibc out/release/libhakmem.so)
labels=(glibc none)
for n in "${NAMES[@]}"; do
    libs+=("out/harden/$n/libhakmem.so")
    if [ -n "$(needs "$n")" ]; then labels+=("$n + CANARY"); else labels+=("$n"); fi
done
libs+=(out/secure/libhakmem.so)
labels+=(all)

# ops/s printed by a benchmark ("Throughput = N ops/s")
run() { # run LIB BENCH ARGS...
    local lib=$1
    shift
    if [ "$lib" = glibc ]; then "$@"; else LD_PRELOAD=$PWD/$lib "$@"; fi 2>/dev/null |
        sed -n 's/.*Throughput = \([0-9.e+]*\) ops\/s.*/\1/p' | head -1
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
declare -A rm_runs larson_runs
for ((r = 0; r < RUNS; r++)); do
    for i in "${!libs[@]}"; do
        # shellcheck disable=SC2086
        rm_runs[$i]+="$(run "${libs[$i]}" out/release/bench_random_mixed $RM_ARGS) "
        # shellcheck disable=SC2086
        larson_runs[$i]+="$(run "${libs[$i]}" out/release/larson $LARSON_ARGS) "
    done
done
instr() { # callgrind instructions of bench_random_mixed under LIB
    local lib=$1 tmp
    tmp=$(mktemp -d)
    if [ "$lib" = glibc ]; then
        valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" out/release/bench_random_mixed 200000 8192 42 >/dev/null 2>&1
    else
        valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$tmp/cg.%p" \
            env LD_PRELOAD="$PWD/$lib" out/release/bench_random_mixed 200000 8192 42 >/dev/null 2>&1
    fi
    for f in "$tmp"/cg*; do callgrind_annotate "$f" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p'; done |
        tr -d , | sort -n | tail -1
    rm -rf "$tmp"
}
have_cg=0
command -v valgrind >/dev/null 2>&1 && have_cg=1
{
    echo "| mitigation | random_mixed ops/s | vs none | larson ops/s | vs none | random_mixed instructions (200k cycles) |"
    echo "|---|---:|---:|---:|---:|---:|"
    base_rm=0 base_l=0
    for i in "${!libs[@]}"; do
        m_rm=$(tr ' ' '\n' <<<"${rm_runs[$i]}" | grep . | median)
        m_l=$(tr ' ' '\n' <<<"${larson_runs[$i]}" | grep . | median)
        if [ "${labels[$i]}" = none ]; then base_rm=$m_rm; base_l=$m_l; fi
        ins=-
        [ $have_cg = 1 ] && ins=$(instr "${libs[$i]}")
        awk -v n="${labels[$i]}" -v a="$m_rm" -v b="$m_l" -v ba="$base_rm" -v bb="$base_l" -v ins="$ins" 'BEGIN {
            ra = ba > 0 ? sprintf("%.2fx", a / ba) : "-"; rb = bb > 0 ? sprintf("%.2fx", b / bb) : "-";
            printf "| %s | %.2fM | %s | %.2fM | %s | %s |\n", n, a / 1e6, ra, b / 1e6, rb, ins }'
    done
} | tee out/harden/cost.md
