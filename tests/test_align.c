/* Alignment sweep: posix_memalign / aligned_alloc / memalign (exported and
 * hak_*) for every power-of-two alignment 16..8 MiB and sizes around it.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include "testutil.h"

struct blk { void *p; size_t n, al; uint64_t seed; };

static void *do_alloc(int how, size_t al, size_t n)
{
    void *p = NULL;
    int rc;
    switch (how) {
    case 0: rc = posix_memalign(&p, al, n); return rc ? NULL : p;
    case 1: return aligned_alloc(al, n);
    case 2: return memalign(al, n);
    case 3: rc = hak_posix_memalign(&p, al, n); return rc ? NULL : p;
    case 4: return hak_aligned_alloc(al, n);
    default: return hak_memalign(al, n);
    }
}

static void do_free(int how, void *p)
{
    if (how & 1) hak_free(p); else free(p);
}

static void sweep(void)
{
    tu_rng r = tu_rng_seed(1);
    enum { MAXB = 64 };
    struct blk b[MAXB];
    uint64_t seed = 1;
    for (size_t al = 16; al <= ((size_t)8 << 20); al <<= 1) {
        size_t sizes[7] = { 1, al - 1, al, al + 1, 3 * al, 0, 0 };
        sizes[5] = tu_range(&r, 1, al < 65536 ? 4 * al : 200000);
        sizes[6] = tu_range(&r, 1, 70000);
        int nb = 0;
        for (int s = 0; s < 7; s++) {
            for (int how = 0; how < 6; how++) {
                size_t n = sizes[s];
                void *p = do_alloc(how, al, n);
                CHECK(p != NULL, "alloc(how=%d, al=%zu, n=%zu) = NULL", how, al, n);
                if (!p) continue;
                CHECK(((uintptr_t)p & (al - 1)) == 0, "how=%d al=%zu n=%zu: %p misaligned",
                      how, al, n, p);
                size_t us = malloc_usable_size(p);
                CHECK(us >= n, "how=%d al=%zu n=%zu: usable %zu", how, al, n, us);
                CHECK(hak_usable_size(p) == us, "hak_usable_size %zu != malloc_usable_size %zu",
                      hak_usable_size(p), us);
                tu_fill(p, n, seed);
                b[nb++] = (struct blk){ p, n, al, seed++ };
            }
        }
        for (int i = 0; i < nb; i++)
            CHECK(tu_verify(b[i].p, b[i].n, b[i].seed) == TU_OK,
                  "al=%zu n=%zu block %p corrupted by later allocations", b[i].al, b[i].n, b[i].p);
        for (int i = 0; i < nb; i++)
            do_free(i % 6, b[i].p);
    }
}

static void interleave(void)
{
    enum { N = 3000 };
    struct blk *b = calloc(N, sizeof *b);
    CHECK(b != NULL, "calloc");
    if (!b) return;
    tu_rng r = tu_rng_seed(2);
    uint64_t seed = 100000;
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < N; i++) {
            if (b[i].p) continue;
            size_t al = (size_t)16 << tu_range(&r, 0, tu_rand(&r) % 50 == 0 ? 16 : 8);
            size_t n;
            switch (tu_rand(&r) % 4) {
            case 0: n = tu_range(&r, 1, 1024); break;
            case 1: n = tu_range(&r, 1025, 53248); break;
            case 2: n = tu_range(&r, 1, al * 2); break;
            default: n = tu_rand(&r) % 10 == 0 ? tu_range(&r, 53249, 400000) : tu_range(&r, 1, 300); break;
            }
            int how = (int)(tu_rand(&r) % 6);
            void *p = do_alloc(how, al, n);
            CHECK(p && ((uintptr_t)p & (al - 1)) == 0, "alloc(how=%d,al=%zu,n=%zu) = %p", how, al, n, p);
            if (!p) continue;
            CHECK(malloc_usable_size(p) >= n, "usable %zu < %zu", malloc_usable_size(p), n);
            tu_fill(p, n, seed);
            b[i] = (struct blk){ p, n, al, seed++ };
        }
        for (int i = 0; i < N; i++)
            if (b[i].p)
                CHECK(tu_verify(b[i].p, b[i].n, b[i].seed) == TU_OK,
                      "round %d: block %p (al=%zu n=%zu) overlaps another", round, b[i].p,
                      b[i].al, b[i].n);
        /* free a random ~60% */
        for (int i = 0; i < N; i++) {
            if (b[i].p && tu_rand(&r) % 10 < 6) {
                (tu_rand(&r) & 1 ? free : hak_free)(b[i].p);
                b[i].p = NULL;
            }
        }
    }
    for (int i = 0; i < N; i++)
        if (b[i].p) {
            CHECK(tu_verify(b[i].p, b[i].n, b[i].seed) == TU_OK, "final verify %p", b[i].p);
            free(b[i].p);
        }
    free(b);
}

/* Aligned blocks are reallocatable like any other block. */
static void realloc_aligned(void)
{
    for (size_t al = 16; al <= ((size_t)1 << 20); al <<= 2) {
        char *p = aligned_alloc(al, 100);
        CHECK(p && ((uintptr_t)p & (al - 1)) == 0, "aligned_alloc(%zu,100)", al);
        if (!p) continue;
        tu_fill_idx(p, 0, 100, al);
        p = realloc(p, 100000);
        CHECK(p && tu_verify_idx(p, 100, al) == TU_OK, "realloc of aligned block lost data");
        if (p) {
            tu_fill_idx(p, 100, 100000, al);
            p = realloc(p, 50);
            CHECK(p && tu_verify_idx(p, 50, al) == TU_OK, "shrink of aligned block lost data");
        }
        free(p);
    }
}

/* A realloc that moves an aligned large block down to the slab tiers
 * copies at most the old block's usable bytes: the hardened build's guard
 * page right after the block faults on any read past it. */
static void realloc_aligned_down(void)
{
    for (size_t al = 4096; al <= ((size_t)1 << 20); al <<= 4) {
        void *p = NULL;
        CHECK(posix_memalign(&p, al, 100) == 0 && p, "posix_memalign(%zu, 100)", al);
        if (!p) continue;
        size_t usable = malloc_usable_size(p);
        tu_fill_idx(p, 0, usable, al);
        char *q = realloc(p, 50000);
        CHECK(q != NULL, "realloc(aligned %zu, 50000)", al);
        if (!q) { free(p); continue; }
        size_t keep = usable < 50000 ? usable : 50000;
        CHECK(tu_verify_idx(q, keep, al) == TU_OK, "realloc of aligned %zu block lost data", al);
        free(q);
    }
}

int main(void)
{
    sweep();
    interleave();
    realloc_aligned();
    realloc_aligned_down();
    return TU_DONE();
}
