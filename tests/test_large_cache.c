/* The cache of freed large extents (core/large_cache.c): blocks of every
 * large class are reused with their contents intact and never overlap,
 * across threads (a block freed by another thread goes to that thread's
 * front), when threads exit with cached blocks, after malloc_trim, and in a
 * forked child; blocks of a MiB and more are kept only up to a small cap;
 * the block freed last is not the next one handed out; many threads at
 * once share a budget for their fronts.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/wait.h>
#include "testutil.h"


/* Sizes around every large class boundary, and past the last, up to 40
 * MiB (classes: every page count below 128 KiB, then 8 per power of two
 * up to 4 MiB). */
static size_t sizes[512];
static unsigned nsizes;

static void make_sizes(void)
{
    for (size_t pages = 14; pages < 32; pages++)
        sizes[nsizes++] = pages * 4096 - 64 - (pages & 1) * 100;
    for (size_t p2 = 32; p2 <= 8192; p2 *= 2)
        for (size_t k = 8; k < 16 && nsizes + 3 < sizeof sizes / sizeof *sizes; k++) {
            size_t pages = k * (p2 / 8);
            sizes[nsizes++] = pages * 4096 - 64;     /* exactly a class       */
            sizes[nsizes++] = pages * 4096 - 63;     /* one byte more: next  */
            sizes[nsizes++] = pages * 4096 + 4096;   /* a page more          */
        }
    sizes[nsizes++] = 40 * MiB; /* above the cached classes */
}

/* A block is filled at its first and last 4 KiB and one page in the
 * middle, with a pattern tied to its address and seed. */
static void fill(unsigned char *p, size_t n, uint64_t seed)
{
    size_t k = n < 4 * KiB ? n : 4 * KiB;
    tu_fill(p, k, seed);
    tu_fill(p + n - k, k, seed + 1);
    tu_fill(p + n / 2 - k / 2, k, seed + 2);
}

static bool verify(unsigned char *p, size_t n, uint64_t seed)
{
    size_t k = n < 4 * KiB ? n : 4 * KiB;
    return tu_verify(p, k, seed) == TU_OK && tu_verify(p + n - k, k, seed + 1) == TU_OK &&
           tu_verify(p + n / 2 - k / 2, k, seed + 2) == TU_OK;
}

/* One thread: rounds of allocating a block of every size, checking that
 * none overlaps another (each keeps its pattern), freeing them in a
 * shuffled order, so that the next round reuses cached extents of every
 * class. */
static void classes(void)
{
    static unsigned char *b[512];
    tu_rng r = tu_rng_seed(7);
    for (int round = 0; round < 4; round++) {
        for (unsigned i = 0; i < nsizes; i++) {
            b[i] = malloc(sizes[i]);
            CHECK(b[i] != NULL, "malloc(%zu)", sizes[i]);
            if (!b[i]) continue;
            CHECK(malloc_usable_size(b[i]) >= sizes[i], "usable %zu < %zu",
                  malloc_usable_size(b[i]), sizes[i]);
            CHECK(hak_ptr_kind(b[i]) == HAK_KIND_LARGE, "kind of %zu", sizes[i]);
            fill(b[i], sizes[i], round * 1000 + i);
        }
        for (unsigned i = 0; i < nsizes; i++)
            if (b[i])
                CHECK(verify(b[i], sizes[i], round * 1000 + i), "round %d: block of %zu overwritten",
                      round, sizes[i]);
        for (unsigned i = nsizes; i > 1; i--) { /* shuffle, then free */
            unsigned j = (unsigned)tu_range(&r, 0, i - 1);
            unsigned char *t = b[i - 1]; b[i - 1] = b[j]; b[j] = t;
            size_t ts = sizes[i - 1]; sizes[i - 1] = sizes[j]; sizes[j] = ts;
        }
        for (unsigned i = 0; i < nsizes; i++)
            free(b[i]);
    }
    /* A stable pattern reuses cached extents: no more memory mapped. */
    struct hak_stats s0 = tu_stats();
    for (int round = 0; round < 20; round++) {
        for (unsigned i = 0; i < nsizes - 1; i++) {
            b[i] = malloc(sizes[i]);
            if (b[i]) fill(b[i], sizes[i], i);
        }
        for (unsigned i = 0; i < nsizes - 1; i++) {
            if (b[i]) CHECK(verify(b[i], sizes[i], i), "reused block of %zu overwritten", sizes[i]);
            free(b[i]);
        }
    }
    struct hak_stats s1 = tu_stats();
    CHECK(s1.bytes_mapped <= s0.bytes_mapped, "a stable pattern mapped more: %llu -> %llu MiB",
          (unsigned long long)(s0.bytes_mapped >> 20), (unsigned long long)(s1.bytes_mapped >> 20));
    CHECK(s1.os_mmap == s0.os_mmap, "a stable pattern made %llu mmap calls",
          (unsigned long long)(s1.os_mmap - s0.os_mmap));
}

/* The extent freed last is passed over by the next malloc only: a loop
 * that frees and mallocs one size takes turns between two extents, and
 * maps nothing once both are made.  (Extents of a MiB and more can go
 * back to the extents at once, which may hand them out again.) */
static void not_straight_back(void)
{
    for (size_t n = 60000; n < (size_t)1 << 20; n *= 3) {
        char *p = malloc(n);
        free(p);
        char *q = malloc(n), *r = malloc(n);
        CHECK(q != p, "malloc(%zu) got back the block just freed", n);
        CHECK(r == p, "malloc(%zu): the extent passed over once is not taken next", n);
        free(q);
        free(r);
        /* A pass is no miss: two misses before it must not make the
         * front give its extents back, the one passed over among them. */
        for (int k = 0; k < 3; k++) { /* (one of these ends a run of misses) */
            malloc_trim(0); /* empty caches: the mallocs below miss */
            char *a = malloc(n), *m[3];
            for (int i = 0; i < k; i++)
                m[i] = malloc(2 * n + (size_t)i * 65536);
            free(a);
            char *c = malloc(n); /* passes a over */
            CHECK(c != a, "malloc(%zu) after %d mallocs that missed got back the block just freed", n, k + 1);
            for (int i = 0; i < k; i++)
                free(m[i]);
            free(c);
        }
        struct hak_stats s0 = tu_stats();
        char *prev = r;
        for (int i = 0; i < 1000; i++) {
            char *b = malloc(n);
            CHECK(b != prev, "malloc(%zu) got back the block just freed (round %d)", n, i);
            b[0] = b[n - 1] = (char)i;
            free(b);
            prev = b;
        }
        struct hak_stats s1 = tu_stats();
        CHECK(s1.os_mmap == s0.os_mmap && s1.bytes_mapped == s0.bytes_mapped,
              "malloc(%zu) in a loop mapped memory", n);
    }
}

/* Threads swapping large blocks through shared slots (a mutex per slot):
 * most blocks are freed by another thread than the one that allocated
 * them; contents are checked at every free. */
#define SLOTS 64
static _Atomic(unsigned char *) slot[SLOTS];
static _Atomic size_t slot_size[SLOTS];
static pthread_mutex_t slot_mu[SLOTS];

static void swapper_locked(int idx, void *ctx)
{
    (void)ctx;
    tu_rng r = tu_rng_seed(100 + (uint64_t)idx);
    double end = tu_now() + tu_stress_seconds() / 2;
    unsigned long ops = 0;
    while (tu_now() < end) {
        size_t n = tu_range(&r, 53 * KiB, (tu_rand(&r) & 7) ? 600 * KiB : 9 * MiB);
        unsigned char *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p) continue;
        fill(p, n, (uintptr_t)p ^ n);
        unsigned s = (unsigned)tu_range(&r, 0, SLOTS - 1);
        pthread_mutex_lock(&slot_mu[s]);
        unsigned char *old = atomic_load(&slot[s]);
        size_t on = atomic_load(&slot_size[s]);
        atomic_store(&slot[s], p);
        atomic_store(&slot_size[s], n);
        pthread_mutex_unlock(&slot_mu[s]);
        if (old) {
            CHECK(verify(old, on, (uintptr_t)old ^ on), "swapped block of %zu overwritten", on);
            free(old);
        }
        ops++;
    }
    CHECK(ops > 0, "thread %d made no operation", idx);
}

static void threads(void)
{
    for (int i = 0; i < SLOTS; i++)
        pthread_mutex_init(&slot_mu[i], NULL);
    tu_run_threads(8, swapper_locked, NULL);
    for (int i = 0; i < SLOTS; i++) {
        unsigned char *p = atomic_load(&slot[i]);
        size_t n = atomic_load(&slot_size[i]);
        if (p) CHECK(verify(p, n, (uintptr_t)p ^ n), "final block of %zu overwritten", n);
        free(p);
        atomic_store(&slot[i], NULL);
    }
}

/* Threads that exit with extents in their heap's front: the extents are
 * not lost (the next threads and main reuse them: nothing more is mapped)
 * and the statistics add up. */
static void exit_with_cached(int idx, void *ctx)
{
    (void)ctx;
    unsigned char *b[40];
    for (int i = 0; i < 40; i++) {
        size_t n = 64 * KiB + (size_t)(i % 10) * 100 * KiB;
        b[i] = malloc(n);
        CHECK(b[i] != NULL, "malloc(%zu)", n);
        if (b[i]) fill(b[i], n, (uint64_t)idx * 100 + i);
    }
    for (int i = 0; i < 40; i++) {
        size_t n = 64 * KiB + (size_t)(i % 10) * 100 * KiB;
        if (b[i]) CHECK(verify(b[i], n, (uint64_t)idx * 100 + i), "block of %zu overwritten", n);
        free(b[i]);
    }
}

static void thread_exit(void)
{
    tu_run_threads(4, exit_with_cached, NULL); /* warm: extents exist now */
    struct hak_stats s0 = tu_stats();
    for (int k = 0; k < 20; k++)
        tu_run_threads(4, exit_with_cached, NULL);
    struct hak_stats s1 = tu_stats();
    CHECK(s1.bytes_mapped <= s0.bytes_mapped + 64 * MiB,
          "threads exiting with cached extents: mapped %llu -> %llu MiB",
          (unsigned long long)(s0.bytes_mapped >> 20), (unsigned long long)(s1.bytes_mapped >> 20));
    CHECK(s1.large_allocs - s0.large_allocs == s1.large_frees - s0.large_frees &&
          s1.large_allocs - s0.large_allocs == 20 * 4 * 40,
          "statistics: %llu large allocs and %llu frees, want %d each",
          (unsigned long long)(s1.large_allocs - s0.large_allocs),
          (unsigned long long)(s1.large_frees - s0.large_frees), 20 * 4 * 40);
}

/* malloc_trim gives every cached extent back. */
static void trim(void)
{
    enum { N = 200 };
    static unsigned char *b[N];
    for (int i = 0; i < N; i++) {
        b[i] = malloc(200 * KiB + (size_t)i * 4096);
        if (b[i]) memset(b[i], 1, 200 * KiB);
    }
    for (int i = 0; i < N; i++)
        free(b[i]);
    struct hak_stats s0 = tu_stats();
    CHECK(s0.bytes_dirty >= 20 * MiB, "freed extents are not cached (%llu MiB dirty)",
          (unsigned long long)(s0.bytes_dirty >> 20));
    malloc_trim(0);
    struct hak_stats s1 = tu_stats();
    CHECK(s1.bytes_dirty < 4 * MiB, "after malloc_trim %llu MiB of freed memory still resident",
          (unsigned long long)(s1.bytes_dirty >> 20));
}

/* Extents of a MiB and more come in too many classes to meet their size
 * again often: past a small share of the central cache they go back to
 * the extents (which reuse them for any size) instead of being kept by
 * class.  40 blocks of distinct classes from 1.1 to 3.9 MiB (about 100
 * MiB) are freed; the large cache keeps at most a heap front (8 MiB) and
 * that share (16 MiB), plus the block that crossed it. */
static void big_extents(void)
{
    enum { N = 40 };
    static unsigned char *b[N];
    malloc_trim(0); /* start with an empty cache */
    for (int i = 0; i < N; i++) {
        size_t n = 1100 * KiB + (size_t)i * 72 * KiB;
        b[i] = malloc(n);
        CHECK(b[i] != NULL, "malloc(%zu)", n);
        if (b[i]) { b[i][0] = 1; b[i][n - 1] = 1; }
    }
    for (int i = 0; i < N; i++)
        free(b[i]);
    struct hak_stats s = tu_stats();
    CHECK(s.large_bytes_cached <= 28 * MiB, "%llu MiB of big freed extents kept by class",
          (unsigned long long)(s.large_bytes_cached >> 20));
    CHECK(s.large_bytes_cached >= 4 * MiB, "no big freed extent cached (%llu KiB)",
          (unsigned long long)(s.large_bytes_cached >> 10));
    malloc_trim(0);
}

/* The number of times the extents' lock is taken while fn runs, the
 * fewest of three runs: the count is the process's, and the purger
 * thread's decay passes take the lock too, now and then (twice in a run
 * on a loaded machine). */
static uint64_t extent_locks_while(void (*fn)(void))
{
    uint64_t fewest = UINT64_MAX;
    for (int round = 0; round < 3 && fewest; round++) {
        uint64_t locks = tu_stats().lock_extents_acquired;
        uint64_t reading = tu_stats().lock_extents_acquired - locks; /* hak_stats' own */
        locks += reading;
        fn();
        uint64_t taken = tu_stats().lock_extents_acquired - locks - reading;
        if (taken < fewest)
            fewest = taken;
    }
    return fewest;
}

static size_t repeat_size;
static void repeat_one_size(void)
{
    for (int i = 0; i < 100; i++)
        free(tu_launder(malloc(repeat_size)));
}

/* Two buffers made and freed together (an input and an output). */
static void repeat_two_sizes(void)
{
    for (int i = 0; i < 50; i++) {
        void *in = tu_launder(malloc(1536 * KiB)), *out = tu_launder(malloc(3 * MiB));
        free(in);
        free(out);
    }
}

/* The same with a second buffer that is 1 MiB and 3.5 MiB in turn: the
 * cache serves the 2 MiB one, the other takes the lock twice a round
 * (its extent, and the other size's given back at the miss). */
static void repeat_one_of_two_sizes(void)
{
    for (int i = 0; i < 50; i++) {
        void *a = tu_launder(malloc(2 * MiB)), *r = tu_launder(malloc(i & 1 ? MiB : 3 * MiB + MiB / 2));
        free(a);
        free(r);
    }
}

/* A miss of a MiB or more gives the front's extents back to the extents,
 * where they merge with their free neighbours: kept by class across such
 * misses, they raised peak RSS by a quarter (bench_large).  A size that
 * comes back hits, and then nothing is given back and no lock taken. */
static void big_miss_flushes_front(void)
{
    static unsigned char *b[4];
    static const size_t big[2] = { 1536 * KiB, 6 * MiB }; /* cached class; above them */
    for (int k = 0; k < 2; k++) {
        malloc_trim(0); /* empty front and central cache */
        for (int i = 0; i < 4; i++)
            b[i] = tu_launder(malloc(200 * KiB + (size_t)i * 100 * KiB));
        for (int i = 0; i < 4; i++)
            free(b[i]);
        size_t held = tu_stats().large_bytes_cached;
        CHECK(held >= 800 * KiB, "the freed extents are not cached (%zu KiB)", held >> 10);
        unsigned char *p = tu_launder(malloc(big[k]));
        CHECK(p != NULL, "malloc(%zu)", big[k]);
        size_t after = tu_stats().large_bytes_cached;
        CHECK(after == 0, "a miss of %zu KiB kept %zu KiB of other classes cached", big[k] >> 10,
              after >> 10);
        free(p);
    }
    malloc_trim(0);
    for (int i = 0; i < 2; i++) /* two extents: the last freed is passed over */
        b[i] = tu_launder(malloc(big[0]));
    free(b[0]);
    free(b[1]);
    /* (a miss takes the lock 100 times) */
    repeat_size = big[0];
    uint64_t taken = extent_locks_while(repeat_one_size);
    CHECK(taken == 0, "a repeated %zu KiB block took the extents' lock %llu times", big[0] >> 10,
          (unsigned long long)taken);
    malloc_trim(0);
}

/* Blocks of 1-4 MiB whose sizes never meet their class again bypass the
 * cache once they have missed for a while (LARGE_STRAIGHT_AFTER): a freed
 * one goes straight to the extents, so nothing stays cached after a free.
 * Sizes that then come back leave the bypass: one size, or two made and
 * freed together; after a few rounds their extents are cached again and
 * take no lock. */
static void random_big_sizes(uint64_t seed)
{
    enum { RING = 4, OPS = 300 };
    static unsigned char *b[RING];
    static size_t n[RING];
    tu_rng r = tu_rng_seed(seed);
    malloc_trim(0);
    unsigned kept_after_free = 0;
    for (int op = 0; op < OPS; op++) {
        int k = op % RING;
        if (b[k]) {
            CHECK(verify(b[k], n[k], (uint64_t)op), "op %d: a block of %zu overwritten", op, n[k]);
            free(b[k]);
            if (op >= 100 && tu_stats().large_bytes_cached)
                kept_after_free++;
        }
        n[k] = tu_range(&r, 1 * MiB, 4 * MiB - 64 * KiB);
        b[k] = malloc(n[k]);
        CHECK(b[k] != NULL, "malloc(%zu)", n[k]);
        fill(b[k], n[k], (uint64_t)(op + RING));
    }
    /* (a malloc now and then that a freed extent would have served takes
     * it out of the bypass for a few) */
    CHECK(kept_after_free <= (OPS - 100) / 10, "random 1-4 MiB sizes: %u of %d frees kept their extent cached",
          kept_after_free, OPS - 100);
    for (int k = 0; k < RING; k++) {
        CHECK(verify(b[k], n[k], (uint64_t)(OPS - RING + k + RING)), "block of %zu overwritten", n[k]);
        free(b[k]);
        b[k] = NULL;
    }
}

static void random_big_sizes_bypass(void)
{
    static const char *what[3] = { "a repeated 2 MiB block", "two blocks made and freed together",
                                   "a 2 MiB block made and freed with another size" };
    static void (*const again[3])(void) = { repeat_one_size, repeat_two_sizes, repeat_one_of_two_sizes };
    static const uint64_t most[3] = { 0, 0, 110 }; /* stuck in the bypass: 100, 200, 200 */
    repeat_size = 2 * MiB;
    for (int k = 0; k < 3; k++) {
        random_big_sizes(99 + (uint64_t)k);
        for (int i = 0; i < 2; i++) /* sizes that come back: out of the bypass */
            again[k]();
        uint64_t taken = extent_locks_while(again[k]);
        CHECK(taken <= most[k], "%s after random sizes took the extents' lock %llu times", what[k],
              (unsigned long long)taken);
    }
    malloc_trim(0);
}

/* A thread in the bypass that stops freeing big blocks (a producer whose
 * blocks other threads free) still looks in the cache now and then
 * (LARGE_STRAIGHT_PROBE): it takes the 2 MiB extents another thread left
 * in the central cache. */
static void fill_central_with_2mib(int idx, void *ctx)
{
    enum { N = 24 };
    static void *b[N];
    for (int i = 0; i < N; i++)
        b[i] = tu_launder(malloc(2 * MiB));
    for (int i = 0; i < N; i++)
        free(b[i]); /* past the front's cap, into the central cache */
}

/* A heap given up in the bypass starts afresh with the thread that takes
 * it next (the oldest heap given up: run before any other thread): that
 * thread's first big block is cached. */
static void burst_into_bypass(int idx, void *ctx)
{
    static void *ring[4];
    tu_rng r = tu_rng_seed(6);
    for (int op = 0; op < 200; op++) {
        free(ring[op % 4]);
        ring[op % 4] = tu_launder(malloc(tu_range(&r, 1 * MiB, 4 * MiB - 64 * KiB)));
    }
    for (int i = 0; i < 4; i++) {
        free(ring[i]);
        ring[i] = NULL;
    }
}
static void first_big_block_cached(int idx, void *ctx)
{
    free(tu_launder(malloc(1536 * KiB)));
    CHECK(tu_stats().large_bytes_cached >= 1536 * KiB,
          "a new thread's first freed 1.5 MiB block was not cached (%zu KiB)",
          tu_stats().large_bytes_cached >> 10);
}
static void heap_reuse_starts_afresh(void)
{
    malloc_trim(0);
    tu_run_threads(1, burst_into_bypass, NULL);
    tu_run_threads(1, first_big_block_cached, NULL);
    malloc_trim(0);
}

static void producer_after_bypass(void)
{
    enum { RING = 4, OPS = 200, TAKE = 80, HUGE = 8 };
    static void *ring[RING], *huge[HUGE], *taken[TAKE];
    tu_rng r = tu_rng_seed(5);
    malloc_trim(0);
    for (int op = 0; op < OPS; op++) { /* into the bypass */
        free(ring[op % RING]);
        ring[op % RING] = tu_launder(malloc(tu_range(&r, 1 * MiB, 4 * MiB - 64 * KiB)));
    }
    for (int i = 0; i < HUGE; i++) /* misses that forget what was freed */
        huge[i] = tu_launder(malloc(6 * MiB));
    void *probe = tu_launder(malloc(1536 * KiB));
    free(probe);
    CHECK(tu_stats().large_bytes_cached == 0, "not in the bypass: a freed 1.5 MiB block was cached");
    tu_run_threads(1, fill_central_with_2mib, NULL); /* its front goes to the extents at exit */
    size_t before = tu_stats().large_bytes_cached;
    CHECK(before >= 4 * MiB, "the central cache got %zu KiB of 2 MiB extents", before >> 10);
    for (int i = 0; i < TAKE; i++)
        taken[i] = tu_launder(malloc(2 * MiB));
    size_t after = tu_stats().large_bytes_cached;
    CHECK(after + 2 * MiB <= before, "%d mallocs of 2 MiB in the bypass left the central cache's %zu KiB "
          "untouched (%zu KiB)", TAKE, before >> 10, after >> 10);
    for (int i = 0; i < TAKE; i++)
        free(taken[i]);
    for (int i = 0; i < HUGE; i++)
        free(huge[i]);
    for (int i = 0; i < RING; i++) {
        free(ring[i]);
        ring[i] = NULL;
    }
    malloc_trim(0);
}

/* A thread that finds neither its front nor the central cache holding its
 * class takes an extent up to two classes bigger from the central cache
 * (as from its front) before it goes to the extents.  One thread leaves
 * about 10 MiB of extents of one class there (its front overflows); a
 * second thread asks for a size one class smaller: the central cache
 * serves it. */
static void free_class_above(int idx, void *ctx)
{
    enum { N = 64 };
    static unsigned char *b[N];
    for (int i = 0; i < N; i++)
        b[i] = malloc(55 * 4096 - 64); /* 55 pages with the header: class 56 */
    for (int i = 0; i < N; i++)
        free(b[i]);
}
static void take_class_below(int idx, void *ctx)
{
    enum { N = 20 };
    unsigned char *b[N];
    for (int i = 0; i < N; i++) {
        b[i] = malloc(50 * 4096 - 64); /* class 52 */
        fill(b[i], 50 * 4096 - 64, (uint64_t)i);
    }
    for (int i = 0; i < N; i++) {
        CHECK(verify(b[i], 50 * 4096 - 64, (uint64_t)i), "block %d overwritten", i);
        free(b[i]);
    }
}
static void central_up_classes(void)
{
    malloc_trim(0);
    tu_run_threads(1, free_class_above, NULL);
    size_t before = tu_stats().large_bytes_cached;
    CHECK(before >= 4 * MiB, "the central cache got %zu KiB", before >> 10);
    tu_run_threads(1, take_class_below, NULL); /* its front goes to the extents at exit */
    size_t after = tu_stats().large_bytes_cached;
    CHECK(after + 20 * 224 * KiB <= before, "central cache %zu KiB -> %zu KiB: not reused",
          before >> 10, after >> 10);
    malloc_trim(0);
}

/* A forked child reuses the parent's cached extents, and they are intact
 * in the parent afterwards. */
static void fork_child(void)
{
    unsigned char *keep = malloc(300 * KiB);
    fill(keep, 300 * KiB, 77);
    for (int i = 0; i < 30; i++)
        free(malloc(100 * KiB + (size_t)i * 8192)); /* cached now */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        int bad = !verify(keep, 300 * KiB, 77);
        for (int i = 0; i < 200 && !bad; i++) {
            size_t n = 100 * KiB + (size_t)(i % 30) * 8192;
            unsigned char *p = malloc(n);
            if (!p) _exit(3);
            fill(p, n, (uint64_t)i);
            bad |= !verify(p, n, (uint64_t)i);
            free(p);
        }
        _exit(bad ? 2 : 0);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid, "fork/wait");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %#x", st);
    CHECK(verify(keep, 300 * KiB, 77), "parent's block changed across fork");
    free(keep);
}

/* Many threads at once share LARGE_FRONTS_BUDGET (128 MiB): 64 threads
 * that each free 32 blocks of 64-320 KiB (about 6 MiB, under one front's
 * own cap of 8 MiB) keep at most their share each, about 2 MiB, plus what
 * the central cache holds (64 MiB, more while threads race to fill it):
 * 180-230 MiB in all (300 allowed), where 64 full fronts keep 390. */
enum { MANY = 64, MANY_BLOCKS = 32 };
static pthread_barrier_t many_freed, many_checked;

static void fill_front_and_wait(int idx, void *ctx)
{
    (void)ctx;
    if (idx == MANY) { /* the checker: looks while all the others live */
        pthread_barrier_wait(&many_freed);
        pthread_barrier_wait(&many_freed);
        struct hak_stats st = tu_stats();
        printf("%d threads, %d blocks of 64-320 KiB each freed: %.1f MiB cached (fronts and "
               "central cache)\n", MANY, MANY_BLOCKS, st.large_bytes_cached / 1048576.0);
        CHECK(st.large_bytes_cached <= 300 * MiB,
              "%d threads' fronts and the central cache hold %.1f MiB, far over the 128 MiB the "
              "fronts share and the 64 MiB of the central cache", MANY,
              st.large_bytes_cached / 1048576.0);
        CHECK(st.large_bytes_cached >= 64 * MiB, "only %.1f MiB cached: nothing to test",
              st.large_bytes_cached / 1048576.0);
        pthread_barrier_wait(&many_checked);
        return;
    }
    tu_rng r = tu_rng_seed(600 + (uint64_t)idx);
    unsigned char *b[MANY_BLOCKS];
    size_t n[MANY_BLOCKS];
    pthread_barrier_wait(&many_freed); /* every thread runs: the shares are set */
    for (int i = 0; i < MANY_BLOCKS; i++) {
        n[i] = tu_range(&r, 64 * KiB, 320 * KiB);
        b[i] = malloc(n[i]);
        CHECK(b[i] != NULL, "malloc(%zu)", n[i]);
        if (b[i]) b[i][0] = b[i][n[i] - 1] = (unsigned char)i;
    }
    for (int i = 0; i < MANY_BLOCKS; i++) {
        if (b[i]) CHECK(b[i][0] == (unsigned char)i && b[i][n[i] - 1] == (unsigned char)i,
                        "block of %zu overwritten", n[i]);
        free(b[i]);
    }
    pthread_barrier_wait(&many_freed);
    pthread_barrier_wait(&many_checked); /* alive while the checker looks */
}

static void many_threads_share(void)
{
    malloc_trim(0);
    pthread_barrier_init(&many_freed, NULL, MANY + 1);
    pthread_barrier_init(&many_checked, NULL, MANY + 1);
    tu_run_threads(MANY + 1, fill_front_and_wait, NULL);
    pthread_barrier_destroy(&many_freed);
    pthread_barrier_destroy(&many_checked);
}

int main(void)
{
    heap_reuse_starts_afresh(); /* first: the heap given up is the only one */
    make_sizes();
    classes();
    not_straight_back();
    threads();
    thread_exit();
    trim();
    big_extents();
    big_miss_flushes_front();
    random_big_sizes_bypass();
    producer_after_bypass();
    central_up_classes();
    fork_child();
    many_threads_share();
    return TU_DONE();
}
