/* Thread heaps: the slow paths of the tiny and mid tiers.
 *
 * The fast paths (api.c) only pop and push tc.free[cls].  Everything else
 * about spans happens here: refilling the front from the current span,
 * switching spans, carving new spans out of the heap's SuperSlabs,
 * cross-thread frees, giving emptied spans and SuperSlabs back, and the
 * life cycle of heaps (thread start, thread exit, fork).  See types.h for
 * the data structures.
 * SPDX-License-Identifier: MIT */
#include "harden.h"
#include "os.h"
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>
#include <sys/auxv.h>

__thread ThreadCache hak_tc __attribute__((tls_model("initial-exec")));
uintptr_t hak_secret;
uintptr_t hak_free_mark;
uint8_t   hak_class_of[(HAK_SMALL_MAX >> 4) + 1];
ClassInfo hak_classes[HAK_NCLASS + 1]; /* + HAK_NO_CLASS, all zero */

static HakLock heaps_mutex = HAK_LOCK_INIT;
static Heap  *all_heaps;          /* every heap, linked by all_next      */
static Heap  *abandoned_heaps;    /* heaps of exited threads, LIFO       */
static char  *heap_store;         /* storage that new heaps are cut from */
static size_t heap_store_left;
static pthread_key_t exit_key;
static bool   runtime_ready;
static _Atomic bool atfork_registered;
__thread bool hak_fork_locks_held __attribute__((tls_model("initial-exec")));
static uint64_t last_collect_ms;

#define FULL_MASK   (~(uint32_t)1)  /* slabs 1..31: slab 0 is the header */
#define CARVE_BYTES 4096            /* fresh blocks given per refill      */
#define SPAN_MIN_BLOCKS 128         /* see classes_init                   */
#define FRONT_BYTES (256 * 1024)    /* see classes_init                   */
#define HEAP_STRIDE align_up(sizeof(Heap), 64)
static Heap *heap_acquire(ThreadCache *tc, bool at_exit);

/* ------------------------------------------------------------------ */
/* Size classes: 16..128 by 16, then four classes per power of two up to
 * 52 KiB (at most 25% apart, so internal waste stays low).              */

unsigned size_class_compute(size_t size)
{
    if (size <= 128)
        return size ? (unsigned)((size - 1) >> 4) : 0;
    size_t s = size - 1;
    unsigned lg = 63 - (unsigned)__builtin_clzl(s);
    return 8 + (lg - 7) * 4 + (unsigned)((s >> (lg - 2)) & 3);
}

static void classes_init(void)
{
    for (unsigned c = 0; c < HAK_NCLASS; c++) {
        size_t size;
        if (c < 8) {
            size = 16 * (c + 1);
        } else {
            unsigned lg = 7 + (c - 8) / 4, sub = (c - 8) % 4;
            size = ((size_t)1 << lg) + (sub + 1) * ((size_t)1 << (lg - 2));
        }
        if (size > HAK_SMALL_MAX)
            size = HAK_SMALL_MAX;
        /* Span length: enough slabs for SPAN_MIN_BLOCKS blocks (a refill
         * then finds a useful batch of frees), and for mid classes the
         * fewest beyond that whose blocks waste at most 1/32, else the
         * least waste. */
        unsigned kmin = (unsigned)((SPAN_MIN_BLOCKS * size + HAK_SLAB_SIZE - 1) / HAK_SLAB_SIZE);
        if (kmin > HAK_MAX_SPAN) kmin = HAK_MAX_SPAN;
        if (kmin < 1) kmin = 1;
        unsigned best = kmin;
        if (c >= HAK_NCLASS_TINY) {
            size_t best_waste = HAK_SLAB_SIZE;
            for (unsigned k = kmin; k <= HAK_MAX_SPAN; k++) {
                size_t bytes = k * HAK_SLAB_SIZE, waste = bytes % size;
                if (waste * 32 <= bytes) { best = k; break; }
                if (waste * best * HAK_SLAB_SIZE < best_waste * bytes) {
                    best = k;
                    best_waste = waste;
                }
            }
        }
        /* Thread fronts keep up to FRONT_BYTES of a class (at least 32 and
         * at most 2048 blocks) before flushing half back to the spans. */
        size_t front = FRONT_BYTES / size;
        front = front < 32 ? 32 : front > 2048 ? 2048 : front;
        /* (the hardened build keeps each span's last page as a guard) */
        hak_classes[c] = (ClassInfo){ UINT64_MAX / size + 1, (uint32_t)size,
                                      (uint32_t)((best * HAK_SLAB_SIZE - HAK_GUARD_SIZE) / size),
                                      (uint32_t)front, (uint8_t)best };
    }
    for (size_t i = 0; i <= (HAK_SMALL_MAX >> 4); i++)
        hak_class_of[i] = (uint8_t)size_class_compute(i << 4);
}

static void runtime_init(void)
{
    /* The kernel gives every process 16 random bytes (AT_RANDOM). */
    const unsigned char *rnd = (const unsigned char *)getauxval(AT_RANDOM);
    uint64_t r = 0;
    if (rnd)
        memcpy(&r, rnd + 8, sizeof r); /* not 8-aligned */
    uintptr_t s = (uintptr_t)r;
    s ^= (uintptr_t)&s * 0x9E3779B97F4A7C15ull;
    hak_secret = s | 1;
    /* The free mark sits in every free block, where a program with a
     * use-after-free can read it: it is drawn on its own, not derived from
     * AT_RANDOM (glibc's stack-protector and pointer-guard bytes). */
    uint64_t mark = 0;
    if (!os_random(&mark, sizeof mark))
        mark = (os_now_ms() ^ (uintptr_t)&mark) * 0xD6E8FEB86659FD93ull;
    hak_free_mark = (uintptr_t)mark | 1;
    options_init();
    classes_init();
    pthread_key_create(&exit_key, heap_thread_exit);
    __atomic_store_n(&runtime_ready, true, __ATOMIC_RELEASE);
    if (hak_opt.verbose)
        options_print();
}

/* ------------------------------------------------------------------ */
/* Spans                                                                */

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

static void partial_push(Heap *h, Span *s)
{
    HAK_ASSERT(s->state != SPAN_PARTIAL && s->nslabs);
    s->state = SPAN_PARTIAL;
    s->next = NULL;
    s->prev = h->partial_tail[s->cls];
    if (s->prev) s->prev->next = s; else h->partial[s->cls] = s;
    h->partial_tail[s->cls] = s;
}

static void partial_remove(Heap *h, Span *s)
{
    HAK_ASSERT(s->state == SPAN_PARTIAL);
    if (s->prev) s->prev->next = s->next; else h->partial[s->cls] = s->next;
    if (s->next) s->next->prev = s->prev; else h->partial_tail[s->cls] = s->prev;
    s->next = s->prev = NULL;
}

/* Guard pages (hardened build): everything of a SuperSlab but its header
 * page and the spans in use is PROT_NONE, so that a run off the end of a
 * span, or off the header, faults (os_guard); a failure to make a span
 * accessible again fails the span. */
static void superslab_to_extents(SuperSlab *ss)
{
    registry_set(ss, HAK_CHUNK_SIZE, CHUNK_ARENA);
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
    superslab_to_extents(ss);
}

static void superslab_link_front(Heap *h, SuperSlab *ss)
{
    ss->prev = NULL;
    ss->next = h->superslabs;
    if (ss->next)
        ss->next->prev = ss;
    h->superslabs = ss;
}

/* An empty span goes back to its SuperSlab; an empty SuperSlab to the heap's
 * spare slot or the extent cache.  Returns true if the SuperSlab went too. */
static bool span_release(Heap *h, SuperSlab *ss, Span *s)
{
    HAK_ASSERT(s->used == 0 && s->state != SPAN_CURRENT && ss->owner == h);
    if (s->state == SPAN_PARTIAL)
        partial_remove(h, s);
    unsigned idx = (unsigned)(s - ss->spans);
    uint32_t bits = (uint32_t)(((1ull << s->nslabs) - 1) << idx);
    span_bytes_add(h, s->cls, -(int64_t)s->nslabs * HAK_SLAB_SIZE);
    memset(&ss->page_cls[(size_t)idx << (HAK_SLAB_SHIFT - HAK_PAGE_SHIFT)], HAK_NO_CLASS,
           (size_t)s->nslabs << (HAK_SLAB_SHIFT - HAK_PAGE_SHIFT)); /* free() rejects them now */
    os_guard(span_start(ss, s), (size_t)s->nslabs << HAK_SLAB_SHIFT);
    s->nslabs = 0;
    s->state = 0;
    bool was_full = ss->free_mask == 0;
    ss->free_mask |= bits;
    if (ss->free_mask == FULL_MASK) {
        superslab_release(h, ss);
        return true;
    }
    if (was_full && h->superslabs != ss) {
        /* it has room again: move it to the front where span_new looks first */
        ss->prev->next = ss->next;
        if (ss->next) ss->next->prev = ss->prev;
        superslab_link_front(h, ss);
    }
    return false;
}

static SuperSlab *superslab_get(Heap *h)
{
    SuperSlab *ss = h->spare;
    if (ss) {
        h->spare = NULL;
    } else {
        if (__atomic_load_n(&abandoned_heaps, __ATOMIC_RELAXED))
            heap_collect_abandoned(false);
        bool zeroed;
        ss = extent_alloc(HAK_CHUNK_SIZE, HAK_CHUNK_SIZE, 0, &zeroed);
        if (!ss)
            return NULL;
        if (zeroed) STAT_INC(superslabs_mapped); else STAT_INC(superslabs_reused);
        memset(ss, 0, sizeof(SuperSlab));
        ss->owner = h;
        ss->free_mask = FULL_MASK;
        /* slab 0 is this header: like free slabs, it has no class */
        memset(ss->page_cls, HAK_NO_CLASS, sizeof ss->page_cls);
        _Static_assert(sizeof(SuperSlab) <= HAK_PAGE_SIZE, "the header fits its guarded page");
        os_guard((char *)ss + HAK_PAGE_SIZE, HAK_CHUNK_SIZE - HAK_PAGE_SIZE);
        registry_set(ss, HAK_CHUNK_SIZE, CHUNK_SUPERSLAB);
    }
    superslab_link_front(h, ss);
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

static Span *span_new(Heap *h, unsigned cls)
{
    unsigned k = hak_classes[cls].nslabs;
    SuperSlab *ss;
    int idx = -1;
    for (ss = h->superslabs; ss && ss->free_mask; ss = ss->next)
        if ((idx = find_run(ss->free_mask, k)) >= 0)
            break;
    if (idx < 0) {
        if (!(ss = superslab_get(h)))
            return NULL;
        idx = find_run(ss->free_mask, k);
    }
    /* the span's pages but its last (a guard) become accessible */
    if (HAK_GUARD_SIZE && !os_protect((char *)ss + ((size_t)idx << HAK_SLAB_SHIFT),
                                      ((size_t)k << HAK_SLAB_SHIFT) - HAK_GUARD_SIZE, true))
        return NULL;
    ss->free_mask &= ~(uint32_t)(((1ull << k) - 1) << idx);
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
    Span *s = &ss->spans[idx];
    memset(s, 0, sizeof *s);
    const ClassInfo *ci = &hak_classes[cls];
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
        b->free_mark = hak_free_mark;
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
        rng = hak_secret ^ (uintptr_t)&rng;
    uint16_t shuffled[2 * HAK_PAGE_SIZE / 16];
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
static Block *span_take(Heap *h, SuperSlab *ss, Span *s, uint32_t *count)
{
    if (atomic_load_explicit(&s->thread_free, memory_order_relaxed) > SPAN_NOTIFY) {
        Block *b = (Block *)atomic_exchange_explicit(&s->thread_free, 0, memory_order_acquire);
        uint32_t k = 0;
        while (b) {
            if (unlikely(k >= s->used)) /* more frees than blocks out: a cycle */
                hak_fatal("cross-thread free list corrupted (double free?) in span", s);
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

static bool span_after_put(Heap *h, SuperSlab *ss, Span *s)
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
static bool span_put(Heap *h, SuperSlab *ss, Span *s, Block *b)
{
    HAK_ASSERT(s->used > 0 && block_is_valid(ss, s, b));
    block_set_next(b, s->free);
    s->free = b;
    s->used--;
    return span_after_put(h, ss, s);
}

/* Is b on the list that starts at x?  At most max links are followed, and
 * each one is checked to be a block of h before it is read. */
static bool list_has(Heap *h, Block *x, const Block *b, uint64_t max)
{
    for (; x && max; max--) {
        if (x == b)
            return true;
        if (registry_kind(x) != CHUNK_SUPERSLAB || superslab_of(x)->owner != h)
            hak_fatal("corrupted free list (use after free?) at", x);
        x = block_next_fast(x);
    }
    return false;
}

/* The owner's free of b found something unusual: b is not a block start of
 * a carved slab, or it carries the free mark.  Either the misuse is
 * reported, or (the mark was the program's own data) b is freed as usual.  A free block is on one of four
 * lists: the thread front, its span's own list, its span's cross-thread
 * list or the heap's delayed list; only the owner removes blocks from
 * the last two, so walking them from a snapshot of their head is safe. */
void front_free_slow(SuperSlab *ss, Block *b, unsigned cls)
{
    Span *s = span_of(ss, b);
    if (!block_is_valid(ss, s, b)) {
        hak_invalid_pointer("free of a pointer that is not an allocated block", b);
        return;
    }
    ThreadCache *tc = &hak_tc;
    Heap *h = tc->heap;
    uint32_t cap = span_capacity(s);
    uintptr_t tf = atomic_load_explicit(&s->thread_free, memory_order_acquire);
    if (list_has(h, tc->free[s->cls], b, tc->count[s->cls]) || list_has(h, s->free, b, cap) ||
        (tf > SPAN_NOTIFY && list_has(h, (Block *)tf, b, cap)) ||
        list_has(h, atomic_load_explicit(&h->delayed, memory_order_acquire), b, (uint64_t)1 << 32)) {
        hak_invalid_pointer("double free", b);
        return;
    }
    front_push(tc, cls, b);
}

/* Give all but keep blocks of the thread front back to their spans. */
static void front_flush(Heap *h, ThreadCache *tc, unsigned cls, uint32_t keep)
{
    /* The list holds exactly count blocks; a block freed twice makes it
     * longer (a cycle), which must end in a report, not an endless walk.
     * The newest blocks go back: they are the ones still in the cache, so
     * walking them costs no misses (like tcmalloc's release to the central
     * list); the older ones stay for the next mallocs. */
    uint32_t count = tc->count[cls];
    if (keep >= count)
        return;
    Block *b = tc->free[cls];
    for (uint32_t left = count - keep; left; left--) {
        SuperSlab *ss = superslab_of(b);
        /* The blocks were checked when they were freed; a link that leads
         * out of this heap's SuperSlabs means the list was overwritten. */
        if (unlikely(!b || registry_kind(b) != CHUNK_SUPERSLAB || ss->owner != h))
            hak_fatal("corrupted thread free list (use after free?) at", b);
        Block *next = block_next_fast(b);
        Span *s = span_of(ss, b);
        HAK_ASSERT(s->used > 0 && block_is_valid(ss, s, b));
        block_set_next(b, s->free);
        s->free = b;
        if (unlikely(--s->used == 0 || s->state == SPAN_FULL))
            span_after_put(h, ss, s);
        b = next;
    }
    tc->free[cls] = b;
    tc->count[cls] = keep;
    if (unlikely(!keep && b != NULL))
        hak_fatal("thread free list longer than its count (double free?) at", b);
}

/* hak_free found the thread front of cls over its limit. */
void front_overflow(unsigned cls)
{
    ThreadCache *tc = &hak_tc;
    front_flush(tc->heap, tc, cls, hak_classes[cls].front_max / 2);
    purger_poll();
}

static void delayed_push(Heap *h, Block *b)
{
    Block *head = atomic_load_explicit(&h->delayed, memory_order_relaxed);
    do {
        block_set_next(b, head);
    } while (!atomic_compare_exchange_weak_explicit(&h->delayed, &head, b,
                                                    memory_order_release, memory_order_relaxed));
}

void span_free_remote(SuperSlab *ss, Span *s, Block *b)
{
    /* Read everything we need before publishing the block: once it is on
     * thread_free the owner may empty and release the span. */
    Heap *owner = ss->owner;
    if (unlikely(!block_is_valid(ss, s, b))) {
        hak_invalid_pointer("free of a pointer that is not an allocated block", b);
        return;
    }
    /* Counted per heap, never in a shared counter: a thread that only
     * frees (a consumer) gets a heap for it, once. */
    Heap *mine = hak_tc.heap;
    if (unlikely(!mine) && !hak_tc.exited)
        mine = heap_acquire(&hak_tc, true);
    if (mine) mine->remote[s->cls]++; else STAT_INC(remote_frees_exited);
    b->free_mark = hak_free_mark;
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
            hak_invalid_pointer("double free", b);
            return;
        }
        block_set_next(b, (Block *)tf);
        if (atomic_compare_exchange_weak_explicit(&s->thread_free, &tf, (uintptr_t)b,
                                                  memory_order_release, memory_order_relaxed))
            return;
    }
}

/* Blocks on the delayed list come from many SuperSlabs: decode the links
 * without the same-SuperSlab check, but require each to be in one. */
static void heap_drain_delayed(Heap *h)
{
    Block *b = atomic_exchange_explicit(&h->delayed, NULL, memory_order_acquire);
    while (b) {
        Block *next = (Block *)(b->next_enc ^ hak_secret);
        if (next && registry_kind(next) != CHUNK_SUPERSLAB)
            hak_fatal("corrupted delayed-free list at", b);
        SuperSlab *ss = superslab_of(b);
        span_put(h, ss, span_of(ss, b), b);
        b = next;
    }
}

/* ------------------------------------------------------------------ */
/* Refill                                                               */

/* A span whose free list was just taken: all its blocks but the never-used
 * ones are out.  It carves for the class if nobody does, or waits on the
 * partial queue, or is marked FULL until blocks come back. */
static void span_park(Heap *h, ThreadCache *tc, Span *s)
{
    if (s->fresh) {
        if (!tc->cur[s->cls]) {
            s->state = SPAN_CURRENT;
            tc->cur[s->cls] = s;
        } else {
            partial_push(h, s);
        }
        return;
    }
    uintptr_t expected = 0;
    if (atomic_compare_exchange_strong(&s->thread_free, &expected, SPAN_NOTIFY))
        s->state = SPAN_FULL;
    else
        partial_push(h, s); /* remote frees arrived meanwhile */
}

/* The front of cls is empty: take a whole span's free blocks, preferring
 * blocks that came back (the partial queue) to never-used ones. */
static Block *refill(Heap *h, ThreadCache *tc, unsigned cls, uint32_t *count)
{
    for (;;) {
        Span *s = h->partial[cls];
        if (s) {
            partial_remove(h, s);
            s->state = 0;
            Block *list = span_take(h, superslab_of(s), s, count);
            span_park(h, tc, s);
            if (list)
                return list;
            continue;
        }
        if ((s = tc->cur[cls]) != NULL) {
            Block *list = span_take(h, superslab_of(s), s, count);
            if (list)
                return list;
            /* Exhausted: mark it FULL unless remote frees just arrived. */
            uintptr_t expected = 0;
            if (!atomic_compare_exchange_strong(&s->thread_free, &expected, SPAN_NOTIFY))
                continue;
            HAK_ASSERT(s->used == span_capacity(s) && !s->free && !s->fresh);
            s->state = SPAN_FULL;
            tc->cur[cls] = NULL;
            continue;
        }
        if ((s = span_new(h, cls)) == NULL)
            return NULL;
        s->state = SPAN_CURRENT;
        tc->cur[cls] = s;
    }
}

static void atfork_register(void);
static void heap_release(ThreadCache *tc);

/* Give the thread a heap: an abandoned one if any, else a new one.  With
 * at_exit, heap_thread_exit runs when the thread exits. */
static Heap *heap_acquire(ThreadCache *tc, bool at_exit)
{
    hak_lock(&heaps_mutex);
    if (!runtime_ready)
        runtime_init();
    Heap *h = abandoned_heaps;
    if (h) {
        __atomic_store_n(&abandoned_heaps, h->abandoned_next, __ATOMIC_RELAXED);
        STAT_INC(heaps_adopted);
    } else {
        if (heap_store_left < HEAP_STRIDE) {
            bool zeroed;
            size_t len = 64 * 1024;
            heap_store = extent_alloc(len, HAK_PAGE_SIZE, 0, &zeroed);
            if (!heap_store) {
                hak_unlock(&heaps_mutex);
                return NULL;
            }
            if (!zeroed)
                memset(heap_store, 0, len);
            heap_store_left = len;
        }
        h = (Heap *)heap_store;
        heap_store += HEAP_STRIDE;
        heap_store_left -= HEAP_STRIDE;
        h->all_next = all_heaps;
        all_heaps = h;
        large_front_init(&h->large);
        STAT_INC(heaps_created);
    }
    atomic_store(&h->state, HEAP_ACTIVE);
    h->front = tc;
    hak_unlock(&heaps_mutex);
    tc->heap = h;
    if (at_exit)
        pthread_setspecific(exit_key, h);
    atfork_register(); /* may allocate: only now that this thread has a heap */
    return h;
}

/* The fork handlers are registered as early as possible: by the first
 * heap or by hakmem's constructor, whichever comes first.  Handlers that
 * other code registered earlier run after our prepare handler and may
 * allocate: see hak_lock. */
static void atfork_register(void)
{
    if (!atomic_load_explicit(&atfork_registered, memory_order_relaxed) &&
        !atomic_exchange(&atfork_registered, true))
        pthread_atfork(heaps_fork_prepare, heaps_fork_parent, heaps_fork_child);
}

void hak_ensure_runtime(void)
{
    if (!__atomic_load_n(&runtime_ready, __ATOMIC_ACQUIRE))
        hak_free(hak_malloc(1)); /* the first heap sets up the runtime */
}

/* Set up before main when hakmem is preloaded or linked, so that
 * HAKMEM_VERBOSE reports early and fork handlers exist before threads. */
__attribute__((constructor)) static void hak_process_start(void)
{
    hak_ensure_runtime();
    atfork_register();
}

void *heap_alloc_slow(size_t size, unsigned cls)
{
    purger_poll();
    ThreadCache *tc = &hak_tc;
    Heap *h = tc->heap;
    if (unlikely(!h)) {
        if (!(h = heap_acquire(tc, !tc->exited))) {
            errno = ENOMEM;
            return NULL;
        }
        if (hak_classes[cls].block_size < size) /* the table was empty until now */
            cls = size_class_compute(size);
        if (unlikely(tc->exited)) {
            /* Called from a thread-exit destructor that ran after ours: the
             * heap serves this one call and is given back at once, since
             * nothing would give it back later. */
            void *b = heap_alloc_slow(size, cls);
            heap_release(tc);
            return b;
        }
    }
    Block *b = tc->free[cls];
    if (!b) {
        if (atomic_load_explicit(&h->delayed, memory_order_relaxed))
            heap_drain_delayed(h);
        uint32_t n;
        if (!(b = refill(h, tc, cls, &n))) {
            errno = ENOMEM;
            return NULL;
        }
        tc->count[cls] = n;
    }
    tc->free[cls] = block_pop_next(b);
    b->free_mark = 0;
    tc->count[cls]--;
    tc->allocs[cls]++;
    return b;
}

/* ------------------------------------------------------------------ */
/* Heap life cycle                                                      */

/* Collect the remote frees of every span of a heap nobody runs, and give
 * back what became empty.  The caller owns h exclusively (HEAP_BUSY). */
static void heap_collect(Heap *h)
{
    heap_drain_delayed(h);
    SuperSlab *ss = h->superslabs;
    while (ss) {
        SuperSlab *next = ss->next; /* ss may be released below */
        for (unsigned i = 1; i < HAK_SLABS_PER_SS; i++) {
            Span *s = &ss->spans[i];
            if (!s->nslabs || ss->span_head[i] != i)
                continue;
            if (atomic_load_explicit(&s->thread_free, memory_order_relaxed) <= SPAN_NOTIFY)
                continue;
            Block *b = (Block *)atomic_exchange_explicit(&s->thread_free, 0, memory_order_acquire);
            bool gone = false;
            while (b) {
                Block *n = block_next(b);
                gone = span_put(h, ss, s, b);
                b = n;
            }
            if (gone)
                break; /* every span of ss was empty, and ss is no longer ours */
        }
        ss = next;
    }
    if (h->spare) {
        superslab_to_extents(h->spare);
        h->spare = NULL;
    }
}

/* The thread gives its heap up: the front's blocks go back to their spans,
 * the carving spans wait on the partial queues (or go, if empty), and the
 * heap is abandoned for the next thread to adopt. */
/* Everything the thread holds back goes to the heap: the front's blocks to
 * their spans, the carving spans to the partial queues (or away, if
 * empty). */
static void front_give_back(Heap *h, ThreadCache *tc)
{
    for (unsigned cls = 0; cls < HAK_NCLASS; cls++)
        front_flush(h, tc, cls, 0);
    for (unsigned cls = 0; cls < HAK_NCLASS; cls++) {
        Span *s = tc->cur[cls];
        if (!s)
            continue;
        tc->cur[cls] = NULL;
        partial_push(h, s);
        if (s->used == 0)
            span_release(h, superslab_of(s), s);
    }
}

/* The free slabs of a heap's SuperSlabs may still hold pages the program
 * touched: give them back (malloc_trim only; they read as zero after). */
static void superslabs_purge_free(Heap *h)
{
    for (SuperSlab *ss = h->superslabs; ss; ss = ss->next) {
        uint32_t m = ss->free_mask;
        while (m) {
            unsigned first = (unsigned)__builtin_ctz(m), n = 0;
            while (first + n < HAK_SLABS_PER_SS && (m >> (first + n)) & 1)
                n++;
            os_purge((char *)ss + ((size_t)first << HAK_SLAB_SHIFT), (size_t)n << HAK_SLAB_SHIFT);
            m &= ~(uint32_t)(((1ull << n) - 1) << first);
        }
    }
}

static void heap_release(ThreadCache *tc)
{
    Heap *h = tc->heap;
    quarantine_flush(tc);
    front_give_back(h, tc);
    large_front_flush(&h->large);
    tc->heap = NULL;
    hak_lock(&heaps_mutex);
    for (unsigned cls = 0; cls < HAK_NCLASS; cls++) { /* the TLS goes away */
        h->allocs[cls] += tc->allocs[cls];
        tc->allocs[cls] = 0;
    }
    h->front = NULL;
    atomic_store(&h->state, HEAP_BUSY);
    hak_unlock(&heaps_mutex);
    heap_collect(h);
    hak_lock(&heaps_mutex);
    atomic_store(&h->state, HEAP_ABANDONED);
    h->abandoned_next = abandoned_heaps;
    __atomic_store_n(&abandoned_heaps, h, __ATOMIC_RELAXED);
    hak_unlock(&heaps_mutex);
    purger_poll();
}

/* malloc_trim, for the calling thread: its front and carving spans, the
 * frees other threads sent to its spans, its spare SuperSlab and the pages
 * of its free slabs all go back.  (Other running threads' fronts are
 * theirs alone: they are given back when those threads exit.) */
void heap_trim(void)
{
    ThreadCache *tc = &hak_tc;
    Heap *h = tc->heap;
    if (!h)
        return;
    quarantine_flush(tc);
    front_give_back(h, tc);
    large_front_flush(&h->large);
    heap_collect(h);
    superslabs_purge_free(h);
}

/* The exit_key destructor.  Other keys' destructors (and C++ thread_local
 * ones) may still allocate after it: such a malloc gets a heap for that
 * one call (heap_alloc_slow), since nothing would give a heap back later. */
void heap_thread_exit(void *unused)
{
    ThreadCache *tc = &hak_tc;
    if (!tc->heap)
        return;
    tc->exited = true;
    heap_release(tc);
}

LargeFront *heap_large_front(void)
{
    ThreadCache *tc = &hak_tc;
    if (likely(tc->heap != NULL))
        return &tc->heap->large;
    if (tc->exited)
        return NULL;
    Heap *h = heap_acquire(tc, true);
    return h ? &h->large : NULL;
}

/* Reclaim the memory that other threads freed into abandoned heaps.  Runs
 * before mapping a new SuperSlab (rate-limited) and in malloc_trim. */
void heap_collect_abandoned(bool all)
{
    uint64_t now = os_now_ms();
    if (!all && now - __atomic_load_n(&last_collect_ms, __ATOMIC_RELAXED) < 50)
        return;
    __atomic_store_n(&last_collect_ms, now, __ATOMIC_RELAXED);
    Heap *done = NULL;
    for (;;) {
        hak_lock(&heaps_mutex);
        Heap *h = abandoned_heaps;
        if (h) {
            __atomic_store_n(&abandoned_heaps, h->abandoned_next, __ATOMIC_RELAXED);
            atomic_store(&h->state, HEAP_BUSY);
        }
        hak_unlock(&heaps_mutex);
        if (!h)
            break;
        heap_collect(h);
        if (all)
            superslabs_purge_free(h);
        h->abandoned_next = done;
        done = h;
    }
    hak_lock(&heaps_mutex);
    while (done) {
        Heap *h = done;
        done = h->abandoned_next;
        atomic_store(&h->state, HEAP_ABANDONED);
        h->abandoned_next = abandoned_heaps;
        __atomic_store_n(&abandoned_heaps, h, __ATOMIC_RELAXED);
    }
    hak_unlock(&heaps_mutex);
}

void heaps_fork_prepare(void)
{
    harden_fork(0);
    hak_lock(&heaps_mutex);
    extent_lock();
    hak_fork_locks_held = true;
}

void heaps_fork_parent(void)
{
    hak_fork_locks_held = false;
    extent_unlock();
    hak_unlock(&heaps_mutex);
    harden_fork(1);
}

/* In the child only the forking thread exists.  The heaps of the other
 * threads may have been in the middle of an update: they are left alone
 * (leaked, like glibc leaks their tcaches), never adopted. */
void heaps_fork_child(void)
{
    hak_fork_locks_held = false;
    extent_fork_child();
    pthread_mutex_init(&heaps_mutex.m, NULL);
    harden_fork(2);
    for (Heap *h = all_heaps; h; h = h->all_next) {
        int st = atomic_load(&h->state);
        if (h != hak_tc.heap && (st == HEAP_ACTIVE || st == HEAP_BUSY)) {
            atomic_store(&h->state, HEAP_ORPHAN);
            h->front = NULL;
        }
    }
}

/* Bytes in use are summed over the spans of every heap.  Other threads
 * change their lists meanwhile: each SuperSlab pointer is checked against
 * the registry before it is followed, and the extent lock keeps every
 * reservation mapped, so the walk may be inexact but never faults. */
/* Bytes in use are summed over the spans of every heap, less the blocks
 * cached in thread fronts.  Other threads change their lists meanwhile:
 * each SuperSlab pointer is checked against the registry before it is
 * followed, the extent lock keeps every reservation mapped, and a heap's
 * front pointer is cleared under heaps_mutex before its thread's TLS goes
 * away; so the figures may be slightly inexact but reading never faults. */
/* HAKMEM_STATS: the cross-thread frees each heap's threads sent, for the
 * busiest heaps (where threads collide on each other's spans). */
void heaps_report_remote(void)
{
    enum { TOP = 8 };
    Heap *top[TOP] = { 0 };
    uint64_t sent[TOP] = { 0 };
    unsigned n = 0, idx = 0, heap_no[TOP] = { 0 };
    hak_lock(&heaps_mutex);
    for (Heap *h = all_heaps; h; h = h->all_next, idx++) {
        uint64_t total = 0;
        for (unsigned c = 0; c < HAK_NCLASS; c++)
            total += __atomic_load_n(&h->remote[c], __ATOMIC_RELAXED);
        if (!total)
            continue;
        unsigned k = n < TOP ? n++ : TOP - 1;
        if (k == TOP - 1 && n == TOP && total <= sent[k])
            continue;
        while (k > 0 && sent[k - 1] < total) { /* keep them sorted */
            top[k] = top[k - 1]; sent[k] = sent[k - 1]; heap_no[k] = heap_no[k - 1];
            k--;
        }
        top[k] = h; sent[k] = total; heap_no[k] = idx;
    }
    hak_unlock(&heaps_mutex);
    char buf[160];
    for (unsigned i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "  heap %u: %llu cross-thread frees sent\n", heap_no[i],
                 (unsigned long long)sent[i]);
        hak_write_stderr(buf);
    }
}

void heaps_stats(struct hak_stats *st, ClassStats *by_class)
{
    uint64_t out[HAK_NCLASS] = { 0 };
    hak_lock(&heaps_mutex);
    extent_lock();
    for (Heap *h = all_heaps; h; h = h->all_next) {
        ThreadCache *tc = h->front;
        for (unsigned c = 0; c < HAK_NCLASS; c++) {
            uint64_t r = __atomic_load_n(&h->refills[c], __ATOMIC_RELAXED);
            uint64_t rf = __atomic_load_n(&h->remote[c], __ATOMIC_RELAXED);
            uint64_t a = h->allocs[c];
            if (tc) {
                a += __atomic_load_n(&tc->allocs[c], __ATOMIC_RELAXED);
                out[c] -= __atomic_load_n(&tc->count[c], __ATOMIC_RELAXED);
            }
            st->slab_refills += r;
            st->remote_frees += rf;
            if (by_class) {
                by_class[c].refills += r;
                by_class[c].remote_frees += rf;
                by_class[c].allocs += a;
            }
        }
        SuperSlab *ss = __atomic_load_n(&h->superslabs, __ATOMIC_RELAXED);
        for (unsigned n = 0; ss && n < (1u << 20); n++) {
            if (((uintptr_t)ss & (HAK_CHUNK_SIZE - 1)) || registry_kind(ss) != CHUNK_SUPERSLAB)
                break;
            for (unsigned i = 1; i < HAK_SLABS_PER_SS; i++) {
                Span *s = &ss->spans[i];
                uint8_t k = __atomic_load_n(&s->nslabs, __ATOMIC_RELAXED);
                uint8_t c = __atomic_load_n(&s->cls, __ATOMIC_RELAXED);
                if (!k || ss->span_head[i] != i || c >= HAK_NCLASS)
                    continue;
                out[c] += __atomic_load_n(&s->used, __ATOMIC_RELAXED);
            }
            ss = __atomic_load_n(&ss->next, __ATOMIC_RELAXED);
        }
        st->superslabs_live += __atomic_load_n(&h->superslabs_live, __ATOMIC_RELAXED);
        st->tiny_span_bytes += (uint64_t)__atomic_load_n(&h->span_bytes[0], __ATOMIC_RELAXED);
        st->tiny_span_peak += (uint64_t)__atomic_load_n(&h->span_peak[0], __ATOMIC_RELAXED);
        st->mid_span_bytes += (uint64_t)__atomic_load_n(&h->span_bytes[1], __ATOMIC_RELAXED);
        st->mid_span_peak += (uint64_t)__atomic_load_n(&h->span_peak[1], __ATOMIC_RELAXED);
        st->large_allocs += __atomic_load_n(&h->large.allocs, __ATOMIC_RELAXED);
        st->large_frees += __atomic_load_n(&h->large.frees, __ATOMIC_RELAXED);
        st->large_bytes_in_use += (uint64_t)__atomic_load_n(&h->large.bytes_out, __ATOMIC_RELAXED);
        size_t cached = __atomic_load_n(&h->large.bytes, __ATOMIC_RELAXED);
        st->bytes_cached += cached; /* freed large extents, still resident */
        st->bytes_dirty += cached;
    }
    st->lock_heaps_acquired = heaps_mutex.acquired;
    st->lock_heaps_contended = heaps_mutex.contended;
    extent_unlock();
    hak_unlock(&heaps_mutex);
    for (unsigned c = 0; c < HAK_NCLASS; c++) {
        if ((int64_t)out[c] < 0) /* a racing front: never report negative */
            out[c] = 0;
        uint64_t bytes = out[c] * hak_classes[c].block_size;
        if (c < HAK_NCLASS_TINY) st->tiny_bytes_in_use += bytes; else st->mid_bytes_in_use += bytes;
        if (by_class) by_class[c].out += out[c];
    }
    st->remote_frees += atomic_load(&hak_gstats.remote_frees_exited);

}
