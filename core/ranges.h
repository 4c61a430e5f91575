/* The index of free address ranges inside hakmem's reservations
 * (ranges.c), used by extent.c under its lock.
 *
 * Every operation is O(1) expected or O(log n) at worst in the number of
 * free ranges: a range is found by its start or its end through two hash
 * tables (coalescing a freed range with its neighbours), and by size
 * through size bins (placement), one set of bins for resident ("dirty")
 * ranges and one for purged ones, with a bitmap of the non-empty bins.
 * The range records live in memory of their own from the OS, never in the
 * free ranges themselves (those may be purged, and writing to them would
 * fault their pages back in).
 * SPDX-License-Identifier: MIT */
#ifndef HAK_RANGES_H
#define HAK_RANGES_H

#include "internal.h"

typedef struct FreeRange {
    uintptr_t start;
    size_t    len;
    uint64_t  dirty_since;  /* ms timestamp: its resident bytes' mean time */
                            /* of freeing (see range_insert); 0 = purged   */
    uint64_t  oldest;       /* the earliest of those times (0 = purged)    */
    size_t    dirty;        /* bytes of it that may be resident (<= len)   */
    uintptr_t dirty_lo, dirty_hi; /* its dirty bytes lie in [lo, hi) (none: */
                            /* [UINTPTR_MAX, 0)): see range_dirty_in       */
    struct FreeRange *bin_next, *bin_prev;    /* its size bin              */
    struct FreeRange *dirty_next, *dirty_prev;/* all dirty ranges          */
    struct FreeRange *start_next, *end_next;  /* hash chains               */
    uint16_t  bin;          /* its bin: kind * NBINS + size bin (ranges.c) */
    uint8_t   hot;          /* RANGE_HOT_LO/_HI: its first/last page was in */
                            /* use when it became free (see range_find_fit) */
} FreeRange;

/* Byte counts of all free ranges (read under the extent lock). */
extern HAK_HIDDEN size_t range_bytes_free, range_bytes_dirty, range_bytes_purged;

/* Add a free range, merged with the free ranges that end where it starts
 * and start where it ends, unless a reservation boundary lies between
 * (extent_reservation_edge).  False if no record could be had (out of
 * memory): the caller then loses the range. */
/* hot: which of the range's end pages were a freed extent's (its header,
 * its tail), so resident; a merge keeps the outer ends' flags, a split
 * loses the flag of the end it cuts. */
#define RANGE_HOT_LO 1
#define RANGE_HOT_HI 2
/* part_of: the free range that [start, start + len) was carved from (its
 * dirty bytes can only be where part_of's were), or NULL for a freed
 * extent (dirty throughout) or memory that reads as zero. */
bool range_insert(uintptr_t start, size_t len, uint64_t dirty_since, size_t dirty, unsigned hot,
                  const FreeRange *part_of);
void range_remove(FreeRange *r);
/* r shrinks to [start, start + len) (inside it), with dirty of its
 * resident bytes and the age since (range_since_after); its dirty bytes'
 * bounds shrink with it. */
void range_trim(FreeRange *r, uintptr_t start, size_t len, size_t dirty, uint64_t since);
/* r's age (dirty_since) once an extent is carved from it that leaves
 * dirty_left of its resident bytes: the extent is taken to have had the
 * youngest of them, and what is left ages accordingly, up to r's oldest;
 * latest: when any free range last became dirty (>= every dirty_since). */
uint64_t range_since_aged(const FreeRange *r, size_t dirty_left, uint64_t latest);
static inline uint64_t range_since_after(const FreeRange *r, size_t dirty_left, uint64_t latest)
{
    if (r->oldest == r->dirty_since || dirty_left < HAK_PAGE_SIZE || dirty_left >= r->dirty ||
        latest <= r->dirty_since)
        return r->dirty_since; /* all of one age, or nothing left to age */
    return range_since_aged(r, dirty_left, latest);
}
/* A range that holds len bytes at an address a with (a + offset) a multiple
 * of align, resident ones first, each time the smallest size bin that has
 * one (sizes in a bin are at most 19% apart): in the request's own bin the
 * smallest of the first RANGE_SCAN_MAX that fit, in a bin above the first
 * that fits; *at is where the extent goes in it: big extents at the top,
 * the others at the bottom, except against the range's only hot end when
 * what is left over is at most half the extent. */
FreeRange *range_find_fit(size_t len, size_t align, size_t offset, uintptr_t *at);
FreeRange *range_starting_at(uintptr_t start);
/* madvise a dirty range away; it stays in the index, clean. */
bool range_purge(FreeRange *r);
/* The dirty ranges, the most recently made dirty (freed, or merged
 * with a freed range; a split keeps its place)
 * first: ranges_dirty() then ->dirty_next; the least recent is
 * ranges_dirty_oldest(), then ->dirty_prev. */
FreeRange *ranges_dirty(void);
FreeRange *ranges_dirty_oldest(void);
/* The resident bytes of [start, end), a part of r: as many as r's dirty
 * bounds hold there, no more than r has (the caller takes them off r's
 * count before charging the next part).  Where the bounds are exact (r's
 * count fills them: a freed extent, one merged with purged memory, what a
 * carve leaves of those) so is the charge, and a range that a program
 * keeps taking a block from and giving it back counts only what it gives
 * back.  Charged as much as it could hold (until 2026-12-07), a part left
 * by a carve kept the block's bytes, so every round added a block's worth
 * of bytes that were not there, older and older, until decay purged
 * memory the program was still using (a loop of 1 MiB blocks pausing
 * 400 ms lost them every 1.2 s). */
static inline size_t range_dirty_in(const FreeRange *r, uintptr_t start, uintptr_t end)
{
    uintptr_t lo = r->dirty_lo > start ? r->dirty_lo : start, hi = r->dirty_hi < end ? r->dirty_hi : end;
    size_t in = hi > lo ? hi - lo : 0, d = r->dirty;
    return d < in ? d : in;
}
/* Are r's dirty bounds exact (every byte in them counted dirty)? */
static inline bool range_dirty_exact(const FreeRange *r)
{
    return r->dirty && r->dirty == r->dirty_hi - r->dirty_lo; /* (none: never) */
}

#ifdef HAK_DEBUG
void ranges_validate(void);
#endif

/* Is addr the start of a reservation (no merging across it)?  Those start
 * 2 MiB-aligned: other addresses are answered here, the rest by extent.c. */
bool extent_reservation_starts_at(uintptr_t addr);
static inline bool extent_reservation_edge(uintptr_t addr)
{
    return !(addr & (HAK_CHUNK_SIZE - 1)) && extent_reservation_starts_at(addr);
}

#endif
