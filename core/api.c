/* The allocation API and its router.
 *
 * hak_malloc and hak_free hold the fast paths of the tiny and mid tiers:
 * a table lookup for the size class, then a pop or a push on the thread's
 * list, with no call, no loop and no atomic.  Every other case leaves the
 * fast path through one branch.  The exported glibc names (malloc, free,
 * ...) are aliases of these functions, so LD_PRELOAD and -lhakmem callers
 * run exactly this code.
 * SPDX-License-Identifier: MIT */
#include "harden.h"
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Fast paths                                                           */

/* The thread front's next block of class cls, or NULL. */
static inline Block *front_pop(ThreadFront *front, unsigned cls)
{
    Block *b = front->free[cls];
    if (likely(b != NULL)) {
        front->free[cls] = block_pop_next(b);
        b->free_mark = 0;
        front->room[cls]++;
        front->allocs[cls]++; /* statistics: per thread, no branch */
    }
    return b;
}

/* A block of class cls for a request of size bytes. */
static inline void *small_alloc(size_t size, unsigned cls)
{
    Block *b = front_pop(&thread_front, cls);
    if (likely(b != NULL))
        return harden_alloc(b, size, cls);
    /* (the slow path's first call in a process may pick another class) */
    return harden_alloc(heap_alloc_slow(slab_request(size), cls), size, HAK_NO_CLASS);
}

/* A block of class cls, armed with its tail canary if it is a mid one. */
static inline void *class_alloc(size_t size, unsigned cls)
{
    void *p = small_alloc(size, cls);
    return cls >= HAK_NCLASS_TINY ? mid_arm(p, size, size_classes[cls].block_size) : p;
}

/* A mid request that mid_alloc does not serve with a store of the size
 * and four of the canary.  The class table is set up first: the canary
 * needs the block size of the class the block really has. */
static HAK_NOINLINE __attribute__((unused)) void *mid_alloc_slow(size_t size, Block *b)
{
    runtime_ensure();
    unsigned cls = size_class(slab_request(size));
    return b ? mid_arm(b, size, size_classes[cls].block_size) : class_alloc(size, cls);
}

/* A mid request: out of line, so that the tiny path's registers need no
 * saving (hak_malloc tail-calls it), and with no call of its own when the
 * front has a block (before the class table is set up, every size maps to
 * class 0, and the front is empty). */
static HAK_NOINLINE void *mid_alloc(size_t size)
{
#if MID_CANARY
    unsigned cls = size_class(size);
    Block *b = cls >= HAK_NCLASS_TINY ? front_pop(&thread_front, cls) : NULL;
    size_t slack = size_classes[cls].block_size - size;
    if (likely(b != NULL)) {
        if (likely(slack >= TAIL_CANARY)) {
            *mid_size_slot(b) = (uint16_t)size;
            tail_canary_arm((char *)b + size, TAIL_CANARY);
            return b;
        }
        if (slack == 0) /* 4096, 8192 ...: no canary, the slot stays 0 */
            return b;
    }
    return mid_alloc_slow(size, b);
#else
    return small_alloc(size, size_class(slab_request(size)));
#endif
}

/* Tiny requests take the path with no canary, mid ones the one that arms
 * it: the test that splits them is the one that sends the rest on to the
 * large tier. */
HAK_API void *hak_malloc(size_t size)
{
    if (likely(size <= HAK_TINY_MAX))
        return small_alloc(size, size_class(slab_request(size)));
    if (likely(size <= HAK_SLAB_REQUEST_MAX))
        return mid_alloc(size);
    return large_alloc(size, 0, false);
}

static HAK_NOINLINE void free_other(void *p, unsigned kind)
{
    if (kind == CHUNK_EXTENT)
        large_free(p);
#if HAK_HARDEN_ZERO_SIZE_GUARD
    else if (kind == CHUNK_ZERO)
        zero_free(p);
#endif
    else if (p)
        foreign_free(p);
}

/* Is p in a SuperSlab?  One test rejects NULL-ish, misaligned and
 * non-user addresses alike, then the registry says. */
static inline bool slab_pointer(const void *p)
{
    uintptr_t addr = (uintptr_t)p;
    return !(addr & ((~(uintptr_t)0 << HAK_ADDR_BITS) | (HAK_MIN_ALIGN - 1))) &&
           chunk_kinds[addr >> HAK_CHUNK_SHIFT] == CHUNK_SUPERSLAB;
}

HAK_API void hak_free(void *p)
{
    if (likely(slab_pointer(p))) {
        SuperSlab *ss = superslab_of(p);
#if HAK_HARDEN_CANARY
        harden_free(ss, p, ss->page_cls[page_index(p)]);
#else
        slab_free(ss, p, page_index(p));
#endif
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
    if (total > HAK_SLAB_REQUEST_MAX)
        return large_alloc(total, 0, true); /* fresh extents are known zero */
    void *p = hak_malloc(total);
    /* All that malloc_usable_size reports is zero, as under glibc (which
     * clears the whole chunk): a tiny block's whole class (its slack
     * held the free list's link and the last owner's bytes); a mid
     * block reports its request. */
    if (likely(p != NULL))
        memset(p, 0, !HAK_HARDEN_CANARY && total <= HAK_TINY_MAX
                         ? size_classes[size_class(slab_request(total))].block_size : total);
    return p;
}

/* Is p a live block of the slab tiers, and how many bytes may the program
 * use?  The default build takes a block with the free mark for a freed
 * one (like a cross-thread free, unconfirmed: a live block holds the mark
 * only if the program copied it there), so that a realloc of a freed
 * block is reported instead of handing it out a second time. */
static bool small_live(const void *p, size_t *usable)
{
    SuperSlab *ss = superslab_of(p);
    Span *s = span_of(ss, p);
    if (!block_is_valid(ss, s, p))
        return false;
#if HAK_HARDEN_CANARY
    return harden_live(ss, s, p, usable);
#else
    *usable = s->cls >= HAK_NCLASS_TINY ? mid_usable(p, span_block_size(s)) : span_block_size(s);
    return ((const Block *)p)->free_mark != block_mark(p);
#endif
}

/* The bytes a slab block holds for the program, whatever it asked for. */
static size_t small_room(const void *p)
{
    return span_block_size(span_of(superslab_of(p), p)) - HAK_CANARY_SIZE;
}

/* realloc keeps a block for a size that fits it and is not worth moving
 * to a smaller class. */
static bool small_keeps(const void *p, size_t size)
{
    size_t room = small_room(p);
    return size <= room && size >= room / 2;
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
        size_t usable;
        if (!small_live(p, &usable)) {
            invalid_free_report("realloc of a pointer that is not an allocated block", p);
            errno = EINVAL;
            return NULL;
        }
        if (small_keeps(p, size)) {
#if HAK_HARDEN_CANARY
            harden_resize(p, size);
#else
            Span *s = span_of(superslab_of(p), p);
            if (s->cls >= HAK_NCLASS_TINY) {
                mid_check(p, span_block_size(s));
                mid_arm(p, size, span_block_size(s));
            }
#endif
            return p;
        }
        void *q = hak_malloc(size);
        if (q) {
            memcpy(q, p, usable < size ? usable : size);
            hak_free(p);
        }
        return q;
    }
    if (kind == CHUNK_EXTENT)
        return large_realloc(p, size);
#if HAK_HARDEN_ZERO_SIZE_GUARD
    if (kind == CHUNK_ZERO) {
        if (!zero_live(p)) {
            invalid_free_report("realloc of a pointer that is not an allocated block", p);
            errno = EINVAL;
            return NULL;
        }
        void *q = hak_malloc(size); /* nothing to copy */
        if (q)
            zero_free(p);
        return q;
    }
#endif
    return foreign_realloc(p, size);
}

/* The class alloc_aligned puts a request in: the first from the size's
 * own that is a multiple of the alignment; HAK_NCLASS for a large block. */
static inline __attribute__((always_inline)) unsigned aligned_class(size_t size, size_t align)
{
    if (size > HAK_SLAB_REQUEST_MAX || align > HAK_SMALL_MAX)
        return HAK_NCLASS;
    unsigned c = size_class(slab_request(size ? size : 1)); /* (size 0: the smallest aligned enough) */
    while (align > HAK_MIN_ALIGN && c < HAK_NCLASS && size_classes[c].block_size % align)
        c++;
    return c;
}

/* The size (and alignment) a program says a block has must be ones that
 * give the block's class, or one realloc kept it at (slab tiers), or
 * exactly its requested size (large blocks; the hardened build knows it
 * for every block), and the block must have that alignment.  free_sized,
 * free_aligned_sized and C++'s sized deletes where the quick test below
 * did not settle it.
 * Requested sizes other than size that a correct program gets: 1 for a
 * C++ new of 0 bytes (it asks for 1, its sized delete passes 0), and,
 * for an aligned new, that rounded up to the alignment: when hakmem runs
 * out, the C++ runtime's aligned new takes over (its new handler loop)
 * and asks aligned_alloc for a multiple of the alignment. */
static inline bool requested_as(size_t got, size_t size, size_t align)
{
    size_t one = size ? size : 1;
    return got == size || got == one ||
           (align > HAK_MIN_ALIGN && !(got & (align - 1)) && got > one && got - one < align);
}

static HAK_NOINLINE void free_checked(void *p, size_t size, size_t align)
{
    unsigned kind = registry_kind(p);
    bool live = false, match = false;
    size_t usable;
    if (kind == CHUNK_SUPERSLAB && small_live(p, &usable)) {
        SuperSlab *ss = superslab_of(p);
        unsigned c = aligned_class(size, align), cls = span_of(ss, p)->cls;
        if (c != cls && align > HAK_MIN_ALIGN && size < HAK_SLAB_REQUEST_MAX) /* (the runtime's rounding) */
            c = aligned_class(align_up(size ? size : 1, align), align);
        live = true;
        /* The hardened build knows the requested size, and the class
         * still tells the alignment.  An aligned block never comes from
         * realloc. */
        if (HAK_HARDEN_CANARY)
            match = requested_as(usable, size, align) && (align <= HAK_MIN_ALIGN || c == cls);
        else
            match = c == cls || (align <= HAK_MIN_ALIGN && c < HAK_NCLASS && small_keeps(p, size));
    } else if (kind == CHUNK_EXTENT) {
        LargeHeader *h = large_header(p);
        live = h != NULL;
        match = live && requested_as(h->size, size, align);
#if HAK_HARDEN_ZERO_SIZE_GUARD
    } else if (kind == CHUNK_ZERO) {
        live = zero_live(p);
        match = size == 0;
#endif
    }
    /* what is no live block is free's to report (once) */
    if (live && unlikely(!match || !is_pow2(align) || ((uintptr_t)p & (align - 1))))
        invalid_free_report(align > HAK_MIN_ALIGN || !is_pow2(align) ? "free or delete with the wrong size or alignment"
                                                                     : "free or delete with the wrong size",
                            p);
    hak_free(p);
}

/* Every C++14 `delete` of a complete type comes here: a size (and an
 * alignment) of the block's class is the common case, one table load
 * away, and the block is then freed as free() would (slab_free sorts out
 * the rest of misuse).  The hardened build compares the requested size
 * itself (free_checked). */
static inline __attribute__((always_inline)) void sized_free(void *p, size_t size, size_t align)
{
    /* (slab_pointer rejects a p that is not 16-aligned: for free_sized,
     * align is the constant HAK_MIN_ALIGN, and the test folds away) */
    if (!HAK_HARDEN_CANARY &&
        likely(slab_pointer(p) && is_pow2(align) && (align <= HAK_MIN_ALIGN || !((uintptr_t)p & (align - 1))))) {
        SuperSlab *ss = superslab_of(p);
        unsigned page = page_index(p), c = aligned_class(size, align);
        if (likely(c < HAK_NCLASS && c == ss->page_cls[page])) {
            slab_free(ss, p, page);
            return;
        }
    }
    free_checked(p, size, align);
}
HAK_API void hak_free_sized(void *p, size_t size) { sized_free(p, size, HAK_MIN_ALIGN); }
/* (NULL, whatever the alignment, reaches hak_free: nothing) */
void free_sized_aligned(void *p, size_t size, size_t align) { sized_free(p, size, align); }

HAK_API unsigned hak_mitigations(void) { return HAK_MITIGATIONS; }

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
    if (align <= HAK_MIN_ALIGN)
        return hak_malloc(size);
    if (size <= HAK_SLAB_REQUEST_MAX && align <= HAK_SMALL_MAX) {
        runtime_ensure(); /* the class table */
        unsigned c = aligned_class(size, align);
        if (c < HAK_NCLASS)
            return class_alloc(size, c);
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
    if (!is_pow2(align)) { /* glibc rounds a bad alignment up (ENOMEM for 2^63) */
        if (align > ((size_t)1 << 63)) {
            errno = EINVAL;
            return NULL;
        }
        size_t a = 1;
        while (a < align) a <<= 1;
        align = a;
    }
    return alloc_aligned(align, size);
}

static void *valloc_impl(size_t size) { return alloc_aligned(HAK_PAGE_SIZE, size); }

static void *pvalloc_impl(size_t size)
{
    if (size > SIZE_MAX - HAK_PAGE_SIZE) {
        errno = ENOMEM;
        return NULL;
    }
    return alloc_aligned(HAK_PAGE_SIZE, align_up(size ? size : 1, HAK_PAGE_SIZE));
}

/* 0 for a pointer that is no live block, as glibc's is for NULL; the
 * hardened build (CANARY) reports one, as a misuse (hardened_malloc's
 * answer too: its size is what a use after free or an overflow asks). */
HAK_API size_t hak_usable_size(const void *p)
{
    if (p == NULL)
        return 0;
    unsigned kind = registry_kind(p);
    size_t usable = 0;
    bool live;
    if (kind == CHUNK_SUPERSLAB) {
        live = small_live(p, &usable);
    } else if (kind == CHUNK_EXTENT) {
        LargeHeader *h = large_header(p);
        live = h != NULL;
        if (h)
            usable = large_usable(h, p);
#if HAK_HARDEN_ZERO_SIZE_GUARD
    } else if (kind == CHUNK_ZERO) {
        live = zero_live(p); /* 0 bytes */
#endif
    } else {
        usable = foreign_usable(p);
        live = usable != 0;
    }
    if (HAK_HARDEN_CANARY && unlikely(!live))
        invalid_free_report("malloc_usable_size of a pointer that is not an allocated block", p);
    return live ? usable : 0;
}

HAK_API enum hak_kind hak_ptr_kind(const void *p)
{
    unsigned kind = registry_kind(p);
    size_t usable;
#if HAK_HARDEN_ZERO_SIZE_GUARD
    if (kind == CHUNK_ZERO)
        return zero_live(p) ? HAK_KIND_TINY : HAK_KIND_FOREIGN;
#endif
    if (kind == CHUNK_SUPERSLAB) {
        if (!small_live(p, &usable))
            return HAK_KIND_FOREIGN;
        SuperSlab *ss = superslab_of(p);
        return span_of(ss, p)->cls < HAK_NCLASS_TINY ? HAK_KIND_TINY : HAK_KIND_MID;
    }
    if (kind == CHUNK_EXTENT && large_header(p))
        return HAK_KIND_LARGE;
    return HAK_KIND_FOREIGN;
}

HAK_API int hak_trim(void)
{
    heap_trim();
    large_quarantine_flush();
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
EXPORT(free_sized, hak_free_sized);
/* C23's free of a block of aligned_alloc, which glibc has from 2.43 on: a
 * program preloaded with hakmem must reach ours with our blocks. */
HAK_API void free_aligned_sized(void *p, size_t alignment, size_t size) { free_sized_aligned(p, size, alignment); }
EXPORT(calloc, hak_calloc);
EXPORT(realloc, hak_realloc);
EXPORT(reallocarray, hak_reallocarray);
EXPORT(posix_memalign, hak_posix_memalign);
EXPORT(aligned_alloc, hak_aligned_alloc);
EXPORT(memalign, hak_memalign);
EXPORT(valloc, valloc_impl);
EXPORT(pvalloc, pvalloc_impl);
EXPORT(malloc_usable_size, hak_usable_size);
/* glibc's own names for its allocator, which some code calls directly
 * (a wrapper that means "the real malloc", old runtimes): they too are
 * hakmem's, so that a block from either name may go to the other. */
EXPORT(__libc_malloc, hak_malloc);
EXPORT(__libc_free, hak_free);
EXPORT(__libc_calloc, hak_calloc);
EXPORT(__libc_realloc, hak_realloc);
EXPORT(__libc_memalign, hak_memalign);
EXPORT(__libc_valloc, valloc_impl);
EXPORT(__libc_pvalloc, pvalloc_impl);
/* cfree: glibc declared it before 2.26, and libc.so.6 still defines it
 * for binaries built then (cfree@GLIBC_2.2.5, its free): without ours,
 * they gave hakmem's blocks to glibc.  Weak: a static program may have a
 * cfree of its own. */
void cfree(void *p) __attribute__((weak, alias("hak_free"), visibility("default")));

HAK_API int malloc_trim(size_t pad) { return hak_trim(); }
/* To stderr as the program has it, as glibc's: after what its stream
 * holds, and into the file a program may have made stderr. */
HAK_API void malloc_stats(void)
{
    int saved = errno;
    fflush(stderr);
    int fd = fileno(stderr);
    errno = saved;
    stats_print(fd >= 0 ? fd : 2);
}

/* mallopt: glibc's tuning parameters do not apply to hakmem and have no
 * effect (docs/OPTIONS.md); the answer is glibc 2.36's: 0 for the values
 * it refuses (M_MXFAST outside 0..160), 1, "success", otherwise (code
 * checks it: M_MMAP_THRESHOLD above 32 MiB, refused by glibc before
 * 2.35, is taken). */
HAK_API int mallopt(int param, int value)
{
    enum { MXFAST = 1 }; /* <malloc.h>'s M_MXFAST */
    if (param == MXFAST)
        return value >= 0 && value <= 160;
    return 1;
}
EXPORT(__libc_mallopt, mallopt);

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
    mi.uordblks = st.tiny_bytes_in_use + st.mid_bytes_in_use; /* as glibc's: not in hblkhd */
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
EXPORT(__libc_mallinfo, mallinfo);

/* malloc_info: glibc's XML report, its whole-process totals with the
 * figures mallinfo2 gives (no <heap> elements: hakmem's heaps are its
 * threads'; "system max" is at least the bytes reserved now, or the peak
 * RSS).  As in glibc, bad options return EINVAL with errno untouched, and
 * a failed write still returns 0.  The report is formatted into a stack
 * buffer and written with write(2) after a flush of what fp holds; only a
 * stream with no descriptor (open_memstream) gets it through stdio, which
 * may allocate: nothing of hakmem's is held by then. */
HAK_API int malloc_info(int options, FILE *fp)
{
    if (options != 0)
        return EINVAL;
    struct mallinfo2 m = mallinfo2();
    char buf[512];
    snprintf(buf, sizeof buf,
             "<malloc version=\"1\">\n"
             "<total type=\"fast\" count=\"0\" size=\"0\"/>\n"
             "<total type=\"rest\" count=\"0\" size=\"%zu\"/>\n"
             "<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>\n"
             "<system type=\"current\" size=\"%zu\"/>\n"
             "<system type=\"max\" size=\"%zu\"/>\n"
             "<aspace type=\"total\" size=\"%zu\"/>\n"
             "<aspace type=\"mprotect\" size=\"%zu\"/>\n"
             "</malloc>\n",
             m.fordblks, m.hblks, m.hblkhd, m.arena, m.usmblks > m.arena ? m.usmblks : m.arena, m.arena,
             m.arena);
    int saved = errno; /* fileno of a stream with no descriptor sets it */
    int fd = fileno(fp);
    if (fd >= 0 && fflush(fp) == 0)
        write_fd(fd, buf);
    else if (fd < 0)
        fputs(buf, fp);
    errno = saved;
    return 0;
}
#endif /* HAK_NO_GLIBC_NAMES */
