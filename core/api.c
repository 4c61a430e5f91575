/* The allocation API and its router.
 *
 * hak_malloc and hak_free hold the fast paths of the tiny and mid tiers:
 * a table lookup for the size class, then a pop or a push on the thread's
 * list, with no call, no loop and no atomic.  Every other case leaves the
 * fast path through one branch.  The exported glibc names (malloc, free,
 * ...) are aliases of these functions, so LD_PRELOAD and -lhakmem callers
 * run exactly this code.
 * SPDX-License-Identifier: MIT */
#include "registry.h"

#include <errno.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Fast paths                                                           */

HAK_API void *hak_malloc(size_t size)
{
    if (likely(size <= HAK_SMALL_MAX - HAK_CANARY_SIZE)) {
        ThreadCache *tc = &hak_tc;
        unsigned cls = size_class(size + HAK_CANARY_SIZE);
        Block *b = tc->free[cls];
        if (likely(b != NULL)) {
            tc->free[cls] = block_next_fast(b);
            b->free_mark = 0;
            tc->count[cls]--;
            tc->allocs[cls]++; /* statistics: per thread, no branch */
            return canary_arm(b);
        }
        return canary_arm(heap_alloc_slow(size + HAK_CANARY_SIZE, cls));
    }
    return large_alloc(size, 0, false);
}

static HAK_NOINLINE void free_other(void *p, unsigned kind)
{
    if (kind == CHUNK_ARENA)
        large_free(p);
    else if (p)
        foreign_free(p);
}

HAK_API void hak_free(void *p)
{
    uintptr_t addr = (uintptr_t)p;
    /* One test rejects NULL-ish, misaligned and non-user addresses alike. */
    if (likely(!(addr & ((~(uintptr_t)0 << HAK_ADDR_BITS) | 15)) &&
               hak_chunk_kind[addr >> HAK_CHUNK_SHIFT] == CHUNK_SUPERSLAB)) {
        SuperSlab *ss = superslab_of(p);
        unsigned page = (addr >> HAK_PAGE_SHIFT) & (HAK_PAGES_PER_SS - 1);
        unsigned slab = page >> (HAK_SLAB_SHIFT - HAK_PAGE_SHIFT);
        unsigned cls = ss->page_cls[page];
        if (likely(ss->owner == hak_tc.heap)) {
            /* The owner: push on the thread front, nothing else.  A pointer
             * into the middle of a block, into a free slab, a page not
             * carved yet or the header, and a block that carries the free mark, take
             * the slow path that sorts misuse from coincidence. */
            ThreadCache *tc = &hak_tc;
            uint32_t off = (uint32_t)((addr - ((uintptr_t)ss->span_head[slab] << HAK_SLAB_SHIFT)) &
                                      (HAK_CHUNK_SIZE - 1));
            Block *b = p;
            if (unlikely(!offset_is_block(cls, off) || b->free_mark == hak_free_mark)) {
                front_free_slow(ss, b, cls);
                return;
            }
            front_push(tc, cls, b);
            return;
        }
        if (cls != HAK_NO_CLASS)
            canary_check(cls, p);
        span_free_remote(ss, span_of(ss, p), p);
        return;
    }
    free_other(p, registry_kind(p));
}

/* ------------------------------------------------------------------ */
/* The rest of the family                                               */

HAK_API void *hak_calloc(size_t count, size_t size)
{
    size_t total;
    if (unlikely(__builtin_mul_overflow(count, size, &total))) {
        errno = ENOMEM;
        return NULL;
    }
    if (total > HAK_SMALL_MAX - HAK_CANARY_SIZE)
        return large_alloc(total, 0, true); /* fresh extents are known zero */
    void *p = hak_malloc(total);
    if (likely(p != NULL))
        memset(p, 0, total);
    return p;
}

/* Usable size of a block of hakmem's slab tiers, 0 if p is not one. */
static size_t small_usable(const void *p)
{
    SuperSlab *ss = superslab_of(p);
    Span *s = span_of(ss, p);
    /* the owner may be carving meanwhile: bump is read like remote frees do */
    if (!s->nslabs || !span_is_block_start(ss, s, p) ||
        (const char *)p >= __atomic_load_n(&s->bump, __ATOMIC_RELAXED))
        return 0;
    return span_block_size(s) - HAK_CANARY_SIZE;
}

HAK_API void *hak_realloc(void *p, size_t size)
{
    if (p == NULL)
        return hak_malloc(size);
    if (size == 0) { /* glibc semantics: free and return NULL */
        hak_free(p);
        return NULL;
    }
    unsigned kind = registry_kind(p);
    if (kind == CHUNK_SUPERSLAB) {
        size_t usable = small_usable(p);
        if (!usable) {
            hak_invalid_pointer("realloc of a pointer that is not an allocated block", p);
            errno = EINVAL;
            return NULL;
        }
        if (size <= usable && size >= usable / 2)
            return p; /* fits, and not worth moving to a smaller class */
        void *q = hak_malloc(size);
        if (q) {
            memcpy(q, p, usable < size ? usable : size);
            hak_free(p);
        }
        return q;
    }
    if (kind == CHUNK_ARENA)
        return large_realloc(p, size);
    return foreign_realloc(p, size);
}

HAK_API void *hak_reallocarray(void *p, size_t count, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(count, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return hak_realloc(p, total);
}

/* Aligned allocation.  A slab block is aligned to every power of two that
 * divides its class size (spans start 64 KiB-aligned), so small aligned
 * requests take the first class that is a multiple of the alignment;
 * the rest are large blocks placed at an aligned address. */
static void *alloc_aligned(size_t align, size_t size)
{
    if (align <= 16)
        return hak_malloc(size);
    if (size <= HAK_SMALL_MAX - HAK_CANARY_SIZE && align <= HAK_SMALL_MAX) {
        hak_ensure_runtime(); /* the class table */
        for (unsigned c = size_class(size + HAK_CANARY_SIZE); c < HAK_NCLASS; c++)
            if (hak_classes[c].block_size % align == 0)
                return hak_malloc(hak_classes[c].block_size - HAK_CANARY_SIZE);
    }
    return large_alloc(size, align, false);
}

HAK_API int hak_posix_memalign(void **out, size_t align, size_t size)
{
    if (align < sizeof(void *) || !is_pow2(align))
        return EINVAL;
    int saved = errno;
    void *p = alloc_aligned(align, size);
    errno = saved;
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

HAK_API void *hak_aligned_alloc(size_t align, size_t size)
{
    if (!is_pow2(align)) {
        errno = EINVAL;
        return NULL;
    }
    return alloc_aligned(align, size);
}

HAK_API void *hak_memalign(size_t align, size_t size)
{
    if (!is_pow2(align)) { /* glibc rounds a bad alignment up */
        if (align > ((size_t)1 << 62)) {
            errno = EINVAL;
            return NULL;
        }
        size_t a = 1;
        while (a < align) a <<= 1;
        align = a;
    }
    return alloc_aligned(align, size);
}

static void *hak_valloc(size_t size) { return alloc_aligned(HAK_PAGE_SIZE, size); }

static void *hak_pvalloc(size_t size)
{
    if (size > SIZE_MAX - HAK_PAGE_SIZE) {
        errno = ENOMEM;
        return NULL;
    }
    return alloc_aligned(HAK_PAGE_SIZE, align_up(size ? size : 1, HAK_PAGE_SIZE));
}

HAK_API size_t hak_usable_size(const void *p)
{
    if (p == NULL)
        return 0;
    unsigned kind = registry_kind(p);
    if (kind == CHUNK_SUPERSLAB)
        return small_usable(p);
    if (kind == CHUNK_ARENA) {
        LargeHeader *h = large_header(p);
        return h ? large_usable(h, p) : 0;
    }
    return foreign_usable(p);
}

HAK_API enum hak_kind hak_ptr_kind(const void *p)
{
    unsigned kind = registry_kind(p);
    if (kind == CHUNK_SUPERSLAB) {
        if (!small_usable(p))
            return HAK_KIND_FOREIGN;
        SuperSlab *ss = superslab_of(p);
        return span_of(ss, p)->cls < HAK_NCLASS_TINY ? HAK_KIND_TINY : HAK_KIND_MID;
    }
    if (kind == CHUNK_ARENA && large_header(p))
        return HAK_KIND_LARGE;
    return HAK_KIND_FOREIGN;
}

HAK_API int hak_trim(void)
{
    heap_trim();
    heap_collect_abandoned(true);
    large_cache_decay(true);
    int released = extent_trim() > 0;
    purger_poll();
    return released;
}

/* ------------------------------------------------------------------ */
/* The exported glibc names.                                            */

/* Not in sanitizer builds: their runtime interposes malloc & co itself. */
#ifndef HAK_NO_GLIBC_NAMES
#define EXPORT(name, target) \
    __typeof__(target) name __attribute__((alias(#target), visibility("default")))

EXPORT(malloc, hak_malloc);
EXPORT(free, hak_free);
EXPORT(calloc, hak_calloc);
EXPORT(realloc, hak_realloc);
EXPORT(reallocarray, hak_reallocarray);
EXPORT(posix_memalign, hak_posix_memalign);
EXPORT(aligned_alloc, hak_aligned_alloc);
EXPORT(memalign, hak_memalign);
EXPORT(valloc, hak_valloc);
EXPORT(pvalloc, hak_pvalloc);
EXPORT(malloc_usable_size, hak_usable_size);

HAK_API int malloc_trim(size_t pad) { return hak_trim(); }
HAK_API void malloc_stats(void) { hak_stats_print(); }

/* mallopt: glibc's tuning parameters do not apply to hakmem; they are
 * accepted (return 1, "success") and have no effect.  See docs/OPTIONS.md. */
HAK_API int mallopt(int param, int value) { return 1; }

/* glibc's struct mallinfo2 / mallinfo layouts (ABI). */
struct mallinfo2 { size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks,
                   uordblks, fordblks, keepcost; };
struct mallinfo { int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks,
                  uordblks, fordblks, keepcost; };

HAK_API struct mallinfo2 mallinfo2(void)
{
    struct hak_stats st;
    hak_stats_get(&st);
    struct mallinfo2 mi = { 0 };
    mi.arena = st.bytes_mapped;                         /* bytes reserved from the OS */
    mi.hblks = st.large_allocs - st.large_frees;        /* live large blocks */
    mi.hblkhd = st.large_bytes_in_use;                  /* their bytes */
    mi.uordblks = st.tiny_bytes_in_use + st.mid_bytes_in_use + st.large_bytes_in_use;
    mi.fordblks = st.bytes_cached;                      /* free bytes kept for reuse */
    mi.keepcost = st.bytes_dirty;                       /* of which still resident */
    mi.usmblks = st.peak_rss;
    return mi;
}

HAK_API struct mallinfo mallinfo(void)
{
    struct mallinfo2 m = mallinfo2();
    struct mallinfo r = { (int)m.arena, (int)m.ordblks, (int)m.smblks, (int)m.hblks,
                          (int)m.hblkhd, (int)m.usmblks, (int)m.fsmblks, (int)m.uordblks,
                          (int)m.fordblks, (int)m.keepcost };
    return r;
}
#endif /* HAK_NO_GLIBC_NAMES */
