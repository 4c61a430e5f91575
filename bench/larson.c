/* larson: the Larson & Krishnan server simulation ("Memory allocation for
 * long-running server applications", ISMM 1998).
 *
 * usage: larson [SECONDS MIN_SIZE MAX_SIZE CHUNKS_PER_THREAD ROUNDS SEED THREADS]
 *        defaults (no arguments): 2 8 1024 1000 10000 42 2
 *
 * THREADS "lanes" run concurrently.  Each lane owns an array of CHUNKS blocks
 * (pre-filled before timing starts).  The thread currently serving a lane does
 * ROUNDS operations; one operation = pick a random slot, free its block and
 * malloc a new one of uniform random size in [MIN_SIZE, MAX_SIZE].  Then it
 * hands the array to a freshly created successor thread and exits, so blocks
 * allocated by one thread are freed by another (the pattern that hurts
 * allocators with purely thread-local heaps).  The lanes keep going until
 * SECONDS have elapsed.
 *
 * Throughput counts malloc+free PAIRS per second (one pair = one operation),
 * summed over all lanes.  SECONDS may be fractional (e.g. 0.2).
 *
 * Thread lifetime: a successor joins its predecessor first; the last thread
 * of each lane is joined by main, so no thread (or its stack) is leaked. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

static size_t g_min, g_max, g_chunks;
static uint64_t g_rounds;
static atomic_int g_stop;

struct lane {
    void **blk;            /* CHUNKS blocks, owned by the current thread   */
    uint64_t rng;
    uint64_t ops;          /* malloc+free pairs done in this lane           */
    uint64_t threads;      /* threads that served this lane                 */
    pthread_t pred;        /* predecessor to join (valid if has_pred)       */
    int has_pred;
    pthread_t tail;        /* last thread, set when done                    */
    int done;
    int failed;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

static inline size_t rand_size(uint64_t *s)
{
    return g_min + (size_t)(rng_next(s) % (g_max - g_min + 1));
}

static void *lane_thread(void *arg)
{
    struct lane *L = arg;
    if (L->has_pred)
        pthread_join(L->pred, NULL);   /* reap the thread that handed over */
    L->threads++;

    uint64_t i;
    for (i = 0; i < g_rounds; i++) {
        /* Check the clock flag only now and then: cheap, and keeps a huge
         * ROUNDS value from overshooting SECONDS. */
        if ((i & 1023) == 0 && atomic_load_explicit(&g_stop, memory_order_relaxed))
            break;
        uint64_t r = rng_next(&L->rng);
        size_t k = r % g_chunks;
        free(L->blk[k]);
        size_t sz = rand_size(&L->rng);
        unsigned char *p = malloc(sz);
        if (!p) { L->failed = 1; break; }
        p[0] = (unsigned char)r;
        p[sz - 1] = (unsigned char)k;
        L->blk[k] = p;
    }
    L->ops += i;

    if (!L->failed && !atomic_load(&g_stop)) {
        pthread_t next;
        L->pred = pthread_self();
        L->has_pred = 1;
        if (pthread_create(&next, NULL, lane_thread, L) == 0)
            return NULL;                /* successor owns the lane now */
        L->failed = 1;
    }
    pthread_mutex_lock(&g_mu);
    L->tail = pthread_self();
    L->done = 1;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

int main(int argc, char **argv)
{
    double seconds = 2;
    uint64_t mn = 8, mx = 1024, chunks = 1000, rounds = 10000, seed = 42, nthr = 2;
    if (argc != 1) {
        char *end;
        if (argc != 8) goto usage;
        seconds = strtod(argv[1], &end);
        if (*end || !(seconds > 0) || seconds > 1e6 ||
            parse_u64(argv[2], 1, &mn) || parse_u64(argv[3], 1, &mx) || mx < mn ||
            parse_u64(argv[4], 1, &chunks) || parse_u64(argv[5], 1, &rounds) ||
            parse_u64(argv[6], 0, &seed) || parse_u64(argv[7], 1, &nthr) || nthr > 1024)
            goto usage;
    }
    g_min = mn; g_max = mx; g_chunks = chunks; g_rounds = rounds;

    struct lane *lanes = calloc(nthr, sizeof *lanes);
    if (!lanes) { perror("calloc"); return 1; }
    for (uint64_t t = 0; t < nthr; t++) {
        struct lane *L = &lanes[t];
        L->rng = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ (t + 1) * 0xBF58476D1CE4E5B9ULL;
        if (!L->rng) L->rng = 1;
        L->blk = malloc(chunks * sizeof(void *));
        if (!L->blk) { perror("malloc"); return 1; }
        for (uint64_t k = 0; k < chunks; k++) {   /* warm-up fill, not timed */
            size_t sz = rand_size(&L->rng);
            unsigned char *p = malloc(sz);
            if (!p) { perror("malloc"); return 1; }
            p[0] = 1; p[sz - 1] = 2;
            L->blk[k] = p;
        }
    }

    double t0 = now_s();
    for (uint64_t t = 0; t < nthr; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, lane_thread, &lanes[t]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    struct timespec ts = { (time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9) };
    while (nanosleep(&ts, &ts) != 0)
        ;
    atomic_store(&g_stop, 1);

    pthread_mutex_lock(&g_mu);
    for (uint64_t t = 0; t < nthr; t++)
        while (!lanes[t].done)
            pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
    double el = now_s() - t0;

    uint64_t ops = 0, threads = 0;
    int failed = 0;
    for (uint64_t t = 0; t < nthr; t++) {
        pthread_join(lanes[t].tail, NULL);
        ops += lanes[t].ops;
        threads += lanes[t].threads;
        failed |= lanes[t].failed;
        for (uint64_t k = 0; k < chunks; k++) free(lanes[t].blk[k]);
        free(lanes[t].blk);
    }
    free(lanes);
    if (failed) { fprintf(stderr, "larson: allocation or thread creation failed\n"); return 1; }
    if (el <= 0) el = 1e-9;
    printf("larson: threads=%llu sizes=%llu..%llu chunks=%llu rounds=%llu seed=%llu "
           "threads_created=%llu time=%.3fs\n",
           (unsigned long long)nthr, (unsigned long long)mn, (unsigned long long)mx,
           (unsigned long long)chunks, (unsigned long long)rounds,
           (unsigned long long)seed, (unsigned long long)threads, el);
    printf("Throughput = %llu ops/s (malloc+free pairs)\n", (unsigned long long)(ops / el));
    return 0;
usage:
    fprintf(stderr, "usage: %s [SECONDS MIN_SIZE MAX_SIZE CHUNKS_PER_THREAD ROUNDS SEED THREADS]\n"
            "  defaults: 2 8 1024 1000 10000 42 2\n", argv[0]);
    return 2;
}
