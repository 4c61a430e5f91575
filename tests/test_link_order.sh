#!/bin/bash
# hakmem as the dependency of a library, with libc before it in the load
# order: a program that is not linked with hakmem (its malloc is glibc's)
# uses a library linked with -lhakmem, and hands that library blocks of
# glibc's, which the library frees and reallocs with hak_free and
# hak_realloc.  hakmem must find glibc's own free though libc came first
# (dlsym RTLD_NEXT from hakmem sees nothing after it), and hand the
# blocks back: the library before this test aborted with "realloc of a
# pointer hakmem did not allocate".  hakmem's own dlopen (core/dlopen.c),
# loaded after libc's, must still reach libc's: it took libc's for
# itself and failed every call, dlerror() NULL.
#
# Env: ROOT (repo root), HAK_TEST_LIB, HAK_TEST_DEBUG_LIB (set by tests/run.sh).
# SPDX-License-Identifier: MIT
set -u
: "${ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}" "${CC:=cc}"
LIBS=("${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}" "${HAK_TEST_DEBUG_LIB:-$ROOT/out/debug/libhakmem.so}")
unset LD_PRELOAD HAKMEM_STATS HAKMEM_VERBOSE || true
if [ ! -f "${LIBS[0]}" ]; then
    echo "FAIL test_link_order: ${LIBS[0]} does not exist (run make)"
    exit 1
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-link-order.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

cat >"$TMP/lib.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include "hakmem.h"
/* hakmem's dlopen, called by name from its own object */
int lib_dlopen(void)
{
    Dl_info di; /* hakmem's file, found by one of its functions */
    void *self = dladdr((void *)hak_free, &di) ? dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD) : NULL;
    void *(*hak_dlopen)(const char *, int) = self ? (void *(*)(const char *, int))dlsym(self, "dlopen") : NULL;
    return hak_dlopen && hak_dlopen("libm.so.6", RTLD_NOW | RTLD_DEEPBIND) != NULL;
}
void lib_release(void *p) { hak_free(p); }
void *lib_grow(void *p, size_t n) { return hak_realloc(p, n); }
size_t lib_usable(void *p) { return hak_usable_size(p); }
EOF
cat >"$TMP/app.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
void lib_release(void *p);
void *lib_grow(void *p, size_t n);
size_t lib_usable(void *p);
int lib_dlopen(void);
int main(void)
{
    if (!lib_dlopen()) { puts("hakmem's dlopen failed"); return 1; }
    for (int i = 0; i < 100; i++) {
        size_t n = 1 + (size_t)i * 997;
        char *s = malloc(n); /* glibc's */
        if (!s) return 1;
        memset(s, 'a' + i % 26, n);
        if (lib_usable(s) < n) { printf("usable %zu < %zu\n", lib_usable(s), n); return 1; }
        char *t = lib_grow(s, 2 * n + 100); /* now hakmem's, glibc's block freed */
        for (size_t k = 0; t && k < n; k++)
            if (t[k] != 'a' + i % 26) { printf("realloc lost byte %zu\n", k); return 1; }
        if (!t) { puts("realloc failed"); return 1; }
        lib_release(t);
        lib_release(malloc(n)); /* a glibc block straight to hak_free */
    }
    puts("app: ok");
    return 0;
}
EOF

fail=0
for lib in "${LIBS[@]}"; do
    [ -f "$lib" ] || continue
    d=$TMP/$(basename "$(dirname "$lib")")
    mkdir -p "$d"
    if ! "$CC" -O1 -shared -fPIC -I"$ROOT/include" -o "$d/libuser.so" "$TMP/lib.c" "$lib" \
            -Wl,-rpath,"$(dirname "$lib")" >"$d/cc.log" 2>&1 ||
       ! "$CC" -O1 -o "$d/app" "$TMP/app.c" -L"$d" -luser -Wl,-rpath,"$d" >>"$d/cc.log" 2>&1; then
        echo "FAIL test_link_order $lib: build: $(grep -m1 -i error "$d/cc.log")"
        fail=1
        continue
    fi
    # libc must be loaded before hakmem, or this tests nothing
    order=$(LD_DEBUG=files "$d/app" 2>&1 >/dev/null | sed -n 's/.*file=\([^ ]*\) .*generating link map.*/\1/p' | tr '\n' ' ')
    case $order in
        *libc.so.6*libhakmem.so*) ;;
        *) echo "FAIL test_link_order $lib: load order is not libc then hakmem: $order"; fail=1; continue ;;
    esac
    out=$(timeout -k 2 30 "$d/app" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && [ "$out" = "app: ok" ]; then
        echo "PASS test_link_order $lib"
    else
        echo "FAIL test_link_order $lib: exit status $rc: $(head -c 200 <<<"$out")"
        fail=1
    fi
done
exit $fail
