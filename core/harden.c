/* The hardened build's per-block checks and quarantine
 * (mitigations.h says what each catches; harden.h how the tiers call in).
 * Nothing here is compiled into the default build.
 *
 * A slab block's states, as the canary records them:
 *   free  (CANARY_FREE)  zeroed past its link and free mark (ZERO_ON_FREE),
 *                        on a free list or carved and never handed out;
 *   live  (its size)     handed out; the bytes from the requested size to
 *                        the canary hold tail_byte();
 *   quarantined          freed by the program, canary free and zeroed
 *                        whole, link and mark too (a read through a
 *                        dangling pointer sees nothing of ours, the
 *                        secret the mark derives from included),
 *                        waiting in its freeing thread's ring;
 *   busy (CANARY_BUSY)   being armed or scrubbed by one thread.
 * SPDX-License-Identifier: MIT */
#include "harden.h"
#include "os.h"
#include "registry.h"

#include <errno.h>
#include <string.h>

/* The tail canary's check where it is not TAIL_CANARY bytes long: out of
 * line, as it is rare in the default build (a block that ends sooner). */
bool tail_canary_short_intact(const char *t, size_t n) { return bytes_are(t, n, tail_byte()); }

#if HAK_HARDEN_CANARY

/* Bytes of a free block that must stay zero: past the link and the mark,
 * up to the canary. */
static bool free_block_intact(const Block *b, size_t bs)
{
    return !HAK_HARDEN_ZERO_ON_FREE || bytes_are((const char *)b + 16, bs - 16 - HAK_CANARY_SIZE, 0);
}

/* Set the n bytes at c (at most 2 * TAIL_EDGE) to v: the stores of
 * bytes_are's loads, not a call to memset for a few bytes at every malloc. */
static inline void store64(unsigned char *c, uint64_t x) { memcpy(c, &x, 8); }
static inline void store32(unsigned char *c, uint32_t x) { memcpy(c, &x, 4); }
static inline void bytes_set_short(unsigned char *c, size_t n, uint8_t v)
{
    uint64_t w = v * 0x0101010101010101ull;
    if (n < 8) {
        if (n >= 4) {
            store32(c, (uint32_t)w);
            store32(c + n - 4, (uint32_t)w);
        } else if (n) {
            c[0] = c[n / 2] = c[n - 1] = v;
        }
        return;
    }
    store64(c + n - 8, w);
    for (size_t i = 0; i + 8 <= n; i += 8)
        store64(c + i, w);
}

static void tail_fill(char *p, size_t size, size_t room)
{
    size_t tail = room - size;
    unsigned char *c = (unsigned char *)p;
    if (tail <= 2 * TAIL_EDGE) {
        bytes_set_short(c + size, tail, tail_byte());
    } else {
        bytes_set_short(c + size, TAIL_EDGE, tail_byte());
        bytes_set_short(c + room - TAIL_EDGE, TAIL_EDGE, tail_byte());
    }
}

static bool tail_intact(const char *p, size_t size, size_t room)
{
    size_t tail = room - size;
    if (tail <= 2 * TAIL_EDGE)
        return bytes_are(p + size, tail, tail_byte());
    return bytes_are(p + size, TAIL_EDGE, tail_byte()) &&
           bytes_are(p + room - TAIL_EDGE, TAIL_EDGE, tail_byte());
}

/* Busy, then the bytes, then the new state: a thread that reads the same
 * state before and after looking at the bytes saw them whole (the stores
 * are ordered: release, and x86 keeps stores in order). */
static void arm(void *b, size_t bs, size_t size)
{
    canary_set(b, bs, CANARY_BUSY);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    tail_fill(b, size, bs - HAK_CANARY_SIZE);
    canary_set(b, bs, (uint32_t)size);
}

/* The same, from live to busy with a CAS: of two threads freeing one
 * block at the same time, one gets false (a double free). */
static bool scrub(void *b, size_t bs, uint32_t size)
{
    uint64_t live = canary_key(b) ^ ((uint64_t)size * 0x0001000100010001ull);
    if (!__atomic_compare_exchange_n(canary_slot(b, bs), &live,
                                     canary_key(b) ^ ((uint64_t)CANARY_BUSY * 0x0001000100010001ull),
                                     false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return false;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    if (HAK_HARDEN_ZERO_ON_FREE)
        memset(b, 0, bs - HAK_CANARY_SIZE);
    canary_set(b, bs, CANARY_FREE);
    return true;
}

#if HAK_HARDEN_QUARANTINE
static void quarantine_audit(ThreadFront *front);
#endif

void *harden_alloc_block(Block *b, size_t size, unsigned cls)
{
    if (unlikely(size == 0) && registry_kind(b) == CHUNK_ZERO)
        return b; /* a zero-size block: nothing in it to check or arm */
#if HAK_HARDEN_QUARANTINE
    quarantine_audit(&thread_front);
#endif
    size_t bs = cls < HAK_NCLASS ? size_classes[cls].block_size
                                 : span_block_size(span_of(superslab_of(b), b));
    if (unlikely(!free_block_intact(b, bs)))
        fatal_corruption("write after free (a free block was changed) at", b);
    if (unlikely(canary_get(b, bs) != CANARY_FREE))
        fatal_corruption("heap corruption (a free block's canary was overwritten) at", b);
    b->next_enc = 0; /* the program never sees an encoded link */
    arm(b, bs, size);
    return b;
}

void harden_resize(void *b, size_t size)
{
    /* The old tail first: arming the new one would write over the bytes
     * an overflow changed (realloc checked the canary: harden_live). */
    size_t bs = span_block_size(span_of(superslab_of(b), b));
    if (!tail_intact(b, canary_get(b, bs), bs - HAK_CANARY_SIZE))
        fatal_corruption("block overflow (bytes past the requested size changed) at", b);
    arm(b, bs, size);
}

/* Past the carving point, up to the span's guard page, the memory holds
 * no block yet; its first ABOVE_BUMP bytes (where an overflow of the last
 * carved block lands) are kept zero and checked like a free block's start. */
#define ABOVE_BUMP ((size_t)16 + TAIL_EDGE)
static const char *span_room_end(SuperSlab *ss, Span *s)
{
    return span_start(ss, s) + ((size_t)s->nslabs << HAK_SLAB_SHIFT) - HAK_GUARD_SIZE;
}
static size_t above_bump(SuperSlab *ss, Span *s, const char *bump)
{
    size_t left = (size_t)(span_room_end(ss, s) - bump);
    return left < ABOVE_BUMP ? left : ABOVE_BUMP;
}

void harden_carve(SuperSlab *ss, Span *s, char *p, uint32_t n)
{
    size_t bs = span_block_size(s);
    if (HAK_HARDEN_ZERO_ON_FREE) /* reused SuperSlab memory may be dirty */
        memset(p, 0, (size_t)n * bs + above_bump(ss, s, p + (size_t)n * bs));
    for (uint32_t i = 0; i < n; i++)
        canary_set(p + (size_t)i * bs, bs, CANARY_FREE);
}

bool harden_live(SuperSlab *ss, Span *s, const void *p, size_t *size)
{
    size_t bs = span_block_size(s);
    uint32_t c = canary_get(p, bs);
    if (c == CANARY_FREE || c == CANARY_BUSY)
        return false;
    if (c == CANARY_CORRUPT || c > bs - HAK_CANARY_SIZE)
        fatal_corruption("block overflow (canary overwritten) at", p);
    *size = c;
    return true;
}

/* Is the neighbour n of a block being freed whole, where a run off our
 * block reaches it first?  Its canary must be.  Below us, that is its end:
 * the last TAIL_EDGE bytes of its tail if it is live, zeros if it is free;
 * above us, its start: zeros past the link and the mark if it is free (a
 * live block's start is the program's data).  n may be freed or handed
 * out by another thread meanwhile (see arm): its canary is read again
 * after its bytes, and a change means they were not the ones checked. */
static inline __attribute__((always_inline)) bool neighbour_intact(const char *n, size_t bs, bool above)
{
    size_t room = bs - HAK_CANARY_SIZE;
    uint32_t c = canary_get(n, bs);
    bool ok;
    if (c == CANARY_BUSY) {
        return true;
    } else if (c == CANARY_FREE) {
        size_t len = room - 16 < TAIL_EDGE ? room - 16 : TAIL_EDGE;
        ok = !HAK_HARDEN_ZERO_ON_FREE || bytes_are(above ? n + 16 : n + room - len, len, 0);
    } else if (above) {
        ok = c <= room;
    } else {
        size_t len = room - c < TAIL_EDGE ? room - c : TAIL_EDGE;
        ok = c <= room && bytes_are(n + room - len, len, tail_byte());
    }
    if (ok)
        return true;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return canary_get(n, bs) != c;
}

/* An overflow of b runs into the block above it, an underflow into the
 * one below (at a span's ends there is a guard page instead). */
static void check_neighbours(SuperSlab *ss, Span *s, const Block *b, size_t bs)
{
    const char *p = (const char *)b, *start = span_start(ss, s);
    if (p > start && !neighbour_intact(p - bs, bs, false))
        fatal_corruption("block underflow (the end of the block below was overwritten) at", b);
    const char *above = p + bs, *bump = __atomic_load_n(&s->bump, __ATOMIC_ACQUIRE);
    if (above < bump ? !neighbour_intact(above, bs, true)
                     : HAK_HARDEN_ZERO_ON_FREE && !bytes_are(above, above_bump(ss, s, above), 0))
        fatal_corruption("block overflow (the block above was overwritten) at", b);
}

/* A block checked and scrubbed (canary free) goes where slab_free would
 * send it, without slab_free's checks: they were made, more strictly. */
static void release_checked(SuperSlab *ss, Block *b, unsigned cls)
{
    ThreadFront *front = &thread_front;
    if (ss->owner == front->heap) {
        front_push(front, cls, b);
    } else {
        b->free_mark = 0; /* (what the program left there, without ZERO_ON_FREE) */
        span_free_remote(ss, span_of(ss, b), b);
    }
}

/* b's canary said size (harden_free read it): is b whole? */
static uint32_t check_live(SuperSlab *ss, Span *s, Block *b, size_t bs, uint32_t size)
{
    if (size == CANARY_CORRUPT || size > bs - HAK_CANARY_SIZE)
        fatal_corruption("block overflow (canary overwritten) at", b);
    if (!tail_intact((char *)b, size, bs - HAK_CANARY_SIZE))
        fatal_corruption("block overflow (bytes past the requested size changed) at", b);
    /* Only the owner hands out blocks of its spans: while it looks, a
     * neighbour can be freed but not handed out again, so a canary that
     * reads the same before and after means the same bytes. */
    if (ss->owner == thread_front.heap)
        check_neighbours(ss, s, b, bs);
    return size;
}

#if HAK_HARDEN_QUARANTINE
/* b leaves the quarantine: nobody may have written to it meanwhile. */
static void quarantine_release(Block *b)
{
    /* It came in zeroed.  Going back to a free list rewrites the link and
     * the mark, so they are checked here; the rest of it is checked by the
     * malloc that takes it. */
    if (unlikely(HAK_HARDEN_ZERO_ON_FREE && (b->next_enc | b->free_mark) != 0))
        fatal_corruption("write after free (a block in quarantine was changed) at", b);
    SuperSlab *ss = superslab_of(b);
    release_checked(ss, b, ss->page_cls[page_index(b)]);
}

/* Blocks can wait in the quarantine for long, or for ever if the program
 * stops freeing: every malloc looks at the start of one of them. */
static void quarantine_audit(ThreadFront *front)
{
    Block *b = front->quarantine[front->quarantine_audit++ % HAK_QUARANTINE_SLOTS];
    if (!b || !HAK_HARDEN_ZERO_ON_FREE)
        return;
    size_t room = span_block_size(span_of(superslab_of(b), b)) - HAK_CANARY_SIZE;
    if ((b->next_enc | b->free_mark) != 0 || !bytes_are((char *)b + 16, (room < 80 ? room : 80) - 16, 0))
        fatal_corruption("write after free (a block in quarantine was changed) at", b);
}

void quarantine_flush(ThreadFront *front)
{
    for (unsigned i = 0; i < HAK_QUARANTINE_SLOTS; i++) {
        Block *b = front->quarantine[i];
        if (b) {
            front->quarantine[i] = NULL;
            quarantine_release(b);
        }
    }
}
#endif

void harden_free(SuperSlab *ss, Block *b, unsigned cls)
{
    Span *s = span_of(ss, b);
    if (unlikely(cls == HAK_NO_CLASS || !block_is_valid(ss, s, b))) {
        invalid_free_report("free of a pointer that is not an allocated block", b);
        return;
    }
    size_t bs = span_block_size(s);
    /* (mitigations.h: every per-block mitigation comes with the canary) */
    uint32_t c = canary_get(b, bs);
    if (c == CANARY_FREE || c == CANARY_BUSY) { /* free, in a quarantine, */
        invalid_free_report("double free", b); /* or being freed       */
        return;
    }
    if (!scrub(b, bs, check_live(ss, s, b, bs, c))) { /* another thread freed it */
        invalid_free_report("double free", b);
        return;
    }
#if HAK_HARDEN_QUARANTINE
    ThreadFront *front = &thread_front;
    /* A thread without a heap (or past giving it up) has nobody to flush
     * its quarantine at exit: its frees go straight through. */
    if (front->heap && !front->exited) {
        uint64_t r = front->quarantine_rng;
        if (!r)
            r = process_secret ^ (uintptr_t)front;
        r ^= r << 13; r ^= r >> 7; r ^= r << 17; /* xorshift64 */
        front->quarantine_rng = r;
        unsigned i = (unsigned)(r % HAK_QUARANTINE_SLOTS);
        Block *out = front->quarantine[i];
        front->quarantine[i] = b;
        if (out)
            quarantine_release(out);
        return;
    }
#endif
    release_checked(ss, b, cls);
}
#endif /* HAK_HARDEN_CANARY */

/* ------------------------------------------------------------------ */
/* Large blocks in quarantine: PROT_NONE, a FIFO of extents, resident up */
/* to a cap (reused without refaulting; zeroed when they leave), purged  */
/* past it.                                                              */
/* A lock, but only the hardened build takes it, on large frees, which    */
/* already make system calls there.                                      */

#if HAK_HARDEN_QUARANTINE
/* Extents wait resident (PROT_NONE, so refaulting them costs nothing when
 * they are reused) up to LARGE_QUARANTINE_RESIDENT bytes; past it they
 * are purged. */
/* used: the bytes from ext the block may have written (up to its last
 * page; the room to grow past it never held its data). */
typedef struct LargeWait { char *ext; size_t len, used; const void *p; bool resident; } LargeWait;
static Lock lq_lock = LOCK_INIT;
static LargeWait lq[LARGE_QUARANTINE];
static unsigned lq_next;
static size_t lq_resident;

static void large_release(LargeWait w)
{
    large_cache_drop_extent(w.len);
    if (!w.resident) { /* purged: reads as zero */
        /* The extents keep free ranges PROT_NONE (guard pages) or make
         * them accessible when they hand them out again. */
        if (!HAK_GUARD_SIZE && !os_protect(w.ext, w.len, true)) {
            STAT_INC(fallbacks); /* cannot be made usable again: kept out */
            return;
        }
        extent_free_purged(w.ext, w.len);
        return;
    }
    if (HAK_HARDEN_ZERO_ON_FREE || !HAK_GUARD_SIZE) {
        if (!os_protect(w.ext, w.len, true)) {
            STAT_INC(fallbacks);
            return;
        }
        if (HAK_HARDEN_ZERO_ON_FREE) /* its old contents must not come back */
            os_zero(w.ext, w.used);
    }
    extent_free(w.ext, w.len);
}

void large_quarantine_put(char *ext, size_t len, size_t used, const void *p)
{
    lock_acquire(&lq_lock);
    bool resident = lq_resident + len <= LARGE_QUARANTINE_RESIDENT;
    if (resident)
        lq_resident += len;
    lock_release(&lq_lock);
    if (!resident && !os_purge(ext, len)) { /* reads as zero, not resident */
        resident = true;                    /* (or it failed: zeroed later) */
        lock_acquire(&lq_lock);
        lq_resident += len;
        lock_release(&lq_lock);
    }
    os_protect(ext, len, false);   /* any access faults; may fail (counted) */
    lock_acquire(&lq_lock);
    LargeWait out = lq[lq_next];
    lq[lq_next] = (LargeWait){ ext, len, used, p, resident };
    lq_next = (lq_next + 1) % LARGE_QUARANTINE;
    if (out.ext && out.resident)
        lq_resident -= out.len;
    lock_release(&lq_lock);
    if (out.ext)
        large_release(out);
}

bool large_quarantined(const void *p)
{
    bool found = false;
    lock_acquire(&lq_lock);
    for (unsigned i = 0; i < LARGE_QUARANTINE && !found; i++)
        found = lq[i].ext && lq[i].p == p;
    lock_release(&lq_lock);
    return found;
}

static void lq_fork(int phase)
{
    if (phase == 0) lock_acquire(&lq_lock);
    else if (phase == 1) lock_release(&lq_lock);
    else lock_reset(&lq_lock);
}

void large_quarantine_flush(void)
{
    for (unsigned i = 0; i < LARGE_QUARANTINE; i++) {
        lock_acquire(&lq_lock);
        LargeWait w = lq[i];
        lq[i].ext = NULL;
        if (w.ext && w.resident)
            lq_resident -= w.len;
        lock_release(&lq_lock);
        if (w.ext)
            large_release(w);
    }
}
#endif

/* fork: the hardened build's own locks, taken before the heap list and
 * the extents (the quarantine releases extents under its lock), released
 * after them; re-made in the child.  phase 0 prepare, 1 parent, 2 child. */
void harden_fork(int phase)
{
#if HAK_HARDEN_QUARANTINE
    lq_fork(phase);
#endif
    (void)phase;
}
