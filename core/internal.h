/* Declarations shared by the files of core/.  Nothing here is exported.
 *
 * Atomics, two kinds, one rule.  A field every access to which is atomic
 * (a span's thread_free, a heap's delayed list and state, the central
 * cache's stacks) is declared _Atomic and used through C11 atomic_*.  A
 * plain field that its owner writes with ordinary stores and other
 * threads only read (statistics, a span's carving point and counts, the
 * registry bytes, a block's canary) is read and published with the
 * __atomic_* builtins, since C11 has no atomic access to an object not
 * declared atomic, and declaring it _Atomic would make every owner store a
 * full barrier.
 * SPDX-License-Identifier: MIT */
#ifndef HAK_INTERNAL_H
#define HAK_INTERNAL_H

#include "types.h"
#include "hakmem.h"

#include <string.h>

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define HAK_API     __attribute__((visibility("default")))
/* On variables shared between the files of the library: addressed
 * directly, not through the GOT (one load less on the fast paths). */
#define HAK_HIDDEN  __attribute__((visibility("hidden")))
#define HAK_NOINLINE __attribute__((noinline))
#define HAK_COLD    __attribute__((noinline, cold))

#ifdef HAK_DEBUG
#define HAK_ASSERT(c) ((c) ? (void)0 : assert_failed(#c, __FILE__, __LINE__))
#else
#define HAK_ASSERT(c) ((void)0)
#endif

static inline uintptr_t align_up(uintptr_t x, uintptr_t a) { return (x + a - 1) & ~(a - 1); }
static inline uintptr_t align_down(uintptr_t x, uintptr_t a) { return x & ~(a - 1); }
static inline bool is_pow2(size_t x) { return x && !(x & (x - 1)); }

/* The shared locks (extents, heap list) are held for a few hundred
 * instructions and never across a syscall in steady state: spin briefly
 * before sleeping, so that two threads meeting there do not futex.
 *
 * Between hakmem's fork prepare handler and its parent/child handler, the
 * forking thread holds every lock; other fork handlers may still allocate
 * on that thread (they run before or after ours, in an order set by
 * registration), so for it taking and releasing a lock is a no-op. */
extern HAK_HIDDEN __thread bool fork_locks_held __attribute__((tls_model("initial-exec")));
/* Lock (types.h) is our own, not a pthread mutex: taking and releasing it
 * is one atomic each, inline (a pthread mutex cost 58 instructions a pair
 * through the PLT, 8% of the large tier's on 1-9 MiB blocks), and a
 * sleeper is woken by a futex. */
#define LOCK_INIT { 0, 0, 0 }
void lock_wait(Lock *l);     /* os.c: spin, then sleep until it is ours */
void lock_wake(Lock *l);     /* os.c: wake one sleeper */
static inline void lock_acquire(Lock *l)
{
    if (unlikely(fork_locks_held))
        return;
    uint32_t free_state = 0;
    if (unlikely(!atomic_compare_exchange_strong_explicit(&l->state, &free_state, 1,
                                                          memory_order_acquire,
                                                          memory_order_relaxed))) {
        lock_wait(l);
        l->contended++;
    }
    l->acquired++;
}
static inline void lock_release(Lock *l)
{
    if (likely(!fork_locks_held) &&
        unlikely(atomic_exchange_explicit(&l->state, 0, memory_order_release) == 2))
        lock_wake(l);
}
/* Take it only if it is free (the purger, which must never wait for a
 * thread that may wait for it). */
static inline bool lock_try(Lock *l)
{
    uint32_t free_state = 0;
    if (!atomic_compare_exchange_strong_explicit(&l->state, &free_state, 1, memory_order_acquire,
                                                 memory_order_relaxed))
        return false;
    l->acquired++;
    return true;
}
/* The purger looks at a count (IdleWatch): 0 if it has not moved for a
 * decay time, else when to look again.  (now may be older than the time
 * it was first seen: the purger's stand-in runs in two threads at once,
 * decay_without_purger.) */
static inline uint64_t idle_watch(IdleWatch *w, unsigned count, uint64_t now, uint64_t decay)
{
    if (count != w->seen || !w->seen_ms) {
        w->seen = count;
        w->seen_ms = now;
        return now + decay;
    }
    if (now < w->seen_ms || now - w->seen_ms < decay)
        return w->seen_ms + decay;
    return 0;
}
/* The fork child: the threads that held or waited for it are gone. */
static inline void lock_reset(Lock *l) { atomic_store_explicit(&l->state, 0, memory_order_relaxed); }

/* ---- errors (error.c) ---- */
__attribute__((noreturn)) void assert_failed(const char *cond, const char *file, int line);
/* Heap corruption: one line on stderr, then abort(). */
__attribute__((noreturn)) void fatal_corruption(const char *what, const void *addr);
/* Invalid free/realloc: abort, or count and ignore (HAKMEM_INVALID_FREE). */
void invalid_free_report(const char *what, const void *addr);
/* Write a message to stderr without allocating. */
void write_fd(int fd, const char *msg); /* all of it, or until write fails */
static inline void write_stderr(const char *msg) { write_fd(2, msg); }
void stats_init(void); /* after options_init: HAKMEM_STATS's exit report */

/* ---- options (options.c) ---- */
typedef struct Options {
    long stats;          /* HAKMEM_STATS */
    long verbose;        /* HAKMEM_VERBOSE */
    long invalid_free;   /* HAKMEM_INVALID_FREE: 0 abort, 1 ignore */
    long decay_ms;       /* HAKMEM_DECAY_MS */
    long cache_max_mb;   /* HAKMEM_CACHE_MAX_MB */
} Options;
extern HAK_HIDDEN Options options;
void options_init(void);
void options_print(void);

/* ---- free-list link encoding ---- */
extern HAK_HIDDEN uintptr_t process_secret;
extern HAK_HIDDEN uintptr_t free_mark_value; /* see Block in types.h; never 0 */
/* The free mark of the block at b: bound to its address, so that a mark
 * copied elsewhere is no mark where it lands.  Memory that held freed
 * blocks and is then handed out uninitialised (a large block carved over
 * an old SuperSlab) still carries their marks, and realloc down to the
 * slab tiers copies its first bytes into a live small block, which a
 * plain mark made look freed (a false "double free" abort).  Never 0:
 * free_mark_value is odd, a block's address even. */
static inline uintptr_t block_mark(const void *b) { return free_mark_value ^ (uintptr_t)b; }
extern HAK_HIDDEN uint64_t tail_pattern;      /* canaries' byte, in every lane */
/* Links are stored XOR-ed with a per-process secret, so a stray or hostile
 * write into a freed block cannot aim a later malloc at a chosen address.
 * block_next() also checks that a link stays inside its SuperSlab; it is
 * used wherever lists are walked (spans, cross-thread lists), while the
 * malloc fast path decodes without the check (block_next_fast). */
static inline Block *block_next_fast(const Block *b)
{
    return (Block *)(b->next_enc ^ process_secret);
}
static inline Block *block_next(const Block *b)
{
    Block *n = block_next_fast(b);
    /* A link leaves its SuperSlab only at the end of a list. */
    if (unlikely((((uintptr_t)n ^ (uintptr_t)b) >> HAK_CHUNK_SHIFT) != 0) && n != NULL)
        fatal_corruption("corrupted free list (use after free?) at", b);
    return n;
}
static inline void block_set_next(Block *b, Block *next)
{
    b->next_enc = (uintptr_t)next ^ process_secret;
}

/* ---- hardening (mitigations.h): room the tiers reserve ----
 * A hardened slab block ends with an 8-byte canary after the free-list link
 * and the free mark, so it holds 24 bytes at least; a hardened large block
 * sits between guard pages, as does (at its end) every span. */
#define HAK_CANARY_SIZE (HAK_HARDEN_CANARY ? (size_t)8 : (size_t)0)
#define HAK_GUARD_SIZE  (HAK_HARDEN_GUARD_PAGES ? HAK_PAGE_SIZE : (size_t)0)
static inline size_t slab_request(size_t size)
{
    if (HAK_HARDEN_ZERO_SIZE_GUARD && size == 0)
        return 0; /* size 0 has a class of its own (zero.c) */
    return HAK_HARDEN_CANARY ? (size < sizeof(Block) ? sizeof(Block) : size) + HAK_CANARY_SIZE : size;
}
#define HAK_SLAB_REQUEST_MAX (HAK_SMALL_MAX - HAK_CANARY_SIZE)

/* ---- size classes (size_class.c) ---- */
/* the class of each size, by (size + 15) / 16 */
extern HAK_HIDDEN uint8_t class_of_size[(HAK_SMALL_MAX >> HAK_MIN_ALIGN_SHIFT) + 1];
extern HAK_HIDDEN ClassInfo size_classes[HAK_NCLASS + 1];
/* What the fast paths of free test instead of div_magic: the same, or 0
 * (no offset passes) for the mid classes of the default build, whose
 * frees check their tail canary on the slow paths (free.c).  An array of
 * its own: one load indexed by the class, no multiply. */
extern HAK_HIDDEN uint64_t class_fast_magic[HAK_NCLASS + 1];
unsigned size_class_compute(size_t size);
static inline unsigned size_class(size_t size)
{
    return class_of_size[(size + HAK_MIN_ALIGN - 1) >> HAK_MIN_ALIGN_SHIFT];
}

/* ---- thread heaps (heap.c, span.c, free.c; heaps_stats and
 * heaps_report_remote in stats.c) ---- */
extern HAK_HIDDEN __thread ThreadFront thread_front __attribute__((tls_model("initial-exec")));
void *heap_alloc_slow(size_t size, unsigned cls);
void  front_overflow(unsigned cls);
void  front_free_slow(SuperSlab *ss, Block *b, unsigned cls, uint32_t off);
void  heap_trim(void);

void  span_free_remote(SuperSlab *ss, Span *s, Block *b);
void  heap_thread_exit(void *unused);
void  heap_collect_abandoned(bool all);
/* The purger: give back the large fronts of running threads that stopped
 * using them (large_front_decay) and the free slabs of heaps that stopped
 * releasing spans (heap_slabs_decay); returns when to look again (0:
 * nothing holds anything).  heaps_hold_decaying: does any front hold
 * extents, or any heap free slabs that may be resident?  (no lock taken:
 * the purger asks it with the extents' lock held) */
uint64_t heaps_decay(uint64_t now);
bool  heaps_hold_decaying(void);
void  heaps_fork_prepare(void);
void  heaps_fork_parent(void);
void  heaps_fork_child(void);
typedef struct ClassStats {
    uint64_t allocs;       /* mallocs served                                */
    uint64_t out;          /* blocks in use now (not cached in a front)     */
    uint64_t remote_frees; /* frees of its blocks by non-owner threads      */
    uint64_t refills;
} ClassStats;
void  heaps_stats(struct hak_stats *st, ClassStats *by_class);
void  heaps_report_remote(int fd); /* HAKMEM_STATS lines, busiest heaps */
void  stats_print(int fd);         /* the whole report, to fd */
/* Secret, options and class tables are set up by the first thread heap;
 * paths that may run before any heap exists call this first. */
extern HAK_HIDDEN bool runtime_ready;
void  runtime_start(void);
static inline void runtime_ensure(void)
{
    if (unlikely(!__atomic_load_n(&runtime_ready, __ATOMIC_ACQUIRE)))
        runtime_start();
}
static inline SuperSlab *superslab_of(const void *p)
{
    return (SuperSlab *)align_down((uintptr_t)p, HAK_CHUNK_SIZE);
}
static inline Span *span_of(SuperSlab *ss, const void *p)
{
    unsigned slab = ((uintptr_t)p >> HAK_SLAB_SHIFT) & (HAK_SLABS_PER_SS - 1);
    uintptr_t head = ss->span_head[slab];
    _Static_assert(sizeof(Span) == 64, "span descriptors are one line");
    return (Span *)((uintptr_t)ss + offsetof(SuperSlab, spans) + (head << 6));
}
static inline char *span_start(SuperSlab *ss, Span *s)
{
    return (char *)ss + ((size_t)(s - ss->spans) << HAK_SLAB_SHIFT);
}
/* Is offset off (from the start of its span) the start of a block of
 * class cls?  An exact divisibility test by the block size with one
 * multiply (Lemire et al., "Faster remainder by direct computation", 2019),
 * valid for offsets below 2^32.  HAK_NO_CLASS (magic 0) rejects all. */
static inline bool offset_passes(uint64_t magic, uint32_t off) { return (uint64_t)off * magic < magic; }
static inline bool offset_is_block(unsigned cls, uint32_t off)
{
    return offset_passes(size_classes[cls].div_magic, off);
}
/* The same test with the fast paths' magic: false for every offset of a
 * class whose frees take the slow path (the default build's mid classes). */
static inline bool offset_is_block_fast(unsigned cls, uint32_t off)
{
    return offset_passes(class_fast_magic[cls], off);
}
static inline uint32_t span_offset(SuperSlab *ss, Span *s, const void *p)
{
    return (uint32_t)((const char *)p - span_start(ss, s));
}
static inline uint32_t span_block_size(const Span *s) { return size_classes[s->cls].block_size; }
static inline uint32_t span_capacity(const Span *s) { return size_classes[s->cls].capacity; }

/* A block of a carved slab, at a block start below the carving point (the
 * owner may be carving meanwhile: bump is read like remote frees do).
 * The _fast form is the cross-thread free's: see offset_is_block_fast. */
static inline bool block_is_valid(SuperSlab *ss, Span *s, const void *p)
{
    return s->nslabs != 0 && offset_is_block(s->cls, span_offset(ss, s, p)) &&
           (const char *)p < __atomic_load_n(&s->bump, __ATOMIC_RELAXED);
}
static inline bool block_is_valid_fast(SuperSlab *ss, Span *s, const void *p)
{
    return s->nslabs != 0 && offset_is_block_fast(s->cls, span_offset(ss, s, p)) &&
           (const char *)p < __atomic_load_n(&s->bump, __ATOMIC_RELAXED);
}

/* ---- the mid tier's tail canary (default build) ----
 * The hardened build's canaries cover every slab block (harden.h); the
 * default build gives blocks of the mid classes (above 1 KiB) a tail
 * canary like large blocks': the TAIL_CANARY bytes after the requested
 * size (fewer where the block ends sooner) hold tail_byte(), and free and
 * realloc check them.  The requested size is kept out of the block, in
 * the page after the SuperSlab header: one 16-bit slot per KiB of the
 * SuperSlab, as no two mid blocks start in the same KiB.  A slot is 0
 * while its block is free, and for a live block that fills its class
 * (4096, 8192 ...: no canary, nothing to read at free), so the slots
 * of a span that goes back to its SuperSlab are all 0 again.  Tiny blocks
 * have none: their slack is a few bytes and their size nowhere. */
#define MID_CANARY      (!HAK_HARDEN_CANARY)
#define MID_SLOT_SHIFT  10
#define MID_SIZES_BYTES ((HAK_CHUNK_SIZE >> MID_SLOT_SHIFT) * sizeof(uint16_t))
_Static_assert(MID_SIZES_BYTES == HAK_PAGE_SIZE, "the mid sizes fill the page after the header");
_Static_assert(HAK_TINY_MAX == (size_t)1 << MID_SLOT_SHIFT && HAK_SMALL_MAX <= UINT16_MAX,
               "mid blocks are bigger than a slot's KiB, and their sizes fit a slot");
static inline uint16_t *mid_size_slot(const void *p)
{
    uint16_t *sizes = (uint16_t *)((char *)superslab_of(p) + HAK_PAGE_SIZE);
    return sizes + (((uintptr_t)p & (HAK_CHUNK_SIZE - 1)) >> MID_SLOT_SHIFT);
}

static inline uint8_t tail_byte(void) { return (uint8_t)tail_pattern; }

/* The tail canary: the n bytes past a block's requested size hold
 * tail_byte(); free and realloc check them.  n is TAIL_CANARY in the
 * common case, four stores and loads of whole words; it differs where the
 * block ends sooner and for the hardened build's large blocks (all the
 * bytes to the guard page), out of line. */
bool tail_canary_short_intact(const char *t, size_t n); /* any n; harden.c */
static inline void tail_canary_arm(char *t, size_t n)
{
    if (likely(n == TAIL_CANARY)) {
        uint64_t w = tail_pattern; /* loaded once: the stores may alias it */
#pragma GCC unroll 8
        for (size_t i = 0; i < TAIL_CANARY; i += 8)
            memcpy(t + i, &w, 8);
    } else {
        memset(t, tail_byte(), n);
    }
}
static inline __attribute__((always_inline)) bool tail_canary_intact(const char *t, size_t n)
{
    if (likely(n == TAIL_CANARY)) {
        uint64_t diff = 0, w;
#pragma GCC unroll 8
        for (size_t i = 0; i < TAIL_CANARY; i += 8) {
            memcpy(&w, t + i, 8);
            diff |= w ^ tail_pattern;
        }
        return !diff;
    }
    return tail_canary_short_intact(t, n);
}

/* The default build's mid blocks (MID_CANARY): malloc arms a
 * block it hands out for size bytes, free and realloc check and disarm it
 * (a slot of 0: nothing to check). */
#if MID_CANARY
static inline size_t mid_tail_len(size_t block_size, size_t size)
{
    size_t slack = block_size - size;
    return slack < TAIL_CANARY ? slack : TAIL_CANARY;
}
static inline void *mid_arm(void *p, size_t size, size_t block_size)
{
    /* Nothing to guard for a request of 0 bytes (aligned) or one that
     * fills its class: the slot stays 0, and free reads nothing more. */
    if (p && size && size < block_size) {
        *mid_size_slot(p) = (uint16_t)size;
        tail_canary_arm((char *)p + size, mid_tail_len(block_size, size));
    }
    return p;
}
/* The check of free and realloc where the canary is TAIL_CANARY bytes or
 * there is none (the common case, with no call); false, with nothing
 * done, otherwise (mid_check does the rest). */
static inline __attribute__((always_inline)) bool mid_check_common(const void *b, size_t block_size)
{
    uint16_t *slot = mid_size_slot(b);
    size_t size = *slot;
    if (size) {
        if (unlikely(size + TAIL_CANARY > block_size)) /* (or a bad slot) */
            return false;
        if (unlikely(!tail_canary_intact((const char *)b + size, TAIL_CANARY)))
            fatal_corruption("block overflow (bytes past the requested size changed) at", b);
        *slot = 0;
    }
    return true;
}
static inline __attribute__((always_inline)) void mid_check(const void *b, size_t block_size)
{
    if (mid_check_common(b, block_size))
        return;
    uint16_t *slot = mid_size_slot(b);
    size_t size = *slot;
    if (unlikely(size > block_size)) /* a stray write into the sizes' page */
        fatal_corruption("block overflow (the block's size slot was overwritten) at", b);
    if (unlikely(!tail_canary_short_intact((const char *)b + size, block_size - size)))
        fatal_corruption("block overflow (bytes past the requested size changed) at", b);
    *slot = 0;
}
/* The bytes of a live mid block the program may use: what it asked for. */
static inline size_t mid_usable(const void *b, size_t block_size)
{
    size_t size = *mid_size_slot(b);
    return size ? size : block_size;
}
#else
static inline void *mid_arm(void *p, size_t size, size_t block_size) { return p; }
static inline void mid_check(const void *b, size_t block_size) { }
static inline bool mid_check_common(const void *b, size_t block_size) { return true; }
#endif


/* How many blocks the thread front holds of class cls */
static inline uint32_t front_count(const ThreadFront *front, unsigned cls)
{
    return (uint32_t)((int32_t)size_classes[cls].front_max -
                      __atomic_load_n(&front->room[cls], __ATOMIC_RELAXED));
}

/* The figures of front's class cls that statistics read, for its heap h:
 * set on the slow paths (refill, flush, the heap given back). */
static inline void front_publish(Heap *h, const ThreadFront *front, unsigned cls)
{
    __atomic_store_n(&h->front_allocs[cls], front->allocs[cls], __ATOMIC_RELAXED);
    __atomic_store_n(&h->front_held[cls], front_count(front, cls), __ATOMIC_RELAXED);
}

/* The owner's free of a checked block: onto the thread front (with the
 * free mark), flush past the class's cap.  The block goes in behind the
 * head, so the next malloc of its class does not hand back the block just
 * freed: a use after free cannot count on its block being the next one
 * reused, and a double free after one malloc still finds the mark.  The
 * head was freed or refilled just before; reading its link costs no miss
 * that the next malloc would not take anyway. */
static inline void front_push(ThreadFront *front, unsigned cls, Block *b)
{
    Block *head = front->free[cls];
    b->free_mark = block_mark(b);
    if (likely(head != NULL)) {
        b->next_enc = head->next_enc; /* same secret: the link moves as it is */
        block_set_next(head, b);
    } else {
        block_set_next(b, NULL);
        front->free[cls] = b;
    }
    if (unlikely(--front->room[cls] < 0))
        front_overflow(cls);
}

/* free() of a block of the slab tiers, after the registry said so.  The
 * owner pushes on its thread front, nothing else; a pointer into the
 * middle of a block, into a free slab, a page not carved yet or the
 * header, and a block that carries the free mark, take the slow path that
 * sorts misuse from coincidence (as do the default build's mid blocks,
 * to have their tail canary checked: fast_magic).  Any other thread sends the block back
 * to its span with one CAS. */
static inline unsigned page_index(const void *p)
{
    return ((uintptr_t)p >> HAK_PAGE_SHIFT) & (HAK_PAGES_PER_SS - 1);
}
static inline void slab_free(SuperSlab *ss, Block *b, unsigned page)
{
    ThreadFront *front = &thread_front;
    unsigned cls = ss->page_cls[page];
    if (likely(ss->owner == front->heap)) {
        uintptr_t addr = (uintptr_t)b;
        unsigned slab = page >> (HAK_SLAB_SHIFT - HAK_PAGE_SHIFT);
        uint32_t off = (uint32_t)((addr - ((uintptr_t)ss->span_head[slab] << HAK_SLAB_SHIFT)) &
                                  (HAK_CHUNK_SIZE - 1));
        if (unlikely(!offset_is_block_fast(cls, off) || b->free_mark == block_mark(b))) {
            front_free_slow(ss, b, cls, off);
            return;
        }
        front_push(front, cls, b);
        return;
    }
    span_free_remote(ss, span_of(ss, b), b);
}

/* ---- zero-size blocks (zero.c; ZERO_SIZE_GUARD) ---- */
void *zero_alloc(Heap *h);      /* a distinct PROT_NONE 16-byte slot     */
void  zero_free(void *p);       /* p is in a CHUNK_ZERO chunk            */
bool  zero_live(const void *p);

/* ---- extents (extent.c): all memory from the OS goes through here ---- */
void *extent_alloc(size_t len, size_t align, size_t offset, bool *zeroed);
void  extent_free(void *p, size_t len);
/* The same for a range free since since_ms (a cached extent): decay counts
 * from then, not from now. */
void  extent_free_since(void *p, size_t len, uint64_t since_ms);
bool  extent_grow(void *end, size_t extra);
void  extent_free_purged(void *p, size_t len); /* range already reads as zero */
size_t extent_trim(void);
void  extent_lock(void);
void  extent_unlock(void);
void  extent_fork_prepare(void);              /* grow_lock, then ext_lock */
void  extent_fork_parent(void);
void  extent_fork_child(void);
void  extent_stats(struct hak_stats *st);
/* The decay time in effect: HAKMEM_DECAY_MS, lengthened (extent.c) while
 * the program takes back soon what decay purged; 0 with HAKMEM_DECAY_MS=0. */
extern HAK_HIDDEN _Atomic uint64_t decay_lengthened_ms;
static inline uint64_t decay_time(void)
{
    uint64_t d = atomic_load_explicit(&decay_lengthened_ms, memory_order_relaxed);
    return d ? d : (uint64_t)options.decay_ms;
}

/* The purger thread (extent.c) is wanted once hakmem holds 16 MiB, in
 * use or waiting for decay; it is started at the end of a malloc that reached the slow
 * path or the extents, never inside one (pthread_create allocates), and
 * never from free(): glibc frees an exited thread's TLS under its stack
 * cache lock (pthread_join), which pthread_create takes.  If creating it
 * fails, purger_wanted stays set and purger_start decays the central large
 * cache itself, once every decay/4 ms. */
extern HAK_HIDDEN _Atomic bool purger_wanted;
void  purger_start(void);
void  purger_request(size_t cached); /* large_cache.c holds this much */
void  purger_notify(void); /* a large front or a heap's free slabs held nothing, hold some now */
void  purger_threads_ended(void); /* no thread holds a heap now */
void  purger_forgo(void);          /* never start it (heap.c) */
bool  heaps_running(void);         /* does a thread hold a heap? (heap.c) */
static inline void purger_poll(void)
{
    if (unlikely(atomic_load_explicit(&purger_wanted, memory_order_relaxed)))
        purger_start();
}

/* ---- large blocks (large.c) ---- */
void  *large_alloc(size_t size, size_t align, bool zero);
void   large_free(void *p);
void  *large_realloc(void *p, size_t size);
/* Free p, which the program says has size bytes and alignment align
 * (free_aligned_sized, C++'s aligned sized deletes): reported as a misuse
 * if they are not the block's (api.c). */
void   free_sized_aligned(void *p, size_t size, size_t align);
LargeHeader *large_header(const void *p); /* NULL if p is no live large block */
bool   large_was_freed(const void *p);
size_t large_usable(const LargeHeader *h, const void *p);

/* ---- the cache of freed large extents (large_cache.c) ---- */
/* The calling thread's front: its heap's (one made if it has none), NULL
 * in thread-exit destructors after the heap was given up (heap.c). */
LargeFront *heap_large_front_slow(ThreadFront *front);
static inline LargeFront *heap_large_front(void)
{
    ThreadFront *front = &thread_front;
    return likely(front->heap != NULL) ? &front->heap->large : heap_large_front_slow(front);
}
void   large_front_init(LargeFront *f);
void   large_fronts_share(unsigned running); /* heaps running now (heap.c) */
/* Large classes (types.h): every page count below LARGE_EXACT_PAGES, then
 * eight per power of two; the largest class, LARGE_MAX_PAGES (4 MiB). */
#define LARGE_EXACT_PAGES 32
#define LARGE_MAX_PAGES   ((size_t)1 << 10)
static inline unsigned large_class_down(size_t pages) /* the largest class within pages */
{
    if (pages < LARGE_EXACT_PAGES)
        return (unsigned)pages;
    unsigned lg = 63 - (unsigned)__builtin_clzl(pages);
    return LARGE_EXACT_PAGES + (lg - 5) * 8 + (unsigned)((pages >> (lg - 3)) - 8);
}
/* The smallest class of at least pages (>= 1): the one after the largest
 * class below pages. */
static inline unsigned large_class_up(size_t pages) { return large_class_down(pages - 1) + 1; }
/* The link of a cached extent, in its LargeHeader's padding. */
#define LARGE_LINK_OFFSET offsetof(LargeHeader, _pad)

/* An extent of at least *len bytes: *len is then its length; NULL on a
 * miss, *len then the length to make (a class size, to be cached again).
 * Inline, the common case, so that large_alloc makes no call and saves no
 * register for it: the front's own class holds an extent that is not the
 * one freed last (large_cache.c, LargeFront.last_put); the rest of the
 * lookup is large_cache_get_slow's. */
char  *large_cache_get_slow(LargeFront *f, size_t *len);
char  *large_cache_get_claimed(LargeFront *f, size_t *len); /* unclaims f */
static inline char *large_cache_get(LargeFront *f, size_t *len)
{
    size_t pages = *len >> HAK_PAGE_SHIFT;
    uint32_t free_ = FRONT_FREE;
    if (unlikely(!f || pages > LARGE_MAX_PAGES ||
                 !atomic_compare_exchange_strong_explicit(&f->claim, &free_, FRONT_OWNER,
                                                          memory_order_acquire, memory_order_relaxed)))
        return large_cache_get_slow(f, len);
    f->uses++;
    unsigned c = large_class_up(pages);
    CachedExtent *e = f->bin[c];
    if (unlikely(!e || (char *)e - LARGE_LINK_OFFSET == f->last_put))
        return large_cache_get_claimed(f, len);
    char *ext = (char *)e - LARGE_LINK_OFFSET;
    f->bin[c] = e->next;
    f->bytes -= e->len;
    f->misses = 0; /* (the two zeros, one store) */
    f->big_misses = 0;
    f->last_put = NULL;
    *len = e->len;
    atomic_store_explicit(&f->claim, FRONT_FREE, memory_order_release);
    return ext;
}
bool   large_cache_put(LargeFront *f, char *ext, size_t len);   /* false: too big */
void   large_front_flush(LargeFront *f);        /* back to the extents */
uint64_t large_front_decay(LargeFront *f, uint64_t now, CachedExtent **idle); /* the purger's */
void   large_cache_release_decayed(CachedExtent *list); /* to the extents, purged at once */
bool   large_front_held(LargeFront *f);
/* Statistics: a large malloc (alloc) or free of an extent of bytes, or a
 * block grown or shrunk in place by bytes; threads without a heap count
 * in shared counters. */
void   large_count_heapless(bool alloc, int64_t bytes);
static inline void large_count(LargeFront *f, bool alloc, int64_t bytes)
{
    if (unlikely(f == NULL)) {
        large_count_heapless(alloc, bytes);
        return;
    }
    if (alloc) f->allocs++; else f->frees++;
    f->bytes_out += bytes;
}
void   large_resize(LargeFront *f, int64_t bytes);
void   large_cache_new_extent(size_t len);        /* extent bytes the     */
void   large_cache_drop_extent(size_t len);       /* large tier holds     */
uint64_t large_cache_decay(bool all);
void   large_cache_fork_child(void);          /* recount what is left  */
size_t large_cache_central_bytes(void);
void   large_stats(struct hak_stats *st);

/* ---- foreign pointers (foreign.c) ---- */
void   foreign_free(void *p);
/* The definition of name after hakmem's (preloaded, linked, loaded by
 * dlopen: libc's comes after it), else the first one (hakmem a dependency
 * of a library that libc was loaded before); never own, hakmem's own
 * definition; NULL if none (a static program). */
void  *next_definition(const char *name, const void *own);
size_t foreign_usable(const void *p);   /* 0 if not a glibc block */
void  *foreign_realloc(void *p, size_t size);

/* ---- statistics (stats.c) ---- */
/* The process-wide counters (rare events: system calls, SuperSlabs and
 * heaps made, misuse), each a field of struct hak_stats of the same name,
 * which hak_stats_get copies (X-macro: one list).  Counts on common paths
 * are per heap or per thread instead, summed when read. */
#define HAK_GLOBAL_COUNTERS(X)                                               \
    X(os_mmap) X(os_munmap) X(os_madvise) X(os_mremap) X(os_mincore)        \
    X(os_mprotect) X(os_failures)                                            \
    X(superslabs_mapped) X(superslabs_reused)                                \
    X(heaps_created) X(heaps_adopted) X(heaps_taken_over)                    \
    X(large_fronts_decayed) X(decay_lengthened)                              \
    X(foreign_frees) X(invalid_frees)                                        \
    X(fallbacks) /* a faster way failed, a slower one served */
typedef struct GlobalStats {
#define HAK_COUNTER_FIELD(name) _Atomic uint64_t name;
    HAK_GLOBAL_COUNTERS(HAK_COUNTER_FIELD)
#undef HAK_COUNTER_FIELD
    _Atomic uint64_t remote_frees_exited; /* remote frees by threads without a
                                             heap (added to remote_frees) */
} GlobalStats;
extern HAK_HIDDEN GlobalStats global_stats;
#define STAT_INC(f) atomic_fetch_add_explicit(&global_stats.f, 1, memory_order_relaxed)

#endif /* HAK_INTERNAL_H */
