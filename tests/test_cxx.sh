#!/usr/bin/env bash
# C++ programs on hakmem: tests/cxx/cxx_app.cc, built with g++ (C++17,
# sized deallocation), prints the same checksum under glibc and under
# LD_PRELOAD of the release, debug and hardened libraries; its misuses
# (delete through a base class without a virtual destructor, delete of a
# new[] array) end in hakmem's one-line report and abort.  Run from the
# repository root (ROOT overrides); exit 0 on success.
set -euo pipefail

ROOT=${ROOT:-$(pwd)}
CXX=${CXX:-g++}
unset LD_PRELOAD HAKMEM_STATS HAKMEM_VERBOSE || true

fail() {
    echo "test_cxx: FAIL: $*" >&2
    exit 1
}

if ! command -v "$CXX" >/dev/null 2>&1; then
    echo "$CXX not installed"
    exit 77 # tests/run.sh: SKIP
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-cxx.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$CXX" -O1 -std=c++17 -fsized-deallocation -o "$tmp/cxx_app" "$ROOT/tests/cxx/cxx_app.cc" ||
    fail "cannot build tests/cxx/cxx_app.cc"

want=$("$tmp/cxx_app") || fail "cxx_app fails without hakmem"
libs=0
for lib in "$ROOT/out/release/libhakmem.so" "$ROOT/out/debug/libhakmem.so" "$ROOT/out/secure/libhakmem.so"; do
    [ -f "$lib" ] || continue
    libs=$((libs + 1))
    got=$(LD_PRELOAD=$lib "$tmp/cxx_app" 2>&1) || fail "cxx_app with $lib: $got"
    [ "$got" = "$want" ] || fail "cxx_app with $lib printed '$got', without hakmem '$want'"
    # operator delete is hakmem's: the program's frees reach it
    nm -D --defined-only "$lib" | grep -q ' _ZdlPvm$' || fail "$lib does not export operator delete(void*, size_t)"
    for misuse in wrong-type array-as-scalar; do
        rc=0
        err=$(LD_PRELOAD=$lib "$tmp/cxx_app" "$misuse" 2>&1 >/dev/null) || rc=$?
        [ "$rc" -eq 134 ] || fail "$misuse with $lib: exit $rc, expected SIGABRT ($err)"
        case "$err" in
            "hakmem: free or delete with the wrong size: 0x"*) ;;
            *) fail "$misuse with $lib: message '$err'" ;;
        esac
    done
done
[ "$libs" -gt 0 ] || fail "no library built under out/ (run make)"
echo "test_cxx: ok ($libs libraries: same output as glibc, wrong-size deletes reported)"
