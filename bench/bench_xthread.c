/* bench_xthread: cross-thread frees, in batches, between threads paired up.
 *
 * usage: bench_xthread MODE THREADS OPS SEED
 *
 * THREADS (1 or even) threads are paired (thread 2i with 2i+1); each pair
 * shares two single-producer single-consumer rings of batches, one per
 * direction.  A batch is BATCH block pointers, published with one store,
 * so that the handoff costs the benchmark little and what is measured is
 * the allocator's cross-thread free.
 *   prodcons  one thread of each pair mallocs 64-byte blocks and sends them
 *             in batches; its partner frees every block it receives (half
 *             the threads allocate, half free).  OPS blocks per producer.
 *             Throughput counts frees.
 *   pairs     both threads of a pair malloc blocks of 16..1040 bytes, send
 *             them to the partner in batches and free what the partner
 *             sent: every free is of another thread's block.  OPS blocks
 *             per thread.  Throughput counts mallocs and frees.
 * With THREADS 1 the thread sends its batches to itself: the same work
 * with every free local, the baseline that scaling is measured from.
 *
 * Every block carries its size in its first two bytes and that size's low
 * byte in its last; the receiver checks both before the free.  A thread
 * finding its outgoing ring full frees what it has received and yields,
 * so that the benchmark works with more threads than cores.
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

#define BATCH 64
#define RING  64 /* batches per direction; a power of two */

typedef struct Ring {
    _Alignas(64) _Atomic uint64_t head; /* batches published by the sender */
    _Alignas(64) _Atomic uint64_t tail; /* batches freed by the receiver   */
    _Alignas(64) void *slot[RING][BATCH];
} Ring;

typedef struct Worker {
    Ring *out, *in;
    bool sends, receives;
    size_t min, span;        /* block sizes min .. min + span - 1 */
    uint64_t ops, rng, frees, bad;
    _Atomic bool *partner_done, done;
    pthread_t tid;
} Worker;

static bool check(const unsigned char *p)
{
    uint16_t sz;
    memcpy(&sz, p, sizeof sz);
    return sz >= 16 && p[sz - 1] == (unsigned char)sz;
}

/* Free every batch waiting on w's incoming ring; false if none was. */
static bool drain(Worker *w)
{
    uint64_t tail = atomic_load_explicit(&w->in->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&w->in->head, memory_order_acquire);
    if (tail == head)
        return false;
    for (; tail != head; tail++) {
        void **b = w->in->slot[tail % RING];
        for (int i = 0; i < BATCH; i++) {
            w->bad += !check(b[i]);
            free(b[i]);
        }
        w->frees += BATCH;
        atomic_store_explicit(&w->in->tail, tail + 1, memory_order_release);
    }
    return true;
}

static void *run(void *arg)
{
    Worker *w = arg;
    uint64_t head = 0;
    for (uint64_t n = 0; w->sends && n < w->ops; n += BATCH) {
        void *b[BATCH];
        for (int i = 0; i < BATCH; i++) {
            uint16_t sz = (uint16_t)(w->min + rng_next(&w->rng) % w->span);
            unsigned char *p = malloc(sz);
            if (!p) {
                fprintf(stderr, "bench_xthread: malloc(%u) failed\n", sz);
                exit(1);
            }
            memcpy(p, &sz, sizeof sz);
            p[sz - 1] = (unsigned char)sz;
            b[i] = p;
        }
        while (head - atomic_load_explicit(&w->out->tail, memory_order_acquire) >= RING)
            if (!(w->receives && drain(w)))
                sched_yield();
        memcpy(w->out->slot[head % RING], b, sizeof b);
        atomic_store_explicit(&w->out->head, ++head, memory_order_release);
        if (w->receives)
            drain(w);
    }
    atomic_store_explicit(&w->done, true, memory_order_release);
    /* the partner's last batches (it may still be sending) */
    while (w->receives) {
        bool finished = atomic_load_explicit(w->partner_done, memory_order_acquire);
        if (!drain(w)) {
            if (finished)
                break;
            sched_yield();
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t threads, ops, seed;
    bool pairs = argc == 5 && !strcmp(argv[1], "pairs");
    if (argc != 5 || (!pairs && strcmp(argv[1], "prodcons")) || parse_u64(argv[2], 1, &threads) ||
        threads > 1024 || (threads > 1 && threads % 2) || parse_u64(argv[3], BATCH, &ops) ||
        parse_u64(argv[4], 0, &seed)) {
        fprintf(stderr, "usage: %s prodcons|pairs THREADS OPS SEED   (THREADS 1 or even, up to 1024; "
                        "OPS >= %d blocks per sending thread)\n", argv[0], BATCH);
        return 2;
    }
    size_t nrings = threads == 1 ? 1 : threads;
    Ring *rings = aligned_alloc(64, nrings * sizeof *rings); /* set up before the clock */
    Worker *w = calloc(threads, sizeof *w);
    if (!rings || !w) {
        perror("bench_xthread");
        return 1;
    }
    memset(rings, 0, nrings * sizeof *rings);
    for (uint64_t t = 0; t < threads; t++) {
        uint64_t partner = threads == 1 ? t : t ^ 1;
        w[t].out = &rings[t];            /* t sends on its own ring, */
        w[t].in = &rings[partner];       /* receives on its partner's */
        w[t].sends = pairs || t % 2 == 0 || threads == 1;
        w[t].receives = pairs || t % 2 == 1 || threads == 1;
        w[t].min = pairs ? 16 : 64;
        w[t].span = pairs ? 1025 : 1;
        w[t].ops = ops;
        w[t].rng = rng_seed(seed * 1024 + t);
        w[t].partner_done = &w[partner].done;
    }
    double t0 = now_s();
    for (uint64_t t = 0; t < threads; t++)
        if (pthread_create(&w[t].tid, NULL, run, &w[t])) {
            perror("pthread_create");
            return 1;
        }
    uint64_t frees = 0, mallocs = 0, bad = 0;
    for (uint64_t t = 0; t < threads; t++) {
        pthread_join(w[t].tid, NULL);
        frees += w[t].frees;
        mallocs += w[t].sends ? (ops + BATCH - 1) / BATCH * BATCH : 0;
        bad += w[t].bad;
    }
    double secs = now_s() - t0;
    if (bad || frees != mallocs) {
        fprintf(stderr, "bench_xthread: %llu corrupted blocks, %llu of %llu blocks freed\n",
                (unsigned long long)bad, (unsigned long long)frees, (unsigned long long)mallocs);
        return 1;
    }
    if (secs <= 0)
        secs = 1e-9;
    uint64_t counted = pairs ? mallocs + frees : frees;
    printf("bench_xthread: %s threads=%llu blocks=%llu time=%.3fs\n", argv[1],
           (unsigned long long)threads, (unsigned long long)mallocs, secs);
    printf("Throughput = %llu ops/s (%s)\n", (unsigned long long)(counted / secs),
           pairs ? "mallocs and frees" : "frees");
    free(rings);
    free(w);
    return 0;
}
