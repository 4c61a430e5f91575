#!/bin/bash
# Run the hakmem test suite.
#   bash tests/run.sh            all tests, loops bounded by STRESS_SECONDS (default 2)
#   bash tests/run.sh stress     same with STRESS_SECONDS (default 120)
#   TESTS='api|tiny' bash tests/run.sh     only tests whose name matches (grep -E)
# Runs out/{release,debug}/tests/test_* (one test each, timeout 300), the
# fault-injection, ulimit, sanitizer and fuzzing tests (see below; FUZZ_SECONDS
# sets the fuzzing time, default 20) and tests/*.sh except this script
# (timeout 600).  Ends with "N passed, N failed" (", N skipped" where
# clang is missing, or a script exits 77: a tool it needs is not installed);
# exit status 0 iff nothing failed.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

if [ "${1:-}" = stress ]; then
    export STRESS_SECONDS=${STRESS_SECONDS:-120}
else
    export STRESS_SECONDS=${STRESS_SECONDS:-2}
fi
# Scripts get ROOT/HAK_TEST_LIB/HAK_TEST_DEBUG_LIB (names outside hakmem's
# HAKMEM_* option namespace, which warns about unknown variables).
unset HAK_TEST_LIB HAK_TEST_DEBUG_LIB HAK_TEST_SECURE_LIB
SCRIPT_ENV=(ROOT="$ROOT" HAK_TEST_LIB="$ROOT/out/release/libhakmem.so"
            HAK_TEST_DEBUG_LIB="$ROOT/out/debug/libhakmem.so"
            HAK_TEST_SECURE_LIB="$ROOT/out/secure/libhakmem.so")

pass=0
fail=0
skip=0
failed_names=()
log=$(mktemp "${TMPDIR:-/tmp}/hakmem-test.XXXXXX")
trap 'rm -f "$log"' EXIT

selected() {
    [ -z "${TESTS:-}" ] && return 0
    printf '%s\n' "$1" | grep -Eq -- "$TESTS"
}

# run NAME TIMEOUT CMD...: one test, PASS/FAIL line, tail of output on failure
run() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc
    timeout -k 10 "$limit" "$@" >"$log" 2>&1 </dev/null
    rc=$?
    if [ $rc -eq 77 ]; then # the test's own word: a tool it needs is missing
        echo "SKIP $name ($(tail -n 1 "$log"))"
        skip=$((skip + 1))
    elif [ $rc -eq 0 ]; then
        echo "PASS $name ($((SECONDS - t0))s)"
        pass=$((pass + 1))
    else
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            echo "FAIL $name (exit code $rc: timed out after ${limit}s)"
        elif [ $rc -gt 128 ]; then
            echo "FAIL $name (exit code $rc: signal $((rc - 128)))"
        else
            echo "FAIL $name (exit code $rc)"
        fi
        tail -n 25 "$log" | sed 's/^/    | /'
        fail=$((fail + 1))
        failed_names+=("$name")
    fi
}

shopt -s nullglob
for mode in release debug; do
    for src in tests/test_*.c; do
        t=$(basename "$src" .c)
        name="$mode/$t"
        selected "$name" || continue
        bin=out/$mode/tests/$t
        if [ ! -x "$bin" ]; then
            echo "FAIL $name (missing binary $bin: run make / make debug)"
            fail=$((fail + 1))
            failed_names+=("$name")
            continue
        fi
        run "$name" 300 "$bin"
    done
done

# run_bin NAME TIMEOUT BIN [ARGS...]: like run, but FAIL if BIN was not built.
have_bin() {
    [ -x "$2" ] && return 0
    echo "FAIL $1 (missing binary $2: run make test)"
    fail=$((fail + 1))
    failed_names+=("$1")
    return 1
}
run_bin() {
    selected "$1" || return 0
    have_bin "$1" "$3" || return 0
    run "$@"
}
# run_ulimit NAME TIMEOUT KIB BIN: run BIN under `ulimit -v KIB`.
run_ulimit() {
    selected "$1" || return 0
    have_bin "$1" "$4" || return 0
    run "$1" "$2" bash -c 'ulimit -v "$1" && exec "$2"' ulimit "$3" "$4"
}

# The hardened build (HAK_SECURE): its own test, and the tests that do not
# depend on the exact tier boundaries (canaries add 8 bytes to each block);
# the Makefile builds the same list.
for t in $(cat tests/secure/tests.list); do
    run_bin "secure/$t" 300 out/secure/tests/$t
done

# The debug build's validators catch a corruption the release build lets
# pass (tests/debug).
run_bin debug/test_validate 300 out/debug/tests/test_validate

# A build with CANARY and ZERO_ON_FREE alone (no quarantine, no guard
# pages): freed blocks of every tier come back zeroed.
run_bin zerofree/test_zero_on_free 300 out/zerofree/tests/test_zero_on_free

# Builds with one set of mitigations a user may choose (guard pages alone;
# canary and quarantine without zeroing or guards): the generic tests.
for v in guard quarantine; do
    for t in $(cat tests/mitigations.list); do
        run_bin "$v/$t" 300 out/$v/tests/$t
    done
done

# Fault injection build (HAK_FAULT_INJECTION): every tier under failing
# mmap/madvise/mremap.
run_bin fault/test_fault 300 out/fault/tests/test_fault

# Under an address-space limit: tests that fit in 2 GiB (not test_large: its
# 1 GiB burst does not), and a program that allocates until malloc fails
# under 200 MiB (it refuses to run without a limit).
for t in test_api test_realloc test_align; do
    run_ulimit "ulimit-2g/release/$t" 300 2097152 out/release/tests/$t
done
run_ulimit ulimit-2g/debug/test_api 300 2097152 out/debug/tests/test_api
for mode in release debug; do
    run_ulimit "ulimit-200m/$mode/oom_ulimit" 300 204800 out/$mode/tests/oom_ulimit
done

# Sanitizer builds (library without the glibc names, drivers use hak_*).
# Reports abort (UBSan: -fno-sanitize-recover; TSan: exitcode 66).  They
# need clang and its runtimes: where `make` found none (HAK_SANITIZERS=no;
# run directly, where clang is missing) each is one SKIP line.
if [ -z "${HAK_SANITIZERS:-}" ]; then
    if command -v "${SAN_CC:-clang}" >/dev/null 2>&1; then HAK_SANITIZERS=yes; else HAK_SANITIZERS=no; fi
fi
skip_san() {
    selected "$1" || return 1
    [ "$HAK_SANITIZERS" = no ] || return 1
    echo "SKIP $1 (needs clang with its sanitizer runtimes)"
    skip=$((skip + 1))
}
for san in ubsan tsan; do
    for t in san_api san_threads; do
        skip_san "$san/$t" && continue
        run_bin "$san/$t" 300 out/$san/tests/$t
    done
done

# libFuzzer harness over the hak_* API (ASan build), fixed seed, from the
# seed corpus (tests/fuzz/corpus, read-only: new inputs go to a temp dir).
if skip_san fuzz/fuzz_api; then
    :
elif selected fuzz/fuzz_api && have_bin fuzz/fuzz_api out/fuzz/fuzz_api; then
    fuzz_dir=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-fuzz.XXXXXX")
    fail0=$fail
    run fuzz/fuzz_api $((${FUZZ_SECONDS:-20} + 60)) out/fuzz/fuzz_api \
        -seed=1 -max_total_time="${FUZZ_SECONDS:-20}" -timeout=30 \
        -artifact_prefix="$fuzz_dir/" "$fuzz_dir" tests/fuzz/corpus
    if [ $fail -gt $fail0 ]; then # the finding, above libFuzzer's stack trace
        grep -m 4 -E '^fuzz_api: op|^hakmem:|ERROR: AddressSanitizer|^Running: ' "$log" | sed 's/^/    | /'
    fi
    for kept in "$fuzz_dir"/crash-* "$fuzz_dir"/timeout-* "$fuzz_dir"/leak-*; do
        echo "    | kept: $kept" # (nullglob: no match, no line)
    done
    find "$fuzz_dir" -mindepth 1 ! -name 'crash-*' ! -name 'timeout-*' ! -name 'leak-*' -delete 2>/dev/null
    rmdir "$fuzz_dir" 2>/dev/null
fi

for script in tests/*.sh; do
    s=$(basename "$script")
    [ "$s" = run.sh ] && continue
    selected "$s" || continue
    run "$s" 600 env "${SCRIPT_ENV[@]}" bash "$script"
done

if [ $fail -gt 0 ]; then
    echo "failed: ${failed_names[*]}"
fi
if [ $skip -gt 0 ]; then
    echo "$pass passed, $fail failed, $skip skipped"
else
    echo "$pass passed, $fail failed"
fi
[ $fail -eq 0 ]
