/* Heavy fragmentation of the large tier, then everything freed and
 * malloc_trim(0), in rounds: with nothing live after each round, the
 * address space hakmem keeps reserved (hak_stats_get().bytes_mapped) must
 * not grow from round to round.
 *
 * Each round allocates BLOCKS large blocks of 64..256 KiB (random), frees
 * every other one (BLOCKS/2 separate holes: more free ranges than a fixed
 * table of 16,384 could hold), checks and frees the rest, and trims.  A
 * free range that is forgotten instead of being kept (or merged) leaves a
 * hole that can never be coalesced or unmapped, so each round would need
 * fresh address space.  Only the first page of each block is touched (RSS
 * stays ~160 MiB for ~6 GiB of address space); one block in 16 is
 * patterned on its first and last 4 KiB and verified before it is freed.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include "testutil.h"

enum { BLOCKS = 40000, ROUNDS = 6, SAMPLE_EVERY = 16, PAT = 4096 };

static unsigned char *blk[BLOCKS];
static size_t len[BLOCKS];

static void mark(int i, uint64_t seed)
{
    unsigned char *p = blk[i];
    memcpy(p, &seed, sizeof seed);
    memcpy(p + 8, &i, sizeof i);
    if (i % SAMPLE_EVERY == 0) {
        tu_fill(p + 16, PAT - 16, seed + (uint64_t)i);
        tu_fill(p + len[i] - PAT, PAT, seed + (uint64_t)i + 1);
    }
}

static int check(int i, uint64_t seed)
{
    unsigned char *p = blk[i];
    uint64_t s;
    int k;
    memcpy(&s, p, sizeof s);
    memcpy(&k, p + 8, sizeof k);
    if (s != seed || k != i)
        return 0;
    if (i % SAMPLE_EVERY == 0 &&
        (tu_verify(p + 16, PAT - 16, seed + (uint64_t)i) != TU_OK ||
         tu_verify(p + len[i] - PAT, PAT, seed + (uint64_t)i + 1) != TU_OK))
        return 0;
    return 1;
}

int main(void)
{
    alarm(240);
    uint64_t mapped[ROUNDS] = { 0 };
    int done = 0;
    tu_rng r = tu_rng_seed(77);
    for (int round = 0; round < ROUNDS; round++) {
        uint64_t seed = 0x5eed0000ull + (uint64_t)round;
        int n = 0;
        for (; n < BLOCKS; n++) {
            len[n] = tu_range(&r, 64 << 10, 256 << 10);
            blk[n] = malloc(len[n]);
            CHECK(blk[n] != NULL, "round %d: malloc(%zu) #%d failed", round, len[n], n);
            if (!blk[n]) break;
            mark(n, seed);
        }
        size_t bad = 0;
        for (int i = 0; i < n; i += 2) { /* fragment: free every other one */
            bad += !check(i, seed);
            free(blk[i]);
        }
        for (int i = 1; i < n; i += 2) {
            bad += !check(i, seed);
            free(blk[i]);
        }
        CHECK(bad == 0, "round %d: %zu of %d blocks lost their contents", round, bad, n);
        malloc_trim(0);
        struct hak_stats s = tu_stats();
        mapped[round] = s.bytes_mapped;
        done = round + 1;
        CHECK(s.large_bytes_in_use == 0, "round %d: large_bytes_in_use %llu with no block live",
              round, (unsigned long long)s.large_bytes_in_use);
        if (tu_failures() > 5)
            break;
    }
    /* Round 1 may keep what round 0 needed; after that, nothing grows. */
    char traj[256];
    size_t tl = 0;
    for (int i = 0; i < done; i++)
        tl += (size_t)snprintf(traj + tl, sizeof traj - tl, " %llu",
                               (unsigned long long)(mapped[i] >> 20));
    CHECK(done == ROUNDS, "only %d of %d rounds ran", done, ROUNDS);
    CHECK(done < 2 || mapped[done - 1] <= mapped[1] + 64 * MiB,
          "bytes_mapped grew from %llu MiB after round 1 to %llu MiB after round %d with "
          "nothing live (MiB per round:%s): freed address space is lost",
          (unsigned long long)(mapped[1] >> 20),
          (unsigned long long)(mapped[done ? done - 1 : 0] >> 20), done - 1, traj);
    /* hakmem still serves every tier */
    void *p = malloc(100), *q = malloc(20000), *b = malloc(3 * MiB);
    CHECK(p && q && b, "malloc after the rounds");
    free(p);
    free(q);
    free(b);
    return TU_DONE();
}
