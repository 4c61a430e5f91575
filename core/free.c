/* The slow paths of free: an owner's free that looks wrong (double free
 * or not a block), the thread front flushing back to its spans, frees
 * from other threads (lock-free, into the span or the owner's delayed
 * list) and the owner draining that list.
 * SPDX-License-Identifier: MIT */
#include "harden.h"
#include "heap.h"
#include "registry.h"

/* Is b on the list that starts at x?  At most max links are followed, and
 * each one is checked to be a block of h before it is read. */
static bool list_has(Heap *h, Block *x, const Block *b, uint64_t max)
{
    for (; x && max; max--) {
        if (x == b)
            return true;
        if (registry_kind(x) != CHUNK_SUPERSLAB || superslab_of(x)->owner != h)
            fatal_corruption("corrupted free list (use after free?) at", x);
        x = block_next_fast(x);
    }
    return false;
}

/* The owner's free of b found something unusual: b is not a block start of
 * a carved slab, or it carries the free mark, or it is a mid block of the
 * default build (its tail canary is checked here).  Either the misuse is
 * reported, or (the mark was the program's own data) b is freed as usual.
 * A free block is on one of four lists: the thread front, its span's own
 * list, its span's cross-thread list or the heap's delayed list; only the
 * owner removes blocks from the last two, so walking them from a snapshot
 * of their head is safe. */
static HAK_NOINLINE void front_free_odd(SuperSlab *ss, Block *b, unsigned cls)
{
    Span *s = span_of(ss, b);
    if (!block_is_valid(ss, s, b)) {
        invalid_free_report("free of a pointer that is not an allocated block", b);
        return;
    }
    ThreadFront *front = &thread_front;
    if (b->free_mark == block_mark(b)) {
        Heap *h = front->heap;
        uint32_t cap = span_capacity(s);
        uintptr_t tf = atomic_load_explicit(&s->thread_free, memory_order_acquire);
        if (list_has(h, front->free[s->cls], b, front_count(front, s->cls)) ||
            list_has(h, s->free, b, cap) || (tf > SPAN_NOTIFY && list_has(h, (Block *)tf, b, cap)) ||
            list_has(h, atomic_load_explicit(&h->delayed, memory_order_acquire), b, (uint64_t)1 << 32)) {
            invalid_free_report("double free", b);
            return;
        }
    }
    if (s->cls >= HAK_NCLASS_TINY)
        mid_check(b, span_block_size(s));
    front_push(front, cls, b);
}

void front_free_slow(SuperSlab *ss, Block *b, unsigned cls, uint32_t off)
{
    /* A mid block as slab_free would have taken it (page_cls says its
     * page is carved, off is a block start, no mark): its canary, then
     * the front, with no register saved (the rest is front_free_odd).
     * No class test: a tiny class's magic is its fast magic, so a tiny
     * block here failed the offset or the mark test already, and
     * HAK_NO_CLASS (the header, free slabs, pages not carved) passes no
     * offset (its div_magic is 0). */
    if (MID_CANARY && offset_is_block(cls, off) && b->free_mark != block_mark(b) &&
        mid_check_common(b, size_classes[cls].block_size)) {
        front_push(&thread_front, cls, b);
        return;
    }
    front_free_odd(ss, b, cls);
}

/* Give all but keep of the front's blocks of cls back to their spans. */
void front_flush(Heap *h, ThreadFront *front, unsigned cls, uint32_t keep)
{
    /* The list holds exactly count blocks; a block freed twice makes it
     * longer (a cycle), which must end in a report, not an endless walk.
     * The newest blocks go back: they are the ones still in the cache, so
     * walking them costs no misses (like tcmalloc's release to the central
     * list); the older ones stay for the next mallocs.
     * Blocks freed one after another mostly come from one slab (a program
     * tearing down what it built): such a run is already linked, with the
     * links span lists use, so it goes onto its span's list whole, and only
     * its first block pays for the checks and the span lookup. */
    uint32_t count = front_count(front, cls);
    if (keep >= count)
        return;
    Block *b = front->free[cls];
    for (uint32_t left = count - keep; left;) {
        SuperSlab *ss = superslab_of(b);
        /* The blocks were checked when they were freed; a link that leads
         * out of this heap's SuperSlabs means the list was overwritten.
         * The rest of a run is in the slab of a block that passed. */
        if (unlikely(!b || registry_kind(b) != CHUNK_SUPERSLAB || ss->owner != h))
            fatal_corruption("corrupted thread free list (use after free?) at", b);
        Span *s = span_of(ss, b);
        Block *first = b, *last;
        uint32_t run = 0;
        do {
            HAK_ASSERT(block_is_valid(ss, s, b));
            last = b;
            b = block_next_fast(b);
            run++;
        } while (--left && b && (((uintptr_t)b ^ (uintptr_t)last) >> HAK_SLAB_SHIFT) == 0);
        HAK_ASSERT(s->used >= run);
        block_set_next(last, s->free);
        s->free = first;
        s->used -= run;
        if (unlikely(s->used == 0 || s->state == SPAN_FULL))
            span_after_put(h, ss, s);
    }
    front->free[cls] = b;
    front->room[cls] = (int32_t)(size_classes[cls].front_max - keep);
    front_publish(h, front, cls);
    if (unlikely(!keep && b != NULL))
        fatal_corruption("thread free list longer than its count (double free?) at", b);
}

/* hak_free found the thread front of cls over its limit. */
void front_overflow(unsigned cls)
{
    ThreadFront *front = &thread_front;
    front_flush(front->heap, front, cls, size_classes[cls].front_max / 2);
}

static void delayed_push(Heap *h, Block *b)
{
    Block *head = atomic_load_explicit(&h->delayed, memory_order_relaxed);
    do {
        block_set_next(b, head);
    } while (!atomic_compare_exchange_weak_explicit(&h->delayed, &head, b,
                                                    memory_order_release, memory_order_relaxed));
}

/* b (checked, counted, with the mark) goes on its span's cross-thread
 * list, or to the owner heap's delayed list if the span is FULL. */
static inline __attribute__((always_inline)) void span_free_remote_push(SuperSlab *ss, Span *s, Block *b)
{
    /* Read before b is published: once it is on thread_free the owner may
     * empty and release the span. */
    Heap *owner = ss->owner;
    uintptr_t tf = atomic_load_explicit(&s->thread_free, memory_order_relaxed);
    for (;;) {
        if (tf == SPAN_NOTIFY) {
            /* The span is FULL and its owner is not watching: claim the
             * notification and give the block to the heap, which puts the
             * span back on its partial list. */
            if (atomic_compare_exchange_weak_explicit(&s->thread_free, &tf, 0,
                                                      memory_order_acq_rel, memory_order_relaxed)) {
                delayed_push(owner, b);
                return;
            }
            continue;
        }
        if (unlikely((Block *)tf == b)) {
            invalid_free_report("double free", b);
            return;
        }
        block_set_next(b, (Block *)tf);
        if (atomic_compare_exchange_weak_explicit(&s->thread_free, &tf, (uintptr_t)b,
                                                  memory_order_release, memory_order_relaxed))
            return;
    }
}

/* A cross-thread free other than the common one below: the first
 * RECLAIM_WINDOW of a thread, one without a heap, a block that is not a
 * carved block start or carries the mark, a mid block of the default
 * build (its tail canary). */
static __attribute__((noinline)) void span_free_remote_slow(SuperSlab *ss, Span *s, Block *b)
{
    Heap *owner = ss->owner;
    if (unlikely(!block_is_valid(ss, s, b))) {
        invalid_free_report("free of a pointer that is not an allocated block", b);
        return;
    }
    /* Counted per heap, never in a shared counter: a thread that only
     * frees (a consumer) gets a heap for it, once. */
    ThreadFront *front = &thread_front;
    Heap *mine = front->heap;
    if (unlikely(!mine) && !front->exited)
        mine = heap_acquire(front, true);
    /* Take-over on free (mimalloc has it as an option, reclaim on free): a
     * thread that frees into a heap whose thread exited takes that heap,
     * once, rather than send its frees to a heap nobody runs.  A thread
     * handed the blocks of one that exited (the next worker of a server,
     * larson's successor threads) then frees them as their owner and
     * reuses their memory, instead of filling a heap of its own while
     * theirs waits to be adopted: larson at 16 threads (2 cores) peaks at
     * 39-45 MB instead of 74-91.  Only a thread's first RECLAIM_WINDOW
     * cross-thread frees read the owner's state: after that no
     * cross-thread free reads the owner heap. */
    if (unlikely(front->reclaim_tries < RECLAIM_WINDOW) && mine && !front->exited) {
        front->reclaim_tries++;
        if (atomic_load_explicit(&owner->state, memory_order_relaxed) == HEAP_ABANDONED &&
            heap_take_over(front, owner)) {
            slab_free(ss, b, page_index(b)); /* now the owner's free */
            return;
        }
    }
    /* The free mark: b was freed and not handed out since.  The owner
     * confirms it on its lists (front_free_slow), which only it may walk;
     * here it stands alone: a live block's second word holds it only if
     * the program copied it there out of a freed block, one in 2^64
     * otherwise.  Without this, a block freed here twice with other
     * frees between, the first already taken back by its owner, would be
     * on two lists at once and handed out twice. */
    if (unlikely(b->free_mark == block_mark(b))) {
        invalid_free_report("double free", b);
        return;
    }
    if (s->cls >= HAK_NCLASS_TINY)
        mid_check(b, span_block_size(s));
    if (mine) mine->remote[s->cls]++; else STAT_INC(remote_frees_exited);
    b->free_mark = block_mark(b);
    span_free_remote_push(ss, s, b);
}

/* The common cross-thread free, in as few instructions (and registers) as
 * it takes: a thread with a heap, past its reclaim window, frees a carved
 * block start without the mark (of a tiny class, in the default build:
 * block_is_valid_fast): counted, marked, pushed. */
void span_free_remote(SuperSlab *ss, Span *s, Block *b)
{
    ThreadFront *front = &thread_front;
    Heap *mine = front->heap;
    if (likely(mine && front->reclaim_tries >= RECLAIM_WINDOW && block_is_valid_fast(ss, s, b) &&
               b->free_mark != block_mark(b))) {
        mine->remote[s->cls]++;
        b->free_mark = block_mark(b);
        span_free_remote_push(ss, s, b);
        return;
    }
    span_free_remote_slow(ss, s, b);
}

/* Blocks on the delayed list come from many SuperSlabs: decode the links
 * without the same-SuperSlab check, but require each to be in one. */
void heap_drain_delayed(Heap *h)
{
    Block *b = atomic_exchange_explicit(&h->delayed, NULL, memory_order_acquire);
    while (b) {
        Block *next = (Block *)(b->next_enc ^ process_secret);
        if (next && registry_kind(next) != CHUNK_SUPERSLAB)
            fatal_corruption("corrupted delayed-free list at", b);
        SuperSlab *ss = superslab_of(b);
        span_put(h, ss, span_of(ss, b), b);
        b = next;
    }
}

