/* ZERO_ON_FREE without the quarantine (and without guard pages): a build
 * with -DHAK_HARDEN_CANARY=1 -DHAK_HARDEN_ZERO_ON_FREE=1 alone.  What a
 * block held must not come back in a block malloc hands out later, in
 * any tier, and a realloc that shrinks a large block must not leave its
 * old tail behind either; zeroing must not fault in the pages of a block
 * that the program never touched.  Until 2026-12-07 only the quarantine zeroed
 * freed large blocks, so that without it their contents came back (a
 * freed 200,000-byte block's bytes in the next malloc of its size).
 * Built and run for the zerofree variant only (tests/zerofree).
 * SPDX-License-Identifier: MIT */
#include <sys/mman.h>
#include <sys/syscall.h>
#include "testutil.h"

#define OLD 0x77

/* The library's mincore and madvise are these (a static link takes the
 * program's own).  With `unresident`, mincore reports every page as not
 * resident, as it does the pages that are swapped out, which hold their
 * contents all the same: a free must purge such pages, not skip them.
 * With `refuse_purge` too, madvise(MADV_DONTNEED) fails, and the free must
 * clear them itself. */
static volatile int unresident, refuse_purge;
int mincore(void *addr, size_t len, unsigned char *vec)
{
    long r = syscall(SYS_mincore, addr, len, vec);
    if (r == 0 && unresident)
        memset(vec, 0, (len + 4095) / 4096);
    return (int)r;
}
int madvise(void *addr, size_t len, int advice)
{
    if (refuse_purge && advice == MADV_DONTNEED) {
        errno = EINVAL;
        return -1;
    }
    return (int)syscall(SYS_madvise, addr, len, advice);
}

/* Bytes of whole 8-byte words that still hold the old pattern: a single
 * byte of it may be chance (the freed mark a cached extent holds at the
 * start of its block is random), a word of it is not. */
static size_t old_bytes(const unsigned char *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        k += w == OLD * 0x0101010101010101ull ? 8 : 0;
    }
    return k;
}

/* A block of n bytes, all of them the old pattern. */
static unsigned char *old_block(size_t n)
{
    unsigned char *p = malloc(n);
    CHECK(p != NULL, "malloc(%zu)", n);
    if (p)
        memset(p, OLD, n);
    return p;
}

static void freed_then_malloc(size_t n)
{
    for (int round = 0; round < 8; round++) {
        unsigned char *p = old_block(n);
        if (!p)
            return;
        free(tu_launder(p));
        unsigned char *q = malloc(n), *r = malloc(n);
        CHECK(q && r, "malloc(%zu)", n);
        if (!q || !r)
            return;
        size_t kq = old_bytes(q, n), kr = old_bytes(r, n);
        CHECK(kq == 0 && kr == 0, "%zu-byte blocks after a free of one: %zu and %zu bytes of its contents", n,
              kq, kr);
        free(q);
        free(r);
    }
}

static void shrunk_then_malloc(size_t n, size_t to)
{
    unsigned char *p = old_block(n);
    if (!p)
        return;
    unsigned char *q = realloc(tu_launder(p), to);
    CHECK(q != NULL && old_bytes(q, to) == (to & ~(size_t)7), "realloc(%zu -> %zu) kept the contents", n, to);
    unsigned char *r = malloc(n);
    CHECK(r != NULL, "malloc(%zu)", n);
    if (r) {
        size_t k = old_bytes(r, n);
        CHECK(k == 0, "a %zu-byte block after a realloc down to %zu: %zu bytes of the old contents", n, to, k);
    }
    free(q);
    free(r);
}

/* A block whose pages all look swapped out (unresident) when it is freed:
 * the block placed there next must not hold its contents. */
static void swapped_out_then_malloc(size_t n, int refuse)
{
    unsigned char *p = old_block(n);
    if (!p)
        return;
    unresident = 1;
    refuse_purge = refuse;
    free(tu_launder(p));
    unresident = refuse_purge = 0;
    /* (the large cache hands a block just freed out second) */
    unsigned char *q = malloc(n), *r = malloc(n);
    CHECK(q == p || r == p, "two mallocs of %zu did not reuse the block just freed: nothing to test", n);
    unsigned char *b[2] = { q, r };
    for (int i = 0; i < 2; i++) {
        size_t k = b[i] ? old_bytes(b[i], n) : 0;
        CHECK(k == 0, "a %zu-byte block after the free of one that looked swapped out%s: %zu bytes of its "
                      "contents", n, refuse ? " (and could not be purged)" : "", k);
        free(b[i]);
    }
}

int main(void)
{
    unsigned m = hak_mitigations();
    CHECK((m & HAK_MIT_ZERO_ON_FREE) && !(m & HAK_MIT_QUARANTINE) && !(m & HAK_MIT_GUARD_PAGES),
          "built with ZERO_ON_FREE alone (mitigations %#x)", m);
    static const size_t sizes[] = { 24, 100, 1000, 20000, 60000, 200000, 300000, 1 << 20, (3 << 20) + 123 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        freed_then_malloc(sizes[i]);
    shrunk_then_malloc(1 << 20, 300000);
    shrunk_then_malloc(4 << 20, 1 << 20);
    for (int refuse = 0; refuse < 2; refuse++) {
        swapped_out_then_malloc(200000, refuse);
        swapped_out_then_malloc(8 << 20, refuse);
    }
    /* Zeroing a big block leaves the pages the program never wrote alone
     * (they read as zero already), and what it wrote does not come back
     * in the block placed there next. */
    size_t n = (size_t)32 << 20, grew = tu_zeroing_growth(n, OLD);
    CHECK(grew < n / 4, "the free of a %zu-byte block written on every third page added %zu bytes of RSS", n, grew);
    unsigned char *q = malloc(n);
    CHECK(q != NULL, "malloc(%zu)", n);
    if (q) {
        size_t k = old_bytes(q, n);
        CHECK(k == 0, "a %zu-byte block after the free of one: %zu bytes of its contents", n, k);
        free(q);
    }
    return TU_DONE();
}
