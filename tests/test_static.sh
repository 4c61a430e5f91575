#!/usr/bin/env bash
# Fully static programs: `cc -static app.c libhakmem.a` must link without
# glibc's malloc.o (no "multiple definition of malloc"), contain none of
# glibc's allocator, and run: tests/static/static_app.c checks every tier,
# glibc-internal allocations, threads and fork, and that an invalid free
# still ends in hakmem's report.  Needs glibc's static libc (libc6-dev).
# Run from the repository root (ROOT overrides); exit 0 on success.
set -euo pipefail

ROOT=${ROOT:-$(pwd)}
CC=${CC:-cc}
LIB=$ROOT/out/release/libhakmem.a
unset LD_PRELOAD HAKMEM_STATS HAKMEM_VERBOSE || true

fail() {
    echo "test_static: FAIL: $*" >&2
    exit 1
}

[ -f "$LIB" ] || fail "missing $LIB (run make)"
if [ ! -f "$("$CC" -print-file-name=libc.a)" ]; then
    echo "glibc's static libc.a not installed (libc6-dev)"
    exit 77 # tests/run.sh: SKIP
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-static.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if ! "$CC" -static -O1 -std=gnu11 -D_GNU_SOURCE -pthread -I"$ROOT/include" \
        -o "$tmp/static_app" "$ROOT/tests/static/static_app.c" "$LIB" 2>"$tmp/ld.log"; then
    fail "static link: $(grep -m 1 -E 'multiple definition|undefined|error' "$tmp/ld.log" || tail -n 1 "$tmp/ld.log")"
fi
# (Listings are read whole before grep looks at them: with pipefail, a
# grep -q that stops early makes the lister die of SIGPIPE, and the check
# would read as "not found".)
if grep -q INTERP <<<"$(readelf -l "$tmp/static_app")"; then
    fail "the program is not static: it has a program interpreter"
fi
# glibc's allocator proper (its arenas and tcache) must not be linked in;
# its __libc_malloc names are hakmem's own.
syms=$(nm "$tmp/static_app")
if grep -qE ' [tT] (_int_malloc|_int_free)$' <<<"$syms"; then
    fail "glibc's malloc.o was linked in: $(grep -m 1 -E ' [tT] (_int_malloc|_int_free)$' <<<"$syms")"
fi
if ! grep -qE ' T __libc_free$' <<<"$syms"; then
    fail "the program has no __libc_free of hakmem's"
fi

# The library defines the API and nothing else: every other name is local.
api=$(sed -n 's/^ *\(global:\)\{0,1\} *//; /^\(\/\*\|local\|{\|}\)/d; s/;/\n/g; p' "$ROOT/core/exports.map" |
      tr -d ' ' | sed '/^$/d')
api="$api
$(grep -oE '\bhak_[a-z_0-9]+ *\(' "$ROOT/include/hakmem.h" | tr -d ' (' | sort -u)"
extra=$(nm -g --defined-only "$LIB" | awk 'NF == 3 { print $3 }' | sort -u | grep -vxF "$api" || true)
[ -z "$extra" ] || fail "libhakmem.a defines non-API symbols: $(echo $extra | cut -c1-200)"

out=$("$tmp/static_app" 2>&1) || fail "static_app: $out"
[ "$out" = "static_app: ok" ] || fail "static_app printed: $out"

rc=0
err=$("$tmp/static_app" invalid 2>&1 >/dev/null) || rc=$?
[ "$rc" -eq 134 ] || fail "invalid free in a static program: exit $rc, expected SIGABRT ($err)"
case "$err" in
    "hakmem: free of a pointer hakmem did not allocate: 0x"*) ;;
    *) fail "invalid free in a static program: message '$err'" ;;
esac
echo "test_static: ok (static link without glibc's malloc, tiers, threads, fork, invalid free)"
