/* bench_mid_large_mt: multi-threaded mid/large object churn (8..34 KiB).
 *
 * usage: bench_mid_large_mt THREADS CYCLES WS SEED
 *
 * Each thread runs CYCLES cycles over its own table of WS slots: draw r, pick
 * slot r % WS; if occupied free it, else malloc (1 << (13 + r % 3)) + (r & 0x7FF)
 * bytes (8 KiB .. 34 KiB) and write to it.
 *
 * Cross-thread frees: about 1 in 8 frees (when THREADS > 1) does not free the
 * block locally but sends it to the next thread (t + 1) % THREADS, which frees
 * it.  To keep the exchange cheap and rare the sender links blocks into a
 * local chain through their first word (blocks are >= 8 KiB) and publishes
 * the whole chain of 32 with one CAS onto the receiver's lock-free mailbox
 * (a Treiber stack).  The receiver takes the whole mailbox with one atomic
 * exchange every 64 cycles; pop-all has no ABA problem.  At the end every
 * thread flushes its outbox, all threads meet at a barrier, and each drains
 * its mailbox once more, so no block leaks or is freed twice.
 *
 * One op = one malloc or one free (remote frees are counted by the thread
 * that performs them).  Throughput = all ops / wall time of the parallel phase. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

#define BATCH 32          /* blocks per mailbox publish */
#define DRAIN_EVERY 64    /* cycles between mailbox checks */

struct node { struct node *next; };   /* overlays the first word of a block */

struct worker {
    _Alignas(64) _Atomic(struct node *) mailbox;   /* blocks sent to this thread */
    _Alignas(64) uint64_t rng;
    uint64_t ops;
    uint64_t remote_frees;
    int id;
    int failed;
    pthread_t th;
};

static struct worker *W;
static uint64_t g_threads, g_cycles, g_ws;
static pthread_barrier_t g_start;
/* Workers that have published everything.  A finished worker keeps
 * draining its mailbox until all have finished: a worker that only waited
 * would leave its peer's blocks stranded in transit, and peak memory would
 * measure thread timing instead of the allocator. */
static _Atomic uint64_t g_finished;

static uint64_t drain(struct worker *me)
{
    struct node *n = atomic_exchange_explicit(&me->mailbox, NULL, memory_order_acquire);
    uint64_t c = 0;
    while (n) {
        struct node *next = n->next;
        free(n);
        n = next;
        c++;
    }
    return c;
}

static void publish(struct worker *to, struct node *head, struct node *tail)
{
    struct node *old = atomic_load_explicit(&to->mailbox, memory_order_relaxed);
    do {
        tail->next = old;
    } while (!atomic_compare_exchange_weak_explicit(&to->mailbox, &old, head,
                                                    memory_order_release,
                                                    memory_order_relaxed));
}

static void *worker_main(void *arg)
{
    struct worker *me = arg;
    struct worker *peer = &W[(me->id + 1) % g_threads];
    int cross = g_threads > 1;
    void **slot = calloc(g_ws, sizeof *slot);
    struct node *ob_head = NULL, *ob_tail = NULL;
    int ob_n = 0;
    uint64_t ops = 0, remote = 0;

    if (!slot) me->failed = 1;
    pthread_barrier_wait(&g_start);
    if (!slot) goto out;

    for (uint64_t i = 0; i < g_cycles; i++) {
        uint64_t r = rng_next(&me->rng);
        uint64_t k = r % g_ws;
        if (slot[k]) {
            /* bits 40..42 are independent of the slot/size bits: 1 in 8 */
            if (cross && ((r >> 40) & 7) == 0) {
                struct node *n = slot[k];
                n->next = ob_head;
                ob_head = n;
                if (!ob_tail) ob_tail = n;
                if (++ob_n == BATCH) {
                    publish(peer, ob_head, ob_tail);
                    ob_head = ob_tail = NULL;
                    ob_n = 0;
                }
            } else {
                free(slot[k]);
                ops++;
            }
            slot[k] = NULL;
        } else {
            size_t sz = ((size_t)1 << (13 + r % 3)) + (r & 0x7FF);
            unsigned char *p = malloc(sz);
            if (!p) { me->failed = 1; break; }
            p[0] = (unsigned char)r;
            p[sz - 1] = (unsigned char)k;
            slot[k] = p;
            ops++;
        }
        if (cross && (i % DRAIN_EVERY) == 0) {
            uint64_t c = drain(me);
            ops += c;
            remote += c;
        }
    }
    if (ob_head)
        publish(peer, ob_head, ob_tail);
    for (uint64_t k = 0; k < g_ws; k++)
        if (slot[k]) { free(slot[k]); ops++; }
    free(slot);
out:
    atomic_fetch_add_explicit(&g_finished, 1, memory_order_release);
    while (atomic_load_explicit(&g_finished, memory_order_acquire) < g_threads) {
        uint64_t c = drain(me);
        ops += c;
        remote += c;
        if (!c) sched_yield();
    }
    /* Everyone has published everything; now the last drain is complete. */
    {
        uint64_t c = drain(me);
        ops += c;
        remote += c;
    }
    me->ops = ops;
    me->remote_frees = remote;
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t seed;
    if (argc != 5 || parse_u64(argv[1], 1, &g_threads) || g_threads > 1024 ||
        parse_u64(argv[2], 1, &g_cycles) || parse_u64(argv[3], 1, &g_ws) ||
        parse_u64(argv[4], 0, &seed)) {
        fprintf(stderr, "usage: %s THREADS CYCLES WS SEED   (THREADS 1..1024, CYCLES>=1, WS>=1)\n",
                argv[0]);
        return 2;
    }
    W = aligned_alloc(64, g_threads * sizeof *W);
    if (!W) { perror("aligned_alloc"); return 1; }
    memset(W, 0, g_threads * sizeof *W);
    pthread_barrier_init(&g_start, NULL, (unsigned)g_threads + 1);
    for (uint64_t t = 0; t < g_threads; t++) {
        W[t].id = (int)t;
        W[t].rng = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ (t + 1) * 0xBF58476D1CE4E5B9ULL;
        if (!W[t].rng) W[t].rng = 1;
        atomic_init(&W[t].mailbox, NULL);
        if (pthread_create(&W[t].th, NULL, worker_main, &W[t]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    pthread_barrier_wait(&g_start);
    double t0 = now_s();
    uint64_t ops = 0, remote = 0;
    int failed = 0;
    for (uint64_t t = 0; t < g_threads; t++) {
        pthread_join(W[t].th, NULL);
        ops += W[t].ops;
        remote += W[t].remote_frees;
        failed |= W[t].failed;
    }
    double el = now_s() - t0;
    pthread_barrier_destroy(&g_start);
    free(W);
    if (failed) { fprintf(stderr, "bench_mid_large_mt: allocation failed\n"); return 1; }
    if (el <= 0) el = 1e-9;
    printf("bench_mid_large_mt: threads=%llu cycles=%llu ws=%llu ops=%llu remote_frees=%llu time=%.3fs\n",
           (unsigned long long)g_threads, (unsigned long long)g_cycles,
           (unsigned long long)g_ws, (unsigned long long)ops,
           (unsigned long long)remote, el);
    printf("Throughput = %llu ops/s\n", (unsigned long long)(ops / el));
    return 0;
}
