#!/usr/bin/env bash
# Install test: `make install` into a temporary prefix, then build a program
# against the installed header with pkg-config (shared and static), run a
# command through the installed `hakmem` wrapper, and `make uninstall`.
# Run from the repository root (ROOT overrides).  Exit 0 on success; on
# failure print one line with the reason and exit 1.
set -euo pipefail

ROOT=${ROOT:-$(pwd)}
CC=${CC:-cc}
MAKE=${MAKE:-make}
unset LD_PRELOAD HAKMEM_STATS HAKMEM_VERBOSE || true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
work=$tmp/work
mkdir -p "$work"

fail() {
    echo "test_install: FAIL: $*" >&2
    exit 1
}

# Run "$@" with output captured; on failure report its first error line
# (or its last line when nothing looks like an error).
quiet() {
    local what=$1 line
    shift
    if ! "$@" >"$tmp/log" 2>&1; then
        line=$(grep -m 1 -iE "error|cannot|can't|no such|not found|undefined" "$tmp/log" || true)
        [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$tmp/log" | tail -n 1 || true)
        fail "$what failed: $line"
    fi
}

# Run "$@" and print its stdout (the allocator may warn on stderr); on
# failure print its stdout and first stderr line instead, and fail.
run() {
    local rc=0
    "$@" >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "exit $rc: $(cat "$tmp/stdout" "$tmp/stderr" | grep -m 1 . || true)"
        return "$rc"
    fi
    cat "$tmp/stdout"
}

command -v pkg-config >/dev/null 2>&1 || fail "pkg-config not installed"
[ -f "$ROOT/Makefile" ] || fail "no Makefile in ROOT=$ROOT"

files=(
    lib/libhakmem.so
    lib/libhakmem.a
    include/hakmem.h
    bin/hakmem
    lib/pkgconfig/hakmem.pc
)

# ---- install ---------------------------------------------------------------
quiet "make install" "$MAKE" -s -C "$ROOT" install PREFIX="$prefix"
for f in "${files[@]}"; do
    [ -f "$prefix/$f" ] || fail "make install did not create $f"
done
[ -x "$prefix/bin/hakmem" ] || fail "bin/hakmem is not executable"
grep -q '@PREFIX@' "$prefix/bin/hakmem" "$prefix/lib/pkgconfig/hakmem.pc" &&
    fail "@PREFIX@ left unsubstituted in installed files"

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
version=$(pkg-config --modversion hakmem 2>&1) || fail "pkg-config cannot find hakmem: $version"
[ "$version" = "0.1.0" ] || fail "pkg-config version is '$version', want 0.1.0"

# ---- program built against the installed library ---------------------------
cat > "$work/prog.c" <<'PROG'
#include <hakmem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    char *h = hak_malloc(64);
    if (!h) { puts("hak_malloc failed"); return 1; }
    memset(h, 0xab, 64);
    if (hak_ptr_kind(h) == HAK_KIND_FOREIGN) { puts("hak_malloc pointer is foreign"); return 1; }
    hak_free(h);

    char *p = malloc(100);
    if (!p) { puts("malloc failed"); return 1; }
    memset(p, 0xcd, 100);
    if (hak_ptr_kind(p) != HAK_KIND_TINY) {
        printf("malloc(100) is not hakmem's: kind %d\n", (int)hak_ptr_kind(p));
        return 1;
    }
    free(p);
    puts("OK");
    return 0;
}
PROG

# shellcheck disable=SC2046  # pkg-config output must be word-split
quiet "shared build" "$CC" -Wall -o "$work/prog_shared" "$work/prog.c" $(pkg-config --cflags --libs hakmem)
# shellcheck disable=SC2046
quiet "static build" "$CC" -Wall -o "$work/prog_static" "$work/prog.c" $(pkg-config --cflags hakmem) \
    "$prefix/lib/libhakmem.a" -lpthread

out=$(LD_LIBRARY_PATH="$prefix/lib" run "$work/prog_shared") || fail "shared program failed: $out"
[ "$out" = "OK" ] || fail "shared program printed '$out'"
out=$(run "$work/prog_static") || fail "static program failed: $out"
[ "$out" = "OK" ] || fail "static program printed '$out'"

# ---- the hakmem wrapper ----------------------------------------------------
hk=$prefix/bin/hakmem
out=$(run "$hk" --version) || fail "hakmem --version failed: $out"
[ "$out" = "hakmem 0.1.0" ] || fail "hakmem --version printed '$out'"
"$hk" --help >/dev/null 2>&1 || fail "hakmem --help failed"
out=$(run "$hk" python3 -c 'print(42)') || fail "hakmem python3 failed: $out"
[ "$out" = "42" ] || fail "hakmem python3 -c 'print(42)' printed '$out'"
# shellcheck disable=SC2016  # expanded by the inner shell
out=$(run "$hk" sh -c 'echo "$LD_PRELOAD"') || fail "hakmem sh failed: $out"
[ "$out" = "$prefix/lib/libhakmem.so" ] || fail "hakmem set LD_PRELOAD='$out'"
# shellcheck disable=SC2016
out=$(LD_PRELOAD=libfoo.so "$hk" sh -c 'echo "$LD_PRELOAD"' 2>/dev/null) || true
[ "$out" = "$prefix/lib/libhakmem.so libfoo.so" ] || fail "hakmem did not prepend to LD_PRELOAD: '$out'"
"$hk" --stats true >/dev/null 2>&1 || fail "hakmem --stats true failed"
"$hk" --debug true >/dev/null 2>&1 && fail "hakmem --debug succeeded without an installed debug library"

# ---- staged install (DESTDIR) ---------------------------------------------
quiet "make install DESTDIR" "$MAKE" -s -C "$ROOT" install DESTDIR="$tmp/stage" PREFIX=/opt/hakmem
for f in "${files[@]}"; do
    [ -f "$tmp/stage/opt/hakmem/$f" ] || fail "DESTDIR install did not create $f"
done
grep -q "^prefix=/opt/hakmem\$" "$tmp/stage/opt/hakmem/lib/pkgconfig/hakmem.pc" ||
    fail "DESTDIR install: hakmem.pc prefix is not /opt/hakmem"

# ---- uninstall -------------------------------------------------------------
quiet "make uninstall" "$MAKE" -s -C "$ROOT" uninstall PREFIX="$prefix"
for f in "${files[@]}"; do
    [ ! -e "$prefix/$f" ] || fail "make uninstall left $f"
done

echo "test_install: OK"
