/* bench_large_mt: large blocks from many threads, freed by their own
 * thread or by another one.
 *
 * usage: bench_large_mt THREADS OPS MIN RANGE [SEED]
 *   THREADS  threads, each running OPS operations
 *   MIN      smallest block in bytes; sizes are uniform in [MIN, MIN+RANGE)
 *   SEED     default 42
 *
 * Each thread keeps a ring of 16 blocks.  One operation frees the oldest
 * block of the ring, allocates a new one and writes its first and last
 * byte.  Every other new block is swapped into a table shared by all
 * threads (16 slots per thread), and the block it displaces takes its
 * place in the ring: so about half of all blocks are freed by a thread
 * other than the one that allocated them, and the working set is about
 * 32 blocks per thread.  Prints "Throughput = N ops/s" (all threads together).
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"

#define RING  16

static uint64_t n_threads, n_ops, min_size, range, seed = 42, table_len;
static _Atomic(unsigned char *) *shared;
static pthread_barrier_t start;

static unsigned char *make(uint64_t *rng)
{
    return bench_block(rng, min_size, range, SIZE_MAX, "bench_large_mt");
}

static void *worker(void *arg)
{
    uint64_t rng = rng_seed(seed + (uintptr_t)arg);
    unsigned char *ring[RING];
    for (int i = 0; i < RING; i++)
        ring[i] = make(&rng);
    pthread_barrier_wait(&start);
    for (uint64_t op = 0; op < n_ops; op++) {
        unsigned slot = (unsigned)(op % RING);
        free(ring[slot]);
        unsigned char *p = make(&rng);
        if (op & 1) /* swap it into the shared table: someone else frees it */
            p = atomic_exchange_explicit(&shared[rng_next(&rng) % table_len], p, memory_order_acq_rel);
        ring[slot] = p; /* NULL if the table slot was empty: free(NULL) */
    }
    for (int i = 0; i < RING; i++)
        free(ring[i]);
    return NULL;
}

int main(int argc, char **argv)
{
    if ((argc != 5 && argc != 6) || parse_u64(argv[1], 1, &n_threads) ||
        parse_u64(argv[2], 1, &n_ops) || parse_u64(argv[3], 1, &min_size) ||
        parse_u64(argv[4], 0, &range) || (argc == 6 && parse_u64(argv[5], 0, &seed))) {
        fprintf(stderr, "usage: %s THREADS OPS MIN RANGE [SEED]\n", argv[0]);
        return 2;
    }
    pthread_t *t = calloc(n_threads, sizeof *t);
    table_len = RING * n_threads;
    shared = calloc(table_len, sizeof *shared);
    if (!t || !shared || pthread_barrier_init(&start, NULL, (unsigned)n_threads + 1)) {
        perror("bench_large_mt");
        return 1;
    }
    for (uint64_t i = 0; i < n_threads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i)) {
            perror("pthread_create");
            return 1;
        }
    pthread_barrier_wait(&start);
    double t0 = now_s();
    for (uint64_t i = 0; i < n_threads; i++)
        pthread_join(t[i], NULL);
    double dt = now_s() - t0;
    for (uint64_t i = 0; i < table_len; i++)
        free(atomic_load(&shared[i]));
    free(shared);
    free(t);
    if (dt <= 0) dt = 1e-9;
    printf("bench_large_mt: threads=%llu ops=%llu size=%llu..%llu time=%.3fs\n",
           (unsigned long long)n_threads, (unsigned long long)n_ops,
           (unsigned long long)min_size, (unsigned long long)(min_size + range), dt);
    printf("Throughput = %llu ops/s\n", (unsigned long long)(n_threads * n_ops / dt));
    return 0;
}
