/* The index of free address ranges (see ranges.h).
 * SPDX-License-Identifier: MIT */
#include "os.h"
#include "ranges.h"

#include <string.h>

#define NBINS       144          /* 4 per power of two, pages up to 2^35  */
#define BINWORDS    ((NBINS + 63) / 64)
#define HASH_BITS0  10
#define POOL_BYTES  ((size_t)64 << 10)

size_t range_bytes_free, range_bytes_dirty, range_bytes_purged;

static FreeRange *bins[2][NBINS];           /* [0] dirty, [1] purged   */
static uint64_t   nonempty[2][BINWORDS];
static FreeRange *dirty_list, *dirty_tail; /* most recently made dirty first */
static FreeRange *initial_start_tab[1 << HASH_BITS0], *initial_end_tab[1 << HASH_BITS0];
static FreeRange **start_tab = initial_start_tab, **end_tab = initial_end_tab;
static unsigned   hash_bits = HASH_BITS0;
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
        FreeRange *blk = os_map_aligned(POOL_BYTES, HAK_PAGE_SIZE);
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
static inline size_t hash(uintptr_t a, unsigned bits)
{
    return (size_t)(((a >> HAK_PAGE_SHIFT) * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

static void hash_add(FreeRange *r)
{
    size_t hs = hash(r->start, hash_bits), he = hash(r->start + r->len, hash_bits);
    r->start_next = start_tab[hs];
    start_tab[hs] = r;
    r->end_next = end_tab[he];
    end_tab[he] = r;
}

static void hash_del(FreeRange *r)
{
    FreeRange **pp = &start_tab[hash(r->start, hash_bits)];
    while (*pp != r)
        pp = &(*pp)->start_next;
    *pp = r->start_next;
    pp = &end_tab[hash(r->start + r->len, hash_bits)];
    while (*pp != r)
        pp = &(*pp)->end_next;
    *pp = r->end_next;
}

/* Twice as many buckets as ranges at most: double the tables (memory of
 * their own from the OS); keep the old ones if that fails. */
static void hash_grow(void)
{
    unsigned bits = hash_bits + 1;
    size_t n = (size_t)1 << bits, bytes = align_up(n * sizeof(FreeRange *), HAK_PAGE_SIZE);
    FreeRange **st = os_map_aligned(bytes, HAK_PAGE_SIZE);
    FreeRange **et = st ? os_map_aligned(bytes, HAK_PAGE_SIZE) : NULL;
    if (!et) {
        if (st)
            os_unmap(st, bytes);
        return;
    }
    FreeRange **ost = start_tab, **oet = end_tab;
    size_t on = (size_t)1 << hash_bits;
    start_tab = st;
    end_tab = et;
    hash_bits = bits;
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
    for (FreeRange *r = end_tab[hash(end, hash_bits)]; r; r = r->end_next)
        if (r->start + r->len == end)
            return r;
    return NULL;
}

FreeRange *range_starting_at(uintptr_t start)
{
    for (FreeRange *r = start_tab[hash(start, hash_bits)]; r; r = r->start_next)
        if (r->start == start)
            return r;
    return NULL;
}

/* ---- size bins ---- */
static unsigned bin_of(size_t len)
{
    size_t pages = len >> HAK_PAGE_SHIFT;
    unsigned lg = 63 - (unsigned)__builtin_clzl(pages);
    unsigned sub = lg >= 2 ? (unsigned)(pages >> (lg - 2)) & 3 : 0;
    return lg * 4 + sub;
}

static void bin_add(FreeRange *r)
{
    unsigned kind = r->dirty_since == 0, b = bin_of(r->len);
    r->bin = (uint16_t)b;
    r->bin_prev = NULL;
    r->bin_next = bins[kind][b];
    if (r->bin_next)
        r->bin_next->bin_prev = r;
    bins[kind][b] = r;
    nonempty[kind][b / 64] |= (uint64_t)1 << (b % 64);
}

static void bin_del(FreeRange *r)
{
    unsigned kind = r->dirty_since == 0, b = r->bin;
    if (r->bin_prev) r->bin_prev->bin_next = r->bin_next; else bins[kind][b] = r->bin_next;
    if (r->bin_next) r->bin_next->bin_prev = r->bin_prev;
    if (!bins[kind][b])
        nonempty[kind][b / 64] &= ~((uint64_t)1 << (b % 64));
}

/* The first non-empty bin of kind at or above b, NBINS if none. */
static unsigned bin_next_nonempty(unsigned kind, unsigned b)
{
    for (unsigned w = b / 64; w < BINWORDS; w++) {
        uint64_t m = nonempty[kind][w];
        if (w == b / 64)
            m &= ~(uint64_t)0 << (b % 64);
        if (m)
            return w * 64 + (unsigned)__builtin_ctzll(m);
    }
    return NBINS;
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
/* Take r out of the bins, the dirty list and the hash tables: for good
 * (range_remove) or to be put back with new bounds (relink). */
static void unlink_all(FreeRange *r)
{
    bin_del(r);
    if (r->dirty_since)
        dirty_del(r);
    hash_del(r);
    range_bytes_free -= r->len;
    range_bytes_dirty -= r->dirty;
}

void range_remove(FreeRange *r)
{
    unlink_all(r);
    nranges--;
    node_put(r);
}

static void relink(FreeRange *r)
{
    bin_add(r);
    if (r->dirty_since)
        dirty_add(r);
    hash_add(r);
    range_bytes_free += r->len;
    range_bytes_dirty += r->dirty;
}

bool range_insert(uintptr_t start, size_t len, uint64_t dirty_since, size_t dirty)
{
    if (!dirty_since)
        dirty = 0;
    HAK_ASSERT(!range_starting_at(start));
    /* Neighbours first (usually none), the reservation edges only then. */
    FreeRange *prev = find_by_end(start), *next = range_starting_at(start + len);
    if (prev && extent_reservation_edge(start))
        prev = NULL;
    if (next && extent_reservation_edge(start + len))
        next = NULL;
    /* Merged into a neighbour's record, or a record of its own. */
    FreeRange *r = prev ? prev : next;
    if (r) {
        unlink_all(r);
    } else {
        if (!(r = node_get()))
            return false;
        *r = (FreeRange){ .start = start, .len = 0 };
        if (++nranges > ((size_t)1 << hash_bits))
            hash_grow();
    }
    FreeRange *other = prev && next ? next : NULL;
    if (r == next || !prev)
        r->start = start;
    r->len += len;
    r->dirty += dirty;
    if (dirty_since > r->dirty_since)
        r->dirty_since = dirty_since;
    if (other) {
        r->len += other->len;
        r->dirty += other->dirty;
        if (other->dirty_since > r->dirty_since)
            r->dirty_since = other->dirty_since;
        range_remove(other);
    }
    relink(r);
    return true;
}

void range_trim(FreeRange *r, uintptr_t start, size_t len, size_t dirty)
{
    HAK_ASSERT(len && start >= r->start && start + len <= r->start + r->len && dirty <= r->dirty);
    unlink_all(r);
    r->start = start;
    r->len = len;
    r->dirty = r->dirty_since ? dirty : 0;
    relink(r);
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
    for (unsigned kind = 0; kind < 2 && !best; kind++)
        for (unsigned b = bin_next_nonempty(kind, own); b < NBINS && !best;
             b = bin_next_nonempty(kind, b + 1)) {
            unsigned seen = 0;
            for (FreeRange *r = bins[kind][b]; r && seen < RANGE_SCAN_MAX; r = r->bin_next, seen++)
                if (fits(r, len, align, offset) && (!best || r->len < best->len)) {
                    best = r;
                    if (b != own) /* a bin above the request's: no range there is */
                        break;    /* much closer to it than another (19%)        */
                }
        }
    if (!best)
        return NULL;
    if (len >= BIG_EXTENT) /* big ones from the top: see extent.c */
        *at = align_down(best->start + best->len - len + offset, align) - offset;
    else
        *at = align_up(best->start + offset, align) - offset;
    return best;
}
