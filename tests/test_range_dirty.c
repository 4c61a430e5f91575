/* The extents count the resident ("dirty") bytes of a free range that a
 * program keeps taking a block from and giving it back: the count stays
 * what was given back, and does not grow by the block's size every time.
 *
 * Counted as if they could lie anywhere in the range, each carve left the
 * freed block's bytes to what remained of the range, so every round added
 * a block's worth of bytes that were not there (up to the range's whole
 * length), older and older: decay, which purges a range once its dirty
 * bytes' mean age passes the decay time, then purged the memory the
 * program was still using in every pause (docs/ARCHITECTURE.md, "Where a
 * free range's resident bytes are").
 *
 * Re-executes itself with HAKMEM_DECAY_MS=3600000, so that nothing is
 * purged by time and the count is what the test reads.  A 6 MiB block
 * (too large for the large cache: its extent goes straight back to the
 * extents, at the top of its free range) is allocated, written whole and
 * freed, ROUNDS times.
 * SPDX-License-Identifier: MIT */
#include "testutil.h"

#define BLOCK  (6 * MiB)
#define ROUNDS 8

int main(int argc, char **argv)
{
    tu_run_with_option("HAKMEM_DECAY_MS", "3600000", argv);
    if (tu_failures())
        return TU_DONE();
    /* everything else this process holds, first (stdio's buffer, the
     * first SuperSlab) */
    printf("%s: %d rounds of a %zu MiB block\n", argv[0], ROUNDS, (size_t)BLOCK >> 20);
    free(tu_launder(malloc(64)));
    uint64_t base = tu_stats().bytes_dirty;
    for (int r = 0; r < ROUNDS; r++) {
        unsigned char *p = malloc(BLOCK);
        CHECK(p != NULL, "malloc(%zu) failed", (size_t)BLOCK);
        if (!p)
            break;
        memset(p, r + 1, BLOCK);
        free(tu_launder(p)); /* (the writes are kept) */
        uint64_t dirty = tu_stats().bytes_dirty - base;
        /* the block's extent is its size and a page or two of header */
        CHECK(dirty >= BLOCK && dirty <= BLOCK + 1 * MiB,
              "round %d: %llu KiB of free memory counted resident, %zu KiB freed", r,
              (unsigned long long)(dirty >> 10), (size_t)BLOCK >> 10);
    }
    return TU_DONE();
}
