/* The large tier: blocks above 52 KiB, each in its own page-granular
 * extent with a LargeHeader right in front of the user pointer.
 *
 * The header's cookie mixes its own address and fields with the process
 * secret, so a pointer is recognised as a live large block only if it is
 * exactly one (a pointer into the middle of a block, a block freed twice,
 * or one whose header was written over, is not).  Freed extents are kept
 * by size class (large_cache.c), per thread first, which is what makes
 * repeated large allocations lock- and syscall-free;
 * the extents (extent.c) get them back after the decay time.  The hardened
 * build does not cache: its guard pages go with each malloc and free, and
 * a freed extent waits PROT_NONE in the quarantine (harden.c).  Every
 * build keeps a canary past the requested size (tail_len).
 * SPDX-License-Identifier: MIT */
#include "harden.h"
#include "os.h"
#include "registry.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define LARGE_LIVE   ((uintptr_t)0x4c41524745u)      /* "LARGE" */
#define LARGE_FREED  ((uintptr_t)0x4652454544u)      /* "FREED" */
#define HDR          sizeof(LargeHeader)

_Static_assert(sizeof(LargeHeader) == 64, "LargeHeader is 64 bytes");


/* The cookie mixes the header's address, the secret, the block's state
 * and the header's fields: a header is taken for a live block's only if
 * none of it was written over (by a run before the block, which lands on
 * the cookie and the fields first, or a stray write), so free and realloc
 * never trust an extent or a length that is not the block's.  The
 * products spread a change of the length or size over the whole word. */
static inline uintptr_t cookie(const LargeHeader *h, uintptr_t tag)
{
    return (uintptr_t)h ^ process_secret ^ tag ^ (uintptr_t)h->extent ^
           h->extent_len * 0x9E3779B97F4A7C15ull ^ h->size * 0xD6E8FEB86659FD93ull;
}
static inline void seal(LargeHeader *h) { h->cookie = cookie(h, LARGE_LIVE); }

static LargeHeader *header_at(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    if ((a & (HAK_MIN_ALIGN - 1)) || a < HDR || large_quarantined(p)) /* (its header faults) */
        return NULL;
    LargeHeader *h = (LargeHeader *)(a - HDR);
    /* p may sit at the start of its chunk: the header must be ours too. */
    if (registry_kind(h) != CHUNK_EXTENT)
        return NULL;
    return h;
}

/* With guard pages the extents keep free memory PROT_NONE, and the
 * quarantine the extents it holds, so the header of a block freed long
 * ago, a "header" inside a quarantined block or in a guard page, would
 * fault when read: the kernel is asked first, and a double free is
 * reported (or ignored, HAKMEM_INVALID_FREE) instead. */
static inline bool header_readable(const LargeHeader *h)
{
    return !(HAK_GUARD_SIZE || HAK_HARDEN_QUARANTINE) || os_readable(h, HDR);
}

LargeHeader *large_header(const void *p)
{
    LargeHeader *h = header_at(p);
    return h && header_readable(h) && h->cookie == cookie(h, LARGE_LIVE) ? h : NULL;
}

/* A header we cannot read in our own extents lies in free memory or a
 * guard page: taken for a freed block's. */
bool large_was_freed(const void *p)
{
    if (large_quarantined(p))
        return true;
    LargeHeader *h = header_at(p);
    return h && (!header_readable(h) || h->cookie == cookie(h, LARGE_FREED));
}

/* The end of the page that holds the block's last byte.  In the hardened
 * build its end guard begins there and runs to the end of the extent
 * (one page when the block is made; more when a realloc left it room to
 * grow), all PROT_NONE. */
static inline char *last_page_end(const char *p, size_t size)
{
    return (char *)align_up((uintptr_t)p + (size ? size : 1), HAK_PAGE_SIZE);
}

/* The bytes from p that belong to the block: up to its guard, or the end
 * of its extent.  The canary stops at the end of the last page too: the
 * room a realloc leaves to grow into is never armed nor touched. */
static size_t large_room(const LargeHeader *h, const void *p)
{
    const char *end = HAK_GUARD_SIZE || HAK_HARDEN_CANARY ? last_page_end(p, h->size)
                                                          : h->extent + h->extent_len;
    return (size_t)(end - (const char *)p);
}

/* What the program asked for, in every build: the bytes after it are the
 * tail canary's. */
size_t large_usable(const LargeHeader *h, const void *p) { return h->size; }

/* The tail canary (internal.h): the hardened build's runs up to the guard
 * page, the default build's is TAIL_CANARY bytes (or the slack to the
 * extent's end, if shorter), which catches the common runs of a few bytes
 * past the end for a store and a load of two cache lines on paths of a few
 * hundred instructions. */
static inline size_t tail_len(const LargeHeader *h, const void *p)
{
    size_t slack = large_room(h, p) - h->size;
    return HAK_HARDEN_CANARY || slack < TAIL_CANARY ? slack : TAIL_CANARY;
}
static inline void large_arm(LargeHeader *h, char *p) { tail_canary_arm(p + h->size, tail_len(h, p)); }
static inline __attribute__((always_inline)) void large_check(const LargeHeader *h, const char *p)
{
    if (unlikely(!tail_canary_intact(p + h->size, tail_len(h, p))))
        fatal_corruption("block overflow (bytes past the requested size changed) at", p);
}

/* Hardened build: the first and last page of the extent are made
 * inaccessible while the block lives (a free needs not undo it: the
 * extents and the quarantine keep free memory PROT_NONE).  A failure (too
 * many mappings) leaves the block unguarded and is counted as a fallback. */
static void guards_on(char *ext, size_t len)
{
    if (HAK_GUARD_SIZE) {
        os_guard(ext, HAK_GUARD_SIZE);
        os_guard(ext + len - HAK_GUARD_SIZE, HAK_GUARD_SIZE);
    }
}

/* A freed extent waiting in the large cache holds a mark where the data
 * of its block began (ext + HDR: only such blocks are cached).  The
 * malloc that takes the extent back checks it, so a write through a
 * dangling pointer to the start of a freed large block (its first
 * fields, its vtable) is reported; two stores and two loads on paths of
 * a few hundred instructions.  The complement of a small block's mark for
 * the same address (block_mark), so that it is no small block's mark
 * anywhere, even copied: ~(v ^ ext) is v ^ r only for r = ~ext, which is
 * no user address. */
static inline uintptr_t freed_mark(const char *ext) { return ~block_mark(ext); }
static void freed_mark_set(char *ext)
{
    uintptr_t *m = (uintptr_t *)(ext + HDR);
    m[0] = m[1] = freed_mark(ext);
}
static void freed_mark_check(char *ext)
{
    const uintptr_t *m = (const uintptr_t *)(ext + HDR);
    if (unlikely((m[0] ^ freed_mark(ext)) | (m[1] ^ freed_mark(ext))))
        fatal_corruption("write after free (a freed large block was changed) at", ext + HDR);
}

static void *place(char *ext, size_t len, size_t off, size_t size)
{
    LargeHeader *h = (LargeHeader *)(ext + off - HDR);
    h->extent = ext;
    h->extent_len = len;
    h->size = size;
    seal(h);
    large_arm(h, ext + off);
    return ext + off;
}

void *large_alloc(size_t size, size_t align, bool zero)
{
    runtime_ensure(); /* the cookie needs the secret */
    if (align < HAK_MIN_ALIGN)
        align = HAK_MIN_ALIGN;
    /* Offset of the user pointer in its extent: room for the header, and
     * for alignments above a page the extent starts one page before an
     * aligned address. */
    size_t off = align <= HDR ? HDR : (align <= HAK_PAGE_SIZE ? align : HAK_PAGE_SIZE);
    if (align > (size_t)PTRDIFF_MAX / 2 || size > (size_t)PTRDIFF_MAX - off - HAK_PAGE_SIZE - align) {
        errno = ENOMEM;
        return NULL;
    }
    size_t room = size ? size : 1; /* a 0-byte block still points inside its extent */
    size_t len = align_up(off + room, HAK_PAGE_SIZE) + 2 * HAK_GUARD_SIZE;
    bool zeroed = false, cacheable = !HAK_GUARD_SIZE && align <= HDR;
    LargeFront *f = heap_large_front();
    char *ext = cacheable ? large_cache_get(f, &len) : NULL;
    if (ext) {
        freed_mark_check(ext);
    } else {
        ext = align <= HAK_PAGE_SIZE
                  ? extent_alloc(len, HAK_PAGE_SIZE, 0, &zeroed)
                  : extent_alloc(len, align, HAK_GUARD_SIZE + HAK_PAGE_SIZE, &zeroed);
        if (!ext) {
            errno = ENOMEM;
            return NULL;
        }
        large_cache_new_extent(len);
    }
    off += HAK_GUARD_SIZE;
    if (HAK_GUARD_SIZE && align <= HDR) /* end the block at its guard page */
        off = align_down(len - HAK_GUARD_SIZE - room, align);
    guards_on(ext, len);
    void *p = place(ext, len, off, size);
    if (zero && !zeroed)
        memset(p, 0, size);
    large_count(f, true, (int64_t)len);
    purger_poll();
    return p;
}

void large_free(void *p)
{
    LargeHeader *h = large_header(p);
    if (!h) {
        invalid_free_report(large_was_freed(p) ? "double free" :
                            "free of a pointer hakmem did not allocate, or whose header was overwritten", p);
        return;
    }
    large_check(h, p);
    h->cookie ^= LARGE_LIVE ^ LARGE_FREED; /* cookie(h, LARGE_FREED): h is live */
    LargeFront *f = heap_large_front();
    large_count(f, false, -(int64_t)h->extent_len);
    char *ext = h->extent;
    size_t len = h->extent_len, room = large_room(h, p);
#if HAK_HARDEN_QUARANTINE
    large_quarantine_put(ext, len, (size_t)((char *)p - ext) + room, p); /* zeroed as it leaves */
    return;
#endif
    if (HAK_HARDEN_ZERO_ON_FREE) /* its contents must not come back (the header stays: "freed") */
        os_zero(p, room);
    /* Only blocks at the start of their extent are cached, as only those
     * are taken from the cache: aligned ones are placed by the extents. */
    bool cached = false;
    if (!HAK_GUARD_SIZE && (char *)p == ext + HDR) {
        freed_mark_set(ext);
        cached = large_cache_put(f, ext, len);
    }
    if (!cached) {
        large_cache_drop_extent(len);
        extent_free(ext, len);
    }
}

/* Allocate a new block of size bytes, copy what the program may have
 * written to the old one (up to its usable size, not just the size it
 * asked for: programs fill blocks up to malloc_usable_size), free it. */
static void *realloc_by_copy(void *p, size_t usable, size_t size, bool slab_tiers)
{
    void *q = slab_tiers ? hak_malloc(size) : large_alloc(size, 16, false);
    if (q) {
        memcpy(q, p, usable < size ? usable : size);
        large_free(p);
    }
    return q;
}

/* The extent a realloc moved a block's pages out of.  The quarantine takes
 * it as it takes a freed block's: the old address waits PROT_NONE, so that
 * a pointer kept from before the realloc faults and its free is a double
 * free, instead of reaching the block the next malloc puts there.  There
 * is nothing to zero: the moved pages read as zero, and the block never
 * wrote its guards (which may hold what earlier blocks left there). */
static void moved_from_free(char *ext, size_t len, const void *old_p)
{
#if HAK_HARDEN_QUARANTINE
    large_cache_new_extent(len); /* held until the quarantine lets it go */
    large_quarantine_put(ext, len, 0, old_p);
#else
    if (HAK_GUARD_SIZE)
        extent_free(ext, len);
    else
        extent_free_purged(ext, len); /* all of it moved */
#endif
}

void *large_realloc(void *p, size_t size)
{
    LargeHeader *h = large_header(p);
    if (!h) {
        invalid_free_report(large_was_freed(p) ? "realloc of a freed block" :
                            "realloc of a pointer hakmem did not allocate, or whose header was overwritten", p);
        errno = EINVAL;
        return NULL;
    }
    large_check(h, p);
    size_t off = (size_t)((char *)p - h->extent);
    size_t usable = large_usable(h, p);
    if (size <= HAK_SMALL_MAX) /* small enough for the slab tiers */
        return realloc_by_copy(p, usable, size, true);
    if (size > (size_t)PTRDIFF_MAX - off - HAK_PAGE_SIZE) {
        errno = ENOMEM;
        return NULL;
    }
    /* Builds that guard or zero freed memory shrink by copying: the old
     * block then goes through free, which guards and zeroes all of it. */
    if (size < h->size && (HAK_GUARD_SIZE || HAK_HARDEN_ZERO_ON_FREE))
        return realloc_by_copy(p, usable, size, false);
    /* The extent's length that holds the block (and its end guard). */
    size_t need = align_up(off + size, HAK_PAGE_SIZE) + HAK_GUARD_SIZE;
    char *old_end = last_page_end(p, h->size), *new_end = last_page_end(p, size);
    if (need <= h->extent_len) { /* in place: a shrink gives the tail back */
        if (need < h->extent_len && size < h->size) {
            extent_free(h->extent + need, h->extent_len - need);
            large_cache_drop_extent(h->extent_len - need);
            large_resize(heap_large_front(), -(int64_t)(h->extent_len - need));
            h->extent_len = need;
        }
        /* the hardened build grows into the room its guard covered */
        if (HAK_GUARD_SIZE && new_end > old_end && !os_protect(old_end, (size_t)(new_end - old_end), true)) {
            STAT_INC(fallbacks);
            return realloc_by_copy(p, usable, size, false);
        }
        h->size = size;
        seal(h);
        large_arm(h, p);
        return p;
    }
    size_t old_len = h->extent_len;
    if (extent_grow(h->extent + old_len, need - old_len)) { /* grow in place */
        h->extent_len = need;
        large_cache_new_extent(need - old_len);
        large_resize(heap_large_front(), (int64_t)(need - old_len));
        if (HAK_GUARD_SIZE) { /* the guard moves to the new end */
            os_guard(new_end, (size_t)(h->extent + need - new_end));
            if (!os_protect(old_end, (size_t)(new_end - old_end), true)) {
                STAT_INC(fallbacks);
                os_guard(old_end, (size_t)(new_end - old_end));
                seal(h); /* the block as it was, in a longer extent */
                return realloc_by_copy(p, usable, size, false);
            }
        }
        h->size = size;
        seal(h);
        large_arm(h, p);
        return p;
    }
    if (old_len >= MREMAP_MIN) {
        /* Move the pages, not the bytes.  The old range stays mapped (empty)
         * throughout: at no moment is there a hole in hakmem's address
         * space that another thread's mmap could be given.  The new extent
         * has room to grow by half again (pages nobody touches until the
         * block grows into them; PROT_NONE in the hardened build, where
         * they extend the end guard), so that a block grown in small steps
         * moves O(log n) times: moved to an extent of its exact size,
         * placed at the top of a free range (extent.c), it moved on every
         * step, each move costing its whole size (a buffer grown 8 KiB at a
         * time to 72 MiB: 1,795 moves, 12 s; glibc 0.09 s; the hardened
         * build copied on every step: 16 MiB, 13.8 s).  The hardened build
         * moves the pages between its guards. */
        char *old_ext = h->extent; /* h moves with the pages */
        char *from = old_ext + HAK_GUARD_SIZE;
        size_t moved = HAK_GUARD_SIZE ? (size_t)(old_end - from) : old_len;
        size_t len = need + align_up(need / 2, HAK_PAGE_SIZE);
        char *ext = len > need ? extent_alloc(len, HAK_PAGE_SIZE, 0, NULL) : NULL;
        if (!ext)
            ext = extent_alloc(len = need, HAK_PAGE_SIZE, 0, NULL);
        if (ext && os_move_pages(from, moved, ext + HAK_GUARD_SIZE)) {
            moved_from_free(old_ext, old_len, p);
            if (HAK_GUARD_SIZE) {
                os_guard(ext, HAK_GUARD_SIZE);
                os_guard(ext + need - HAK_GUARD_SIZE, len - need + HAK_GUARD_SIZE);
            }
            large_cache_new_extent(len - old_len);
            large_resize(heap_large_front(), (int64_t)(len - old_len));
            return place(ext, len, off, size);
        }
        if (ext)
            extent_free(ext, len);
        STAT_INC(fallbacks); /* copy instead */
    }
    return realloc_by_copy(p, usable, size, false);
}
