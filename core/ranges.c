/* The index of free address ranges (see ranges.h).
 * SPDX-License-Identifier: MIT */
#include "os.h"
#include "ranges.h"

#include <string.h>

#define NBINS       128          /* 4 per power of two; the last one holds */
                                 /* every range of 2^31 pages and more    */
#define HASH_BITS0  10
#define POOL_BYTES  ((size_t)64 << 10)

size_t range_bytes_free, range_bytes_dirty, range_bytes_purged;

/* Bin b of kind (0 dirty, 1 purged) is slot kind * NBINS + b. */
static FreeRange *bins[2 * NBINS];
static uint64_t   nonempty[2 * NBINS / 64]; /* bit slot: bins[slot] is not empty */
static FreeRange *dirty_list, *dirty_tail; /* most recently made dirty first */
static FreeRange *initial_start_tab[1 << HASH_BITS0], *initial_end_tab[1 << HASH_BITS0];
static FreeRange **start_tab = initial_start_tab, **end_tab = initial_end_tab;
static unsigned   hash_shift = 64 - HASH_BITS0; /* the tables hold 2^(64 - shift) heads */
static inline size_t hash_size(void) { return (size_t)1 << (64 - hash_shift); }
static size_t     nranges;
static FreeRange  initial_pool[256];
static FreeRange *pool_free;
static bool       pool_ready;

/* ---- records ---- */
static FreeRange *node_get(void)
{
    if (!pool_ready) {
        for (size_t i = 0; i < sizeof initial_pool / sizeof *initial_pool; i++) {
            initial_pool[i].bin_next = pool_free;
            pool_free = &initial_pool[i];
        }
        pool_ready = true;
    }
    if (!pool_free) {
        FreeRange *blk = os_map_aligned(POOL_BYTES, HAK_PAGE_SIZE, false);
        if (!blk)
            return NULL;
        for (size_t i = 0; i < POOL_BYTES / sizeof *blk; i++) {
            blk[i].bin_next = pool_free;
            pool_free = &blk[i];
        }
    }
    FreeRange *r = pool_free;
    pool_free = r->bin_next;
    return r;
}

static void node_put(FreeRange *r)
{
    r->bin_next = pool_free;
    pool_free = r;
}

/* ---- hash tables by start and by end ---- */
static inline size_t hash(uintptr_t a)
{
    return (size_t)(((a >> HAK_PAGE_SHIFT) * 0x9E3779B97F4A7C15ull) >> hash_shift);
}

static void start_add(FreeRange *r)
{
    size_t h = hash(r->start);
    r->start_next = start_tab[h];
    start_tab[h] = r;
}

static void end_add(FreeRange *r)
{
    size_t h = hash(r->start + r->len);
    r->end_next = end_tab[h];
    end_tab[h] = r;
}

static void start_del(FreeRange *r)
{
    FreeRange **pp = &start_tab[hash(r->start)];
    while (*pp != r)
        pp = &(*pp)->start_next;
    *pp = r->start_next;
}

static void end_del(FreeRange *r)
{
    FreeRange **pp = &end_tab[hash(r->start + r->len)];
    while (*pp != r)
        pp = &(*pp)->end_next;
    *pp = r->end_next;
}

static void hash_add(FreeRange *r)
{
    start_add(r);
    end_add(r);
}

static void hash_del(FreeRange *r)
{
    start_del(r);
    end_del(r);
}

/* Twice as many buckets as ranges at most: double the tables (memory of
 * their own from the OS); keep the old ones if that fails. */
static void hash_grow(void)
{
    size_t on = hash_size(), n = 2 * on, bytes = align_up(n * sizeof(FreeRange *), HAK_PAGE_SIZE);
    FreeRange **st = os_map_aligned(bytes, HAK_PAGE_SIZE, false);
    FreeRange **et = st ? os_map_aligned(bytes, HAK_PAGE_SIZE, false) : NULL;
    if (!et) {
        if (st)
            os_unmap(st, bytes);
        return;
    }
    FreeRange **ost = start_tab, **oet = end_tab;
    start_tab = st;
    end_tab = et;
    hash_shift--;
    for (size_t i = 0; i < on; i++)
        for (FreeRange *r = ost[i], *next; r; r = next) {
            next = r->start_next;
            hash_add(r);
        }
    if (ost != initial_start_tab) {
        size_t obytes = align_up(on * sizeof(FreeRange *), HAK_PAGE_SIZE);
        os_unmap(ost, obytes);
        os_unmap(oet, obytes);
    }
}

static FreeRange *find_by_end(uintptr_t end)
{
    for (FreeRange *r = end_tab[hash(end)]; r; r = r->end_next)
        if (r->start + r->len == end)
            return r;
    return NULL;
}

FreeRange *range_starting_at(uintptr_t start)
{
    for (FreeRange *r = start_tab[hash(start)]; r; r = r->start_next)
        if (r->start == start)
            return r;
    return NULL;
}

/* ---- size bins ---- */
static inline unsigned bin_of(size_t len)
{
    /* the power of two, then the next two bits below the top one (for 1,
     * 2 and 3 pages, zeros shifted in: bins 0, 4 and 6) */
    size_t pages = len >> HAK_PAGE_SHIFT;
    unsigned lg = 63 - (unsigned)__builtin_clzl(pages);
    unsigned b = lg * 4 + (unsigned)((pages << 2 >> lg) & 3);
    return b < NBINS ? b : NBINS - 1;
}

static inline unsigned slot_of(const FreeRange *r)
{
    return (r->dirty_since == 0) * NBINS + bin_of(r->len);
}

static inline void bin_add_at(FreeRange *r, unsigned slot) /* slot: slot_of(r) */
{
    r->bin = (uint16_t)slot;
    r->bin_prev = NULL;
    r->bin_next = bins[slot];
    if (r->bin_next)
        r->bin_next->bin_prev = r;
    bins[slot] = r;
    nonempty[slot / 64] |= (uint64_t)1 << (slot % 64);
}

static inline void bin_add(FreeRange *r) { bin_add_at(r, slot_of(r)); }

static inline void bin_del(FreeRange *r)
{
    unsigned slot = r->bin;
    if (r->bin_prev) r->bin_prev->bin_next = r->bin_next; else bins[slot] = r->bin_next;
    if (r->bin_next) r->bin_next->bin_prev = r->bin_prev;
    if (!bins[slot])
        nonempty[slot / 64] &= ~((uint64_t)1 << (slot % 64));
}

/* The first non-empty bin of kind at or above b, NBINS if none. */
static inline unsigned bin_next_nonempty(unsigned kind, unsigned b)
{
    const uint64_t *w = &nonempty[kind * (NBINS / 64)];
    if (b < 64) {
        uint64_t m = w[0] >> b;
        if (m)
            return b + (unsigned)__builtin_ctzll(m);
        b = 64;
    }
    uint64_t m = b < NBINS ? w[1] >> (b - 64) : 0;
    return m ? b + (unsigned)__builtin_ctzll(m) : NBINS;
}

/* ---- the dirty list ---- */
static void dirty_add(FreeRange *r)
{
    r->dirty_prev = NULL;
    r->dirty_next = dirty_list;
    if (dirty_list) dirty_list->dirty_prev = r; else dirty_tail = r;
    dirty_list = r;
}

static void dirty_del(FreeRange *r)
{
    if (r->dirty_prev) r->dirty_prev->dirty_next = r->dirty_next; else dirty_list = r->dirty_next;
    if (r->dirty_next) r->dirty_next->dirty_prev = r->dirty_prev; else dirty_tail = r->dirty_prev;
}

FreeRange *ranges_dirty(void) { return dirty_list; }
FreeRange *ranges_dirty_oldest(void) { return dirty_tail; }

/* ---- the operations ---- */
void range_remove(FreeRange *r)
{
    bin_del(r);
    if (r->dirty_since)
        dirty_del(r);
    hash_del(r);
    range_bytes_free -= r->len;
    range_bytes_dirty -= r->dirty;
    nranges--;
    node_put(r);
}

/* r, in the index, now spans [start, start + len) and holds dirty resident
 * bytes (its dirty_since may have changed too).  Only what changed is
 * re-indexed: a split or a merge moves one end (one hash chain), and a
 * long range often stays in its size bin. */
static inline __attribute__((always_inline)) void rebound(FreeRange *r, uintptr_t start, size_t len, size_t dirty)
{
    bool moved_start = start != r->start, moved_end = start + len != r->start + r->len;
    if (moved_start)
        start_del(r);
    if (moved_end)
        end_del(r);
    range_bytes_free += len - r->len;
    range_bytes_dirty += dirty - r->dirty;
    r->start = start;
    r->len = len;
    r->dirty = dirty;
    if (moved_start)
        start_add(r);
    if (moved_end)
        end_add(r);
    unsigned slot = slot_of(r);
    if (slot != r->bin) {
        bin_del(r);
        bin_add_at(r, slot);
    }
}

/* Ages in the mean-age arithmetic are capped at 2^24 ms (4.6 hours, past
 * any decay time), so that pages (< 2^36) times ages fit in 64 bits. */
#define AGE_CAP ((uint64_t)1 << 24)

/* A part's weight in a merged range's mean age (range_insert). */
static inline uint64_t age_weight(size_t dirty, uint64_t since, uint64_t young)
{
    uint64_t age = young - since;
    return (uint64_t)(dirty >> HAK_PAGE_SHIFT) * (age < AGE_CAP ? age : AGE_CAP);
}

/* The same block coming and going next to an old free range would keep
 * all of it young, so resident, for ever if what is carved took the
 * range's mean age with it (a 64 MiB malloc and free every 20 ms next to
 * 160 MiB freed long ago: its mean age settles at 50 ms).  Ages count
 * back from latest, when memory last became dirty (no byte of r is
 * younger), so that no allocation reads the clock. */
uint64_t range_since_aged(const FreeRange *r, size_t dirty_left, uint64_t latest)
{
    size_t left = dirty_left >> HAK_PAGE_SHIFT; /* (not 0: range_since_after) */
    uint64_t age = latest - r->dirty_since, oldest = latest - r->oldest;
    uint64_t grown = (age < AGE_CAP ? age : AGE_CAP) * (r->dirty >> HAK_PAGE_SHIFT) / left;
    return latest - (grown < oldest ? grown : oldest);
}

/* Dirty bounds: none is [UINTPTR_MAX, 0), so that joining two is a min
 * and a max. */
#define NO_LO UINTPTR_MAX
static inline void bounds_clip(uintptr_t *lo, uintptr_t *hi, uintptr_t start, uintptr_t end)
{
    uintptr_t l = *lo > start ? *lo : start, h = *hi < end ? *hi : end;
    bool some = l < h;
    *lo = some ? l : NO_LO;
    *hi = some ? h : 0;
}

bool range_insert(uintptr_t start, size_t len, uint64_t dirty_since, size_t dirty, unsigned hot,
                  const FreeRange *part_of)
{
    if (!dirty_since)
        dirty = 0, hot = 0;
    uintptr_t dlo = NO_LO, dhi = 0;
    if (dirty_since && part_of) {
        dlo = part_of->dirty_lo;
        dhi = part_of->dirty_hi;
        bounds_clip(&dlo, &dhi, start, start + len);
    } else if (dirty_since) {
        dlo = start;
        dhi = start + len;
    }
    HAK_ASSERT(!range_starting_at(start));
    /* Neighbours first (usually none), the reservation edges only then. */
    FreeRange *prev = find_by_end(start), *next = range_starting_at(start + len);
    if (prev && extent_reservation_edge(start))
        prev = NULL;
    if (next && extent_reservation_edge(start + len))
        next = NULL;
    if (!prev && !next) { /* a record of its own */
        FreeRange *r = node_get();
        if (!r)
            return false;
        if (++nranges > hash_size())
            hash_grow();
        *r = (FreeRange){ .start = start, .len = len, .dirty_since = dirty_since, .oldest = dirty_since,
                          .dirty = dirty, .dirty_lo = dlo, .dirty_hi = dhi, .hot = (uint8_t)hot };
        bin_add(r);
        if (dirty_since)
            dirty_add(r);
        hash_add(r);
        range_bytes_free += len;
        range_bytes_dirty += dirty;
        return true;
    }
    /* Merged into a neighbour's record (the lower one if both). */
    FreeRange *r = prev ? prev : next, *other = prev && next ? next : NULL;
    bool was_dirty = r->dirty_since != 0;
    uintptr_t new_start = prev ? prev->start : start;
    size_t new_len = r->len + len, new_dirty = r->dirty + dirty;
    /* The merged range's age is its dirty bytes' mean age: the youngest
     * part's would let a trickle of small frees next to a big old range
     * keep all of it resident forever.  Ages are counted back from the
     * youngest part's (AGE_CAP). */
    uint64_t young = dirty_since > r->dirty_since ? dirty_since : r->dirty_since;
    if (other) {
        new_len += other->len;
        new_dirty += other->dirty;
        if (other->dirty_since > young)
            young = other->dirty_since;
    }
    uint64_t weighted = age_weight(r->dirty, r->dirty_since, young) +
                        age_weight(dirty, dirty_since, young) +
                        (other ? age_weight(other->dirty, other->dirty_since, young) : 0);
    /* Purged (reads as zero) only if every part was: a part's dirty count
     * is an estimate (a carve splits a range's count between its parts
     * without knowing where the bytes are), and one counted 0 may still
     * hold data, which calloc must not take for zeros. */
    size_t pages = new_dirty >> HAK_PAGE_SHIFT;
    uint64_t since = !young ? 0 : pages ? young - weighted / pages : young;
    uint64_t oldest = r->oldest;
    if (dirty_since && (!oldest || dirty_since < oldest))
        oldest = dirty_since;
    if (other && other->oldest && (!oldest || other->oldest < oldest))
        oldest = other->oldest;
    r->oldest = since ? oldest : 0;
    unsigned lo = prev ? prev->hot & RANGE_HOT_LO : hot & RANGE_HOT_LO;
    unsigned hi = next ? next->hot & RANGE_HOT_HI : hot & RANGE_HOT_HI;
    r->hot = (uint8_t)(lo | hi);
    if (other) {
        dlo = other->dirty_lo < dlo ? other->dirty_lo : dlo;
        dhi = other->dirty_hi > dhi ? other->dirty_hi : dhi;
    }
    r->dirty_lo = r->dirty_lo < dlo ? r->dirty_lo : dlo;
    r->dirty_hi = r->dirty_hi > dhi ? r->dirty_hi : dhi;
    if (other)
        range_remove(other);
    if (was_dirty)
        dirty_del(r);
    r->dirty_since = since;
    rebound(r, new_start, new_len, new_dirty);
    if (since) /* (the list is in about the order ranges became dirty) */
        dirty_add(r);
    return true;
}

void range_trim(FreeRange *r, uintptr_t start, size_t len, size_t dirty, uint64_t since)
{
    HAK_ASSERT(len && start >= r->start && start + len <= r->start + r->len && dirty <= r->dirty);
    HAK_ASSERT(!r->dirty_since == !since && since <= r->dirty_since && since >= r->oldest);
    /* older, not newer: it keeps its place on the dirty list (about the
     * order ranges became dirty) */
    r->dirty_since = since;
    if (start != r->start)
        r->hot &= ~RANGE_HOT_LO;
    if (start + len != r->start + r->len)
        r->hot &= ~RANGE_HOT_HI;
    bounds_clip(&r->dirty_lo, &r->dirty_hi, start, start + len);
    rebound(r, start, len, r->dirty_since ? dirty : 0);
}

bool range_purge(FreeRange *r)
{
    HAK_ASSERT(r->dirty_since);
    if (!os_purge((void *)r->start, r->len))
        return false;
    bin_del(r);
    dirty_del(r);
    range_bytes_dirty -= r->dirty;
    range_bytes_purged += r->dirty;
    r->dirty = 0;
    r->dirty_since = 0;
    r->oldest = 0;
    r->hot = 0;
    r->dirty_lo = NO_LO;
    r->dirty_hi = 0;
    bin_add(r);
    return true;
}

static bool fits(const FreeRange *r, size_t len, size_t align, size_t offset)
{
    uintptr_t s = align_up(r->start + offset, align) - offset;
    return r->len >= len && s + len <= r->start + r->len;
}

FreeRange *range_find_fit(size_t len, size_t align, size_t offset, uintptr_t *at)
{
    FreeRange *best = NULL;
    unsigned own = bin_of(len);
    for (unsigned kind = 0; kind < 2 && !best; kind++) {
        unsigned b = bin_next_nonempty(kind, own);
        if (b == own) { /* best fit among the first RANGE_SCAN_MAX */
            unsigned seen = 0;
            for (FreeRange *r = bins[kind * NBINS + b]; r && seen < RANGE_SCAN_MAX; r = r->bin_next, seen++)
                if (fits(r, len, align, offset) && (!best || r->len < best->len))
                    best = r;
            if (best)
                break;
            b = bin_next_nonempty(kind, b + 1);
        }
        /* A bin above the request's: no range there is much closer to it
         * than another (19%), the first that fits will do.  Every range
         * there is longer than len, so without an alignment that is the
         * first one. */
        for (; b < NBINS && !best; b = bin_next_nonempty(kind, b + 1)) {
            unsigned seen = 0;
            for (FreeRange *r = bins[kind * NBINS + b]; r && seen < RANGE_SCAN_MAX && !best; r = r->bin_next, seen++)
                if (align == HAK_PAGE_SIZE || fits(r, len, align, offset))
                    best = r;
        }
    }
    if (!best)
        return NULL;
    /* Big ones from the top (see extent.c), unless only the bottom page is
     * hot: the extent's first page is then one the program need not fault
     * in again (a program that touches the ends of big blocks faults one
     * page a block, not two: bench_large_mt 1-9 MiB -5.5% page faults,
     * 5-25 MiB -16%), and the same for small ones and a hot top.  Only
     * where little is left over: a long remainder on the wrong side would
     * mix the two populations again (bench_large's peak RSS). */
    bool top = len >= BIG_EXTENT;
    if (best->len - len <= len / 2 && (best->hot == RANGE_HOT_LO || best->hot == RANGE_HOT_HI))
        top = best->hot == RANGE_HOT_HI;
    if (top)
        *at = align_down(best->start + best->len - len + offset, align) - offset;
    else
        *at = align_up(best->start + offset, align) - offset;
    return best;
}

#ifdef HAK_DEBUG
/* The debug build's check of the whole index (extent.c calls it every
 * RANGES_VALIDATE_EVERY operations): each record is in the bin its kind
 * and length say and found by its start and its end, the bitmap and the
 * byte counts agree, and the dirty list holds exactly the dirty ones. */
void ranges_validate(void)
{
    size_t n = 0, n_dirty = 0, bytes = 0, dirty = 0;
    for (unsigned slot = 0; slot < 2 * NBINS; slot++) {
        HAK_ASSERT(!bins[slot] == !(nonempty[slot / 64] >> (slot % 64) & 1));
        for (FreeRange *r = bins[slot], *prev = NULL; r; prev = r, r = r->bin_next) {
            HAK_ASSERT(r->bin == slot && slot_of(r) == slot && r->bin_prev == prev);
            HAK_ASSERT(r->len && r->dirty <= r->len && (r->dirty_since || !r->dirty));
            HAK_ASSERT(!r->dirty_since == !r->oldest && r->oldest <= r->dirty_since);
            bool none = r->dirty_lo == NO_LO && r->dirty_hi == 0;
            HAK_ASSERT(none || (r->dirty_lo >= r->start && r->dirty_lo < r->dirty_hi &&
                                r->dirty_hi <= r->start + r->len));
            HAK_ASSERT(r->dirty <= (none ? 0 : r->dirty_hi - r->dirty_lo) && (r->dirty_since || none));
            HAK_ASSERT(range_starting_at(r->start) == r && find_by_end(r->start + r->len) == r);
            n++;
            n_dirty += r->dirty_since != 0;
            bytes += r->len;
            dirty += r->dirty;
        }
    }
    HAK_ASSERT(n == nranges && bytes == range_bytes_free && dirty == range_bytes_dirty);
    FreeRange *prev = NULL;
    for (FreeRange *r = dirty_list; r; prev = r, r = r->dirty_next) {
        HAK_ASSERT(r->dirty_since && r->dirty_prev == prev);
        n_dirty--;
    }
    HAK_ASSERT(n_dirty == 0 && dirty_tail == prev);
}
#endif
