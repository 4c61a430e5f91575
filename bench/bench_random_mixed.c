/* bench_random_mixed: single-thread small-object churn.
 *
 * usage: bench_random_mixed CYCLES WS SEED
 *
 * A table of WS slots; each cycle draws r, picks slot r % WS and either frees
 * it (if occupied) or allocates 16 + (r & 0x3FF) bytes (16..1039) and writes
 * to it.  One "op" is one malloc or one free.  Only malloc/free are called, so
 * the same binary measures any allocator via LD_PRELOAD. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

int main(int argc, char **argv)
{
    uint64_t cycles, ws, seed;
    if (argc != 4 || parse_u64(argv[1], 1, &cycles) || parse_u64(argv[2], 1, &ws) ||
        parse_u64(argv[3], 0, &seed)) {
        fprintf(stderr, "usage: %s CYCLES WS SEED   (CYCLES>=1, WS>=1)\n", argv[0]);
        return 2;
    }
    void **slot = calloc(ws, sizeof *slot);      /* bookkeeping, not measured */
    if (!slot) { perror("calloc"); return 1; }
    uint64_t s = rng_seed(seed);

    double t0 = now_s();
    for (uint64_t i = 0; i < cycles; i++) {
        uint64_t r = rng_next(&s);
        uint64_t k = r % ws;
        if (!slot_free(&slot[k])) {
            size_t sz = 16 + (r & 0x3FF);
            unsigned char *p = malloc(sz);
            if (!p) { fprintf(stderr, "malloc(%zu) failed\n", sz); return 1; }
            p[0] = (unsigned char)r;                  /* touch both ends */
            p[sz - 1] = (unsigned char)(r >> 8);
            slot[k] = p;
        }
    }
    double t = now_s() - t0;

    for (uint64_t k = 0; k < ws; k++) free(slot[k]);
    free(slot);
    if (t <= 0) t = 1e-9;
    printf("Throughput = %llu ops/s [iter=%llu ws=%llu] time=%.3fs\n",
           (unsigned long long)(cycles / t), (unsigned long long)cycles,
           (unsigned long long)ws, t);
    return 0;
}
