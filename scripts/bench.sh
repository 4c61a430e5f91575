#!/usr/bin/env bash
# Benchmark harness: runs every bench binary under every allocator (same
# binary, allocator chosen with LD_PRELOAD), repeats runs interleaved across
# allocators, then hands the raw data to scripts/bench_report.py, which prints
# the table and writes results.csv, chart.svg and rss.svg.
#
# usage: scripts/bench.sh [--quick|--smoke] [--runs N] [--only B1,B2]
#                         [--allocators a,b,c] [--out DIR] [--bin DIR] [--no-strace]
#   (default)   full mode, 5 runs, for publishing
#   --quick     small arguments, 2 runs (well under 2 minutes on 2 cores)
#   --smoke     tiny arguments, 1 run (used by tests/test_bench_harness.sh)
# Environment: HAK_TEST_LIB (default out/release/libhakmem.so).
# Exit status: 0, or 1 if any glibc or hakmem run failed, 2 on bad usage.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=full
RUNS=
ONLY=
ALLOCS=glibc,hakmem,mimalloc,jemalloc,tcmalloc
OUT=$ROOT/out/bench
BIN=$ROOT/out/release
USE_STRACE=1
ALL_BENCHES=(bench_random_mixed larson bench_mid_large_mt bench_large bench_large_mt bench_fragment bench_prodcons)

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die_usage() { echo "bench.sh: $*" >&2; usage; }

while [ $# -gt 0 ]; do
    case $1 in
        --quick) MODE=quick ;;
        --smoke) MODE=smoke ;;
        --runs) [ $# -ge 2 ] || die_usage "--runs needs a value"; RUNS=$2; shift ;;
        --runs=*) RUNS=${1#*=} ;;
        --only) [ $# -ge 2 ] || die_usage "--only needs a value"; ONLY=$2; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --allocators) [ $# -ge 2 ] || die_usage "--allocators needs a value"; ALLOCS=$2; shift ;;
        --allocators=*) ALLOCS=${1#*=} ;;
        --out) [ $# -ge 2 ] || die_usage "--out needs a value"; OUT=$2; shift ;;
        --out=*) OUT=${1#*=} ;;
        --bin) [ $# -ge 2 ] || die_usage "--bin needs a value"; BIN=$2; shift ;;
        --bin=*) BIN=${1#*=} ;;
        --no-strace) USE_STRACE=0 ;;
        -h|--help) usage ;;
        *) die_usage "unknown option '$1'" ;;
    esac
    shift
done

case $MODE in
    full)  : "${RUNS:=5}"; TIMEOUT=900 ;;
    quick) : "${RUNS:=2}"; TIMEOUT=60 ;;
    smoke) : "${RUNS:=1}"; TIMEOUT=20 ;;
esac
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die_usage "--runs must be a positive integer"

# Producer/consumer pairs: 2 pairs = 4 busy threads, which on fewer than 4
# cores measures the scheduler (yield ping-pong) more than the allocator.
NCPU=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
if [ "$NCPU" -ge 4 ]; then PAIRS=2; else PAIRS=1; fi

# Arguments per benchmark and mode.  Full mode is what gets published.
bench_args() {  # BENCH MODE
    case $1:$2 in
        bench_random_mixed:full)  echo "10000000 8192 42" ;;
        bench_random_mixed:quick) echo "4000000 8192 42" ;;
        bench_random_mixed:smoke) echo "100000 1024 42" ;;
        larson:full)              echo "3 8 1024 1000 10000 42 2" ;;
        larson:quick)             echo "0.5 8 1024 1000 10000 42 2" ;;
        larson:smoke)             echo "0.2 8 1024 200 2000 42 2" ;;
        bench_mid_large_mt:full)  echo "2 1000000 2048 42" ;;
        bench_mid_large_mt:quick) echo "2 300000 2048 42" ;;
        bench_mid_large_mt:smoke) echo "2 20000 256 42" ;;
        bench_large:full)         echo "4000 8 42" ;;
        bench_large:quick)        echo "1000 8 42" ;;
        bench_large:smoke)        echo "40 4 42" ;;
        bench_large_mt:full)      echo "$NCPU 200000 65536 524288 42" ;;
        bench_large_mt:quick)     echo "$NCPU 50000 65536 524288 42" ;;
        bench_large_mt:smoke)     echo "2 2000 65536 524288 42" ;;
        bench_fragment:full)      echo "50 42" ;;
        bench_fragment:quick)     echo "10 42" ;;
        bench_fragment:smoke)     echo "1 42" ;;
        bench_prodcons:full)      echo "$PAIRS 2000000 42" ;;
        bench_prodcons:quick)     echo "$PAIRS 500000 42" ;;
        bench_prodcons:smoke)     echo "$PAIRS 20000 42" ;;
    esac
}

# ---- benchmarks -----------------------------------------------------------
BENCHES=()
if [ -n "$ONLY" ]; then
    IFS=, read -r -a req <<<"$ONLY"
    for b in "${req[@]}"; do
        [ -z "$b" ] && continue
        found=0
        for k in "${ALL_BENCHES[@]}"; do [ "$k" = "$b" ] && found=1; done
        [ $found = 1 ] || die_usage "unknown benchmark '$b' (known: ${ALL_BENCHES[*]})"
        BENCHES+=("$b")
    done
else
    BENCHES=("${ALL_BENCHES[@]}")
fi
[ ${#BENCHES[@]} -gt 0 ] || die_usage "no benchmarks selected"

# ---- allocators -----------------------------------------------------------
# find_lib SONAME: the usual multiarch dir first, then the ldconfig cache.
find_lib() {
    local so=$1 d arch
    arch=$(uname -m)
    for d in /usr/lib/x86_64-linux-gnu "/usr/lib/$arch-linux-gnu" /usr/lib64 /usr/lib /usr/local/lib; do
        [ -e "$d/$so" ] && { echo "$d/$so"; return 0; }
    done
    if command -v ldconfig >/dev/null 2>&1 || [ -x /sbin/ldconfig ]; then
        local p
        p=$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null) |
             awk -v so="$so" '$1 == so { print $NF; exit }')
        [ -n "$p" ] && [ -e "$p" ] && { echo "$p"; return 0; }
    fi
    return 1
}

HAK_TEST_LIB=${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}
case $HAK_TEST_LIB in /*) ;; *) HAK_TEST_LIB=$PWD/$HAK_TEST_LIB ;; esac

ANAMES=()      # allocators that will be run
declare -A ALIB=()
MISSING_REQUIRED=()
IFS=, read -r -a req <<<"$ALLOCS"
for a in "${req[@]}"; do
    [ -z "$a" ] && continue
    case $a in
        glibc)    lib= ;;
        hakmem)   lib=$HAK_TEST_LIB
                  if [ ! -e "$lib" ]; then
                      echo "bench.sh: hakmem library $lib not found: hakmem runs FAIL" >&2
                      MISSING_REQUIRED+=(hakmem)
                  fi ;;
        mimalloc) lib=$(find_lib libmimalloc.so.2) ||
                      { echo "bench.sh: note: mimalloc not installed, skipped" >&2; continue; } ;;
        jemalloc) lib=$(find_lib libjemalloc.so.2) ||
                      { echo "bench.sh: note: jemalloc not installed, skipped" >&2; continue; } ;;
        tcmalloc) lib=$(find_lib libtcmalloc_minimal.so.4) || lib=$(find_lib libtcmalloc.so.4) ||
                      { echo "bench.sh: note: tcmalloc not installed, skipped" >&2; continue; } ;;
        *) die_usage "unknown allocator '$a' (known: glibc hakmem mimalloc jemalloc tcmalloc)" ;;
    esac
    ANAMES+=("$a")
    ALIB[$a]=$lib
done
[ ${#ANAMES[@]} -gt 0 ] || die_usage "no allocators selected"

for b in "${BENCHES[@]}"; do
    [ -x "$BIN/$b" ] || { echo "bench.sh: $BIN/$b missing (run make first)" >&2; exit 1; }
done

# ---- tools ----------------------------------------------------------------
TIME_BIN=
[ -x /usr/bin/time ] && /usr/bin/time -f '%e %M' -o /dev/null true 2>/dev/null && TIME_BIN=/usr/bin/time
TIMEOUT_BIN=
command -v timeout >/dev/null 2>&1 && TIMEOUT_BIN=timeout
STRACE=()
if [ $USE_STRACE = 1 ] && command -v strace >/dev/null 2>&1; then
    if strace -f -c -o /dev/null --seccomp-bpf -e trace=mmap true >/dev/null 2>&1; then
        STRACE=(strace -f -c --seccomp-bpf)
    elif strace -f -c -o /dev/null -e trace=mmap true >/dev/null 2>&1; then
        STRACE=(strace -f -c)
    else
        echo "bench.sh: note: strace does not work here (ptrace denied?), syscall counts NA" >&2
    fi
elif [ $USE_STRACE = 1 ]; then
    echo "bench.sh: note: strace not installed, syscall counts NA" >&2
fi
SYSCALLS=(mmap munmap madvise mremap futex brk)
TRACE_SET=$(IFS=,; echo "${SYSCALLS[*]}")

mkdir -p "$OUT/logs" || exit 1
OUT=$(cd "$OUT" && pwd)
RUNS_CSV=$OUT/runs.csv
SYS_CSV=$OUT/syscalls.csv
echo "benchmark,allocator,run,status,throughput,wall_s,rss_peak_kb,exit_code" >"$RUNS_CSV"
echo "benchmark,allocator,status,$(IFS=,; echo "${SYSCALLS[*]}")" >"$SYS_CSV"
rm -f "$OUT"/logs/*

# ---- machine description --------------------------------------------------
{
    echo "date:      $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "host:      $(uname -n)"
    echo "cpu:       $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)"
    echo "cores:     $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
    echo "memory:    $(awk '/^MemTotal/ { print $2 " kB"; exit }' /proc/meminfo 2>/dev/null)"
    echo "kernel:    $(uname -srm)"
    echo "glibc:     $(getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>/dev/null | head -1)"
    echo "compiler:  $(cc --version 2>/dev/null | head -1)"
    echo "hakmem:    $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "mode:      $MODE, runs=$RUNS, strace=$([ ${#STRACE[@]} -gt 0 ] && echo yes || echo no)"
    echo "time tool: ${TIME_BIN:-bash time (no RSS)}"
    for a in "${ANAMES[@]}"; do echo "allocator: $a ${ALIB[$a]:-(system malloc, no preload)}"; done
    for b in "${BENCHES[@]}"; do echo "benchmark: $b $(bench_args "$b" "$MODE")"; done
} >"$OUT/machine.txt"

# ---- running ----------------------------------------------------------------
FAILED_REQUIRED=0
note_fail() {  # ALLOC WHAT
    echo "bench.sh: FAIL: $2" >&2
    case $1 in glibc|hakmem) FAILED_REQUIRED=1 ;; esac
}

# set_cmd BENCH ALLOC: CMD = env(1) command selecting the allocator, then the
# benchmark and its arguments.  The preload applies to the benchmark only,
# never to time/strace/timeout, which run in front of env.
set_cmd() {
    local -a args
    read -r -a args <<<"$(bench_args "$1" "$MODE")"
    if [ -n "${ALIB[$2]}" ]; then CMD=(env "LD_PRELOAD=${ALIB[$2]}")
    else CMD=(env -u LD_PRELOAD); fi
    CMD+=("$BIN/$1" "${args[@]}")
}

run_one() {  # BENCH ALLOC RUN
    local b=$1 a=$2 r=$3 tag="$OUT/logs/$1.$2.run$3"
    local -a CMD; set_cmd "$b" "$a"
    local -a to=(); [ -n "$TIMEOUT_BIN" ] && to=("$TIMEOUT_BIN" -k 5 "$TIMEOUT")
    local rc thr wall=NA rss=NA status=ok
    if [ "$a" = hakmem ] && [ ! -e "${ALIB[$a]}" ]; then
        echo "$b,$a,$r,FAIL,NA,NA,NA,127" >>"$RUNS_CSV"
        note_fail "$a" "$b under $a run $r: library missing"
        return
    fi
    if [ -n "$TIME_BIN" ]; then
        "${to[@]}" "$TIME_BIN" -f '%e %M' -o "$tag.time" "${CMD[@]}" >"$tag.out" 2>"$tag.err"
        rc=$?
        # time(1) prefixes "Command exited with non-zero status" lines; the
        # format line is the last one.
        if [ -s "$tag.time" ]; then
            read -r wall rss < <(tail -n 1 "$tag.time")
            [[ $wall =~ ^[0-9.]+$ ]] || wall=NA
            [[ $rss =~ ^[0-9]+$ ]] || rss=NA
        fi
    else
        local TIMEFORMAT=%R
        { time "${to[@]}" "${CMD[@]}" >"$tag.out" 2>"$tag.err"; } 2>"$tag.time"
        rc=$?
        wall=$(tail -n 1 "$tag.time"); [[ $wall =~ ^[0-9.]+$ ]] || wall=NA
    fi
    thr=$(sed -n 's/^Throughput = \([0-9][0-9]*\) ops\/s.*/\1/p' "$tag.out" | tail -n 1)
    if [ $rc -ne 0 ] || [ -z "$thr" ]; then
        status=FAIL; thr=NA
        note_fail "$a" "$b under $a run $r (exit $rc; see $tag.err)"
    fi
    echo "$b,$a,$r,$status,$thr,$wall,$rss,$rc" >>"$RUNS_CSV"
}

strace_one() {  # BENCH ALLOC
    local b=$1 a=$2 tag="$OUT/logs/$1.$2.strace"
    local -a CMD; set_cmd "$b" "$a"
    local -a to=(); [ -n "$TIMEOUT_BIN" ] && to=("$TIMEOUT_BIN" -k 5 "$((TIMEOUT * 3))")
    if [ "$a" = hakmem ] && [ ! -e "${ALIB[$a]}" ]; then
        echo "$b,$a,FAIL,NA,NA,NA,NA,NA,NA" >>"$SYS_CSV"; return
    fi
    "${to[@]}" "${STRACE[@]}" -o "$tag.txt" -e trace="$TRACE_SET" "${CMD[@]}" \
        >"$tag.out" 2>"$tag.err"
    local rc=$?
    if [ $rc -ne 0 ] || [ ! -s "$tag.txt" ]; then
        echo "$b,$a,FAIL,NA,NA,NA,NA,NA,NA" >>"$SYS_CSV"
        note_fail "$a" "$b under $a with strace (exit $rc; see $tag.err)"
        return
    fi
    # summary table: "% time seconds usecs/call calls [errors] syscall";
    # calls is always field 4, the syscall name the last field.
    local row
    row=$(awk -v list="$TRACE_SET" '
        BEGIN { n = split(list, s, ","); for (i = 1; i <= n; i++) c[s[i]] = 0 }
        $NF in c && $4 ~ /^[0-9]+$/ { c[$NF] = $4 }
        END { out = ""; for (i = 1; i <= n; i++) out = out (i > 1 ? "," : "") c[s[i]]; print out }
    ' "$tag.txt")
    echo "$b,$a,ok,$row" >>"$SYS_CSV"
}

NB=${#BENCHES[@]}
T0=$SECONDS
for ((bi = 0; bi < NB; bi++)); do
    b=${BENCHES[$bi]}
    for ((r = 1; r <= RUNS; r++)); do           # interleave allocators per run
        for a in "${ANAMES[@]}"; do
            printf '[bench %d/%d] %-18s %-9s run %d/%d\n' $((bi + 1)) "$NB" "$b" "$a" "$r" "$RUNS" >&2
            run_one "$b" "$a" "$r"
        done
    done
    if [ ${#STRACE[@]} -gt 0 ]; then
        for a in "${ANAMES[@]}"; do
            printf '[bench %d/%d] %-18s %-9s strace\n' $((bi + 1)) "$NB" "$b" "$a" >&2
            strace_one "$b" "$a"
        done
    fi
done
echo "bench.sh: runs finished in $((SECONDS - T0))s; raw data in $RUNS_CSV" >&2

# ---- report ---------------------------------------------------------------
if command -v python3 >/dev/null 2>&1; then
    python3 "$ROOT/scripts/bench_report.py" --out "$OUT" \
        --allocators "$(IFS=,; echo "${ANAMES[*]}")" \
        --benchmarks "$(IFS=,; echo "${BENCHES[*]}")" || {
        echo "bench.sh: report generation failed" >&2; exit 1; }
else
    echo "bench.sh: python3 not found: no table/charts; raw data in $RUNS_CSV" >&2
    cat "$RUNS_CSV"
fi

if [ $FAILED_REQUIRED -ne 0 ] || [ ${#MISSING_REQUIRED[@]} -gt 0 ]; then
    echo "bench.sh: glibc or hakmem runs failed" >&2
    exit 1
fi
exit 0
