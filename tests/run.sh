#!/bin/bash
# Run the hakmem test suite.
#   bash tests/run.sh            all tests, loops bounded by STRESS_SECONDS (default 2)
#   bash tests/run.sh stress     same with STRESS_SECONDS (default 120)
#   TESTS='api|tiny' bash tests/run.sh     only tests whose name matches (grep -E)
# Runs out/{release,debug}/tests/test_* (one test each, timeout 300) and
# tests/*.sh except this script (timeout 600).  Ends with "N passed, N failed";
# exit status 0 iff nothing failed.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

if [ "${1:-}" = stress ]; then
    export STRESS_SECONDS=${STRESS_SECONDS:-120}
else
    export STRESS_SECONDS=${STRESS_SECONDS:-2}
fi
# Scripts get ROOT/HAKMEM_LIB/HAKMEM_DEBUG_LIB; the C tests do not (hakmem
# reads HAKMEM_* variables as options and warns about unknown ones).
unset HAKMEM_LIB HAKMEM_DEBUG_LIB
SCRIPT_ENV=(ROOT="$ROOT" HAKMEM_LIB="$ROOT/out/release/libhakmem.so"
            HAKMEM_DEBUG_LIB="$ROOT/out/debug/libhakmem.so")

pass=0
fail=0
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
    if [ $rc -eq 0 ]; then
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

for script in tests/*.sh; do
    s=$(basename "$script")
    [ "$s" = run.sh ] && continue
    selected "$s" || continue
    run "$s" 600 env "${SCRIPT_ENV[@]}" bash "$script"
done

if [ $fail -gt 0 ]; then
    echo "failed: ${failed_names[*]}"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
