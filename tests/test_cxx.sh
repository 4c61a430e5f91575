#!/usr/bin/env bash
# C++ programs on hakmem: tests/cxx/cxx_app.cc, built with g++ (C++17,
# sized deallocation), prints the same checksum under glibc and under
# LD_PRELOAD of the release, debug and hardened libraries; its misuses
# (delete through a base class without a virtual destructor, delete of a
# new[] array) end in hakmem's one-line report and abort.
# tests/cxx/cxx_replace.cc replaces the plain operator new and delete (a
# header of its own before each block): its sized, array and nothrow
# deletes must reach its replacement, preloaded, linked with -lhakmem and
# linked statically with libhakmem.a.  Run from the repository root (ROOT
# overrides); exit 0 on success.
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
"$CXX" -O1 -std=c++17 -fsized-deallocation -o "$tmp/cxx_replace" "$ROOT/tests/cxx/cxx_replace.cc" ||
    fail "cannot build tests/cxx/cxx_replace.cc"
want_replace=$("$tmp/cxx_replace") || fail "cxx_replace fails without hakmem: $want_replace"
replace_runs() { # WHAT CMD...: cxx_replace must print what it prints without hakmem
    local what=$1 got
    shift
    got=$("$@" 2>&1) || fail "cxx_replace $what: $got"
    [ "$got" = "$want_replace" ] || fail "cxx_replace $what printed '$got', without hakmem '$want_replace'"
}
libs=0
for lib in "$ROOT/out/release/libhakmem.so" "$ROOT/out/debug/libhakmem.so" "$ROOT/out/secure/libhakmem.so"; do
    [ -f "$lib" ] || continue
    libs=$((libs + 1))
    got=$(LD_PRELOAD=$lib "$tmp/cxx_app" 2>&1) || fail "cxx_app with $lib: $got"
    [ "$got" = "$want" ] || fail "cxx_app with $lib printed '$got', without hakmem '$want'"
    replace_runs "with $lib" env LD_PRELOAD="$lib" "$tmp/cxx_replace"
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
release=$ROOT/out/release
if [ -f "$release/libhakmem.so" ]; then
    "$CXX" -O1 -std=c++17 -o "$tmp/cxx_replace_linked" "$ROOT/tests/cxx/cxx_replace.cc" \
        -L"$release" -lhakmem -Wl,-rpath,"$release" || fail "cannot link cxx_replace with -lhakmem"
    replace_runs "linked with -lhakmem" "$tmp/cxx_replace_linked"
fi
# A static link needs libstdc++.a and libc.a, which not every machine has
if [ -f "$release/libhakmem.a" ] &&
    "$CXX" -O1 -std=c++17 -static -o "$tmp/cxx_replace_static" "$ROOT/tests/cxx/cxx_replace.cc" \
        "$release/libhakmem.a" -lpthread 2>"$tmp/static.err"; then
    replace_runs "linked statically" "$tmp/cxx_replace_static"
elif grep -q "multiple definition" "$tmp/static.err"; then
    fail "cxx_replace does not link statically with libhakmem.a: $(head -3 "$tmp/static.err")"
else
    echo "test_cxx: no static C++ link on this machine (libstdc++.a or libc.a missing)"
fi
echo "test_cxx: ok ($libs libraries: same output as glibc, wrong-size deletes reported, a program's own operator delete honoured)"
