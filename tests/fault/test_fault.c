/* Fault injection: OS calls that map or purge memory fail on purpose.
 *
 * Built against out/fault/libhakmem.a (-DHAK_FAULT_INJECTION), which has
 * hak_fault_inject(fail_after, fail_count): after fail_after further OS
 * calls that map or purge memory succeed, the next fail_count ones fail.
 *
 * For every tier (tiny, mid, large, realloc growth, calloc, aligned
 * allocation) and every fail_after in 0..N (N: the OS calls the phase makes
 * when nothing fails, plus two), with fail_count 1, 2 and "forever":
 *   - every entry point either succeeds (usable >= size, aligned, writable)
 *     or returns NULL with errno == ENOMEM (posix_memalign: ENOMEM, *out
 *     untouched); a failed realloc leaves the old block intact;
 *   - blocks allocated before (keepers, earlier blocks of the phase) keep
 *     their contents;
 *   - once the failures stop, the heap works again: a recovery workload
 *     that needs fresh mappings in every tier must fully succeed.
 * Then each phase runs once more with RLIMIT_AS set just above the
 * current address-space size, where every new mapping fails.
 *
 * Forcing OS calls: hakmem serves SuperSlabs and large blocks from cached
 * reservations, so before each case a *ballast* of 1 MiB large blocks fills
 * every reservation (up to < 1 MiB fragments) and hak_trim unmaps the rest:
 * the phase's first new SuperSlab or big block must then map memory.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include "api_table.h"
#include "testutil.h"

void hak_fault_inject(int fail_after, int fail_count);

#define FOREVER 1000000000

/* ---- the two spellings of the API (glibc names are hakmem's here) ---- */
static const struct api *volatile A = &hak_api;

/* ---- patterns: every byte up to 64 KiB, else 32 bytes per 4 KiB -------- */
#define FULL_MAX (64 * KiB)
static inline int sampled_pos(size_t i) { return (i & 4095) < 32; }

static void fillr(void *p, size_t from, size_t to, uint64_t seed, int full)
{
    uint8_t *b = p;
    if (full) {
        tu_fill_idx(p, from, to, seed);
        return;
    }
    for (size_t i = from; i < to; i++) {
        if (!sampled_pos(i)) { i = (i | 4095); continue; }
        b[i] = tu_pat_(i, seed);
    }
}
/* first bad index in [from, to) or TU_OK */
static size_t verr(const void *p, size_t from, size_t to, uint64_t seed, int full)
{
    const uint8_t *b = p;
    for (size_t i = from; i < to; i++) {
        if (!full && !sampled_pos(i)) { i = (i | 4095); continue; }
        if (b[i] != tu_pat_(i, seed))
            return i;
    }
    return TU_OK;
}
static size_t zeror(const void *p, size_t to, int full)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < to; i++) {
        if (!full && !sampled_pos(i)) { i = (i | 4095); continue; }
        if (b[i])
            return i;
    }
    return TU_OK;
}

/* ---- tracked blocks --------------------------------------------------- */
typedef struct { void *p; size_t size; uint64_t seed; int full; } Blk;
#define MAXB 40000
static Blk blk[MAXB];
static int nblk;
static Blk keep[300];
static int nkeep;
static uint64_t seed_ctr = 1;
static unsigned long nulls, successes;

static int track(Blk *tab, int *n, int max, void *p, size_t size)
{
    if (*n >= max) {
        A->free(p);
        return -1;
    }
    Blk *b = &tab[(*n)++];
    *b = (Blk){ p, size, seed_ctr++, size <= FULL_MAX };
    fillr(p, 0, size, b->seed, b->full);
    return *n - 1;
}

static void verify_blk(const Blk *b, const char *what)
{
    size_t bad = verr(b->p, 0, b->size, b->seed, b->full);
    CHECK(bad == TU_OK, "%s block %p (%zu bytes) corrupt at byte %zu", what, b->p, b->size, bad);
}

static void free_all(Blk *tab, int *n, const char *what)
{
    for (int i = 0; i < *n; i++) {
        verify_blk(&tab[i], what);
        A->free(tab[i].p);
    }
    *n = 0;
}

/* Check the result of an allocation call (errno was 0 before it). */
static int good(void *p, size_t size, size_t align, const char *what)
{
    int e = errno;
    if (!p) {
        CHECK(e == ENOMEM, "%s %s(%zu) returned NULL with errno %d (%s)", A->name, what, size, e,
              strerror(e));
        nulls++;
        return 0;
    }
    /* a failed mmap or mremap that hakmem fell back from is not the
     * program's business (fault injection sets ENOMEM as the kernel does) */
    CHECK(e == 0, "%s %s(%zu) succeeded but set errno %d (%s)", A->name, what, size, e, strerror(e));
    successes++;
    CHECK((uintptr_t)p % align == 0, "%s %s(%zu) = %p not %zu-aligned", A->name, what, size, p, align);
    CHECK(A->usable(p) >= size, "%s %s(%zu): usable %zu", A->name, what, size, A->usable(p));
    CHECK(hak_ptr_kind(p) != HAK_KIND_FOREIGN, "%s %s(%zu) = %p not hakmem's", A->name, what, size, p);
    return 1;
}

/* ---- ballast ------------------------------------------------------------ */
#define BALLAST_MAX 8192
static void *ballast[BALLAST_MAX];
static int nballast;
#define SLAB_BALLAST_MAX 65536
static void *slab_ballast[SLAB_BALLAST_MAX];
static int nslab_ballast;

static void ballast_free(void)
{
    while (nballast)
        hak_free(ballast[--nballast]);
    while (nslab_ballast)
        hak_free(slab_ballast[--nslab_ballast]);
    hak_trim();
}

/* Once, in the parent: first 1 KiB blocks until the heap needed a new
 * SuperSlab (every free slab of the others is used), then 1 MiB large
 * blocks until one needed a new reservation, which is given back (hak_trim
 * unmaps it).  What stays free: < 1 MiB fragments, the newest SuperSlab's
 * slabs and the heap's spare SuperSlab. */
static void ballast_fill(void)
{
    hak_trim();
    uint64_t live0 = tu_stats().superslabs_live;
    while (nslab_ballast < SLAB_BALLAST_MAX) {
        void *p = hak_malloc(HAK_TINY_MAX);
        CHECK(p != NULL, "slab ballast allocation failed");
        if (!p)
            break;
        slab_ballast[nslab_ballast++] = p;
        if (nslab_ballast % 32 == 0 && tu_stats().superslabs_live > live0)
            break;
    }
    for (;;) {
        uint64_t m0 = tu_stats().os_mmap;
        void *p = hak_malloc(MiB - 64); /* extent of exactly 1 MiB */
        CHECK(p != NULL, "ballast allocation failed");
        if (!p)
            break;
        if (tu_stats().os_mmap != m0 || nballast == BALLAST_MAX) {
            hak_free(p);
            break;
        }
        ballast[nballast++] = p;
    }
    hak_trim();
}

static uint64_t os_calls(void)
{
    struct hak_stats s = tu_stats();
    return s.os_mmap + s.os_madvise + s.os_mremap;
}

/* ---- phases ------------------------------------------------------------ */
/* The slab phases allocate until they made an OS call and 2 MiB more,
 * at most 48 MiB, and stop after 100 NULLs. */
static unsigned long phase_nulls0;
static int enough(int i, size_t total, uint64_t c0)
{
    static size_t first;
    if (i == 0)
        first = 0;
    if (total >= 48 * MiB || nulls - phase_nulls0 >= 100)
        return 1;
    if (!first && i % 16 == 0 && os_calls() != c0)
        first = total ? total : 1;
    return first && total >= first + 2 * MiB;
}

static void phase_tiny(tu_rng *r)
{
    size_t total = 0;
    uint64_t c0 = os_calls();
    for (int i = 0; !enough(i, total, c0) && nblk < MAXB; i++) {
        size_t n = tu_range(r, 1, HAK_TINY_MAX);
        errno = 0;
        void *p = (i % 7 == 0) ? A->calloc(1, n) : A->malloc(n);
        if (!good(p, n, 16, i % 7 == 0 ? "calloc" : "malloc"))
            continue;
        if (i % 7 == 0)
            CHECK(zeror(p, n, 1) == TU_OK, "calloc(1, %zu) not zeroed", n);
        track(blk, &nblk, MAXB, p, n);
        total += n;
    }
}

static void phase_mid(tu_rng *r)
{
    size_t total = 0;
    uint64_t c0 = os_calls();
    for (int i = 0; !enough(i, total, c0) && nblk < MAXB; i++) {
        size_t n = tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
        errno = 0;
        void *p = (i % 5 == 0) ? A->calloc(n / 8, 8) : A->malloc(n);
        if (i % 5 == 0) n = n / 8 * 8;
        if (!good(p, n, 16, i % 5 == 0 ? "calloc" : "malloc"))
            continue;
        if (i % 5 == 0)
            CHECK(zeror(p, n, 1) == TU_OK, "calloc(%zu, 8) not zeroed", n / 8);
        track(blk, &nblk, MAXB, p, n);
        total += n;
    }
}

static void phase_large(tu_rng *r)
{
    static const size_t sizes[] = { HAK_MID_MAX + 1, 200 * KiB, MiB, 3 * MiB + 5, 40 * MiB };
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            size_t n = sizes[i] + tu_range(r, 0, 4096);
            errno = 0;
            void *p = A->malloc(n);
            if (good(p, n, 16, "malloc"))
                track(blk, &nblk, MAXB, p, n);
        }
        /* free every other block and trim (purges and unmaps may fail too) */
        int k = 0;
        for (int i = 0; i < nblk; i++) {
            if (i % 2) {
                verify_blk(&blk[i], "large");
                A->free(blk[i].p);
            } else {
                blk[k++] = blk[i];
            }
        }
        nblk = k;
        hak_trim();
    }
}

/* One block grown through every tier and shrunk back; a failed realloc
 * must leave the block as it was. */
static void phase_realloc(tu_rng *r)
{
    size_t have = 100;
    errno = 0;
    void *p = A->malloc(have);
    if (!good(p, have, 16, "malloc"))
        return;
    uint64_t seed = seed_ctr++;
    int full = 1;
    fillr(p, 0, have, seed, full);
    size_t target = 12 * MiB;
    int shrinking = 0;
    for (int step = 0; step < 80; step++) {
        size_t n = shrinking ? have / 2 + 3 : have * 7 / 4 + tu_range(r, 0, 64);
        if (!shrinking && n >= target) n = target;
        errno = 0;
        void *q = (step % 3 == 2) ? A->reallocarray(p, n, 1) : A->realloc(p, n);
        const char *what = step % 3 == 2 ? "reallocarray" : "realloc";
        if (!good(q, n, 16, what)) {
            size_t bad = verr(p, 0, have, seed, full);
            CHECK(bad == TU_OK, "failed %s(%zu -> %zu) damaged the old block at %zu", what, have, n, bad);
            CHECK(A->usable(p) >= have, "failed %s: old block usable %zu < %zu", what, A->usable(p), have);
            continue; /* try again: later attempts may succeed */
        }
        size_t keepn = have < n ? have : n;
        size_t bad = verr(q, 0, keepn, seed, full);
        CHECK(bad == TU_OK, "%s(%zu -> %zu) lost contents at %zu", what, have, n, bad);
        p = q;
        if (n <= FULL_MAX) {
            full = 1;
            fillr(p, 0, n, seed, 1);
        } else {
            fillr(p, keepn, n, seed, full && n <= FULL_MAX);
            full = 0;
        }
        have = n;
        if (have == target) shrinking = 1;
        if (shrinking && have < 200) break;
    }
    if (nblk < MAXB)
        blk[nblk++] = (Blk){ p, have, seed, full };
    else
        A->free(p);
}

static void phase_calloc(tu_rng *r)
{
    static const size_t cs[][2] = {
        { 1, 100 }, { 10, 100 }, { 3, 20000 }, { 1, 60000 }, { 1000, 1000 },
        { 4, 10 * MiB }, { 3, 7 * MiB }, { 1, 2 * MiB },
    };
    for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
            size_t n = cs[i][0] * cs[i][1];
            errno = 0;
            void *p = A->calloc(cs[i][0], cs[i][1]);
            if (!good(p, n, 16, "calloc"))
                continue;
            size_t bad = zeror(p, n, n <= FULL_MAX);
            CHECK(bad == TU_OK, "calloc(%zu, %zu) byte %zu not zero", cs[i][0], cs[i][1], bad);
            track(blk, &nblk, MAXB, p, n);
        }
    (void)r;
}

static void phase_align(tu_rng *r)
{
    static const size_t aligns[] = { 32, 64, 256, 4096, 64 * KiB, 2 * MiB, 8 * MiB };
    static const size_t sizes[] = { 24, 3000, 40000, 100000, 3 * MiB };
    for (size_t ai = 0; ai < sizeof aligns / sizeof *aligns; ai++)
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            size_t al = aligns[ai], n = sizes[si] + tu_range(r, 0, 100);
            void *p;
            switch ((ai + si) % 4) {
            case 0: {
                void *out = (void *)&out;
                errno = 12345;
                int rc = A->posix_memalign(&out, al, n);
                CHECK(errno == 12345, "posix_memalign changed errno to %d", errno);
                CHECK(rc == 0 || rc == ENOMEM, "posix_memalign(%zu, %zu) = %d", al, n, rc);
                if (rc) {
                    CHECK(out == (void *)&out, "failed posix_memalign wrote *out");
                    nulls++;
                    continue;
                }
                p = out;
                errno = 0;
                good(p, n, al, "posix_memalign");
                break;
            }
            case 1:
                errno = 0;
                p = A->aligned_alloc(al, n);
                if (!good(p, n, al, "aligned_alloc")) continue;
                break;
            case 2:
                errno = 0;
                p = A->memalign(al, n);
                if (!good(p, n, al, "memalign")) continue;
                break;
            default:
                errno = 0;
                p = A->valloc(n);
                if (!good(p, n, 4096, "valloc")) continue;
                break;
            }
            track(blk, &nblk, MAXB, p, n);
        }
}

struct phase { const char *name; void (*fn)(tu_rng *); };
static const struct phase phases[] = {
    { "tiny", phase_tiny },       { "mid", phase_mid },       { "large", phase_large },
    { "realloc", phase_realloc }, { "calloc", phase_calloc }, { "align", phase_align },
};
#define NPHASES (int)(sizeof phases / sizeof *phases)

/* ---- keepers and recovery ---------------------------------------------- */
static void keepers_make(void)
{
    tu_rng r = tu_rng_seed(7);
    for (int i = 0; i < 200; i++)
        track(keep, &nkeep, 300, hak_malloc(tu_range(&r, 1, HAK_TINY_MAX)), 0);
    for (int i = 0; i < 40; i++)
        track(keep, &nkeep, 300, hak_malloc(tu_range(&r, HAK_TINY_MAX + 1, HAK_MID_MAX)), 0);
    for (int i = 0; i < 4; i++)
        track(keep, &nkeep, 300, hak_malloc(tu_range(&r, HAK_MID_MAX + 1, 3 * MiB)), 0);
    /* the sizes were recorded as 0 by track: set them and fill now */
    r = tu_rng_seed(7);
    for (int i = 0; i < nkeep; i++) {
        size_t n = i < 200 ? tu_range(&r, 1, HAK_TINY_MAX)
                 : i < 240 ? tu_range(&r, HAK_TINY_MAX + 1, HAK_MID_MAX)
                           : tu_range(&r, HAK_MID_MAX + 1, 3 * MiB);
        CHECK(keep[i].p != NULL, "keeper %d allocation failed", i);
        keep[i].size = n;
        keep[i].full = n <= FULL_MAX;
        fillr(keep[i].p, 0, n, keep[i].seed, keep[i].full);
    }
}

static void keepers_verify(const char *when)
{
    for (int i = 0; i < nkeep; i++)
        verify_blk(&keep[i], when);
}

/* Everything must work: every tier, each needing fresh mappings (the
 * ballast is still in place). */
static void recovery(tu_rng *r, const char *ctx)
{
    unsigned long before = tu_failures();
    static Blk rb[4096];
    int n = 0;
    size_t total = 0;
    for (int i = 0; total < 5 * MiB && n < 3000; i++) {
        size_t sz = i % 3 ? tu_range(r, 1, HAK_TINY_MAX) : tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
        errno = 0;
        void *p = hak_malloc(sz);
        CHECK(p != NULL, "%s: recovery malloc(%zu) failed, errno %d", ctx, sz, errno);
        if (!p) break;
        track(rb, &n, 4096, p, sz);
        total += sz;
    }
    static const size_t big[] = { 100 * KiB, 2 * MiB, 40 * MiB };
    for (size_t i = 0; i < 3; i++) {
        void *p = hak_malloc(big[i]);
        CHECK(p != NULL, "%s: recovery malloc(%zu) failed", ctx, big[i]);
        if (p) track(rb, &n, 4096, p, big[i]);
    }
    void *c = hak_calloc(3, 5 * MiB);
    CHECK(c != NULL && zeror(c, 15 * MiB, 0) == TU_OK, "%s: recovery calloc", ctx);
    hak_free(c);
    void *a = NULL;
    CHECK(hak_posix_memalign(&a, 2 * MiB, 3 * MiB) == 0 && ((uintptr_t)a & (2 * MiB - 1)) == 0,
          "%s: recovery posix_memalign", ctx);
    hak_free(a);
    void *g = hak_malloc(10);
    for (size_t s = 10; g && s < 6 * MiB; s = s * 2 + 1) {
        void *q = hak_realloc(g, s * 2 + 1);
        CHECK(q != NULL, "%s: recovery realloc to %zu", ctx, s * 2 + 1);
        if (!q) break;
        g = q;
    }
    hak_free(g);
    free_all(rb, &n, "recovery");
    keepers_verify(ctx);
    if (tu_failures() > before)
        fprintf(stderr, "  ^ in %s\n", ctx);
}

/* ---- cases ---------------------------------------------------------------- */
/* Each case runs in a child forked from the prepared parent (keepers and
 * ballast in place), so that every case starts from the same state with
 * all caches used up.  Counters come back through shared memory. */
struct shared { unsigned long nulls, successes, checks, os_calls; };
static struct shared *sh;

static void case_body(int ph, int after, int count, int use_rlimit, const char *ctx)
{
    tu_rng r = tu_rng_seed((uint64_t)ph * 1000 + (uint64_t)after);
    A = ((after + count) & 1) ? &libc_api : &hak_api;
    struct rlimit old;
    getrlimit(RLIMIT_AS, &old);
    if (use_rlimit) {
        size_t vm = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (f) {
            if (fscanf(f, "%zu", &vm) != 1) vm = 0;
            fclose(f);
        }
        struct rlimit tight = old;
        tight.rlim_cur = vm * 4096 + 3 * MiB; /* every reservation is larger */
        CHECK(vm && setrlimit(RLIMIT_AS, &tight) == 0, "setrlimit: %s", strerror(errno));
    } else if (after >= 0) {
        hak_fault_inject(after, count);
    }
    unsigned long n0 = nulls;
    phase_nulls0 = nulls;
    uint64_t c0 = os_calls();
    phases[ph].fn(&r);
    uint64_t calls = os_calls() - c0;
    unsigned long got = nulls - n0;
    if (use_rlimit) {
        CHECK(setrlimit(RLIMIT_AS, &old) == 0, "restore rlimit: %s", strerror(errno));
        CHECK(got > 0, "%s: no allocation failed", ctx);
    } else if (after < 0) {
        /* dry run */
    } else if (count == FOREVER) {
        hak_fault_inject(-1, 0); /* the failures stop */
    } else {
        /* The failures stop by themselves after count failing calls:
         * malloc succeeds again after at most count failing attempts. */
        void *p = NULL;
        for (int i = 0; i <= count + 1 && !p; i++) {
            errno = 0;
            p = hak_malloc(64 * MiB);
            CHECK(p || errno == ENOMEM, "%s: NULL with errno %d", ctx, errno);
        }
        CHECK(p != NULL, "%s: still failing after %d failures", ctx, count);
        hak_free(p);
        hak_fault_inject(-1, 0);
    }
    for (int i = 0; i < nblk; i++)
        verify_blk(&blk[i], ctx);
    keepers_verify(ctx);
    if (after >= 0)
        recovery(&r, ctx);
    free_all(blk, &nblk, ctx);
    __atomic_add_fetch(&sh->nulls, got, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sh->successes, successes, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sh->checks, tu_checks_, __ATOMIC_RELAXED);
    sh->os_calls = calls;
}

/* after < 0: dry run without faults.  Returns the phase's OS calls. */
static uint64_t run_case(int ph, int after, int count, int use_rlimit)
{
    char ctx[96];
    if (use_rlimit)
        snprintf(ctx, sizeof ctx, "phase %s, RLIMIT_AS", phases[ph].name);
    else if (after < 0)
        snprintf(ctx, sizeof ctx, "phase %s, dry run", phases[ph].name);
    else
        snprintf(ctx, sizeof ctx, "phase %s, fail_after %d, fail_count %d", phases[ph].name, after, count);
    fflush(stdout);
    fflush(stderr);
    sh->os_calls = 0;
    pid_t pid = fork();
    if (pid == 0) {
        tu_checks_ = tu_failures_ = 0;
        successes = 0;
        case_body(ph, after, count, use_rlimit, ctx);
        if (tu_failures())
            fprintf(stderr, "  ^ in %s\n", ctx);
        _exit(tu_failures() ? 1 : 0);
    }
    CHECK(pid > 0, "fork: %s", strerror(errno));
    int st = 0;
    if (pid > 0)
        waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: child %s %d", ctx,
          WIFSIGNALED(st) ? "killed by signal" : "exited with", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    return sh->os_calls;
}

/* The hook itself: fail_count consecutive calls must fail. */
static void hook_selftest(void)
{
    struct hak_stats s0 = tu_stats();
    hak_fault_inject(0, 2);
    errno = 0;
    /* with every cache used up, the reservation is tried at its preferred
     * size, then at the bare minimum: two OS calls, both fail */
    void *p = hak_malloc(5 * MiB);
    int e = errno;
    struct hak_stats s1 = tu_stats();
    hak_fault_inject(-1, 0);
    unsigned long failed = (unsigned long)(s1.os_failures - s0.os_failures);
    CHECK(p != NULL || e == ENOMEM, "selftest: NULL with errno %d", e);
    CHECK(failed >= 1, "hook: hak_fault_inject(0, 2) made no OS call fail");
    CHECK(failed == 2 && p == NULL,
          "hook: hak_fault_inject(0, 2) failed %lu OS call(s), malloc %s", failed, p ? "succeeded" : "NULL");
    hak_free(p);
}

int main(void)
{
    printf("test_fault: starting\n"); /* stdout's buffer exists before any fault */
    fflush(stdout);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 2;
    keepers_make();

    /* Deterministic ENOMEMs that need no injection. */
    errno = 0;
    CHECK(hak_calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM, "calloc overflow");
    errno = 0;
    CHECK(hak_malloc(SIZE_MAX - 4096) == NULL && errno == ENOMEM, "malloc(huge)");

    ballast_fill();
    pid_t pid = fork(); /* the self-test in a child too: the parent stays prepared */
    if (pid == 0) {
        hook_selftest();
        fflush(stdout);
        _exit(tu_failures() ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "hook self-test failed (status %#x)", st);

    int cases = 0;
    static const int counts[] = { 1, 2, FOREVER };
    for (int ph = 0; ph < NPHASES; ph++) {
        uint64_t calls = run_case(ph, -1, 0, 0); /* dry run: count the OS calls */
        int n = calls + 2 > 40 ? 40 : (int)calls + 2;
        unsigned long n0 = sh->nulls;
        for (int after = 0; after <= n; after++)
            for (int c = 0; c < 3; c++, cases++)
                run_case(ph, after, counts[c], 0);
        run_case(ph, 0, 0, 1);
        cases++;
        printf("test_fault: phase %-8s %2llu OS calls, fail_after 0..%d: %lu NULL results\n",
               phases[ph].name, (unsigned long long)calls, n, sh->nulls - n0);
        fflush(stdout);
    }
    printf("test_fault: %d cases (one process each), %lu allocations failed cleanly, %lu succeeded\n",
           cases, sh->nulls, sh->successes);
    TU_COUNT(sh->checks);
    ballast_free();
    keepers_verify("end");
    free_all(keep, &nkeep, "keepers");
    return TU_DONE();
}
