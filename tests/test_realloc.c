/* realloc: growth chain 1 B .. 64 MiB, shrink chain, tier crossings,
 * interleaved realloc'd blocks, same-size realloc, and the mappings that
 * many large blocks grown by realloc leave.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include "testutil.h"

typedef void *(*realloc_fn)(void *, size_t);

/* One link of a chain: realloc *p from *have to n bytes.  The bytes both
 * sizes hold keep their pattern, the new ones get it.  False (reported)
 * if realloc failed or lost content. */
static bool step(realloc_fn re, const char *name, const char *phase, char **p, size_t *have,
                 size_t n, uint64_t seed)
{
    char *q = re(*p, n);
    CHECK(q != NULL, "%s %s: realloc %zu -> %zu failed", name, phase, *have, n);
    if (!q)
        return false;
    *p = q;
    CHECK(malloc_usable_size(q) >= n, "%s usable %zu < %zu", name, malloc_usable_size(q), n);
    size_t bad = tu_verify_idx(q, *have < n ? *have : n, seed);
    CHECK(bad == TU_OK, "%s %s: content lost %zu -> %zu (byte %zu)", name, phase, *have, n, bad);
    if (bad != TU_OK)
        return false;
    if (n > *have)
        tu_fill_idx(q, *have, n, seed);
    *have = n;
    return true;
}

static void chain(realloc_fn re, const char *name, uint64_t seed)
{
    char *p = NULL;
    size_t have = 0;
    /* +1 steps through tiny and the start of mid */
    for (size_t n = 1; n <= 2200; n++)
        if (!step(re, name, "+1 chain", &p, &have, n, seed))
            break;
    TU_COUNT(1);
    /* geometric growth to 64 MiB, with odd sizes */
    for (size_t n = have; n < 64 * MiB;) {
        n = n * 3 / 2 + 7 < 64 * MiB ? n * 3 / 2 + 7 : 64 * MiB;
        if (!step(re, name, "geometric growth", &p, &have, n, seed))
            break;
    }
    /* shrink back down: geometric, then -1 steps */
    for (size_t n = have; n > 1500;) {
        n = n * 2 / 3 - 3;
        if (!step(re, name, "geometric shrink", &p, &have, n, seed))
            break;
    }
    for (size_t n = have - 1; n >= 1; n--)
        if (!step(re, name, "-1 chain", &p, &have, n, seed))
            break;
    TU_COUNT(1);
    free(p);
}

static void tiers(void)
{
    /* tiny -> mid -> large -> mid -> tiny, and jumps skipping a tier */
    static const size_t path[][6] = {
        { 24, 3000, 200000, 3000, 24, 0 },
        { 1024, 1025, 53248, 53249, 53248, 1024 },
        { 1, 5 << 20, 7, 60000, 100, 0 },
        { 700, 40000, 700, 1 << 20, 2 << 20, 30 },
        { 53249, 1 << 20, 53249, 1, 53249, 0 },
    };
    for (size_t t = 0; t < sizeof path / sizeof *path; t++) {
        uint64_t seed = 500 + t;
        char *p = malloc(path[t][0]);
        CHECK(p != NULL, "malloc");
        if (!p) continue;
        size_t have = path[t][0];
        tu_fill_idx(p, 0, have, seed);
        for (int i = 1; i < 6 && path[t][i]; i++) {
            size_t n = path[t][i];
            p = realloc(p, n);
            CHECK(p != NULL, "realloc(%zu -> %zu)", have, n);
            if (!p) break;
            size_t keep = have < n ? have : n;
            size_t bad = tu_verify_idx(p, keep, seed);
            CHECK(bad == TU_OK, "tier path %zu: %zu -> %zu lost content at %zu", t, have, n, bad);
            CHECK(malloc_usable_size(p) >= n, "usable %zu < %zu", malloc_usable_size(p), n);
            int want = tu_tier_of(n);
            int k = hak_ptr_kind(p);
            /* a shrink may stay in place in the bigger tier; a grow must
             * land in a tier that can hold the size */
            CHECK(n < have ? k >= want : k == want, "realloc %zu -> %zu: kind %d, want %d",
                  have, n, k, want);
            tu_fill_idx(p, keep, n, seed);
            have = n;
        }
        free(p);
    }
}

static void interleaved(void)
{
    enum { N = 600, ROUNDS = 40 };
    struct { char *p; size_t n; uint64_t seed; } b[N];
    memset(b, 0, sizeof b);
    tu_rng r = tu_rng_seed(77);
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < N; i++) {
            size_t n;
            uint64_t x = tu_rand(&r) % 100;
            if (x < 55) n = tu_range(&r, 1, 1024);
            else if (x < 90) n = tu_range(&r, 1025, 53248);
            else if (x < 98) n = tu_range(&r, 53249, 600000);
            else n = 0;
            if (!b[i].p) b[i].seed = (uint64_t)round * N + i + 1;
            char *q = (round & 1) ? realloc(b[i].p, n) : hak_realloc(b[i].p, n);
            if (n == 0) {
                if (q) free(q);
                b[i].p = NULL;
                b[i].n = 0;
                continue;
            }
            CHECK(q != NULL, "realloc(%zu)", n);
            if (!q) continue;
            size_t keep = b[i].n < n ? b[i].n : n;
            size_t bad = tu_verify_idx(q, keep, b[i].seed);
            CHECK(bad == TU_OK, "interleaved realloc %zu -> %zu lost byte %zu", b[i].n, n, bad);
            tu_fill_idx(q, keep, n, b[i].seed);
            b[i].p = q;
            b[i].n = n;
        }
        /* every live block must still hold its own pattern (no overlap) */
        for (int i = 0; i < N; i++)
            if (b[i].p && tu_verify_idx(b[i].p, b[i].n, b[i].seed) != TU_OK)
                CHECK(0, "round %d: block %d (%zu bytes) overwritten", round, i, b[i].n);
        TU_COUNT(1);
    }
    for (int i = 0; i < N; i++) free(b[i].p);
}

static void same_size(void)
{
    static const size_t sizes[] = { 1, 16, 100, 1024, 1025, 5000, 53248, 53249, 100000, 3 << 20 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        char *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p) continue;
        tu_fill_idx(p, 0, n, i);
        for (int k = 0; k < 5; k++) {
            p = realloc(p, n);
            CHECK(p && tu_verify_idx(p, n, i) == TU_OK, "realloc to same size %zu lost data", n);
            if (!p) break;
            CHECK(malloc_usable_size(p) >= n, "usable");
            size_t us = malloc_usable_size(p);
            memset(p + n, 0x77, us - n); /* the whole usable size is writable */
            /* realloc within the usable size also keeps data */
            p = realloc(p, us);
            CHECK(p && tu_verify_idx(p, n, i) == TU_OK, "realloc to usable size %zu lost data", us);
            if (!p) break;
            p = realloc(p, n);
            CHECK(p && tu_verify_idx(p, n, i) == TU_OK, "realloc back to %zu lost data", n);
            if (!p) break;
        }
        free(p);
    }
}

/* Programs may write up to malloc_usable_size(p), not just to the size
 * they asked for (Redis-style strings do): a realloc that moves the block
 * keeps every byte up to min(old usable size, new size).  Covers moves
 * within and between the tiers, and the large tier's page move (>= 1 MiB). */
static void usable_tail(void)
{
    static const size_t from[] = { 24, 1000, 20000, 60000, 100000, 1000000, 3000000 };
    static const size_t to[] = { 40, 1500, 30000, 53248, 70000, 150000, 1100000, 5000000 };
    for (size_t i = 0; i < sizeof from / sizeof *from; i++)
        for (size_t j = 0; j < sizeof to / sizeof *to; j++) {
            char *p = malloc(from[i]);
            CHECK(p != NULL, "malloc(%zu)", from[i]);
            if (!p) continue;
            size_t usable = malloc_usable_size(p);
            CHECK(usable >= from[i], "usable %zu < %zu", usable, from[i]);
            tu_fill_idx(p, 0, usable, i * 100 + j);
            char *q = realloc(p, to[j]);
            CHECK(q != NULL, "realloc(%zu -> %zu)", from[i], to[j]);
            if (!q) { free(p); continue; }
            size_t keep = usable < to[j] ? usable : to[j];
            size_t bad = tu_verify_idx(q, keep, i * 100 + j);
            CHECK(bad == TU_OK, "realloc %zu (usable %zu) -> %zu: byte %zu of %zu lost",
                  from[i], usable, to[j], bad, keep);
            free(q);
        }
}

/* The process's mappings (lines of /proc/self/maps); 0 if unreadable. */
static size_t mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    size_t n = 0;
    int c;
    if (!f)
        return 0;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* A large realloc that cannot grow in place moves the block's pages with
 * mremap, which leaves the old range a mapping of its own (and the block
 * one too): they must not pile up, or a process with many such blocks
 * runs into vm.max_map_count (65530) and mmap fails.  200 live blocks of
 * 64 KiB .. 8 MiB, each grown by a quarter or replaced at random: the
 * library before this check left 35 mappings a block (glibc: under 1). */
static void moves_keep_mappings(void)
{
    enum { LIVE = 200, OPS = 6000 };
    static char *v[LIVE];
    static size_t n[LIVE];
    size_t before = mappings();
    if (!before) {
        TU_COUNT(1); /* no /proc */
        return;
    }
    tu_rng r = tu_rng_seed(99);
    size_t peak = before;
    for (int op = 0; op < OPS; op++) {
        unsigned j = (unsigned)tu_range(&r, 0, LIVE - 1);
        if (!v[j] || tu_range(&r, 0, 15) == 0) {
            free(v[j]);
            n[j] = tu_range(&r, 64 << 10, 512 << 10);
            v[j] = malloc(n[j]);
        } else {
            size_t m = n[j] + n[j] / 4 + 4096;
            if (m > (8u << 20))
                m = 64 << 10;
            char *q = realloc(v[j], m);
            CHECK(q != NULL, "realloc to %zu", m);
            if (!q)
                break;
            CHECK(q[0] == (char)j && (m < n[j] || q[n[j] - 1] == (char)(j + 1)),
                  "realloc of a large block lost its bytes");
            v[j] = q;
            n[j] = m;
        }
        CHECK(v[j] != NULL, "malloc of a large block");
        if (!v[j])
            break;
        v[j][0] = (char)j;
        v[j][n[j] - 1] = (char)(j + 1);
        if (op % 500 == 0) {
            size_t now = mappings();
            if (now > peak)
                peak = now;
        }
    }
    CHECK(peak <= before + 8 * LIVE, "%zu mappings with %d large blocks grown by realloc (%zu before)",
          peak, LIVE, before);
    for (int j = 0; j < LIVE; j++)
        free(v[j]);
}

/* A buffer grown 8 KiB at a time to 64 MiB: a block that cannot grow in
 * place moves to an extent with room to grow by half again, so it moves
 * O(log n) times.  Moved to an extent of its exact size, it moved on
 * nearly every step once past its free neighbours (1,795 moves to 72 MiB,
 * quadratic time); the hardened build copied it on every step (its
 * blocks end at their guard page: 16 MiB took 10 s).  The contents (one
 * byte a page) must survive.  The loop stops at the first address change
 * past the limit, so that the old behaviour fails at once. */
static void grown_in_small_steps(void)
{
    struct hak_stats before, after;
    hak_stats_get(&before);
    unsigned char *p = NULL;
    size_t n = 0;
    unsigned limit = 24, changes = tu_grow_by_steps(&p, &n, 64 * MiB, 8192, limit);
    int lost = tu_grown_lost(p, n);
    free(p);
    hak_stats_get(&after);
    CHECK(lost == 0, "%d pages lost their contents", lost);
    CHECK(changes <= limit, "a buffer grown 8 KiB at a time changed address %u times by %zu KiB", changes, n >> 10);
    CHECK(after.fallbacks == before.fallbacks, "%llu of its moves copied",
          (unsigned long long)(after.fallbacks - before.fallbacks));
}

/* realloc of a large block down to the slab tiers copies its first bytes,
 * written or not; made from memory that held freed small blocks, the
 * unwritten ones still hold their free marks (every 64 bytes here), and
 * the small block they land in is live all the same: its owner reallocs
 * it, another thread frees it (before 2026-12-07: "realloc of a pointer
 * that is not an allocated block", "double free", abort). */
static void *free_small_blocks(void *arg)
{
    enum { n = (6 << 20) / 64 };
    void **v = malloc(n * sizeof *v);
    for (int i = 0; i < n; i++)
        v[i] = malloc(64);
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
    return arg; /* at exit its SuperSlabs, now empty, go back to the extents */
}

static void *free_it(void *p)
{
    free(p);
    return NULL;
}

static void realloc_over_freed_blocks(void)
{
    pthread_t t;
    CHECK(pthread_create(&t, NULL, free_small_blocks, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    char *p[24];
    for (int k = 0; k < 24; k++) {
        p[k] = malloc(300 * 1024);
        memcpy(p[k], "header!", 8); /* the only bytes the program writes */
    }
    for (int k = 0; k < 24; k++) {
        char *q = realloc(p[k], 40);
        CHECK(q && memcmp(q, "header!", 8) == 0, "realloc(300 KiB -> 40) lost the first bytes");
        if (!q)
            continue;
        if (k & 1) {
            CHECK(pthread_create(&t, NULL, free_it, q) == 0, "pthread_create");
            pthread_join(t, NULL);
        } else {
            q = realloc(q, 20);
            CHECK(q && memcmp(q, "header!", 8) == 0, "realloc(40 -> 20) lost the first bytes");
            free(q);
        }
    }
}

int main(void)
{
    realloc_over_freed_blocks(); /* first: the memory it needs is fresh from one thread's frees */
    chain(realloc, "realloc", 1);
    chain(hak_realloc, "hak_realloc", 2);
    tiers();
    interleaved();
    same_size();
    usable_tail();
    moves_keep_mappings();
    grown_in_small_steps();
    return TU_DONE();
}
