/* hakmem: a general-purpose memory allocator for Linux.
 *
 * Loaded with LD_PRELOAD=libhakmem.so (or linked with -lhakmem), hakmem
 * replaces the whole glibc malloc family.  This header declares the
 * namespaced API that embedders and tests call directly; its functions
 * behave exactly like their libc counterparts.
 *
 * SPDX-License-Identifier: MIT */
#ifndef HAKMEM_H
#define HAKMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HAKMEM_VERSION "0.1.0"

void  *hak_malloc(size_t size);
void   hak_free(void *ptr);
/* free(ptr) of a block allocated with size bytes (C23 free_sized, C++
 * sized delete): a size that does not match the block's is reported like
 * an invalid free (HAKMEM_INVALID_FREE), then the block is freed. */
void   hak_free_sized(void *ptr, size_t size);
void  *hak_calloc(size_t count, size_t size);
void  *hak_realloc(void *ptr, size_t size);
void  *hak_reallocarray(void *ptr, size_t count, size_t size);
int    hak_posix_memalign(void **out, size_t alignment, size_t size);
void  *hak_aligned_alloc(size_t alignment, size_t size);
void  *hak_memalign(size_t alignment, size_t size);
size_t hak_usable_size(const void *ptr);
/* Return every cached page to the OS now; 1 if anything was released. */
int    hak_trim(void);

/* Which part of hakmem owns a pointer (decided without a syscall for
 * hakmem's own memory). */
enum hak_kind {
    HAK_KIND_FOREIGN = 0, /* not handed out by hakmem, or freed since */
    HAK_KIND_TINY    = 1, /* small block, up to 1 KiB */
    HAK_KIND_MID     = 2, /* 1 KiB < size <= 52 KiB */
    HAK_KIND_LARGE   = 3  /* header-based large block */
};
enum hak_kind hak_ptr_kind(const void *ptr);

/* Size limits of the tiers (bytes of requested size). */
#define HAK_TINY_MAX ((size_t)1024)
#define HAK_MID_MAX  ((size_t)(52 * 1024))

/* The hardening mitigations compiled into this library, as a mask of
 * HAK_MIT_* bits: 0 for libhakmem, HAK_MIT_ALL for libhakmem-secure (the
 * out/secure build).  docs/ARCHITECTURE.md says what each one catches. */
enum hak_mitigation {
    HAK_MIT_CANARY          = 1 << 0, /* bytes past the requested size (and a
                                         word before each block) checked on free */
    HAK_MIT_GUARD_PAGES     = 1 << 1, /* PROT_NONE pages around large blocks, at
                                         the end of each span, after headers */
    HAK_MIT_RANDOM_ORDER    = 1 << 2, /* fresh blocks handed out shuffled */
    HAK_MIT_QUARANTINE      = 1 << 3, /* freed blocks reused late, at random */
    HAK_MIT_ZERO_ON_FREE    = 1 << 4, /* freed blocks zeroed, checked at reuse */
    HAK_MIT_ZERO_SIZE_GUARD = 1 << 5  /* malloc(0) points where any access faults */
};
#define HAK_MIT_ALL 63u
unsigned hak_mitigations(void);

/* Process-wide statistics.  Counts are totals since start. */
struct hak_stats {
    uint64_t tiny_bytes_in_use;   /* bytes of tiny blocks out of their spans
                                     (in use, or cached in a thread front) */
    uint64_t mid_bytes_in_use;    /* same for mid blocks */
    uint64_t tiny_span_bytes;     /* bytes of spans serving tiny classes */
    uint64_t tiny_span_peak;      /* their peak (summed over the heaps) */
    uint64_t mid_span_bytes;      /* bytes of spans serving mid classes */
    uint64_t mid_span_peak;       /* their peak (summed over the heaps) */
    uint64_t large_bytes_in_use;  /* bytes of live large blocks (mapped size) */
    uint64_t large_bytes_peak;    /* peak of the bytes the large tier held:
                                     live blocks and cached extents */
    uint64_t large_allocs;        /* large blocks allocated */
    uint64_t large_frees;         /* large blocks freed */
    uint64_t slab_refills;        /* thread-front refills from a slab */
    uint64_t remote_frees;        /* blocks freed by a thread not owning them */
    uint64_t superslabs_live;     /* SuperSlabs in use by some heap */
    uint64_t superslabs_mapped;   /* SuperSlabs ever carved from the OS pool */
    uint64_t superslabs_reused;   /* SuperSlabs taken from the cache */
    uint64_t bytes_mapped;        /* bytes currently reserved from the OS */
    uint64_t bytes_cached;        /* free bytes kept for reuse (dirty+clean) */
    uint64_t bytes_dirty;         /* of those, not yet purged (may be resident) */
    uint64_t bytes_purged;        /* total bytes returned with madvise */
    uint64_t os_mmap;             /* syscalls made by hakmem */
    uint64_t os_munmap;
    uint64_t os_madvise;
    uint64_t os_mremap;
    uint64_t os_mincore;
    uint64_t os_mprotect;         /* guard pages (hardened build only) */
    uint64_t os_failures;         /* OS calls that failed (ENOMEM ...) */
    uint64_t fallbacks;           /* slower ways taken after a faster one failed
                                     (mremap -> copy, full extent table) */
    uint64_t foreign_frees;       /* glibc-owned pointers handed to glibc */
    uint64_t invalid_frees;       /* invalid frees counted (ignore mode) */
    uint64_t heaps_created;       /* thread heaps ever created */
    uint64_t heaps_adopted;       /* heaps of exited threads reused */
    uint64_t peak_rss;            /* bytes, from getrusage */
    /* The shared locks: times taken, and times a thread had to wait. */
    uint64_t lock_heaps_acquired, lock_heaps_contended;     /* heap list */
    uint64_t lock_extents_acquired, lock_extents_contended; /* extents   */
    uint64_t large_bytes_cached;  /* freed large extents kept for reuse by
                                     size class (heap fronts and the
                                     central cache; also in bytes_cached) */
    uint64_t heaps_taken_over;    /* heaps of exited threads taken over by
                                     a thread freeing into them */
    uint64_t lock_growth_acquired, lock_growth_contended;   /* new reservations */
    uint64_t large_fronts_decayed; /* large fronts of threads that stopped
                                      using them, given back by the purger */
    uint64_t decay_ms;            /* the decay time in effect (HAKMEM_DECAY_MS,
                                     or longer: docs/OPTIONS.md) */
    uint64_t decay_lengthened;    /* times it doubled: memory purged by decay
                                     was taken back soon after */
    uint64_t slab_bytes_dirty;    /* unused slabs inside SuperSlabs in use
                                     that may hold resident pages */
    uint64_t slab_bytes_purged;   /* bytes of such slabs given back (by decay
                                     or malloc_trim) */
};
void hak_stats_get(struct hak_stats *out);
/* Print the report of HAKMEM_STATS=1 to stderr. */
void hak_stats_print(void);

#ifdef __cplusplus
}
#endif
#endif /* HAKMEM_H */
