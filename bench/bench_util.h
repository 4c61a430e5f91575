/* Helpers shared by the benchmarks: a deterministic PRNG, a monotonic
 * clock and strict argument parsing.  The benchmarks call only libc's
 * malloc family, so one binary serves every allocator via LD_PRELOAD.
 * SPDX-License-Identifier: MIT */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* xorshift64*: fast, deterministic for a given seed (which must not be 0). */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* A non-zero xorshift state from any seed. */
static inline uint64_t rng_seed(uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    return s ? s : 1;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The slot benchmarks (bench_random_mixed, bench_large): a table of ws
 * slots, each empty or holding a block.  slot_free frees the block of an
 * occupied slot and says so; an empty one is the caller's to fill. */
static inline int slot_free(void **slot)
{
    if (!*slot)
        return 0;
    free(*slot);
    *slot = NULL;
    return 1;
}

/* A decimal integer >= min, nothing else; 0 on success, -1 otherwise. */
static inline int parse_u64(const char *s, uint64_t min, uint64_t *out)
{
    char *end;
    if (!s || !*s || *s == '-') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || v < min) return -1;
    *out = v;
    return 0;
}

/* A block of a size uniform in [min, min + range), from malloc (exit on
 * failure), with one byte written every stride bytes and its last byte
 * (stride >= size: its first and last byte only). */
static inline unsigned char *bench_block(uint64_t *rng, uint64_t min, uint64_t range, size_t stride,
                                         const char *who)
{
    size_t sz = (size_t)(min + (range ? rng_next(rng) % range : 0));
    unsigned char *p = malloc(sz);
    if (!p) {
        fprintf(stderr, "%s: malloc(%zu) failed\n", who, sz);
        exit(1);
    }
    for (size_t off = 0; off < sz; off += stride)
        p[off] = 1;
    p[sz - 1] = 1;
    return p;
}

#endif
