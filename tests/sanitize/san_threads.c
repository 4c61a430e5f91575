/* Concurrency through hak_* only, for ThreadSanitizer (and UBSan):
 *   1. producers/consumers: blocks of every tier allocated by one thread,
 *      checked and freed by another (cross-thread frees);
 *   2. threads that exit with live blocks, freed later by other threads,
 *      while new threads adopt the abandoned heaps;
 *   3. many threads swapping blocks through shared slots, with thread
 *      churn, and hak_trim running concurrently.
 * SPDX-License-Identifier: MIT */
#include <stdatomic.h>
#include "testutil.h"

#define KiB ((size_t)1 << 10)

static size_t pick_size(tu_rng *r)
{
    unsigned t = (unsigned)tu_range(r, 0, 99);
    if (t < 70) return tu_range(r, 1, HAK_TINY_MAX);
    if (t < 97) return tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
    return tu_range(r, HAK_MID_MAX + 1, 300 * KiB);
}

/* A block carries its size and seed in its first 16 bytes. */
typedef struct { size_t n; uint64_t seed; } Hdr;

static void *make(tu_rng *r)
{
    size_t n = pick_size(r);
    if (n < sizeof(Hdr)) n = sizeof(Hdr);
    char *p = hak_malloc(n);
    CHECK(p != NULL, "malloc(%zu) failed", n);
    if (!p) return NULL;
    CHECK(hak_usable_size(p) >= n, "usable %zu < %zu", hak_usable_size(p), n);
    Hdr h = { n, tu_rand(r) };
    memcpy(p, &h, sizeof h);
    size_t m = n < 4096 ? n : 4096;
    tu_fill_idx(p, sizeof h, m, h.seed);
    return p;
}

static void check_free(void *p)
{
    if (!p) return;
    Hdr h;
    memcpy(&h, p, sizeof h);
    size_t m = h.n < 4096 ? h.n : 4096;
    const uint8_t *b = p;
    size_t bad = TU_OK;
    for (size_t i = sizeof h; i < m; i++)
        if (b[i] != tu_pat_(i, h.seed)) { bad = i; break; }
    CHECK(bad == TU_OK, "block %p (%zu bytes) corrupt at %zu", p, h.n, bad);
    hak_free(p);
}

/* ---- 1. producers / consumers over a mutex-protected ring ---------------- */
#define RING 256
static struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    void *slot[RING];
    unsigned head, tail, producers_left;
} q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, 0, 0, 0 };
static long items_per_producer;

static void producer(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(100 + idx);
    for (long i = 0; i < items_per_producer; i++) {
        void *p = make(&r);
        pthread_mutex_lock(&q.mu);
        while (q.head - q.tail == RING)
            pthread_cond_wait(&q.not_full, &q.mu);
        q.slot[q.head++ % RING] = p;
        pthread_cond_signal(&q.not_empty);
        pthread_mutex_unlock(&q.mu);
        /* and some local churn */
        if (i % 4 == 0) check_free(make(&r));
    }
    pthread_mutex_lock(&q.mu);
    q.producers_left--;
    pthread_cond_broadcast(&q.not_empty);
    pthread_mutex_unlock(&q.mu);
}

static void consumer(int idx, void *ctx)
{
    for (;;) {
        pthread_mutex_lock(&q.mu);
        while (q.head == q.tail && q.producers_left)
            pthread_cond_wait(&q.not_empty, &q.mu);
        if (q.head == q.tail) {
            pthread_mutex_unlock(&q.mu);
            return;
        }
        void *p = q.slot[q.tail++ % RING];
        pthread_cond_signal(&q.not_full);
        pthread_mutex_unlock(&q.mu);
        check_free(p);
    }
}

static void prodcons_thread(int idx, void *ctx)
{
    if (idx < 2) producer(idx, ctx); else consumer(idx, ctx);
}

static void test_prodcons(void)
{
    q.producers_left = 2;
    tu_run_threads(4, prodcons_thread, NULL);
    CHECK(q.head == q.tail && q.head == 2 * items_per_producer, "ring: %u in, %u out", q.head, q.tail);
}

/* ---- 2. threads exit with live blocks --------------------------------- */
#define LIVE 1500
static void *live[8][LIVE];

static void leaver(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(200 + idx + 8 * (long)ctx);
    for (int i = 0; i < LIVE; i++)
        live[idx][i] = make(&r);
    /* free a few of its own, keep the rest alive past the thread's exit */
    for (int i = 0; i < LIVE; i += 7) {
        check_free(live[idx][i]);
        live[idx][i] = NULL;
    }
}

static void freer(int idx, void *ctx)
{
    /* thread idx frees the blocks of leaver (idx + 1) % 4, interleaved
     * with its own allocations (it may adopt an abandoned heap) */
    tu_rng r = tu_rng_seed(300 + idx);
    int from = (idx + 1) % 4;
    for (int i = 0; i < LIVE; i++) {
        check_free(live[from][i]);
        live[from][i] = NULL;
        if (i % 16 == 0) check_free(make(&r));
    }
}

static void test_exit_live(void)
{
    for (long round = 0; round < 4; round++) {
        tu_run_threads(4, leaver, (void *)round);
        if (round == 1)
            hak_trim(); /* collects the abandoned heaps */
        tu_run_threads(4, freer, NULL);
    }
}

/* ---- 3. many threads swapping through shared slots -------------------- */
#define SLOTS 512
static _Atomic(void *) shared[SLOTS];
static double swap_end;

static void swapper(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(400 + idx + 64 * (long)ctx);
    for (long i = 0; i < 20000; i++) {
        if (i % 256 == 0 && tu_now() > swap_end)
            break;
        void *p = make(&r);
        unsigned s = (unsigned)tu_range(&r, 0, SLOTS - 1);
        void *old = atomic_exchange_explicit(&shared[s], p, memory_order_acq_rel);
        check_free(old);
        if (idx == 0 && i % 2000 == 0)
            hak_trim();
    }
}

static void test_many(void)
{
    swap_end = tu_now() + tu_stress_seconds();
    for (long round = 0; round < 3; round++)
        tu_run_threads(12, swapper, (void *)round); /* new threads each round */
    for (int s = 0; s < SLOTS; s++)
        check_free(atomic_exchange(&shared[s], NULL));
}

int main(void)
{
    items_per_producer = 20000;
    test_prodcons();
    test_exit_live();
    test_many();
    hak_trim();
    struct hak_stats st = tu_stats();
    CHECK(st.invalid_frees == 0, "invalid frees: %llu", (unsigned long long)st.invalid_frees);
    CHECK(st.remote_frees > 0, "no remote frees counted");
    return TU_DONE();
}
