/* The cache of freed large extents.
 *
 * A freed large block keeps its extent, filed by size class: first in the
 * freeing thread's heap (Heap.large: no lock, no atomic; the next large
 * malloc of that class on the thread takes it back), past that front's cap
 * in a central cache split into shards, one lock each, every heap filing
 * into and refilling from its home shard first (so threads do not meet on
 * one lock), and only after the decay time back in the extents (extent.c),
 * which purge it after another decay time.  Large blocks have no owner: a
 * block freed by another thread goes into that thread's front.
 *
 * Classes (types.h): an allocation takes the smallest class that holds it,
 * and a new extent is made that size, so that it can be reused by any
 * request of the class; a freed extent is filed under the largest class
 * it holds.  The link of a cached extent lives in its own first bytes.
 * SPDX-License-Identifier: MIT */
#include "os.h"

#include <pthread.h>
#include <string.h>

#define EXACT_PAGES  32
#define FRONT_CAP    ((size_t)16 << 20)  /* bytes one heap's front keeps */
#define NSHARD       8
#define REFILL       4                   /* extents taken per shard visit */
#define LINK_OFFSET  32                  /* in LargeHeader's padding      */
_Static_assert(LINK_OFFSET + sizeof(CachedExtent) <= sizeof(LargeHeader),
               "the link fits in the header's padding");

/* The heads and byte counts are read without the lock (is there anything
 * here?), so they are written with relaxed atomics. */
typedef struct Shard {
    pthread_mutex_t lock;
    CachedExtent   *list[HAK_LARGE_NCLASS]; /* newest first */
    size_t          bytes;
    uint64_t        last_decay_ms;
} __attribute__((aligned(64))) Shard;

static Shard shards[NSHARD];
static _Atomic unsigned next_shard;
/* Bytes in the central cache; bytes held by the large tier (live blocks
 * and cached extents) and their peak.  Written on slow paths only. */
static _Atomic size_t central_bytes, held_bytes, held_peak;
/* Counts of threads that already gave their heap up (exit destructors). */
static _Atomic uint64_t heapless_allocs, heapless_frees;
static _Atomic int64_t  heapless_bytes_out;

#define LOAD(x)     __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

__attribute__((constructor)) static void shards_init(void)
{
    for (unsigned i = 0; i < NSHARD; i++)
        pthread_mutex_init(&shards[i].lock, NULL);
}

/* ---- classes ---- */
static unsigned class_up(size_t pages)
{
    if (pages < EXACT_PAGES)
        return (unsigned)pages;
    unsigned lg = 63 - (unsigned)__builtin_clzl(pages);
    size_t step = (size_t)1 << (lg - 3), up = align_up(pages, step);
    if (up >> lg >= 2) { /* rounded up to the next power of two */
        lg++;
        step <<= 1;
    }
    return EXACT_PAGES + (lg - 5) * 8 + (unsigned)(up / step - 8);
}

static unsigned class_down(size_t pages)
{
    if (pages < EXACT_PAGES)
        return (unsigned)pages;
    unsigned lg = 63 - (unsigned)__builtin_clzl(pages);
    return EXACT_PAGES + (lg - 5) * 8 + (unsigned)((pages >> (lg - 3)) - 8);
}

static size_t class_pages(unsigned c)
{
    if (c < EXACT_PAGES)
        return c;
    unsigned k = c - EXACT_PAGES;
    return (size_t)(8 + k % 8) << (k / 8 + 2);
}

#define MAX_PAGES class_pages(HAK_LARGE_NCLASS - 1)

static inline CachedExtent *link_of(char *ext) { return (CachedExtent *)(ext + LINK_OFFSET); }
static inline char *ext_of(CachedExtent *c) { return (char *)c - LINK_OFFSET; }

size_t large_cache_round(size_t len)
{
    size_t pages = len >> HAK_PAGE_SHIFT;
    return pages > MAX_PAGES ? len : class_pages(class_up(pages)) << HAK_PAGE_SHIFT;
}

void large_front_init(LargeFront *f)
{
    memset(f, 0, sizeof *f);
    f->shard = atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % NSHARD;
}

/* ---- held bytes (statistics) ---- */
void large_cache_new_extent(size_t len)
{
    size_t now = atomic_fetch_add_explicit(&held_bytes, len, memory_order_relaxed) + len;
    size_t peak = atomic_load_explicit(&held_peak, memory_order_relaxed);
    while (now > peak && !atomic_compare_exchange_weak_explicit(&held_peak, &peak, now,
                                                                memory_order_relaxed,
                                                                memory_order_relaxed))
        ;
}

void large_cache_drop_extent(size_t len)
{
    atomic_fetch_sub_explicit(&held_bytes, len, memory_order_relaxed);
}

/* Give a list of extents back to the extents (no shard lock held). */
static void release(CachedExtent *c)
{
    while (c) {
        CachedExtent *next = c->next;
        large_cache_drop_extent(c->len);
        extent_free(ext_of(c), c->len);
        c = next;
    }
}

/* ---- the central cache ---- */

/* Cut the entries of a locked shard that waited a decay time (all: every
 * one) and return them as one list; lower *next_due (if given) to when the
 * next remaining one expires. */
static CachedExtent *shard_expire(Shard *s, uint64_t now, bool all, uint64_t *next_due)
{
    CachedExtent *out = NULL;
    size_t cut = 0;
    s->last_decay_ms = now;
    for (unsigned c = 0; c < HAK_LARGE_NCLASS; c++) {
        CachedExtent **pp = &s->list[c];
        while (*pp && !all && now - (*pp)->freed_ms < (uint64_t)hak_opt.decay_ms) {
            uint64_t due = (*pp)->freed_ms + (uint64_t)hak_opt.decay_ms;
            if (next_due && (!*next_due || due < *next_due))
                *next_due = due;
            pp = &(*pp)->next; /* newest first: the old ones are the tail */
        }
        CachedExtent *tail = *pp;
        STORE(*pp, (CachedExtent *)NULL);
        while (tail) {
            CachedExtent *next = tail->next;
            cut += tail->len;
            tail->next = out;
            out = tail;
            tail = next;
        }
    }
    STORE(s->bytes, s->bytes - cut);
    atomic_fetch_sub_explicit(&central_bytes, cut, memory_order_relaxed);
    return out;
}

/* File a list of extents into the heap's home shard. */
static void central_put(LargeFront *f, CachedExtent *list, size_t bytes)
{
    Shard *s = &shards[f ? f->shard : 0];
    uint64_t now = os_now_ms();
    hak_lock(&s->lock);
    while (list) {
        CachedExtent *next = list->next;
        unsigned c = class_down(list->len >> HAK_PAGE_SHIFT);
        list->freed_ms = now;
        list->next = s->list[c];
        STORE(s->list[c], list);
        list = next;
    }
    STORE(s->bytes, s->bytes + bytes);
    size_t total = atomic_fetch_add(&central_bytes, bytes) + bytes; /* see purger_main */
    CachedExtent *expired = NULL;
    uint64_t period = hak_opt.decay_ms / 4 ? (uint64_t)hak_opt.decay_ms / 4 : 1;
    bool over_cap = total > ((size_t)hak_opt.cache_max_mb << 20);
    if (over_cap || now - s->last_decay_ms >= period || !hak_opt.decay_ms)
        expired = shard_expire(s, now, over_cap, NULL);
    hak_unlock(&s->lock);
    release(expired);
    purger_request(total);
}

/* Take an extent of class c from the central cache, home shard first, and
 * up to REFILL - 1 more of the class for the front. */
static char *central_get(LargeFront *f, unsigned c, size_t *len)
{
    unsigned home = f ? f->shard : 0;
    for (unsigned i = 0; i < NSHARD; i++) {
        Shard *s = &shards[(home + i) % NSHARD];
        if (!LOAD(s->list[c]))
            continue;
        hak_lock(&s->lock);
        CachedExtent *got = s->list[c];
        if (!got) {
            hak_unlock(&s->lock);
            continue;
        }
        CachedExtent *rest = got->next;
        size_t taken = got->len;
        if (f && c < HAK_LARGE_FRONT_NCLASS) {
            for (unsigned k = 1; k < REFILL && rest && f->bytes < FRONT_CAP / 2; k++) {
                CachedExtent *more = rest;
                rest = more->next;
                more->next = f->bin[c];
                f->bin[c] = more;
                f->bytes += more->len;
                taken += more->len;
            }
        }
        STORE(s->list[c], rest);
        STORE(s->bytes, s->bytes - taken);
        hak_unlock(&s->lock);
        atomic_fetch_sub_explicit(&central_bytes, taken, memory_order_relaxed);
        *len = got->len;
        return ext_of(got);
    }
    return NULL;
}

/* ---- the API of large.c ---- */
char *large_cache_get(LargeFront *f, size_t len, size_t *got)
{
    size_t pages = len >> HAK_PAGE_SHIFT;
    if (pages > MAX_PAGES)
        return NULL;
    unsigned c = class_up(pages);
    if (f && c < HAK_LARGE_FRONT_NCLASS && f->bin[c]) {
        CachedExtent *e = f->bin[c];
        f->bin[c] = e->next;
        f->bytes -= e->len;
        *got = e->len;
        return ext_of(e);
    }
    return central_get(f, c, got);
}

/* Take every extent of the front's classes from top down to (not
 * including) class stop, until it holds at most keep bytes. */
static CachedExtent *front_take(LargeFront *f, size_t keep, size_t *bytes)
{
    CachedExtent *list = NULL;
    for (unsigned c = HAK_LARGE_FRONT_NCLASS; c-- > 0 && f->bytes > keep;)
        while (f->bin[c]) {
            CachedExtent *e = f->bin[c];
            f->bin[c] = e->next;
            f->bytes -= e->len;
            *bytes += e->len;
            e->next = list;
            list = e;
        }
    return list;
}

bool large_cache_put(LargeFront *f, char *ext, size_t len)
{
    size_t pages = len >> HAK_PAGE_SHIFT;
    if (pages > MAX_PAGES)
        return false;
    CachedExtent *e = link_of(ext);
    e->len = len;
    e->next = NULL;
    unsigned c = class_down(pages);
    if (!f || c >= HAK_LARGE_FRONT_NCLASS) {
        central_put(f, e, len);
        return true;
    }
    e->next = f->bin[c];
    f->bin[c] = e;
    f->bytes += len;
    if (unlikely(f->bytes > FRONT_CAP)) { /* the biggest go, down to half */
        size_t bytes = 0;
        CachedExtent *list = front_take(f, FRONT_CAP / 2, &bytes);
        central_put(f, list, bytes);
    }
    return true;
}

/* A heap given up by its thread, or malloc_trim (to_extents): the front
 * empties into the central cache, or straight back to the extents. */
void large_front_flush(LargeFront *f, bool to_extents)
{
    size_t bytes = 0;
    CachedExtent *list = front_take(f, 0, &bytes);
    if (to_extents)
        release(list);
    else if (list)
        central_put(f, list, bytes);
}

/* Decay: extents that waited a decay time in the central cache (all: every
 * one) go back to the extents.  Returns when the next one is due (0: none). */
uint64_t large_cache_decay(bool all)
{
    uint64_t now = os_now_ms(), next_due = 0;
    for (unsigned i = 0; i < NSHARD; i++) {
        Shard *s = &shards[i];
        if (!LOAD(s->bytes))
            continue;
        hak_lock(&s->lock);
        CachedExtent *expired = shard_expire(s, now, all, &next_due);
        hak_unlock(&s->lock);
        release(expired);
    }
    return next_due;
}

size_t large_cache_central_bytes(void) { return atomic_load(&central_bytes); }

void large_cache_fork_prepare(void)
{
    for (unsigned i = 0; i < NSHARD; i++)
        hak_lock(&shards[i].lock);
}

void large_cache_fork_parent(void)
{
    for (unsigned i = 0; i < NSHARD; i++)
        hak_unlock(&shards[i].lock);
}

void large_cache_fork_child(void)
{
    for (unsigned i = 0; i < NSHARD; i++)
        pthread_mutex_init(&shards[i].lock, NULL);
}

void large_count(LargeFront *f, bool alloc, int64_t bytes)
{
    if (likely(f != NULL)) {
        if (alloc) f->allocs++; else f->frees++;
        f->bytes_out += bytes;
        return;
    }
    atomic_fetch_add_explicit(alloc ? &heapless_allocs : &heapless_frees, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&heapless_bytes_out, bytes, memory_order_relaxed);
}

void large_resize(LargeFront *f, int64_t bytes)
{
    if (likely(f != NULL))
        f->bytes_out += bytes;
    else
        atomic_fetch_add_explicit(&heapless_bytes_out, bytes, memory_order_relaxed);
}

/* Counts, bytes and the fronts' cached bytes come from the heaps
 * (heaps_stats); the central cache is free memory kept for reuse, still
 * resident. */
void large_stats(struct hak_stats *st)
{
    int64_t out = (int64_t)st->large_bytes_in_use + atomic_load(&heapless_bytes_out);
    st->large_allocs += atomic_load(&heapless_allocs);
    st->large_frees += atomic_load(&heapless_frees);
    st->large_bytes_in_use = out > 0 ? (uint64_t)out : 0;
    size_t cached = atomic_load(&central_bytes);
    st->large_bytes_peak = atomic_load(&held_peak);
    st->bytes_cached += cached;
    st->bytes_dirty += cached;
}
