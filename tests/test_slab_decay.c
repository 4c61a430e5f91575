/* Free slabs inside SuperSlabs still in use go back to the OS after the
 * decay time, while their heap's thread runs (docs/ARCHITECTURE.md, "Free
 * slabs"): a server that drops most of its small objects keeps a few
 * long-lived ones in every SuperSlab, and before, the slabs between them
 * stayed resident until malloc_trim (redis after FLUSHALL: 19 MiB).
 *
 * Re-executes itself with HAKMEM_DECAY_MS=40.
 *   idle     the main thread fills 16 SuperSlabs with 256-byte blocks,
 *            written whole, frees all but one block in 8,192 (about one a
 *            SuperSlab), and does nothing for 400 ms: the free slabs are
 *            counted, then purged (slab_bytes_purged), and the RSS drops;
 *            the kept blocks keep their contents; new blocks in the purged
 *            slabs work;
 *   busy     the same again, but the thread frees and takes back 256
 *            blocks of 16 KiB every 5 ms meanwhile, which empties and
 *            releases a span each time: the SuperSlabs it does not use
 *            are purged all the same (when the purger watched the heap as
 *            a whole, none was);
 *   churn    two threads each take 5 MiB of blocks, write and check them,
 *            free them and pause 60 ms (longer than the decay time), 25
 *            times, so that the purger purges a running heap's free slabs
 *            between rounds, and takes its lock while the thread takes
 *            and gives back spans: every block must read back what was
 *            written into it.
 * SPDX-License-Identifier: MIT */
#include "testutil.h"

#define BLOCK   256
#define NBLOCKS (16 * 8192)
#define KEEP    8192
#define CHURN_BLOCKS (5 * 4096)
#define ROUNDS  25
#define BUSY_BLOCKS 256 /* of 16 KiB: more than the front keeps */

static unsigned char *blocks[NBLOCKS];

static void *churn(void *arg)
{
    uint64_t seed = (uintptr_t)arg;
    unsigned char **b = malloc(CHURN_BLOCKS * sizeof *b);
    CHECK(b != NULL, "malloc of the churn table failed");
    if (!b)
        return NULL;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < CHURN_BLOCKS; i++) {
            b[i] = malloc(BLOCK);
            CHECK(b[i] != NULL, "churn malloc failed");
            if (b[i])
                tu_fill(b[i], BLOCK, seed + (uint64_t)r * CHURN_BLOCKS + (uint64_t)i);
        }
        size_t bad = 0;
        for (int i = 0; i < CHURN_BLOCKS; i++) {
            if (b[i])
                bad += tu_verify(b[i], BLOCK, seed + (uint64_t)r * CHURN_BLOCKS + (uint64_t)i) != (size_t)-1;
            free(b[i]);
        }
        CHECK(bad == 0, "round %d: %zu of %d blocks did not read back what was written", r, bad,
              CHURN_BLOCKS);
        tu_sleep_ms(60);
    }
    free(b);
    return NULL;
}

int main(int argc, char **argv)
{
    tu_run_with_option("HAKMEM_DECAY_MS", "40", argv);
    if (tu_failures())
        return TU_DONE();
    alarm(60);

    /* idle */
    for (int i = 0; i < NBLOCKS; i++) {
        blocks[i] = malloc(BLOCK);
        CHECK(blocks[i] != NULL, "malloc(%d) failed", BLOCK);
        if (blocks[i])
            tu_fill(blocks[i], BLOCK, (uint64_t)i);
    }
    for (int i = 0; i < NBLOCKS; i++)
        if (i % KEEP) {
            free(blocks[i]);
            blocks[i] = NULL;
        }
    struct hak_stats before = tu_stats();
    size_t rss_before = tu_rss_bytes();
    tu_sleep_ms(400);
    struct hak_stats after = tu_stats();
    size_t rss_after = tu_rss_bytes();
    printf("free slabs: %llu KiB counted, then %llu KiB; %llu KiB purged; RSS %zu -> %zu KiB\n",
           (unsigned long long)(before.slab_bytes_dirty >> 10),
           (unsigned long long)(after.slab_bytes_dirty >> 10),
           (unsigned long long)((after.slab_bytes_purged - before.slab_bytes_purged) >> 10),
           rss_before >> 10, rss_after >> 10);
    CHECK(before.slab_bytes_dirty >= 16 * MiB, "only %llu KiB of free slabs counted after freeing "
          "%zu MiB of blocks", (unsigned long long)(before.slab_bytes_dirty >> 10),
          (size_t)NBLOCKS * BLOCK >> 20);
    CHECK(after.slab_bytes_purged - before.slab_bytes_purged >= 16 * MiB,
          "%llu KiB of free slabs purged in 400 ms with a decay time of 40 ms",
          (unsigned long long)((after.slab_bytes_purged - before.slab_bytes_purged) >> 10));
    CHECK(rss_after + 12 * MiB <= rss_before, "RSS %zu KiB before and %zu KiB after the free slabs' "
          "decay", rss_before >> 10, rss_after >> 10);
    size_t bad = 0;
    for (int i = 0; i < NBLOCKS; i += KEEP)
        if (blocks[i])
            bad += tu_verify(blocks[i], BLOCK, (uint64_t)i) != (size_t)-1;
    CHECK(bad == 0, "%zu kept blocks lost their contents", bad);
    for (int i = 0; i < NBLOCKS; i++)
        if (!blocks[i]) {
            blocks[i] = malloc(BLOCK);
            CHECK(blocks[i] != NULL, "malloc(%d) failed", BLOCK);
            if (blocks[i])
                tu_fill(blocks[i], BLOCK, (uint64_t)i);
        }
    bad = 0;
    for (int i = 0; i < NBLOCKS; i++) {
        if (blocks[i])
            bad += tu_verify(blocks[i], BLOCK, (uint64_t)i) != (size_t)-1;
        free(blocks[i]);
    }
    CHECK(bad == 0, "%zu blocks in purged slabs did not read back what was written", bad);

    /* busy */
    for (int i = 0; i < NBLOCKS; i++) {
        blocks[i] = malloc(BLOCK);
        CHECK(blocks[i] != NULL, "malloc(%d) failed", BLOCK);
        if (blocks[i])
            memset(blocks[i], 1, BLOCK);
    }
    for (int i = 0; i < NBLOCKS; i++)
        if (i % KEEP) {
            free(tu_launder(blocks[i]));
            blocks[i] = NULL;
        }
    struct hak_stats busy0 = tu_stats();
    for (double t0 = tu_now(); tu_now() - t0 < 0.4;) {
        void *mid[BUSY_BLOCKS];
        for (int i = 0; i < BUSY_BLOCKS; i++)
            mid[i] = malloc(16 * KiB);
        for (int i = 0; i < BUSY_BLOCKS; i++)
            free(tu_launder(mid[i]));
        tu_sleep_ms(5);
    }
    struct hak_stats busy1 = tu_stats();
    printf("busy: %llu KiB of free slabs purged while the thread released spans\n",
           (unsigned long long)((busy1.slab_bytes_purged - busy0.slab_bytes_purged) >> 10));
    CHECK(busy1.slab_bytes_purged - busy0.slab_bytes_purged >= 12 * MiB,
          "%llu KiB of free slabs purged in 400 ms while the thread released a span every 5 ms",
          (unsigned long long)((busy1.slab_bytes_purged - busy0.slab_bytes_purged) >> 10));
    for (int i = 0; i < NBLOCKS; i += KEEP)
        free(blocks[i]);
    struct hak_stats after_busy = tu_stats();

    /* churn */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, churn, (void *)(uintptr_t)1000000) == 0, "pthread_create failed");
    churn((void *)(uintptr_t)2000000);
    pthread_join(t, NULL);
    struct hak_stats end = tu_stats();
    printf("churn: %llu KiB of free slabs purged in all\n",
           (unsigned long long)((end.slab_bytes_purged - after_busy.slab_bytes_purged) >> 10));
    CHECK(end.slab_bytes_purged > after_busy.slab_bytes_purged,
          "no free slab was purged in %d pauses of 60 ms", ROUNDS);
    return TU_DONE();
}
