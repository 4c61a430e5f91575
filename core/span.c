/* SuperSlabs and spans: taking slabs for a new span, carving its blocks,
 * handing a span's free blocks to the thread front, putting blocks back,
 * and giving empty spans and SuperSlabs back.  Only the owning heap's
 * thread (or the collector of an abandoned heap) runs any of this.
 * SPDX-License-Identifier: MIT */
#include "harden.h"
#include "heap.h"
#include "os.h"
#include "registry.h"

#include <string.h>

/* Bytes of spans given to the tiny and mid classes, and their peaks: per
 * heap (only its owner writes them), summed when read. */
static void span_bytes_add(Heap *h, unsigned cls, int64_t delta)
{
    unsigned tier = cls >= HAK_NCLASS_TINY;
    int64_t now = h->span_bytes[tier] + delta;
    __atomic_store_n(&h->span_bytes[tier], now, __ATOMIC_RELAXED);
    if (now > h->span_peak[tier])
        __atomic_store_n(&h->span_peak[tier], now, __ATOMIC_RELAXED);
}

void partial_push(Heap *h, Span *s)
{
    HAK_ASSERT(s->state != SPAN_PARTIAL && s->nslabs);
    s->state = SPAN_PARTIAL;
    s->next = NULL;
    s->prev = h->partial_tail[s->cls];
    if (s->prev) s->prev->next = s; else h->partial[s->cls] = s;
    h->partial_tail[s->cls] = s;
}

void partial_remove(Heap *h, Span *s)
{
    HAK_ASSERT(s->state == SPAN_PARTIAL);
    if (s->prev) s->prev->next = s->next; else h->partial[s->cls] = s->next;
    if (s->next) s->next->prev = s->prev; else h->partial_tail[s->cls] = s->prev;
    s->next = s->prev = NULL;
}

/* ---- the free slabs' resident pages (Heap.slabs_lock held) ---- */
static void slabs_dirty_add(Heap *h, int n)
{
    atomic_store_explicit(&h->slabs_dirty, atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static void slabs_purged_add(Heap *h, size_t bytes) /* (the statistics read it unlocked) */
{
    __atomic_store_n(&h->slab_bytes_purged, h->slab_bytes_purged + bytes, __ATOMIC_RELAXED);
}

/* Let go of slabs_lock, taken when the heap held had_dirty free slabs that
 * may be resident: a heap that had none and has some now wakes a purger
 * that may sleep with nothing to do. */
static void slabs_unlock(Heap *h, bool had_dirty)
{
    bool has_dirty = atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed) != 0;
    lock_release(&h->slabs_lock);
    if (!had_dirty && has_dirty)
        purger_notify();
}

/* Purge the dirty free slabs of ss, at most *budget of them (taken off
 * it); returns the bytes purged. */
static size_t superslab_purge_dirty(Heap *h, SuperSlab *ss, unsigned *budget)
{
    size_t bytes = 0;
    uint32_t m = ss->dirty_mask;
    while (m && *budget) {
        unsigned first = (unsigned)__builtin_ctz(m), n = (unsigned)__builtin_ctz(~(m >> first));
        if (first + n > HAK_SLABS_PER_SS)
            n = HAK_SLABS_PER_SS - first;
        if (n > *budget)
            n = *budget;
        if (!os_purge((char *)ss + ((size_t)first << HAK_SLAB_SHIFT), (size_t)n << HAK_SLAB_SHIFT))
            break; /* (kept dirty: the next look tries again) */
        uint32_t run = (uint32_t)(((1ull << n) - 1) << first);
        ss->dirty_mask &= ~run;
        slabs_dirty_add(h, -(int)n);
        bytes += (size_t)n << HAK_SLAB_SHIFT;
        *budget -= n;
        m &= ~run;
    }
    slabs_purged_add(h, bytes);
    return bytes;
}

size_t heap_purge_free_slabs(Heap *h)
{
    unsigned all = UINT32_MAX;
    lock_acquire(&h->slabs_lock);
    size_t bytes = h->spare ? superslab_purge_dirty(h, h->spare, &all) : 0;
    for (SuperSlab *ss = h->superslabs; ss; ss = ss->next)
        bytes += superslab_purge_dirty(h, ss, &all);
    lock_release(&h->slabs_lock);
    return bytes;
}

/* One SuperSlab's look: when it is due again (0: nothing dirty left; now:
 * at once, the heap's budget being spent, once the locks are let go). */
static uint64_t superslab_slabs_decay(Heap *h, SuperSlab *ss, uint64_t now, uint64_t decay, unsigned *budget)
{
    if (!ss->dirty_mask)
        return 0;
    uint64_t due = idle_watch(&ss->slabs_idle, ss->span_releases, now, decay);
    if (due)
        return due;
    superslab_purge_dirty(h, ss, budget);
    if (!ss->dirty_mask)
        return 0;
    return *budget ? now + decay /* a purge failed: later */ : now;
}

uint64_t heap_slabs_decay(Heap *h, uint64_t now)
{
    uint64_t decay = decay_time();
    if (!atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed))
        return 0;
    if (!lock_try(&h->slabs_lock))
        return now + decay; /* its thread is taking or giving back a span */
    /* A bounded pass: the heap's thread may be waiting for the lock. */
    unsigned budget = SLABS_PURGE_MAX;
    uint64_t next = h->spare ? superslab_slabs_decay(h, h->spare, now, decay, &budget) : 0;
    for (SuperSlab *ss = h->superslabs; ss; ss = ss->next) {
        uint64_t due = superslab_slabs_decay(h, ss, now, decay, &budget);
        if (due && (!next || due < next))
            next = due;
    }
    lock_release(&h->slabs_lock);
    return next;
}

/* A SuperSlab nobody uses goes back to the extents (its dirty slabs with it:
 * the extents count the whole of it resident). */
void superslab_to_extents(Heap *h, SuperSlab *ss)
{
    slabs_dirty_add(h, -__builtin_popcount(ss->dirty_mask));
    ss->dirty_mask = 0;
    registry_set(ss, HAK_CHUNK_SIZE, CHUNK_EXTENT);
    extent_free(ss, HAK_CHUNK_SIZE); /* guarded whole, made accessible when reused */
}

static void superslab_release(Heap *h, SuperSlab *ss)
{
    if (ss->prev) ss->prev->next = ss->next; else h->superslabs = ss->next;
    if (ss->next) ss->next->prev = ss->prev;
    h->superslabs_live--;
    if (!h->spare && h->state == HEAP_ACTIVE) {
        h->spare = ss; /* keep one, so a heap that breathes does not churn */
        return;
    }
    superslab_to_extents(h, ss);
}

static void superslab_link_head(Heap *h, SuperSlab *ss)
{
    ss->prev = NULL;
    ss->next = h->superslabs;
    if (ss->next)
        ss->next->prev = ss;
    h->superslabs = ss;
}

/* An empty span goes back to its SuperSlab; an empty SuperSlab to the heap's
 * spare slot or the extent cache.  Returns true if the SuperSlab went too. */
static bool span_release_locked(Heap *h, SuperSlab *ss, Span *s)
{
    if (s->state == SPAN_PARTIAL)
        partial_remove(h, s);
    unsigned idx = (unsigned)(s - ss->spans);
    uint32_t bits = (uint32_t)(((1ull << s->nslabs) - 1) << idx);
    span_bytes_add(h, s->cls, -(int64_t)s->nslabs * HAK_SLAB_SIZE);
    memset(&ss->page_cls[(size_t)idx << (HAK_SLAB_SHIFT - HAK_PAGE_SHIFT)], HAK_NO_CLASS,
           (size_t)s->nslabs << (HAK_SLAB_SHIFT - HAK_PAGE_SHIFT)); /* free() rejects them now */
    os_guard(span_start(ss, s), (size_t)s->nslabs << HAK_SLAB_SHIFT);
    ss->span_releases++;
    size_t bytes = (size_t)s->nslabs << HAK_SLAB_SHIFT;
    if (!options.decay_ms && os_purge(span_start(ss, s), bytes)) { /* 0: at once */
        slabs_purged_add(h, bytes);
    } else {
        ss->dirty_mask |= bits;
        slabs_dirty_add(h, s->nslabs);
    }
    s->nslabs = 0;
    s->state = 0;
    bool was_full = ss->free_mask == 0;
    ss->free_mask |= bits;
    if (ss->free_mask == FULL_MASK) {
        superslab_release(h, ss);
        return true;
    }
    if (was_full && h->superslabs != ss) {
        /* it has room again: to the head of the list, where span_new looks first */
        ss->prev->next = ss->next;
        if (ss->next) ss->next->prev = ss->prev;
        superslab_link_head(h, ss);
    }
    return false;
}

bool span_release(Heap *h, SuperSlab *ss, Span *s)
{
    HAK_ASSERT(s->used == 0 && s->state != SPAN_CURRENT && ss->owner == h);
    span_validate(ss, s);
    lock_acquire(&h->slabs_lock);
    bool had_dirty = atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed) != 0;
    bool gone = span_release_locked(h, ss, s);
    slabs_unlock(h, had_dirty);
    return gone;
}

/* With slabs_lock held, which it lets go of while it maps one (collecting
 * abandoned heaps takes their locks and the heap list's).  Guard pages
 * (hardened build): everything of a SuperSlab but its header page and the
 * spans in use is PROT_NONE, so that a run off the end of a span, or off
 * the header, faults (os_guard); a failure to make a span accessible again
 * fails the span (span_new). */
static SuperSlab *superslab_get(Heap *h)
{
    SuperSlab *ss = h->spare;
    if (ss) {
        h->spare = NULL;
    } else {
        lock_release(&h->slabs_lock);
        if (__atomic_load_n(&abandoned_heaps, __ATOMIC_RELAXED))
            heap_collect_abandoned(false);
        bool zeroed;
        ss = extent_alloc(HAK_CHUNK_SIZE, HAK_CHUNK_SIZE, 0, &zeroed);
        lock_acquire(&h->slabs_lock);
        if (!ss)
            return NULL;
        if (zeroed) STAT_INC(superslabs_mapped); else STAT_INC(superslabs_reused);
        memset(ss, 0, sizeof(SuperSlab));
        ss->owner = h;
        ss->free_mask = FULL_MASK;
        /* slab 0 is this header: like free slabs, it has no class */
        memset(ss->page_cls, HAK_NO_CLASS, sizeof ss->page_cls);
        /* the mid sizes' page: all 0 (no block armed), touched only by a
         * mid block's malloc */
        size_t meta = HAK_PAGE_SIZE + (MID_CANARY ? MID_SIZES_BYTES : 0);
        if (MID_CANARY && !zeroed)
            memset((char *)ss + HAK_PAGE_SIZE, 0, MID_SIZES_BYTES);
        _Static_assert(sizeof(SuperSlab) <= HAK_PAGE_SIZE, "the header fits its guarded page");
        os_guard((char *)ss + meta, HAK_CHUNK_SIZE - meta);
        registry_set(ss, HAK_CHUNK_SIZE, CHUNK_SUPERSLAB);
        if (!zeroed) { /* extents that were in use: their pages may be resident */
            ss->dirty_mask = FULL_MASK & ~1u;
            slabs_dirty_add(h, HAK_SLABS_PER_SS - 1);
        }
    }
    superslab_link_head(h, ss);
    h->superslabs_live++;
    return ss;
}

/* First run of k set bits in mask: bit i of r says "bits i..i+len-1 are all
 * set"; doubling len costs log2(k) steps instead of k. */
static int find_run(uint32_t mask, unsigned k)
{
    uint32_t r = mask;
    unsigned len = 1;
    while (len * 2 <= k) {
        r &= r >> len;
        len *= 2;
    }
    if (len < k)
        r &= r >> (k - len);
    return r ? __builtin_ctz(r) : -1;
}

Span *span_new(Heap *h, unsigned cls)
{
    unsigned k = size_classes[cls].nslabs;
    SuperSlab *ss;
    int idx = -1;
    lock_acquire(&h->slabs_lock);
    bool had_dirty = atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed) != 0;
    for (ss = h->superslabs; ss && ss->free_mask; ss = ss->next)
        if ((idx = find_run(ss->free_mask, k)) >= 0)
            break;
    if (idx < 0) {
        if (!(ss = superslab_get(h))) {
            lock_release(&h->slabs_lock);
            return NULL;
        }
        idx = find_run(ss->free_mask, k);
    }
    /* the span's pages but its last (a guard) become accessible */
    if (HAK_GUARD_SIZE && !os_protect((char *)ss + ((size_t)idx << HAK_SLAB_SHIFT),
                                      ((size_t)k << HAK_SLAB_SHIFT) - HAK_GUARD_SIZE, true)) {
        lock_release(&h->slabs_lock);
        return NULL;
    }
    uint32_t bits = (uint32_t)(((1ull << k) - 1) << idx);
    ss->free_mask &= ~bits;
    slabs_dirty_add(h, -__builtin_popcount(ss->dirty_mask & bits));
    ss->dirty_mask &= ~bits;
    for (unsigned i = 0; i < k; i++) /* page_cls is set as pages are carved */
        ss->span_head[idx + i] = (uint8_t)idx;
    if (ss->free_mask == 0 && ss->next) {
        /* full: move it to the back so span_new stops at the first full one */
        SuperSlab *last = ss;
        while (last->next) last = last->next;
        if (ss->prev) ss->prev->next = ss->next; else h->superslabs = ss->next;
        ss->next->prev = ss->prev;
        last->next = ss;
        ss->prev = last;
        ss->next = NULL;
    }
    slabs_unlock(h, had_dirty); /* (a SuperSlab from extents in use: superslab_get) */
    Span *s = &ss->spans[idx];
    memset(s, 0, sizeof *s);
    const ClassInfo *ci = &size_classes[cls];
    span_bytes_add(h, cls, (int64_t)k * HAK_SLAB_SIZE);
    s->cls = (uint8_t)cls;
    s->nslabs = (uint8_t)k;
    s->bump = span_start(ss, s);
    s->fresh = ci->capacity;
    return s;
}

/* Link the blocks p + order[i] * bs for i in [from, to) into a list of
 * free blocks (order NULL: i itself). */
static Block *link_blocks(char *p, size_t bs, const uint16_t *order, uint32_t from, uint32_t to)
{
    Block *head = NULL;
    for (uint32_t i = to; i-- > from;) {
        Block *b = (Block *)(p + (order ? order[i] : i) * bs);
        block_set_next(b, head);
        b->free_mark = block_mark(b);
        head = b;
    }
    return head;
}

/* Carve at least want never-used blocks of the span, and then every block
 * that starts in the same 4 KiB page as the last of them: a page gets its
 * class in page_cls only once all blocks that start in it are carved, so
 * free() rejects any address in a page not carved yet (a block malloc never
 * returned can never be freed into a list and handed out twice), while
 * carving still touches a few pages at a time.  The hardened build links
 * them in a random order, so that neighbours in memory are not handed out
 * one after another. */
static Block *span_carve(SuperSlab *ss, Span *s, uint32_t want, uint32_t *count)
{
    size_t bs = span_block_size(s);
    char *p = s->bump;
    size_t off = (size_t)(p - span_start(ss, s));
    size_t end = align_up(off + (want - 1) * bs + 1, HAK_PAGE_SIZE); /* carve starts < end */
    uint32_t n = (uint32_t)((end - off + bs - 1) / bs);
    if (n > s->fresh)
        n = s->fresh;
    const uint16_t *order = NULL;
    harden_carve(ss, s, p, n);
#if HAK_HARDEN_RANDOM_ORDER
    static __thread uint64_t rng __attribute__((tls_model("initial-exec")));
    if (!rng)
        rng = process_secret ^ (uintptr_t)&rng;
    /* a carve ends in the page after CARVE_BYTES at the latest */
    uint16_t shuffled[(CARVE_BYTES + HAK_PAGE_SIZE) / HAK_MIN_ALIGN];
    for (uint32_t i = 0; i < n; i++)
        shuffled[i] = (uint16_t)i;
    for (uint32_t i = n - 1; i > 0; i--) { /* Fisher-Yates, xorshift64 */
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        uint32_t j = (uint32_t)(rng % (i + 1));
        uint16_t t = shuffled[i]; shuffled[i] = shuffled[j]; shuffled[j] = t;
    }
    order = shuffled;
#endif
    Block *list = link_blocks(p, bs, order, 0, n);
    s->fresh -= n;
    char *bump = p + (size_t)n * bs;
    /* read by remote frees (block_is_valid); release: the hardened build's
     * neighbour checks read the carved blocks' canaries below it */
    __atomic_store_n(&s->bump, bump, __ATOMIC_RELEASE);
    /* up to the page of the last carved start: the pages after it that the
     * last block reaches into hold no start, or starts not carved yet */
    uintptr_t first = ((uintptr_t)p >> HAK_PAGE_SHIFT) & (HAK_PAGES_PER_SS - 1);
    uintptr_t last = (((uintptr_t)bump - bs) >> HAK_PAGE_SHIFT) & (HAK_PAGES_PER_SS - 1);
    for (uintptr_t pg = first; pg <= last; pg++)
        __atomic_store_n(&ss->page_cls[pg], s->cls, __ATOMIC_RELEASE);
    *count = n;
    return list;
}

/* Take all free blocks of a span for the thread front: its own list, the
 * frees other threads sent, or never-used blocks; *count says how many. */
Block *span_take(Heap *h, SuperSlab *ss, Span *s, uint32_t *count)
{
    span_validate(ss, s);
    if (atomic_load_explicit(&s->thread_free, memory_order_relaxed) > SPAN_NOTIFY) {
        Block *b = (Block *)atomic_exchange_explicit(&s->thread_free, 0, memory_order_acquire);
        uint32_t k = 0;
        while (b) {
            if (unlikely(k >= s->used)) /* more frees than blocks out: a cycle */
                fatal_corruption("cross-thread free list corrupted (double free?) in span", s);
            Block *next = block_next(b);
            block_set_next(b, s->free);
            s->free = b;
            b = next;
            k++;
        }
        s->used -= k;
    }
    Block *list = s->free;
    uint32_t n = span_capacity(s) - s->fresh - s->used;
    if (list) {
        s->free = NULL;
    } else if (s->fresh) {
        size_t bs = span_block_size(s);
        list = span_carve(ss, s, CARVE_BYTES / bs > 4 ? (uint32_t)(CARVE_BYTES / bs) : 4, &n);
    } else {
        return NULL;
    }
    s->used += n;
    HAK_ASSERT(s->used + s->fresh <= span_capacity(s));
    h->refills[s->cls]++;
    *count = n;
    return list;
}

bool span_after_put(Heap *h, SuperSlab *ss, Span *s)
{
    HAK_ASSERT(ss->owner == h && s->used + s->fresh < span_capacity(s));
    if (s->state == SPAN_FULL) {
        uintptr_t notify = SPAN_NOTIFY; /* stop asking remote frees to wake us */
        atomic_compare_exchange_strong(&s->thread_free, &notify, 0);
        partial_push(h, s);
    }
    if (s->used == 0 && s->state == SPAN_PARTIAL)
        return span_release(h, ss, s);
    return false;
}

/* Return a block to a span of the heap, by its owner (or the collector of
 * an abandoned heap): push on span->free, wake a FULL span, release an
 * empty one.  Returns true if that released the whole SuperSlab. */
bool span_put(Heap *h, SuperSlab *ss, Span *s, Block *b)
{
    HAK_ASSERT(s->used > 0 && block_is_valid(ss, s, b));
    block_set_next(b, s->free);
    s->free = b;
    s->used--;
    return span_after_put(h, ss, s);
}

