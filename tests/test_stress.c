/* Mixed-size multithreaded stress over all tiers for STRESS_SECONDS
 * (default 2): shared slots freed/realloc'd by whichever thread finds
 * them (cross-thread frees), private realloc chains, short-lived threads
 * created and exiting throughout; every block is verified before free.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include "testutil.h"

enum { SLOTS = 8192, LOCKS = 256, WORKERS = 6, HEAD = 512, TAIL = 256 };

struct slot { char *p; size_t n; uint64_t seed; };
static struct slot slot[SLOTS];
static pthread_mutex_t lock[LOCKS];
static double deadline;
static uint64_t next_seed = 1;
static unsigned long ops, frees, threads_spawned, bad;

static void fill(char *p, size_t n, uint64_t seed)
{
    tu_fill_idx(p, 0, n < HEAD ? n : HEAD, seed);
    if (n > HEAD) tu_fill_idx(p, n - TAIL > HEAD ? n - TAIL : HEAD, n, seed);
}

/* verify the patterned bytes below `upto` */
static int verify(const char *p, size_t n, size_t upto, uint64_t seed)
{
    size_t h = n < HEAD ? n : HEAD;
    if (h > upto) h = upto;
    if (tu_verify_idx(p, h, seed) != TU_OK) return 0;
    if (n > HEAD) {
        size_t from = n - TAIL > HEAD ? n - TAIL : HEAD;
        for (size_t i = from; i < n && i < upto; i++)
            if ((uint8_t)p[i] != tu_pat_(i, seed)) return 0;
    }
    return 1;
}

static size_t pick_size(tu_rng *r)
{
    uint64_t x = tu_rand(r) % 1000;
    if (x < 600) return tu_range(r, 1, HAK_TINY_MAX);
    if (x < 950) return tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
    if (x < 995) return tu_range(r, HAK_MID_MAX + 1, 1 << 20);
    return tu_range(r, 1 << 20, 16 << 20);
}

static char *alloc_any(tu_rng *r, size_t n)
{
    void *p = NULL;
    switch (tu_rand(r) % 16) {
    case 0: {
        unsigned char *c = calloc(1, n);
        if (c) {
            size_t nz = 0, lim = n < 4096 ? n : 4096;
            for (size_t i = 0; i < lim; i++) nz += c[i] != 0;
            if (nz) { __atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED); CHECK(0, "calloc(%zu) not zero", n); }
        }
        return (char *)c;
    }
    case 1:
        if (posix_memalign(&p, (size_t)16 << (tu_rand(r) % 9), n)) p = NULL;
        return p;
    case 2: return hak_malloc(n);
    default: return malloc(n);
    }
}

static void one_op(tu_rng *r, int self)
{
    size_t i = tu_rand(r) % SLOTS;
    pthread_mutex_t *mu = &lock[i % LOCKS];
    pthread_mutex_lock(mu);
    struct slot *s = &slot[i];
    if (s->p) {
        if (!verify(s->p, s->n, s->n, s->seed)) {
            __atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
            CHECK(0, "slot %zu: %zu-byte block corrupted", i, s->n);
        }
        if (tu_rand(r) % 3) {
            (tu_rand(r) & 1 ? free : hak_free)(s->p);
            s->p = NULL;
            __atomic_add_fetch(&frees, 1, __ATOMIC_RELAXED);
        } else {
            size_t m = pick_size(r);
            char *q = realloc(s->p, m);
            CHECK(q != NULL, "realloc(%zu -> %zu)", s->n, m);
            if (q) {
                if (!verify(q, s->n, m, s->seed)) {
                    __atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
                    CHECK(0, "realloc %zu -> %zu lost data", s->n, m);
                }
                s->p = q;
                s->n = m;
                fill(q, m, s->seed);
            }
        }
    } else {
        size_t n = pick_size(r);
        s->p = alloc_any(r, n);
        CHECK(s->p != NULL, "alloc(%zu)", n);
        if (s->p) {
            CHECK(malloc_usable_size(s->p) >= n, "usable %zu < %zu", malloc_usable_size(s->p), n);
            s->n = n;
            s->seed = __atomic_fetch_add(&next_seed, 1, __ATOMIC_RELAXED);
            fill(s->p, n, s->seed);
        }
    }
    pthread_mutex_unlock(mu);
}

/* private realloc chain: grow to ~1 MiB by random steps, then restart */
struct chain { char *p; size_t n; uint64_t seed; };
static void chain_step(tu_rng *r, struct chain *c)
{
    size_t m = c->n + 1 + tu_rand(r) % (c->n / 2 + 64);
    if (m > (1 << 20) || !c->p) {
        free(c->p);
        c->p = NULL;
        c->n = 0;
        m = 1 + tu_rand(r) % 64;
    }
    char *q = realloc(c->p, m);
    CHECK(q != NULL, "chain realloc(%zu)", m);
    if (!q) return;
    if (c->n && !verify(q, c->n, c->n, c->seed)) {
        __atomic_add_fetch(&bad, 1, __ATOMIC_RELAXED);
        CHECK(0, "realloc chain %zu -> %zu lost data", c->n, m);
    }
    c->p = q;
    c->n = m;
    fill(q, m, c->seed);
}

static void worker(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(0x5EED + idx + (uintptr_t)ctx * 1000);
    struct chain c = { NULL, 0, 0xC0FFEE + idx };
    unsigned long n = 0;
    long limit = ctx ? 2000 : -1; /* short-lived threads do a fixed amount */
    while ((limit < 0 && tu_now() < deadline) || (limit >= 0 && (long)n < limit)) {
        for (int k = 0; k < 64; k++) one_op(&r, idx);
        chain_step(&r, &c);
        n += 64;
        if (tu_failures() > 30) break;
    }
    free(c.p);
    __atomic_add_fetch(&ops, n, __ATOMIC_RELAXED);
}

static void *spawner(void *arg)
{
    uintptr_t gen = 1;
    while (tu_now() < deadline && tu_failures() <= 30) {
        tu_run_threads(4, worker, (void *)gen++);
        __atomic_add_fetch(&threads_spawned, 4, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(void)
{
    for (int i = 0; i < LOCKS; i++) pthread_mutex_init(&lock[i], NULL);
    double secs = tu_stress_seconds();
    deadline = tu_now() + secs;
    pthread_t sp;
    CHECK(pthread_create(&sp, NULL, spawner, NULL) == 0, "pthread_create");
    tu_run_threads(WORKERS, worker, NULL);
    pthread_join(sp, NULL);
    /* verify and free whatever is left */
    size_t left = 0;
    for (size_t i = 0; i < SLOTS; i++) {
        if (!slot[i].p) continue;
        if (!verify(slot[i].p, slot[i].n, slot[i].n, slot[i].seed)) bad++;
        free(slot[i].p);
        left++;
    }
    CHECK(bad == 0, "%lu corrupted blocks", bad);
    CHECK(ops > 0 && threads_spawned > 0, "no work done (ops %lu, threads %lu)", ops, threads_spawned);
    struct hak_stats s = tu_stats();
    fprintf(stderr, "test_stress: %.0fs, %lu ops, %lu short threads, %zu blocks left, "
            "remote_frees %llu\n", secs, ops, threads_spawned, left,
            (unsigned long long)s.remote_frees);
    return TU_DONE();
}
