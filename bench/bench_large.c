/* bench_large: large-block churn (64 KiB .. 32 MiB), the mmap-backed range.
 *
 * usage: bench_large [ITERS WS SEED]     defaults (no arguments): 2000 8 42
 *
 * A small working set of WS slots; each iteration picks slot r % WS, frees it
 * if occupied, else mallocs a block and writes one byte to every 4 KiB page
 * (so the pages are really faulted in, as a real user of the memory would).
 * Sizes are log-uniform: size = 2^(16 + 9u) for u uniform in [0,1), i.e.
 * each power-of-two octave between 64 KiB and 32 MiB is equally likely, and
 * the result is rounded down to a multiple of 16 bytes.
 *
 * One op = one malloc or one free.  Page touching is part of the timed loop
 * (it is what makes fresh-mmap vs reused memory visible). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"

int main(int argc, char **argv)
{
    uint64_t iters = 2000, ws = 8, seed = 42;
    if (argc != 1 && (argc != 4 || parse_u64(argv[1], 1, &iters) ||
                      parse_u64(argv[2], 1, &ws) || parse_u64(argv[3], 0, &seed))) {
        fprintf(stderr, "usage: %s [ITERS WS SEED]   (defaults 2000 8 42)\n", argv[0]);
        return 2;
    }
    void **slot = calloc(ws, sizeof *slot);
    if (!slot) { perror("calloc"); return 1; }
    uint64_t s = rng_seed(seed);
    uint64_t bytes = 0;

    double t0 = now_s();
    for (uint64_t i = 0; i < iters; i++) {
        uint64_t r = rng_next(&s);
        uint64_t k = r % ws;
        if (slot_free(&slot[k]))
            continue;
        double u = (double)(rng_next(&s) >> 11) * (1.0 / 9007199254740992.0);
        size_t sz = (size_t)exp2(16.0 + 9.0 * u) & ~(size_t)15;
        unsigned char *p = malloc(sz);
        if (!p) { fprintf(stderr, "malloc(%zu) failed\n", sz); return 1; }
        for (size_t off = 0; off < sz; off += 4096)
            p[off] = (unsigned char)off;
        p[sz - 1] = 1;
        slot[k] = p;
        bytes += sz;
    }
    double t = now_s() - t0;

    for (uint64_t k = 0; k < ws; k++) free(slot[k]);
    free(slot);
    if (t <= 0) t = 1e-9;
    printf("bench_large: iters=%llu ws=%llu allocated=%.1f MiB time=%.3fs\n",
           (unsigned long long)iters, (unsigned long long)ws, bytes / 1048576.0, t);
    printf("Throughput = %llu ops/s\n", (unsigned long long)(iters / t));
    return 0;
}
