#!/usr/bin/env bash
# C++ programs on hakmem: tests/cxx/cxx_app.cc, built with g++ (C++17,
# sized deallocation), prints the same checksum under glibc and under
# LD_PRELOAD of the release, debug and hardened libraries; its misuses
# (delete through a base class without a virtual destructor, delete of a
# new[] array) end in hakmem's one-line report and abort.
# tests/cxx/cxx_replace.cc replaces the plain operator new and delete (a
# header of its own before each block): its sized, array and nothrow
# deletes must reach its replacement, preloaded, linked with -lhakmem and
# linked statically with libhakmem.a.
# tests/cxx/cxx_pool.cc: a shared library with its own new and delete,
# after hakmem in the lookup order (preloaded, linked first, libhakmem.a):
# its program must never get the library's new paired with hakmem's delete.
# tests/cxx/cxx_new_handler.cc: operator new when memory runs out (new
# handler loop, std::bad_alloc, nothrow forms) as under libstdc++ alone.
# Run from the repository root (ROOT overrides); exit 0 on success.
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
    # operator new and delete are hakmem's: the program's calls reach them
    syms=$(nm -D --defined-only "$lib") # whole: see test_static.sh
    grep -q ' _ZdlPvm$' <<<"$syms" || fail "$lib does not export operator delete(void*, size_t)"
    grep -q ' _Znwm$' <<<"$syms" || fail "$lib does not export operator new(size_t)"
    for misuse in wrong-type array-as-scalar aligned-wrong-size; do
        rc=0
        err=$(LD_PRELOAD=$lib "$tmp/cxx_app" "$misuse" 2>&1 >/dev/null) || rc=$?
        [ "$rc" -eq 134 ] || fail "$misuse with $lib: exit $rc, expected SIGABRT ($err)"
        case "$err" in
            "hakmem: free or delete with the wrong size: 0x"* | \
                "hakmem: free or delete with the wrong size or alignment: 0x"*) ;;
            *) fail "$misuse with $lib: message '$err'" ;;
        esac
    done
done
[ "$libs" -gt 0 ] || fail "no library built under out/ (run make)"
release=$ROOT/out/release
if [ -f "$release/libhakmem.so" ]; then
    "$CXX" -O1 -std=c++17 -fsized-deallocation -o "$tmp/cxx_replace_linked" "$ROOT/tests/cxx/cxx_replace.cc" \
        -L"$release" -lhakmem -Wl,-rpath,"$release" || fail "cannot link cxx_replace with -lhakmem"
    replace_runs "linked with -lhakmem" "$tmp/cxx_replace_linked"
fi
# A static link needs libstdc++.a and libc.a, which not every machine has
if [ -f "$release/libhakmem.a" ] &&
    "$CXX" -O1 -std=c++17 -fsized-deallocation -static -o "$tmp/cxx_replace_static" "$ROOT/tests/cxx/cxx_replace.cc" \
        "$release/libhakmem.a" -lpthread 2>"$tmp/static.err"; then
    replace_runs "linked statically" "$tmp/cxx_replace_static"
elif grep -q "multiple definition" "$tmp/static.err"; then
    fail "cxx_replace does not link statically with libhakmem.a: $(head -3 "$tmp/static.err")"
else
    echo "test_cxx: no static C++ link on this machine (libstdc++.a or libc.a missing)"
fi
# A library's own new and delete, and running out of memory
"$CXX" -O1 -std=c++17 -shared -fPIC -DCXX_POOL_LIB -o "$tmp/libcxxpool.so" "$ROOT/tests/cxx/cxx_pool.cc" ||
    fail "cannot build the library of tests/cxx/cxx_pool.cc"
"$CXX" -O1 -std=c++17 -o "$tmp/cxx_pool" "$ROOT/tests/cxx/cxx_pool.cc" -L"$tmp" -lcxxpool -Wl,-rpath,"$tmp" ||
    fail "cannot build tests/cxx/cxx_pool.cc"
"$CXX" -O1 -std=c++17 -o "$tmp/cxx_new_handler" "$ROOT/tests/cxx/cxx_new_handler.cc" ||
    fail "cannot build tests/cxx/cxx_new_handler.cc"
runs_ok() { # WHAT CMD...: prints its "ok" line
    local what=$1 got
    shift
    got=$("$@" 2>&1) || fail "$what: $got"
    case "$got" in *": ok") ;; *) fail "$what printed '$got'" ;; esac
}
# a C program that loads a C++ library with RTLD_LOCAL (a Python extension)
"$CXX" -O1 -std=c++17 -shared -fPIC -DCXX_PLUGIN -o "$tmp/libcxxnh.so" "$ROOT/tests/cxx/cxx_new_handler.cc" ||
    fail "cannot build tests/cxx/cxx_new_handler.cc as a library"
printf '%s\n' '#include <dlfcn.h>' '#include <stdio.h>' 'int main(int argc, char **argv) {' \
    '    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);' \
    '    int (*f)(void) = h ? (int (*)(void))dlsym(h, "cxx_new_handler") : NULL;' \
    '    if (!f) { printf("%s\n", dlerror()); return 2; }' '    fflush(stdout);' '    return f();' '}' >"$tmp/host.c"
"${CC:-cc}" -O1 -o "$tmp/cxx_host" "$tmp/host.c" -ldl || fail "cannot build the C host"
runs_ok "cxx_new_handler loaded by a C program" "$tmp/cxx_host" "$tmp/libcxxnh.so"
runs_ok "cxx_pool without hakmem" "$tmp/cxx_pool"
runs_ok "cxx_new_handler without hakmem" "$tmp/cxx_new_handler"
for lib in "$ROOT/out/release/libhakmem.so" "$ROOT/out/debug/libhakmem.so" "$ROOT/out/secure/libhakmem.so"; do
    [ -f "$lib" ] || continue
    runs_ok "cxx_pool with $lib" env LD_PRELOAD="$lib" "$tmp/cxx_pool"
    runs_ok "cxx_new_handler with $lib" env LD_PRELOAD="$lib" "$tmp/cxx_new_handler"
    runs_ok "cxx_new_handler loaded by a C program, with $lib" env LD_PRELOAD="$lib" "$tmp/cxx_host" "$tmp/libcxxnh.so"
done
if [ -f "$release/libhakmem.so" ]; then
    "$CXX" -O1 -std=c++17 -o "$tmp/cxx_pool_linked" "$ROOT/tests/cxx/cxx_pool.cc" -L"$release" -lhakmem \
        -L"$tmp" -lcxxpool -Wl,-rpath,"$release:$tmp" || fail "cannot link cxx_pool with -lhakmem"
    runs_ok "cxx_pool linked with -lhakmem" "$tmp/cxx_pool_linked"
    "$CXX" -O1 -std=c++17 -o "$tmp/cxx_new_handler_linked" "$ROOT/tests/cxx/cxx_new_handler.cc" \
        -L"$release" -lhakmem -Wl,-rpath,"$release" || fail "cannot link cxx_new_handler with -lhakmem"
    runs_ok "cxx_new_handler linked with -lhakmem" "$tmp/cxx_new_handler_linked"
fi
if [ -f "$release/libhakmem.a" ]; then
    "$CXX" -O1 -std=c++17 -o "$tmp/cxx_pool_archive" "$ROOT/tests/cxx/cxx_pool.cc" "$release/libhakmem.a" \
        -L"$tmp" -lcxxpool -Wl,-rpath,"$tmp" -lpthread || fail "cannot link cxx_pool with libhakmem.a"
    runs_ok "cxx_pool linked with libhakmem.a" "$tmp/cxx_pool_archive"
    "$CXX" -O1 -std=c++17 -o "$tmp/cxx_new_handler_archive" "$ROOT/tests/cxx/cxx_new_handler.cc" \
        "$release/libhakmem.a" -lpthread || fail "cannot link cxx_new_handler with libhakmem.a"
    runs_ok "cxx_new_handler linked with libhakmem.a" "$tmp/cxx_new_handler_archive"
    # fully static (where this machine can): the runtime's bad_alloc and
    # nothrow forms come in with the archive's C++ member
    if "$CXX" -O1 -std=c++17 -static -o "$tmp/cxx_new_handler_static" "$ROOT/tests/cxx/cxx_new_handler.cc" \
            "$release/libhakmem.a" -lpthread 2>"$tmp/static.err"; then
        [ -s "$tmp/static.err" ] && fail "static link of cxx_new_handler warns: $(head -2 "$tmp/static.err")"
        runs_ok "cxx_new_handler linked statically" "$tmp/cxx_new_handler_static"
    fi
fi
echo "test_cxx: ok ($libs libraries: same output as glibc, wrong-size deletes reported, a program's own operator delete honoured, a library's own new and delete kept together, out-of-memory new as libstdc++'s)"
