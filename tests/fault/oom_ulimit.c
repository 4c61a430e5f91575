/* Out of address space for real: run under a small `ulimit -v` (tests/run.sh
 * uses 200 MiB), allocate in every tier until malloc returns NULL.  Every
 * failure must be NULL with errno ENOMEM (posix_memalign: ENOMEM), never a
 * crash; the blocks already allocated keep their contents; after freeing
 * every other block, (nearly all) the same allocations succeed again, and
 * after freeing everything every tier works.  Refuses to run without an address-space limit of at most
 * 1 GiB (it would allocate until the machine is out of memory).
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <sys/resource.h>
#include "testutil.h"

#define MAXB 200000

typedef struct { char *p; size_t size; uint64_t seed; int how; } Blk;
static Blk blk[MAXB];
static int nblk;
static unsigned long nulls;

/* Pattern on the first and last 64 bytes and one byte per 4 KiB: enough to
 * see a block handed out twice or overwritten, and cheap for big ones. */
static inline size_t next_pos(size_t i, size_t n)
{
    if (i < 64 || i + 65 >= n)
        return i + 1;
    return i + 4096 < n - 64 ? i + 4096 : n - 64;
}
static void fill(Blk *b)
{
    for (size_t i = 0; i < b->size; i = next_pos(i, b->size))
        b->p[i] = (char)tu_pat_((uintptr_t)i, b->seed);
}
static size_t verify(const Blk *b)
{
    for (size_t i = 0; i < b->size; i = next_pos(i, b->size))
        if (b->p[i] != (char)tu_pat_((uintptr_t)i, b->seed))
            return i;
    return TU_OK;
}

static void *(*volatile do_malloc)(size_t) = malloc;
static void *(*volatile do_calloc)(size_t, size_t) = calloc;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static int (*volatile do_memalign)(void **, size_t, size_t) = posix_memalign;

static int cur_how; /* 0 calloc, 1 posix_memalign(64), 2 malloc */
static int add(void *p, size_t n, const char *what)
{
    int e = errno;
    if (!p) {
        CHECK(e == ENOMEM, "%s(%zu) = NULL with errno %d (%s)", what, n, e, strerror(e));
        nulls++;
        return 0;
    }
    /* hakmem's own failed mmaps (a reservation too big for the limit, then
     * a smaller one) are not the program's business */
    CHECK(e == 0, "%s(%zu) succeeded but set errno %d (%s)", what, n, e, strerror(e));
    CHECK(malloc_usable_size(p) >= n, "%s(%zu): usable %zu", what, n, malloc_usable_size(p));
    if (nblk == MAXB) {
        free(p);
        return 1;
    }
    Blk *b = &blk[nblk++];
    *b = (Blk){ p, n, (uint64_t)nblk * 7919, cur_how };
    fill(b);
    return 1;
}

/* Allocate sizes in [lo, hi] until `limit` consecutive NULLs. */
static unsigned long exhaust(tu_rng *r, size_t lo, size_t hi, int limit, const char *tier)
{
    unsigned long got = 0;
    for (int fails = 0, i = 0; fails < limit && nblk < MAXB; i++) {
        size_t n = tu_range(r, lo, hi);
        errno = 0;
        void *p;
        const char *what;
        cur_how = i % 4 < 2 ? i % 4 : 2;
        switch (i % 4) {
        case 0: p = do_calloc(1, n); what = "calloc"; break;
        case 1: {
            void *out = NULL;
            int rc = do_memalign(&out, 64, n);
            CHECK(rc == 0 || rc == ENOMEM, "posix_memalign(64, %zu) = %d", n, rc);
            if (rc) { nulls++; fails++; continue; }
            p = out;
            what = "posix_memalign";
            break;
        }
        default: p = do_malloc(n); what = "malloc"; break;
        }
        if (add(p, n, what)) {
            fails = 0;
            got++;
        } else {
            fails++;
        }
    }
    printf("oom_ulimit: %-5s %lu blocks until %d failures in a row\n", tier, got, limit);
    return got;
}

static void verify_all(const char *when)
{
    for (int i = 0; i < nblk; i++) {
        size_t bad = verify(&blk[i]);
        CHECK(bad == TU_OK, "%s: block %d (%p, %zu bytes) corrupt at %zu", when, i, blk[i].p,
              blk[i].size, bad);
    }
}

int main(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 30)) {
        printf("oom_ulimit: needs `ulimit -v` of at most 1 GiB (have %s)\n",
               rl.rlim_cur == RLIM_INFINITY ? "unlimited" : "more");
        return 1;
    }
    printf("oom_ulimit: address-space limit %llu MiB\n", (unsigned long long)(rl.rlim_cur >> 20));
    fflush(stdout);
    tu_rng r = tu_rng_seed(42);

    /* Large blocks first (they take the address space in big steps), then
     * mid, then tiny, then large again (fragments). */
    exhaust(&r, HAK_MID_MAX + 1, 4 * MiB, 8, "large");
    exhaust(&r, HAK_TINY_MAX + 1, HAK_MID_MAX, 64, "mid");
    exhaust(&r, 1, HAK_TINY_MAX, 256, "tiny");
    exhaust(&r, HAK_MID_MAX + 1, 256 * KiB, 8, "large");
    CHECK(nulls > 0, "no allocation failed: is the limit in effect?");

    /* A realloc that cannot grow leaves the block alone. */
    if (nblk > 0) {
        Blk *b = &blk[nblk - 1];
        errno = 0;
        void *q = do_realloc(b->p, 512 * MiB);
        CHECK(q == NULL && errno == ENOMEM, "realloc to 512 MiB: %p errno %d", q, errno);
        if (q) { b->p = q; }
        CHECK(verify(b) == TU_OK, "failed realloc damaged the block");
    }
    verify_all("exhausted");

    /* Free every other block; the same sizes fit again. */
    int freed = 0;
    static Blk gone[MAXB];
    int k = 0;
    for (int i = 0; i < nblk; i++) {
        if (i % 2) {
            gone[freed++] = blk[i];
            free(blk[i].p);
        } else {
            blk[k++] = blk[i];
        }
    }
    nblk = k;
    unsigned long n0 = nulls;
    for (int i = 0; i < freed; i++) {
        size_t n = gone[i].size;
        void *p = NULL;
        errno = 0;
        cur_how = gone[i].how;
        if (cur_how == 0) p = do_calloc(1, n);
        else if (cur_how == 2) p = do_malloc(n);
        else if (do_memalign(&p, 64, n)) { p = NULL; errno = ENOMEM; }
        add(p, n, "allocation after free");
    }
    cur_how = 2;
    /* Not all need to fit again (a freed large block's extent may be taken
     * by a SuperSlab or the other way round), but nearly all must. */
    printf("oom_ulimit: freed %d blocks, %lu of the same allocations failed after\n", freed, nulls - n0);
    CHECK((nulls - n0) * 20 <= (unsigned long)freed, "%lu of %d allocations failed after freeing the same sizes",
          nulls - n0, freed);
    verify_all("refilled");

    /* Free everything: every tier works, and a big block fits again. */
    for (int i = 0; i < nblk; i++)
        free(blk[i].p);
    nblk = 0;
    malloc_trim(0);
    for (int i = 0; i < 2000; i++) {
        size_t n = i % 10 ? tu_range(&r, 1, HAK_TINY_MAX) : tu_range(&r, HAK_TINY_MAX + 1, HAK_MID_MAX);
        errno = 0;
        CHECK(add(do_malloc(n), n, "malloc after freeing all"), "malloc(%zu) failed after freeing all", n);
    }
    errno = 0;
    CHECK(add(do_malloc(32 * MiB), 32 * MiB, "malloc"), "malloc(32 MiB) failed after freeing all");
    errno = 0;
    CHECK(add(do_calloc(4, 4 * MiB), 16 * MiB, "calloc"), "calloc(4, 4 MiB) failed after freeing all");
    verify_all("after freeing all");
    for (int i = 0; i < nblk; i++)
        free(blk[i].p);
    nblk = 0;
    printf("oom_ulimit: %lu allocations failed cleanly\n", nulls);
    return TU_DONE();
}
