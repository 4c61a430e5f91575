/* The debug build's invariant checks of spans and heaps (HAK_DEBUG):
 * the counts add up, each span is on the list its state says, and the
 * SuperSlab, page and class tables agree with it.  They run where a bug
 * would first show (a span handed to a front or given back, a heap
 * adopted, collected, trimmed or given up, and once per 16 refills for
 * each SuperSlab the heap holds: heap.c) and
 * end in assert_failed at the first thing wrong.  Only the heap's
 * owner calls them, so what they read does not change meanwhile (other
 * threads only push on thread_free and the delayed list, not read here).
 * The release build has none of this (heap.h).
 * SPDX-License-Identifier: MIT */
#include "heap.h"
#include "registry.h"

#if HAK_DEBUG

#define VALID(c) HAK_ASSERT(c)

void span_validate(SuperSlab *ss, const Span *s)
{
    unsigned idx = (unsigned)(s - ss->spans);
    VALID(idx >= 1 && idx < HAK_SLABS_PER_SS && s->nslabs >= 1 && idx + s->nslabs <= HAK_SLABS_PER_SS);
    VALID(s->cls < HAK_NCLASS && s->nslabs == size_classes[s->cls].nslabs);
    for (unsigned i = 0; i < s->nslabs; i++)
        VALID(ss->span_head[idx + i] == idx && !(ss->free_mask >> (idx + i) & 1));
    uint32_t cap = span_capacity(s);
    size_t bs = span_block_size(s);
    const char *start = span_start(ss, (Span *)s);
    VALID(s->used + s->fresh <= cap);
    VALID(s->bump == start + (size_t)(cap - s->fresh) * bs);
    if (s->bump > start) { /* the pages of the first and last carved blocks */
        VALID(ss->page_cls[(size_t)(start - (char *)ss) >> HAK_PAGE_SHIFT] == s->cls);
        VALID(ss->page_cls[(size_t)(s->bump - bs - (char *)ss) >> HAK_PAGE_SHIFT] == s->cls);
    }
    /* the span's own list: its blocks, below the carving point, exactly
     * the ones neither out nor fresh */
    uint32_t k = 0;
    for (const Block *b = s->free; b; b = block_next_fast(b)) {
        VALID(k <= cap && (const char *)b >= start && (const char *)b < s->bump);
        VALID(offset_is_block(s->cls, span_offset(ss, (Span *)s, b)));
        VALID(!MID_CANARY || s->cls < HAK_NCLASS_TINY || *mid_size_slot(b) == 0); /* disarmed */
        k++;
    }
    VALID(k == cap - s->fresh - s->used);
    if (s->state == SPAN_FULL)
        VALID(!s->free && !s->fresh);
}

static void partial_validate(Heap *h, unsigned cls)
{
    const Span *prev = NULL;
    for (Span *s = h->partial[cls]; s; prev = s, s = s->next) {
        VALID(s->prev == prev && s->state == SPAN_PARTIAL && s->cls == cls);
        SuperSlab *ss = superslab_of(s);
        VALID(ss->owner == h);
        span_validate(ss, s);
    }
    VALID(h->partial_tail[cls] == prev);
}

void heap_validate(Heap *h, const ThreadFront *front)
{
    for (unsigned cls = 0; cls < HAK_NCLASS; cls++) {
        partial_validate(h, cls);
        if (front && front->cur[cls]) {
            Span *s = front->cur[cls];
            VALID(s->state == SPAN_CURRENT && s->cls == cls && superslab_of(s)->owner == h);
            span_validate(superslab_of(s), s);
        }
        if (front) { /* the front holds exactly count blocks of the class */
            uint32_t n = 0;
            for (const Block *b = front->free[cls]; b && n <= front_count(front, cls); b = block_next_fast(b)) {
                VALID(!MID_CANARY || cls < HAK_NCLASS_TINY || *mid_size_slot(b) == 0);
                n++;
            }
            VALID(n == front_count(front, cls));
        }
    }
    uint64_t live = 0;
    const SuperSlab *prev = NULL;
    lock_acquire(&h->slabs_lock); /* the purger purges free slabs meanwhile */
    unsigned dirty = h->spare ? (unsigned)__builtin_popcount(h->spare->dirty_mask) : 0;
    for (SuperSlab *ss = h->superslabs; ss; prev = ss, ss = ss->next, live++) {
        VALID(ss->prev == prev && ss->owner == h && registry_kind(ss) == CHUNK_SUPERSLAB);
        VALID(!(ss->free_mask & 1)); /* slab 0 is the header */
        VALID(!(ss->dirty_mask & ~ss->free_mask)); /* only free slabs are counted dirty */
        dirty += (unsigned)__builtin_popcount(ss->dirty_mask);
        for (unsigned i = 1; i < HAK_SLABS_PER_SS; i++) {
            Span *s = &ss->spans[i];
            if (!(ss->free_mask >> i & 1) && ss->span_head[i] == i)
                span_validate(ss, s);
        }
    }
    VALID(dirty == atomic_load_explicit(&h->slabs_dirty, memory_order_relaxed));
    lock_release(&h->slabs_lock);
    VALID(live == h->superslabs_live);
}
#endif
