/* The cache of freed large extents.
 *
 * A freed large block keeps its extent, filed by size class: first in the
 * freeing thread's heap (Heap.large: no lock, no atomic; the next large
 * malloc of that class on the thread takes it back), past that front's cap
 * in a central cache split into shards, every heap filing into and
 * refilling from its home shard first, and only after the decay time back
 * in the extents (extent.c), which purge it after another decay time.
 * Only extents up to 4 MiB are cached: bigger ones vary too much in size
 * to be reused by class, and the extents reuse them by best fit; for the
 * same reason the central cache takes extents of LARGE_CENTRAL_BIG_MIN and more
 * only while it holds little (tunables.h).
 * Large blocks have no owner: a block freed by another thread goes into
 * that thread's front.  A front its thread stopped using (no large malloc
 * or free for a decay time) is given back by the purger
 * (large_front_decay), so that idle threads keep nothing resident.
 *
 * The central cache takes no lock: each shard and class is a stack of
 * extents that a thread pushes a whole batch on with one CAS and empties
 * with one exchange (keeping what it needs and pushing the rest back), so
 * that no pop ever follows a link another thread may be changing (no ABA).
 *
 * Classes (types.h): an allocation takes the smallest class that holds it,
 * and a new extent is made that size, so that it can be reused by any
 * request of the class; a freed extent is filed under the largest class
 * it holds.  The link of a cached extent lives in the extent itself, in
 * its LargeHeader's padding (LARGE_LINK_OFFSET).
 * SPDX-License-Identifier: MIT */
#include "os.h"

#include <string.h>

#define RELAXED      memory_order_relaxed
_Static_assert(LARGE_LINK_OFFSET + sizeof(CachedExtent) <= offsetof(LargeHeader, extent),
               "the link fits in the header's padding");

typedef struct Shard {
    _Atomic(CachedExtent *) list[HAK_LARGE_NCLASS];
    _Atomic size_t bytes;
} __attribute__((aligned(64))) Shard;

static Shard shards[LARGE_NSHARD];
_Static_assert((LARGE_NSHARD & (LARGE_NSHARD - 1)) == 0 && LARGE_NSHARD < 32, "shards: a power of two");
/* Each front's cap: its share of LARGE_FRONTS_BUDGET (large_fronts_share),
 * written when a thread takes or gives up a heap; a front reads it on a
 * miss (LargeFront.cap). */
static _Atomic size_t front_cap = LARGE_FRONT_CAP;
static _Atomic unsigned next_shard;
/* Bytes held by the large tier (live blocks and cached extents) and their
 * peak: written when extents come from or go back to the extents only. */
static _Atomic size_t held_bytes, held_peak;
/* Counts of threads that already gave their heap up (exit destructors). */
static _Atomic uint64_t heapless_allocs, heapless_frees;
static _Atomic int64_t  heapless_bytes_out;

/* ---- classes ---- */

static size_t class_pages(unsigned c)
{
    if (c < LARGE_EXACT_PAGES)
        return c;
    unsigned k = c - LARGE_EXACT_PAGES;
    return (size_t)(8 + k % 8) << (k / 8 + 2);
}

_Static_assert(HAK_LARGE_NCLASS == LARGE_EXACT_PAGES + (10 - 5) * 8 + 1 && (8 << (5 + 2)) == LARGE_MAX_PAGES,
               "LARGE_MAX_PAGES is the largest class");

static inline CachedExtent *link_of(char *ext) { return (CachedExtent *)(ext + LARGE_LINK_OFFSET); }
static inline char *ext_of(CachedExtent *c) { return (char *)c - LARGE_LINK_OFFSET; }

void large_fronts_share(unsigned running)
{
    size_t cap = LARGE_FRONTS_BUDGET / (running ? running : 1);
    cap = cap > LARGE_FRONT_CAP ? LARGE_FRONT_CAP : cap < LARGE_FRONT_MIN ? LARGE_FRONT_MIN : cap;
    atomic_store_explicit(&front_cap, cap, RELAXED);
}

void large_front_init(LargeFront *f)
{
    memset(f, 0, sizeof *f);
    f->shard = atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % LARGE_NSHARD;
    f->cap = atomic_load_explicit(&front_cap, RELAXED);
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

/* Extents that decayed in the central cache or in an idle thread's front
 * (freed_ms set): the extents purge them at once, instead of a decay time
 * more. */
void large_cache_release_decayed(CachedExtent *c)
{
    while (c) {
        CachedExtent *next = c->next;
        large_cache_drop_extent(c->len);
        extent_free_since(ext_of(c), c->len, c->freed_ms);
        c = next;
    }
}

/* ---- the central cache ---- */

size_t large_cache_central_bytes(void)
{
    size_t total = 0;
    for (unsigned i = 0; i < LARGE_NSHARD; i++)
        total += atomic_load(&shards[i].bytes);
    return total;
}

/* Push a chain (first .. last, linked) on a shard's stack of class c. */
static void stack_push(Shard *s, unsigned c, CachedExtent *first, CachedExtent *last)
{
    CachedExtent *head = atomic_load_explicit(&s->list[c], RELAXED);
    do {
        last->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&s->list[c], &head, first,
                                                    memory_order_release, RELAXED));
}

/* File a list of extents, sorted by class, into the heap's home shard: one
 * push per class present. */
static void central_put(LargeFront *f, CachedExtent *list, size_t bytes)
{
    if (!list)
        return;
    size_t total = large_cache_central_bytes() + bytes;
    if (total > LARGE_CENTRAL_CAP) {
        release(list); /* over the cap: straight back to the extents */
        return;
    }
    if (total > LARGE_CENTRAL_BIG_CAP) {
        /* Extents of a MiB and more go back to the extents (best fit,
         * merged with their neighbours) unless the cache holds little:
         * their classes are too many to meet again often, and kept they
         * made 1-9 MiB blocks take 1.3x glibc's footprint. */
        CachedExtent **pp = &list, *big = NULL;
        while (*pp)
            if ((*pp)->len >= LARGE_CENTRAL_BIG_MIN) {
                CachedExtent *e = *pp;
                *pp = e->next;
                bytes -= e->len;
                total -= e->len;
                e->next = big;
                big = e;
            } else {
                pp = &(*pp)->next;
            }
        release(big);
        if (!list)
            return;
    }
    Shard *s = &shards[f ? f->shard : 0];
    uint64_t now = os_now_ms();
    atomic_fetch_add(&s->bytes, bytes); /* seq_cst: see purger_main */
    while (list) {
        unsigned c = large_class_down(list->len >> HAK_PAGE_SHIFT);
        CachedExtent *first = list, *last = list;
        list->freed_ms = now;
        while (last->next && large_class_down(last->next->len >> HAK_PAGE_SHIFT) == c) {
            last = last->next;
            last->freed_ms = now;
        }
        list = last->next;
        stack_push(s, c, first, last);
    }
    purger_request(total);
}

/* Take an extent of class c from shard s (not skip, the extent its thread
 * freed last, if it spilled there): the whole stack is taken, one extent
 * is the caller's, up to LARGE_REFILL - 1 more go to the front, and the
 * rest is pushed back. */
static char *shard_get(LargeFront *f, Shard *s, unsigned c, const char *skip, size_t *len)
{
    if (!atomic_load_explicit(&s->list[c], RELAXED))
        return NULL;
    CachedExtent *got = atomic_exchange_explicit(&s->list[c], NULL, memory_order_acquire);
    if (!got)
        return NULL;
    if (ext_of(got) == skip) { /* it spilled here from the front */
        CachedExtent *second = got->next;
        if (!second) {
            stack_push(s, c, got, got);
            return NULL;
        }
        got->next = second->next;
        second->next = got;
        got = second;
    }
    CachedExtent *rest = got->next;
    size_t taken = got->len;
    if (f && c < HAK_LARGE_NCLASS) {
        for (unsigned k = 1; k < LARGE_REFILL && rest && f->bytes < f->cap / 2; k++) {
            CachedExtent *more = rest;
            rest = more->next;
            more->next = f->bin[c];
            f->bin[c] = more;
            f->bytes += more->len;
            taken += more->len;
        }
    }
    if (rest) {
        CachedExtent *last = rest;
        while (last->next)
            last = last->next;
        stack_push(s, c, rest, last);
    }
    atomic_fetch_sub_explicit(&s->bytes, taken, RELAXED);
    *len = got->len;
    return ext_of(got);
}

/* Take an extent of class c, or of one up to LARGE_UP_CLASSES above (a
 * size within 25% over: better than fresh memory), from the central
 * cache: the home shard first, then the others that hold any (a shard's
 * bytes count its extents before they are pushed and after they are
 * taken, so 0 means empty).  Looking at the class alone missed four times
 * as often (8 threads, 64-576 KiB: 9,000 trips to the extents' lock in
 * 800,000 operations, 2,500 now). */
static __attribute__((noinline)) char *central_get(LargeFront *f, unsigned c, const char *skip, size_t *len)
{
    unsigned home = f ? f->shard : 0, last = c + LARGE_UP_CLASSES;
    if (f) /* a miss: the front's share may have changed */
        f->cap = atomic_load_explicit(&front_cap, RELAXED);
    if (last >= HAK_LARGE_NCLASS)
        last = HAK_LARGE_NCLASS - 1;
    char *ext = NULL;
    for (unsigned k = c; !ext && k <= last; k++)
        ext = shard_get(f, &shards[home], k, skip, len);
    if (ext)
        return ext;
    /* bit i: shard home + i, so that each home steals from its own next
     * shard first (the loop over shards by index, unrolled) */
    unsigned held = 0, all = (1u << LARGE_NSHARD) - 1;
#pragma GCC unroll 8
    for (unsigned i = 0; i < LARGE_NSHARD; i++)
        held |= (unsigned)(atomic_load_explicit(&shards[i].bytes, RELAXED) != 0) << i;
    unsigned others = ((held >> home) | (held << (LARGE_NSHARD - home))) & all & ~1u;
    for (unsigned k = c; others && !ext && k <= last; k++)
        for (unsigned o = others; !ext && o; o &= o - 1)
            ext = shard_get(f, &shards[(home + (unsigned)__builtin_ctz(o)) & (LARGE_NSHARD - 1)], k,
                            skip, len);
    return ext;
}

/* Take extents from the front, biggest classes first, until it holds at
 * most keep bytes. */
static CachedExtent *front_take(LargeFront *f, size_t keep, size_t *bytes)
{
    CachedExtent *list = NULL;
    /* no extent is longer than all of them: none is of a class above */
    size_t most = f->bytes >> HAK_PAGE_SHIFT;
    unsigned top = most > LARGE_MAX_PAGES ? HAK_LARGE_NCLASS : large_class_down(most) + 1;
    for (unsigned c = top; c-- > 0 && f->bytes > keep;)
        while (f->bin[c]) {
            CachedExtent *e = f->bin[c];
            f->bin[c] = e->next;
            /* the purger's too: large_cache_get reads it unclaimed */
            __atomic_store_n(&f->bytes, f->bytes - e->len, __ATOMIC_RELAXED);
            *bytes += e->len;
            e->next = list;
            list = e;
        }
    return list;
}

/* A miss (and no extent passed over: flushed, it would be handed out at
 * once).  Many in a row mean sizes that rarely meet their class again,
 * and a block of LARGE_MISS_FLUSH_MIN or more is one whose size varies
 * too much to meet it: the extents the front holds go back to the extents,
 * which merge them with their neighbours and reuse them by best fit for
 * any size, rather than fresh memory being taken. */
static void front_missed(LargeFront *f, size_t len)
{
    if (++f->misses < LARGE_MISSES_FLUSH && len < LARGE_MISS_FLUSH_MIN)
        return;
    size_t bytes = 0;
    release(front_take(f, 0, &bytes));
    f->misses = 0;
}

/* ---- claiming a front ----
 * Its thread claims it for each get and put, the purger to look at it and
 * give it back: one CAS on a line that only the purger's visits (once a
 * decay time) share.  A thread that finds the purger there goes to the
 * central cache for that one call. */
static inline bool front_claim(LargeFront *f, uint32_t who)
{
    uint32_t free_ = FRONT_FREE;
    return atomic_compare_exchange_strong_explicit(&f->claim, &free_, who, memory_order_acquire,
                                                   RELAXED);
}

static inline void front_unclaim(LargeFront *f)
{
    atomic_store_explicit(&f->claim, FRONT_FREE, memory_order_release);
}

static inline LargeFront *front_enter(LargeFront *f)
{
    if (!f || !front_claim(f, FRONT_OWNER))
        return NULL;
    f->uses++;
    return f;
}

/* Big extents (LARGE_MISS_FLUSH_MIN and more) and their mallocs bypass
 * a front whose big mallocs kept missing (LARGE_STRAIGHT_AFTER).  Their
 * classes start at big_class: f->straight has a bit for each. */
static inline unsigned big_class(void) { return large_class_down(LARGE_MISS_FLUSH_MIN >> HAK_PAGE_SHIFT); }
_Static_assert(LARGE_MISS_FLUSH_MIN >> HAK_PAGE_SHIFT == 256 && LARGE_MAX_PAGES == 1024,
               "the big classes, and two above the last, fit f->straight");

static inline bool goes_straight(const LargeFront *f, size_t len)
{
    return len >= LARGE_MISS_FLUSH_MIN && f->big_misses >= LARGE_STRAIGHT_AFTER;
}

static inline void big_missed(LargeFront *f)
{
    if (f->big_misses < LARGE_STRAIGHT_MAX && ++f->big_misses == LARGE_STRAIGHT_AFTER)
        f->straight = f->straight_twice = 0;
}

/* Does the front hold an extent of a big class? */
static bool holds_big(const LargeFront *f)
{
    if (f->bytes < LARGE_MISS_FLUSH_MIN)
        return false;
    for (unsigned c = big_class(); c < HAK_LARGE_NCLASS; c++)
        if (f->bin[c])
            return true;
    return false;
}

/* A big malloc of class c that bypasses f: what would the front have
 * done, had the big extents freed since the last miss gone into it?
 * Served it from the lowest class from c to LARGE_UP_CLASSES above that
 * holds one, passing over the one freed last (LargeFront.last_put): then
 * it takes LARGE_STRAIGHT_SERVED points off the score.  Passed over the
 * one freed last only: nothing.  Missed: a point, and the front given
 * back. */
static char *front_bypassed(LargeFront *f, unsigned c, size_t len, size_t *got)
{
    uint32_t window = ((1u << (LARGE_UP_CLASSES + 1)) - 1) << (c - big_class());
    uint32_t served = window & ((f->straight & ~f->straight_last) | f->straight_twice);
    f->last_put = NULL;
    *got = class_pages(c) << HAK_PAGE_SHIFT;
    if (served) {
        uint32_t bit = served & -served;
        if (f->straight_twice & bit)
            f->straight_twice &= ~bit;
        else
            f->straight &= ~bit;
        f->big_misses -= LARGE_STRAIGHT_SERVED;
        return NULL;
    }
    if (window & f->straight)
        return NULL; /* (passed over) */
    f->straight = f->straight_twice = 0;
    big_missed(f);
    if (f->bytes)
        front_missed(f, len);
    return NULL;
}

/* ---- the API of large.c ----
 * The extent a thread freed last is never the next one its mallocs get
 * (LargeFront.last_put), from the front or the central cache: a use
 * after free cannot count on its block coming straight back, as with the
 * slab tiers.  A program that frees and mallocs one size in a loop then
 * takes turns between two extents, which costs one more extent per class
 * it does so with, and no lock once both are made. */
static char *front_get(LargeFront *f, size_t len, size_t *got)
{
    unsigned c = large_class_up(len >> HAK_PAGE_SHIFT);
    /* (every LARGE_STRAIGHT_PROBE-th looks all the same: a thread that
     * stopped freeing big blocks would never see the size come back,
     * and may find other threads' in the central cache) */
    if (f && goes_straight(f, len) && ++f->bypassed % LARGE_STRAIGHT_PROBE)
        return front_bypassed(f, c, len, got);
    /* the extent freed last is passed over by this malloc only: the next
     * takes it (and checks its start: large.c's free mark) */
    char *skip = f ? f->last_put : NULL;
    bool passed = false; /* the front had one, passed over */
    if (f)
        f->last_put = NULL;
    /* the class, or one up to LARGE_UP_CLASSES above (a size within 25% over):
     * a bigger extent is better than fresh memory */
    for (unsigned k = c; f && k < HAK_LARGE_NCLASS && k <= c + LARGE_UP_CLASSES; k++) {
        CachedExtent **pe = &f->bin[k];
        if (*pe && ext_of(*pe) == skip) { /* filed last, so at the head */
            pe = &(*pe)->next;
            passed = true;
        }
        if (*pe) {
            CachedExtent *e = *pe;
            *pe = e->next;
            f->bytes -= e->len;
            f->misses = 0;
            f->big_misses = 0;
            *got = e->len;
            return ext_of(e);
        }
    }
    char *ext = central_get(f, c, skip, got);
    if (ext) {
        if (f)
            f->big_misses = 0;
        return ext;
    }
    *got = class_pages(c) << HAK_PAGE_SHIFT;
    if (f && !passed) {
        if (len >= LARGE_MISS_FLUSH_MIN && holds_big(f))
            big_missed(f);
        front_missed(f, len);
    }
    return NULL;
}

/* Too big to cache: a miss, which gives back what the front holds.  An
 * empty front stays empty meanwhile (only its thread fills it), so it is
 * not claimed for nothing (half of the mallocs of 1-9 MiB). */
static char *too_big_to_cache(LargeFront *f, size_t len)
{
    if (f) /* (what a bypassed front would have held is gone too) */
        f->straight = f->straight_twice = 0;
    if (f && __atomic_load_n(&f->bytes, __ATOMIC_RELAXED) && (f = front_enter(f))) {
        front_missed(f, len);
        front_unclaim(f);
    }
    return NULL;
}

/* The rest of large_cache_get (internal.h): a block too big to cache, a
 * front its thread could not claim (the purger holds it) or that has no
 * front (a thread past its exit destructors); then another class, the
 * central cache, a miss. */
char *large_cache_get_slow(LargeFront *f, size_t *got)
{
    size_t len = *got;
    if (len >> HAK_PAGE_SHIFT > LARGE_MAX_PAGES)
        return too_big_to_cache(f, len);
    f = front_enter(f);
    char *ext = front_get(f, len, got);
    if (f)
        front_unclaim(f);
    return ext;
}

char *large_cache_get_claimed(LargeFront *f, size_t *got)
{
    char *ext = front_get(f, *got, got);
    front_unclaim(f);
    return ext;
}

/* What a put into a front rarely does, out of line (the put then saves
 * no register): past the cap, the biggest go, down to half; a front that
 * was empty wakes a purger that sleeps with nothing to do.  Unclaims f. */
static __attribute__((noinline)) void front_put_overflow(LargeFront *f, bool was_empty)
{
    if (f->bytes > f->cap) {
        size_t bytes = 0;
        CachedExtent *list = front_take(f, f->cap / 2, &bytes);
        central_put(f, list, bytes);
    }
    front_unclaim(f);
    if (was_empty)
        purger_notify();
}

bool large_cache_put(LargeFront *f, char *ext, size_t len)
{
    size_t pages = len >> HAK_PAGE_SHIFT;
    if (unlikely(len >= LARGE_MISS_FLUSH_MIN)) { /* (one test for the others) */
        if (pages > LARGE_MAX_PAGES)
            return false;
        if (f && goes_straight(f, len)) { /* (only its thread writes these) */
            uint32_t bit = 1u << (large_class_down(pages) - big_class());
            f->straight_twice |= f->straight & bit;
            f->straight |= bit;
            f->straight_last = bit;
            return false;
        }
    }
    if (!options.decay_ms) /* decay 0: keep nothing */
        return false;
    CachedExtent *e = link_of(ext);
    e->len = len;
    e->next = NULL;
    unsigned c = large_class_down(pages);
    if (c >= HAK_LARGE_NCLASS || !(f = front_enter(f))) {
        central_put(f, e, len);
        return true;
    }
    bool was_empty = !f->bytes;
    e->next = f->bin[c];
    f->bin[c] = e;
    f->bytes += len;
    f->last_put = ext;
    if (unlikely(f->bytes > f->cap || was_empty)) {
        front_put_overflow(f, was_empty);
        return true;
    }
    front_unclaim(f);
    return true;
}

/* A heap given up by its thread, or malloc_trim: the front goes back to
 * the extents, which reuse it by best fit for any size (threads that come
 * and go rarely meet the same classes again). */
void large_front_flush(LargeFront *f)
{
    /* the purger is giving it back: it holds the claim for a few loads
     * and stores, but may be descheduled meanwhile (sleep, not spin: a
     * real-time thread would keep it from running on a single CPU) */
    while (!front_claim(f, FRONT_OWNER))
        os_futex_wait(&f->claim, FRONT_PURGER, os_now_ms() + 1);
    size_t bytes = 0;
    CachedExtent *list = front_take(f, 0, &bytes);
    f->big_misses = 0; /* (a heap given up starts afresh with its next thread) */
    f->straight = f->straight_twice = 0;
    front_unclaim(f);
    release(list);
}

/* The purger, for a heap whose thread runs (heap.c): a front whose thread
 * made no large malloc or free since the purger first saw its count a
 * decay time ago is taken whole and put on *idle, for
 * large_cache_release_decayed (once the heap list's lock is released); the
 * extents then purge it at once (it waited a decay time).  Returns when
 * to look again (0: it holds nothing); a front in use is looked at again
 * a decay time later. */
uint64_t large_front_decay(LargeFront *f, uint64_t now, CachedExtent **idle)
{
    uint64_t decay = decay_time();
    if (!front_claim(f, FRONT_PURGER))
        return now + decay;
    uint64_t since = f->idle.seen_ms;
    uint64_t due = f->bytes ? idle_watch(&f->idle, f->uses, now, decay) : 0;
    CachedExtent *taken = NULL;
    if (f->bytes && !due) {
        size_t bytes = 0;
        taken = front_take(f, 0, &bytes);
        f->misses = 0;
        f->last_put = NULL;
    }
    front_unclaim(f);
    if (taken) {
        STAT_INC(large_fronts_decayed);
        CachedExtent *last = taken;
        for (;; last = last->next) {
            last->freed_ms = since;
            if (!last->next)
                break;
        }
        last->next = *idle;
        *idle = taken;
    }
    return due;
}

/* Does the front hold extents (or is its thread using it)?  Takes no
 * lock: the purger asks with the extents' lock held. */
bool large_front_held(LargeFront *f)
{
    if (!front_claim(f, FRONT_PURGER))
        return true;
    bool held = f->bytes != 0;
    front_unclaim(f);
    return held;
}

/* Decay: extents that waited a decay time in the central cache (all: every
 * one) go back to the extents.  Each stack is taken whole and the young
 * ones are pushed back.  Returns when the next one is due (0: none). */
uint64_t large_cache_decay(bool all)
{
    uint64_t now = os_now_ms(), next_due = 0, decay = decay_time();
    for (unsigned i = 0; i < LARGE_NSHARD; i++) {
        Shard *s = &shards[i];
        if (!atomic_load_explicit(&s->bytes, RELAXED))
            continue;
        for (unsigned c = 0; c < HAK_LARGE_NCLASS; c++) {
            if (!atomic_load_explicit(&s->list[c], RELAXED))
                continue;
            CachedExtent *e = atomic_exchange_explicit(&s->list[c], NULL, memory_order_acquire);
            CachedExtent *old = NULL, *young = NULL, *young_last = NULL;
            size_t cut = 0;
            while (e) {
                CachedExtent *next = e->next;
                /* freed_ms may be a tick after now (another thread's put) */
                if (all || (now >= e->freed_ms && now - e->freed_ms >= decay)) {
                    e->next = old;
                    old = e;
                    cut += e->len;
                } else {
                    if (!next_due || e->freed_ms + decay < next_due)
                        next_due = e->freed_ms + decay;
                    e->next = young;
                    young = e;
                    if (!young_last)
                        young_last = e;
                }
                e = next;
            }
            if (young)
                stack_push(s, c, young, young_last);
            atomic_fetch_sub_explicit(&s->bytes, cut, RELAXED);
            large_cache_release_decayed(old);
        }
    }
    return next_due;
}

/* In a fork child: the central cache's stacks hold what they held, but
 * not the extents another thread had taken off them at the fork (a decay
 * walk, a refill), which stay counted in the shards' bytes: counted
 * again, or the child's purger would never find the cache empty and
 * central_put would measure its cap against bytes that are not there.
 * (The extents themselves are lost to the child, like those threads'
 * fronts.) */
void large_cache_fork_child(void)
{
    for (unsigned i = 0; i < LARGE_NSHARD; i++) {
        size_t bytes = 0;
        for (unsigned c = 0; c < HAK_LARGE_NCLASS; c++)
            for (CachedExtent *e = atomic_load_explicit(&shards[i].list[c], RELAXED); e; e = e->next)
                bytes += e->len;
        atomic_store_explicit(&shards[i].bytes, bytes, RELAXED);
    }
}

void large_count_heapless(bool alloc, int64_t bytes)
{
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
    size_t cached = large_cache_central_bytes();
    st->large_bytes_peak = atomic_load(&held_peak);
    st->bytes_cached += cached;
    st->bytes_dirty += cached;
    st->large_bytes_cached += cached;
}
