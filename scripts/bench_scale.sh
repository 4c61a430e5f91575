#!/usr/bin/env bash
# Scaling benchmark: throughput and peak RSS against the number of threads,
# for hakmem and each installed peer, on four multi-threaded workloads:
#   prodcons   bench_xthread prodcons: threads/2 producers allocate 64-byte
#              blocks, threads/2 consumers free them (batches of 64)
#   pairs      bench_xthread pairs: threads in pairs, each allocating
#              16-1040 B blocks and freeing the ones its partner sent
#   larson     larson: threads that free each other's blocks (16-1040 B)
#   large      bench_large_mt: 64-576 KiB blocks, half freed by another thread
#
# usage: scripts/bench_scale.sh [--threads "1 2 4 ..."] [--out DIR] [--quick]
#   --threads   thread counts (default 1 2 4 ... up to nproc, and nproc)
#   --quick     shorter runs
# Environment: HAK_TEST_LIB (default out/release/libhakmem.so); HAK_PEER_DIR,
# a folder holding libmimalloc.so.2, libjemalloc.so.2, libtcmalloc_minimal.so.4
# (for a machine where they are not installed; default: the system's).
# Writes DIR/scale.csv (workload,allocator,threads,ops_per_s,peak_rss_kib),
# DIR/scale.svg (one chart per workload) and prints the table.  Each point
# is the median of 3 runs, interleaved across allocators.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/out/bench-scale
BIN=$ROOT/out/release
NCPU=$(nproc 2>/dev/null || echo 1)
THREADS=
QUICK=0
while [ $# -gt 0 ]; do
    case $1 in
        --threads) THREADS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --quick) QUICK=1 ;;
        *) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$THREADS" ]; then
    t=1
    while [ $t -lt "$NCPU" ]; do THREADS="$THREADS $t"; t=$((t * 2)); done
    THREADS="$THREADS $NCPU"
fi
mkdir -p "$OUT"
HAK_TEST_LIB=${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}

declare -A LIB=([glibc]="" [hakmem]=$HAK_TEST_LIB)
ORDER="glibc hakmem"
for pair in mimalloc:libmimalloc.so.2 jemalloc:libjemalloc.so.2 tcmalloc:libtcmalloc_minimal.so.4; do
    name=${pair%%:*} so=${pair#*:}
    for d in ${HAK_PEER_DIR:-} /usr/lib/x86_64-linux-gnu "/usr/lib/$(uname -m)-linux-gnu" /usr/lib64 /usr/lib; do
        if [ -e "$d/$so" ]; then LIB[$name]=$d/$so; ORDER="$ORDER $name"; break; fi
    done
done

if [ $QUICK = 1 ]; then N_X=2000000 T_LARSON=0.3 N_LARGE=20000; else N_X=8000000 T_LARSON=1 N_LARGE=100000; fi
# args WORKLOAD THREADS: the benchmark command line
args() {
    local even=$(( $2 > 1 ? $2 / 2 * 2 : 1 )) # bench_xthread pairs threads up
    case $1 in
        prodcons) echo "$BIN/bench_xthread prodcons $even $N_X 42" ;;
        pairs)    echo "$BIN/bench_xthread pairs $even $((N_X / 2)) 42" ;;
        larson)   echo "$BIN/larson $T_LARSON 16 1040 1000 10000 42 $2" ;;
        large)    echo "$BIN/bench_large_mt $2 $((N_LARGE / $2 + 1)) 65536 524288 42" ;;
    esac
}

CSV=$OUT/scale.csv
echo "workload,allocator,threads,ops_per_s,peak_rss_kib" > "$CSV"
for w in prodcons pairs larson large; do
    for t in $THREADS; do
        declare -A TP=() RS=()
        for rep in 1 2 3; do
            for a in $ORDER; do
                out=$( { /usr/bin/time -f "RSS %M" env LD_PRELOAD="${LIB[$a]}" $(args $w $t); } 2>&1 )
                TP[$a]="${TP[$a]:-} $(echo "$out" | sed -n 's/.*Throughput = \([0-9]*\).*/\1/p' | head -1)"
                RS[$a]="${RS[$a]:-} $(echo "$out" | sed -n 's/^RSS \([0-9]*\)$/\1/p' | tail -1)"
            done
        done
        for a in $ORDER; do
            med=$(echo ${TP[$a]} | tr ' ' '\n' | sort -n | sed -n 2p)
            rss=$(echo ${RS[$a]} | tr ' ' '\n' | sort -n | sed -n 2p)
            echo "$w,$a,$t,${med:-0},${rss:-0}" >> "$CSV"
        done
        unset TP RS
    done
done
python3 "$ROOT/scripts/bench_scale_report.py" "$CSV" "$OUT/scale.svg" "$NCPU"
