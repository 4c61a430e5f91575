/* bench_prodcons: producer/consumer cross-thread frees.
 *
 * usage: bench_prodcons PAIRS ITEMS SEED
 *
 * PAIRS producer/consumer pairs.  Each producer mallocs ITEMS blocks of random
 * size 16..4096, fills them (sequence number in the first 8 bytes, a pattern
 * byte in the rest) and pushes them through its own bounded single-producer
 * single-consumer ring; the consumer checks the contents and frees the block.
 * Every free is therefore a free of memory allocated by another thread.
 *
 * The ring is lock-free (acquire/release head and tail); a thread finding it
 * full/empty yields the CPU, so the benchmark also works with more threads
 * than cores.  Throughput = items per second over all pairs (1 item = one
 * malloc in the producer + one free in the consumer). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

#define RING 1024                    /* power of two */

struct item { unsigned char *p; size_t sz; };

struct pair {
    _Alignas(64) _Atomic uint64_t head;      /* next slot the producer writes */
    _Alignas(64) _Atomic uint64_t tail;      /* next slot the consumer reads  */
    _Alignas(64) struct item ring[RING];
    uint64_t rng;
    uint64_t items;
    int prod_fail, cons_bad;
    pthread_t prod, cons;
};

static inline unsigned char pat(uint64_t seq) { return (unsigned char)(seq * 131 + 7); }

static void *producer(void *arg)
{
    struct pair *P = arg;
    uint64_t head = 0;
    for (uint64_t seq = 0; seq < P->items; seq++) {
        size_t sz = 16 + rng_next(&P->rng) % 4081;           /* 16..4096 */
        unsigned char *p = malloc(sz);
        if (!p) { P->prod_fail = 1; sz = 0; }
        else {
            memcpy(p, &seq, sizeof seq);
            memset(p + 8, pat(seq), sz - 8);
        }
        /* a NULL item is still sent so the consumer terminates */
        while (head - atomic_load_explicit(&P->tail, memory_order_acquire) >= RING)
            sched_yield();
        P->ring[head % RING] = (struct item){ p, sz };
        atomic_store_explicit(&P->head, ++head, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    struct pair *P = arg;
    uint64_t tail = 0;
    for (uint64_t seq = 0; seq < P->items; seq++) {
        while (atomic_load_explicit(&P->head, memory_order_acquire) == tail)
            sched_yield();
        struct item it = P->ring[tail % RING];
        atomic_store_explicit(&P->tail, ++tail, memory_order_release);
        if (!it.p) continue;
        uint64_t got;
        memcpy(&got, it.p, sizeof got);
        if (got != seq || it.p[8] != pat(seq) || it.p[it.sz - 1] != pat(seq))
            P->cons_bad = 1;
        free(it.p);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t pairs, items, seed;
    if (argc != 4 || parse_u64(argv[1], 1, &pairs) || pairs > 512 ||
        parse_u64(argv[2], 1, &items) || parse_u64(argv[3], 0, &seed)) {
        fprintf(stderr, "usage: %s PAIRS ITEMS SEED   (PAIRS 1..512, ITEMS per pair >= 1)\n",
                argv[0]);
        return 2;
    }
    struct pair *P = aligned_alloc(64, pairs * sizeof *P);
    if (!P) { perror("aligned_alloc"); return 1; }
    memset(P, 0, pairs * sizeof *P);
    double t0 = now_s();
    for (uint64_t i = 0; i < pairs; i++) {
        atomic_init(&P[i].head, 0);
        atomic_init(&P[i].tail, 0);
        P[i].items = items;
        P[i].rng = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ (i + 1) * 0xBF58476D1CE4E5B9ULL;
        if (!P[i].rng) P[i].rng = 1;
        if (pthread_create(&P[i].cons, NULL, consumer, &P[i]) ||
            pthread_create(&P[i].prod, NULL, producer, &P[i])) {
            perror("pthread_create");
            return 1;
        }
    }
    int bad = 0;
    for (uint64_t i = 0; i < pairs; i++) {
        pthread_join(P[i].prod, NULL);
        pthread_join(P[i].cons, NULL);
        bad |= P[i].prod_fail | P[i].cons_bad;
    }
    double t = now_s() - t0;
    free(P);
    if (bad) { fprintf(stderr, "bench_prodcons: malloc failed or corrupted block\n"); return 1; }
    if (t <= 0) t = 1e-9;
    printf("bench_prodcons: pairs=%llu items_per_pair=%llu time=%.3fs\n",
           (unsigned long long)pairs, (unsigned long long)items, t);
    printf("Throughput = %llu ops/s (items)\n", (unsigned long long)(pairs * items / t));
    return 0;
}
