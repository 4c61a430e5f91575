/* bench_fragment: fragmentation / RSS workload with mixed lifetimes.
 *
 * usage: bench_fragment ROUNDS SEED
 *
 * Each round:
 *   A. allocate NBATCH blocks, 3 in 4 small (16..512 B) and 1 in 4 medium
 *      (1..16 KiB).  About 1 in 16 becomes a long-lived survivor kept in a
 *      bounded pool (a full pool evicts a random old survivor), the rest are
 *      short-lived.
 *   B. free 90% of the short-lived blocks in random order (Fisher-Yates),
 *      the other 10% live on until the next round: this leaves scattered
 *      holes in the pages the allocator used.
 *   C. allocate NSHIFT blocks of *different* sizes (600..2600 B and
 *      20..64 KiB) that fit the holes badly; they live until the next round.
 * At the end everything is freed and the process reports its peak RSS
 * (getrusage ru_maxrss), its RSS just before the final frees, and its RSS
 * after them (/proc/self/statm), which shows how much the allocator keeps.
 *
 * One op = one malloc or one free. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

#define NBATCH   40000
#define NSHIFT   8000
#define NSURV    8192

static long rss_now_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size, res;
    if (!f) return -1;
    int n = fscanf(f, "%ld %ld", &size, &res);
    fclose(f);
    return n == 2 ? res * (sysconf(_SC_PAGESIZE) / 1024) : -1;
}

static uint64_t g_ops;
static int g_fail;

static void *xmalloc(size_t sz, uint64_t tag)
{
    unsigned char *p = malloc(sz);
    if (!p) { g_fail = 1; return NULL; }
    memset(p, (int)(tag & 0xFF), sz < 64 ? sz : 64);   /* small prefix */
    p[sz - 1] = (unsigned char)tag;
    g_ops++;
    return p;
}

static void xfree(void *p)
{
    if (p) { free(p); g_ops++; }
}

int main(int argc, char **argv)
{
    uint64_t rounds, seed;
    if (argc != 3 || parse_u64(argv[1], 1, &rounds) || parse_u64(argv[2], 0, &seed)) {
        fprintf(stderr, "usage: %s ROUNDS SEED   (ROUNDS>=1)\n", argv[0]);
        return 2;
    }
    uint64_t s = rng_seed(seed);
    /* bookkeeping arrays allocated up front (they count towards RSS equally
     * for every allocator) */
    void **surv = calloc(NSURV, sizeof(void *));
    void **shortl = calloc(NBATCH, sizeof(void *));
    void **keep = calloc(NBATCH, sizeof(void *));     /* 10% kept to next round */
    void **shift = calloc(NSHIFT, sizeof(void *));
    if (!surv || !shortl || !keep || !shift) { perror("calloc"); return 1; }
    size_t nkeep = 0;

    double t0 = now_s();
    for (uint64_t round = 0; round < rounds && !g_fail; round++) {
        /* previous round's leftovers die now */
        for (size_t i = 0; i < nkeep; i++) xfree(keep[i]);
        nkeep = 0;
        for (size_t i = 0; i < NSHIFT; i++) { xfree(shift[i]); shift[i] = NULL; }

        /* A: mixed small/medium allocation, some survivors */
        size_t nshort = 0;
        for (size_t i = 0; i < NBATCH; i++) {
            uint64_t r = rng_next(&s);
            size_t sz = (r & 3) ? 16 + (r >> 8) % 497 : 1024 + (r >> 8) % (15 * 1024 + 1);
            void *p = xmalloc(sz, r);
            if (!p) break;
            if (((r >> 32) & 15) == 0) {
                size_t k = (r >> 40) % NSURV;
                xfree(surv[k]);                         /* evict old survivor */
                surv[k] = p;
            } else {
                shortl[nshort++] = p;
            }
        }
        /* B: free 90% in random order, keep the rest */
        for (size_t i = nshort; i > 1; i--) {
            size_t j = rng_next(&s) % i;
            void *t = shortl[i - 1]; shortl[i - 1] = shortl[j]; shortl[j] = t;
        }
        size_t nfree = nshort - nshort / 10;
        for (size_t i = 0; i < nfree; i++) xfree(shortl[i]);
        for (size_t i = nfree; i < nshort; i++) keep[nkeep++] = shortl[i];

        /* C: different sizes into the holes */
        for (size_t i = 0; i < NSHIFT && !g_fail; i++) {
            uint64_t r = rng_next(&s);
            size_t sz = (r & 7) ? 600 + (r >> 8) % 2001 : 20 * 1024 + (r >> 8) % (44 * 1024 + 1);
            shift[i] = xmalloc(sz, r);
        }
    }
    long rss_live = rss_now_kb();
    for (size_t i = 0; i < nkeep; i++) xfree(keep[i]);
    for (size_t i = 0; i < NSHIFT; i++) xfree(shift[i]);
    for (size_t i = 0; i < NSURV; i++) xfree(surv[i]);
    double t = now_s() - t0;
    free(surv); free(shortl); free(keep); free(shift);
    if (g_fail) { fprintf(stderr, "bench_fragment: malloc failed\n"); return 1; }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (t <= 0) t = 1e-9;
    printf("bench_fragment: rounds=%llu ops=%llu time=%.3fs\n",
           (unsigned long long)rounds, (unsigned long long)g_ops, t);
    printf("RSS_live_kb = %ld\n", rss_live);
    printf("RSS_peak_kb = %ld\n", ru.ru_maxrss);
    printf("RSS_end_kb = %ld\n", rss_now_kb());
    printf("Throughput = %llu ops/s\n", (unsigned long long)(g_ops / t));
    return 0;
}
