/* The decay time adapts to the program (docs/OPTIONS.md, HAKMEM_DECAY_MS):
 * memory purged by decay and taken back soon after makes it longer, up to
 * 4 times HAKMEM_DECAY_MS, so a program that pauses between uses of the
 * same memory stops paying for page faults; memory freed for good goes back
 * after HAKMEM_DECAY_MS; and after a calm period the decay time comes back
 * down.
 *
 * Re-executes itself with HAKMEM_DECAY_MS=40 (so the longest is 160 ms and
 * the calm period 8 x 160 ms).  A 48 MiB block, too large for the large
 * cache, goes straight back to the extents when freed:
 *   growth     first (with less than 16 MiB held: no purger, decay runs
 *              in the extents' operations) an 8 MiB block, placed at the
 *              top of the free range, written and freed; 100 ms later 5
 *              blocks of 3 MiB, written and kept, take memory never used
 *              below it (the first one's allocation purges it): not a
 *              take-back, no lengthening (a purge noted as the whole
 *              range, its fresh part too, made them count);
 *   for good   freed, then nothing for 300 ms: purged, no lengthening;
 *   cycles     allocated (4 MiB written), freed, 100 ms of sleep, 12 times:
 *              the first cycles find it purged and double the decay time
 *              to 160 ms, after which the pauses no longer purge it (old
 *              code: purged on every cycle);
 *   steady     16 more cycles, past a calm period since the decay time
 *              last changed: with nothing purged in that time it stays at
 *              160 ms (old code: halved, so the next pause purged the
 *              block again and the decay time had to double once more);
 *   calm       2.86 s with nothing taken back (two calm periods, while
 *              the purger sleeps once it has purged the block), one more
 *              cycle: halved once for each period, back to 40 ms (old
 *              code: once in all, as the purger slept through the
 *              periods).
 * SPDX-License-Identifier: MIT */
#include "testutil.h"

#define DECAY_MS "40"
#define BLOCK (48 * MiB)
#define TOUCHED (4 * MiB)
#define GAP_MS 100
#define CYCLES 12
#define STEADY_CYCLES 16

static void cycle(unsigned char fill)
{
    unsigned char *p = malloc(BLOCK);
    CHECK(p != NULL, "malloc(%zu) failed", (size_t)BLOCK);
    if (!p)
        return;
    memset(p, fill, TOUCHED);
    p[BLOCK - 1] = fill;
    free(tu_launder(p)); /* (the writes are kept) */
}

int main(int argc, char **argv)
{
    tu_run_with_option("HAKMEM_DECAY_MS", DECAY_MS, argv);
    if (tu_failures())
        return TU_DONE();
    alarm(60);
    long base = atol(DECAY_MS);

    /* growth */
    unsigned char *x = malloc(8 * MiB);
    CHECK(x != NULL, "malloc(8 MiB) failed");
    if (x)
        memset(x, 7, 8 * MiB);
    free(tu_launder(x));
    tu_sleep_ms(100);
    unsigned char *kept[5];
    for (int i = 0; i < 5; i++) {
        kept[i] = malloc(3 * MiB);
        CHECK(kept[i] != NULL, "malloc(3 MiB) failed");
        if (kept[i])
            memset(kept[i], i, 3 * MiB);
    }
    struct hak_stats st = tu_stats();
    CHECK(st.bytes_purged >= 8 * MiB, "the 8 MiB block was not purged (%llu bytes purged)",
          (unsigned long long)st.bytes_purged);
    CHECK(st.decay_lengthened == 0, "decay time lengthened %llu times (now %llu ms) by blocks "
          "of memory never used before", (unsigned long long)st.decay_lengthened,
          (unsigned long long)st.decay_ms);
    for (int i = 0; i < 5; i++)
        free(tu_launder(kept[i]));
    tu_sleep_ms(300); /* their purges are out of the window too */

    /* for good */
    cycle(1);
    uint64_t purged0 = tu_stats().bytes_purged;
    cycle(2);
    tu_sleep_ms(300);
    st = tu_stats();
    CHECK(st.bytes_purged >= purged0 + TOUCHED, "a block freed 300 ms ago was not purged "
          "(%llu bytes purged, %llu before)", (unsigned long long)st.bytes_purged,
          (unsigned long long)purged0);
    CHECK(st.decay_lengthened == 0 && st.decay_ms == (uint64_t)base,
          "decay time %llu ms (lengthened %llu times) with nothing taken back, expected %ld",
          (unsigned long long)st.decay_ms, (unsigned long long)st.decay_lengthened, base);

    /* cycles */
    uint64_t purged_at[CYCLES];
    for (int c = 0; c < CYCLES; c++) {
        cycle((unsigned char)(3 + c));
        tu_sleep_ms(GAP_MS);
        purged_at[c] = tu_stats().bytes_purged;
    }
    st = tu_stats();
    printf("cycles of %d ms: decay time %llu ms, lengthened %llu times; purged in each cycle:",
           GAP_MS, (unsigned long long)st.decay_ms, (unsigned long long)st.decay_lengthened);
    int late_purges = 0;
    for (int c = 1; c < CYCLES; c++) {
        printf(" %llu", (unsigned long long)((purged_at[c] - purged_at[c - 1]) >> 20));
        late_purges += c >= CYCLES - 6 && purged_at[c] > purged_at[c - 1];
    }
    printf(" MiB\n");
    CHECK(st.decay_ms == 4 * (uint64_t)base && st.decay_lengthened == 2,
          "decay time %llu ms, lengthened %llu times, after %d cycles taking back what the "
          "last purged (expected %ld ms, twice)", (unsigned long long)st.decay_ms,
          (unsigned long long)st.decay_lengthened, CYCLES, 4 * base);
    /* (one may still be purged if a sleep overran by 60 ms on a busy machine) */
    CHECK(late_purges <= 1, "the block was purged in %d of the last 6 pauses of %d ms, with "
          "a decay time of %llu ms", late_purges, GAP_MS, (unsigned long long)st.decay_ms);

    /* steady */
    uint64_t purged0_steady = tu_stats().bytes_purged, purged_steady = purged0_steady;
    int steady_purges = 0;
    for (int c = 0; c < STEADY_CYCLES; c++) {
        cycle((unsigned char)(20 + c));
        tu_sleep_ms(GAP_MS);
        uint64_t now_purged = tu_stats().bytes_purged;
        steady_purges += now_purged > purged_steady;
        purged_steady = now_purged;
    }
    st = tu_stats();
    CHECK(st.decay_ms == 4 * (uint64_t)base && st.decay_lengthened == 2,
          "decay time %llu ms, lengthened %llu times, after %d more cycles that decay did "
          "not purge (expected %ld ms, twice in all)", (unsigned long long)st.decay_ms,
          (unsigned long long)st.decay_lengthened, STEADY_CYCLES, 4 * base);
    CHECK(steady_purges <= 1, "the block was purged in %d of %d pauses of %d ms after the "
          "decay time had lengthened to %ld ms", steady_purges, STEADY_CYCLES, GAP_MS, 4 * base);

    /* calm */
    tu_sleep_ms(2 * 8 * 4 * base + 300);
    cycle(99);
    tu_sleep_ms(20);
    st = tu_stats();
    CHECK(st.decay_ms == (uint64_t)base, "decay time %llu ms after %ld ms with nothing taken "
          "back (two calm periods), expected %ld", (unsigned long long)st.decay_ms,
          2 * 8 * 4 * base + 300, base);
    return TU_DONE();
}
