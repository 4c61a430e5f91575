/* hakmem data structures.
 *
 * Memory layout
 * -------------
 * Every byte hakmem hands out lives in a *reservation*: an anonymous
 * mapping of a multiple of 2 MiB, aligned to 2 MiB.  Each 2 MiB *chunk*
 * has one byte in the registry (registry.h) saying what it is:
 *
 *   CHUNK_NONE       not hakmem's (a "foreign" address)
 *   CHUNK_SUPERSLAB  a SuperSlab: tiny and mid blocks
 *   CHUNK_EXTENT     extent space: large blocks, metadata and free extents
 *   CHUNK_ZERO       a heap's zero-size blocks: a header with a bitmap of
 *                    the live 16-byte slots, the rest PROT_NONE (zero.c)
 *
 * A free(p) therefore classifies p with one load and no syscall.
 *
 * SuperSlab (2 MiB, 2 MiB aligned)           slab = 64 KiB
 * +---------+---------+---------+-----+---------+
 * | slab 0  | slab 1  | slab 2  | ... | slab 31 |
 * | header  |  span of 1..8 slabs for one class  |
 * +---------+---------+---------+-----+---------+
 * Slab 0 holds the SuperSlab header with the descriptors of all slabs.
 * A *span* is a run of slabs given to one size class; its descriptor is
 * the one of its first slab and span_head[] maps any slab to it.  Tiny
 * classes use one-slab spans, mid classes up to 8 slabs so that the
 * span divides into blocks with little waste.
 *
 * Ownership
 * ---------
 * A SuperSlab belongs to one Heap.  A Heap belongs to at most one thread
 * at a time and is never freed: when its thread exits it is *abandoned*
 * and adopted whole by the next thread that starts.  Because heaps are
 * immortal, a free from any thread can always reach the owner of a block.
 *
 * Life of a tiny/mid block
 * ------------------------
 * malloc pops the thread's list front.free[class] (ThreadFront), which holds
 * free blocks of that class from any span of the thread's heap.  When it is
 * empty, the slow path (heap.c) refills it with a whole span's free blocks.
 * free(p) masks p to its SuperSlab, reads owner, page_cls and span_head:
 *   - owner thread:   push on front.free[class]; past a cap, the newest half
 *                     goes back to the spans (no atomics either way)
 *   - another thread: CAS-push on span->thread_free
 * Large blocks (> 52 KiB) carry a LargeHeader and live in extents.
 *
 * SPDX-License-Identifier: MIT */
#ifndef HAK_TYPES_H
#define HAK_TYPES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mitigations.h"
#include "tunables.h"

#define HAK_CHUNK_SHIFT   21
#define HAK_CHUNK_SIZE    ((size_t)1 << HAK_CHUNK_SHIFT)        /* 2 MiB */
#define HAK_SLAB_SHIFT    16
#define HAK_SLAB_SIZE     ((size_t)1 << HAK_SLAB_SHIFT)         /* 64 KiB */
#define HAK_SLABS_PER_SS  32
#define HAK_PAGE_SHIFT    12
#define HAK_PAGE_SIZE     ((size_t)1 << HAK_PAGE_SHIFT)
#define HAK_PAGES_PER_SS  (HAK_CHUNK_SIZE / HAK_PAGE_SIZE)             /* 512 */
#define HAK_MAX_SPAN      8          /* slabs in the longest span */

#define HAK_NCLASS        47         /* size classes of tiny + mid */
#define HAK_NCLASS_TINY   20         /* classes 0..19 are <= 1 KiB */
#define HAK_SMALL_MAX     ((size_t)53248)                       /* 52 KiB */
/* Every block's alignment (what malloc guarantees on x86-64), and the
 * step between the smallest classes. */
#define HAK_MIN_ALIGN_SHIFT 4
#define HAK_MIN_ALIGN     ((size_t)1 << HAK_MIN_ALIGN_SHIFT)

/* A free block: its first word links to the next free block.  The link is
 * stored XOR-encoded with a per-process secret, and every decoded link is
 * checked to stay inside the same SuperSlab, so that a stray write into a
 * freed block cannot steer a later malloc to an arbitrary address.  The
 * second word holds its free mark (block_mark: a random per-process value
 * XOR the block's address) while the
 * block is free, and is cleared when malloc hands it out: a free() that
 * finds the mark is most likely a double free, and is checked (free.c,
 * front_free_slow) before anything is written. */
typedef struct Block { uintptr_t next_enc; uintptr_t free_mark; } Block;

/* A lock (internal.h), with how often it was taken and how often a thread
 * had to wait for it (HAKMEM_STATS): written by the holder only.
 * state: 0 free, 1 held, 2 held and a thread may be asleep on it. */
typedef struct Lock {
    _Atomic uint32_t state;
    uint64_t acquired, contended;
} Lock;

/* The purger's watch on a count its owner moves with every use (a large
 * front's claims, a heap's released spans): the count it last saw, and
 * when it first saw it (idle_watch, internal.h). */
typedef struct IdleWatch {
    unsigned seen;
    uint64_t seen_ms;
} IdleWatch;

/* Where a span currently is, from its owner's point of view. */
enum span_state {
    SPAN_CURRENT = 1,  /* front.cur[cls]: the span whose fresh blocks are carved */
    SPAN_PARTIAL = 2,  /* queued on heap->partial[cls]: has free blocks      */
    SPAN_FULL    = 3   /* no free block; thread_free carries SPAN_NOTIFY      */
};

/* thread_free low bit: the span is FULL and the owner is not looking at it;
 * the first remote free must hand its block to heap->delayed instead, which
 * wakes the span up (see free.c, span_free_remote). */
#define SPAN_NOTIFY ((uintptr_t)1)

struct Heap;

/* Span descriptor, 64 bytes, in the SuperSlab header. */
typedef struct Span {
    Block     *free;        /* owner-only list of free blocks                */
    uint32_t   used;        /* blocks out of the span: with the user, in a   */
                            /* thread front or on thread_free.  Every other  */
                            /* block is on free or fresh, so free holds      */
                            /* capacity - fresh - used blocks.               */
    uint32_t   _pad4;
    _Atomic uintptr_t thread_free; /* blocks freed by other threads | NOTIFY */
    char      *bump;        /* next never-used block                         */
    uint64_t   _pad8;       /* keeps the descriptor at 64 bytes              */
    struct Span *next, *prev; /* heap->partial[cls] links                    */
    uint32_t   fresh;       /* never-used blocks left at bump                */
    uint8_t    cls;         /* size class (block size: size_classes[cls])     */
    uint8_t    nslabs;      /* 0 = slab is free */
    uint8_t    state;       /* enum span_state */
    uint8_t    _pad;
} Span;

/* SuperSlab header, at the start of its own slab 0.  In the default build
 * the page after it holds the mid tier's requested sizes (mid_size_slot,
 * internal.h); the rest of slab 0 is never touched. */
typedef struct SuperSlab {
    /* What free() reads. */
    struct Heap *owner;                 /* never NULL while in use          */
    uint8_t   span_head[HAK_SLABS_PER_SS]; /* slab index -> span's first slab */
    uint32_t  free_mask;                /* bit i: slab i is unused           */
    uint32_t  dirty_mask;               /* unused slabs whose pages may be   */
                                        /* resident (Heap.slabs_lock)        */
    struct SuperSlab *next, *prev;      /* heap->superslabs                  */
    /* Spans released here, and the purger's watch on that count: its free
     * slabs go back once it stood still for a decay time (heap_slabs_decay;
     * Heap.slabs_lock). */
    unsigned  span_releases;
    IdleWatch slabs_idle;
    /* 4 KiB page -> class of the blocks that start in it, or HAK_NO_CLASS:
     * the header, free slabs and pages not carved yet (see span_carve). */
    uint8_t   page_cls[HAK_PAGES_PER_SS];
    Span      spans[HAK_SLABS_PER_SS] __attribute__((aligned(64))); /* [0] unused */
} SuperSlab;

/* A freed large extent waiting in the large cache (large_cache.c).  It
 * lives in the extent itself, in the padding of the block's LargeHeader
 * (at LINK_OFFSET, large_cache.c), so a cached extent costs no metadata. */
typedef struct CachedExtent {
    struct CachedExtent *next;
    size_t   len;        /* bytes of the extent */
    uint64_t freed_ms;   /* when it reached the central cache */
} CachedExtent;

/* Large size classes: every page count below 32 pages, then eight per
 * power of two up to 4 MiB (bigger extents are not cached). */
#define HAK_LARGE_NCLASS (32 + (10 - 5) * 8 + 1)

/* A heap's cache of freed large extents: like the thread front of the
 * slab tiers, only its thread uses it, without a lock.  Its thread holds
 * claim (one CAS on a line nobody else writes) while it uses it, and so
 * may the purger, which gives back the front of a thread that made no
 * large malloc or free for a decay time (large_front_decay): an idle
 * thread would keep up to LARGE_FRONT_CAP resident for ever otherwise. */
enum front_claim { FRONT_FREE = 0, FRONT_OWNER = 1, FRONT_PURGER = 2 };
typedef struct LargeFront {
    CachedExtent *bin[HAK_LARGE_NCLASS];
    size_t   bytes;          /* cached here                                */
    size_t   cap;            /* at most this much: its share, read on a miss */
    unsigned shard;          /* home shard of the central cache            */
    unsigned misses;         /* allocations it could not serve, in a row   */
    unsigned big_misses;     /* a score of its misses of big blocks: while */
                             /* high, they bypass it (large_cache.c)       */
    uint32_t straight;       /* meanwhile, the big classes freed since the */
                             /* last miss (bit: class - the first big one), */
    uint32_t straight_twice; /* those freed twice or more, and the class    */
    uint32_t straight_last;  /* freed last (large_cache.c, front_bypassed)  */
    unsigned bypassed;       /* big mallocs that bypassed it               */
    char    *last_put;       /* the extent freed last: never the next one  */
                             /* handed out (large_cache.c)                 */
    _Atomic uint32_t claim;  /* enum front_claim: who is using it          */
    unsigned uses;           /* times its thread claimed it                */
    IdleWatch idle;          /* the purger's, on uses                      */
    /* Statistics of the heap's threads, summed over heaps when read. */
    uint64_t allocs, frees;
    int64_t  bytes_out;      /* extent bytes allocated less freed          */
} LargeFront;

/* A CHUNK_ZERO chunk (zero.c): the header at its start. */
typedef struct ZeroChunk ZeroChunk;

/* A thread's heap.  Immortal: recycled through the abandoned queue. */
enum heap_state { HEAP_ACTIVE = 1, HEAP_ABANDONED = 2, HEAP_BUSY = 3, HEAP_ORPHAN = 4 };

typedef struct Heap {
    Span      *partial[HAK_NCLASS];     /* spans with free blocks, by class: */
    Span      *partial_tail[HAK_NCLASS];/* a FIFO, so the span that gathered */
                                        /* frees longest is reused first     */
    SuperSlab *superslabs;              /* SuperSlabs with unused slabs first */
    SuperSlab *spare;                   /* one empty SuperSlab kept for reuse */
    _Atomic(Block *) delayed;           /* remote frees into FULL spans      */
    _Atomic int state;
    struct Heap *all_next;              /* every heap ever made              */
    struct Heap *abandoned_next;
    /* Statistics, written by the owner only, on slow paths.  Nobody reads
     * another thread's front, whose TLS may be gone: a thread that ends
     * in a way that skips its exit hook never clears a pointer to it. */
    uint64_t  refills[HAK_NCLASS];
    uint64_t  allocs[HAK_NCLASS];       /* mallocs of exited threads         */
    uint64_t  front_allocs[HAK_NCLASS]; /* its front's mallocs and blocks    */
    uint32_t  front_held[HAK_NCLASS];   /* held, as of its last refill or    */
                                        /* flush of the class                */
    uint64_t  remote[HAK_NCLASS];       /* frees this heap's thread sent to  */
                                        /* blocks of other heaps             */
    uint64_t  superslabs_live;
#if HAK_DEBUG
    uint64_t  checks_due;               /* refills to its next heap_validate */
#endif
    int64_t   span_bytes[2], span_peak[2]; /* tiny, mid: see span.c        */
    /* The unused slabs of its SuperSlabs (and of its spare) that may hold
     * resident pages (SuperSlab.dirty_mask): the purger gives back those
     * of a SuperSlab that released no span for a decay time, while the
     * heap's thread may be running (heap_slabs_decay).  Whoever changes
     * which slabs are free (span_new, span_release, the spare) or walks
     * the SuperSlab list to purge holds slabs_lock; the purger only ever
     * tries it. */
    Lock      slabs_lock;
    _Atomic uint32_t slabs_dirty;       /* slabs in the dirty masks (read    */
                                        /* without the lock)                 */
    uint64_t  slab_bytes_purged;        /* of such slabs, given back (ditto) */
    LargeFront large;
    ZeroChunk *zero;                    /* its malloc(0) blocks' chunks      */
} Heap;

/* The thread-local front, like a tcmalloc thread cache.  front.free[cls] holds
 * free blocks of class cls from any span of the thread's heap: malloc pops
 * it, the owner's free pushes on it, and neither touches anything else.
 * Past size_classes[cls].front_max blocks (room[cls] below 0: the free path
 * tests one counter, not a counter against a limit), the newest half is
 * flushed back to the spans; when it is empty, a refill takes a whole
 * span's free list.
 * front.cur[cls] is the span whose never-used blocks are being carved. */
typedef struct ThreadFront {
    Block   *free[HAK_NCLASS + 1];      /* free[HAK_NO_CLASS], the class of */
                                        /* size 0, stays NULL (zero.c)      */
    int32_t  room[HAK_NCLASS];          /* front_max - length of free[cls] */
    uint64_t allocs[HAK_NCLASS];        /* statistics: mallocs served      */
    Span    *cur[HAK_NCLASS];
    Heap    *heap;
    bool     exited;                    /* the heap was given up at exit   */
    uint32_t reclaim_tries;             /* cross-thread frees that looked
                                         * for an abandoned owner (free.c) */
#if HAK_HARDEN_QUARANTINE
    /* Blocks this thread freed, waiting to be really freed: a free puts
     * its block in a random slot and frees the one that was there. */
    Block   *quarantine[HAK_QUARANTINE_SLOTS];
    uint64_t quarantine_rng;
    unsigned quarantine_audit;          /* the slot malloc looks at next   */
#endif
} ThreadFront;

/* Header in front of every large block (exactly 64 bytes).  The fields
 * sit at its end, where a run before the block lands first, and the word
 * right before the block is the cookie, which covers them (large.c). */
typedef struct LargeHeader {
    uint64_t  _pad[4];    /* a cached extent's link (large_cache.c)         */
    char     *extent;     /* start of the extent holding the block          */
    size_t    extent_len; /* bytes of the extent                            */
    size_t    size;       /* bytes requested                                */
    uintptr_t cookie;     /* the fields, address, secret and state, mixed   */
} LargeHeader;

/* Size class description, filled once at start-up.  size_classes has one
 * more entry, HAK_NO_CLASS, all zero: its div_magic of 0 makes free() reject
 * any pointer into a header slab or a free slab before writing anything. */
typedef struct ClassInfo {
    uint64_t div_magic;  /* UINT64_MAX / block_size + 1: an offset o is a  */
                         /* block start iff o * div_magic < div_magic       */
    uint32_t block_size;
    uint32_t capacity;   /* blocks in a span */
    uint32_t front_max;  /* most blocks kept in a thread front */
    uint8_t  nslabs;     /* slabs in a span  */
} ClassInfo;
#define HAK_NO_CLASS HAK_NCLASS

#endif /* HAK_TYPES_H */
