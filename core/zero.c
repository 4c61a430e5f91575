/* Zero-size blocks (ZERO_SIZE_GUARD, the hardened build): malloc(0)
 * returns a distinct address that faults on any access, before and after
 * its free.  (The default build gives malloc(0) a 16-byte block, as glibc
 * gives a 24-byte one, since programs that write into it run there.)
 *
 * A program may not read or write a zero-size block, so its address needs
 * nothing behind it.  Each heap hands out 16-byte slots (the alignment of
 * every malloc result) of 2 MiB chunks of its own, registered as
 * CHUNK_ZERO: a chunk's first pages hold its header and a bitmap of the
 * live slots, a PROT_NONE page follows, and the slots are PROT_NONE too.
 * So an access through the pointer, or within 4 KiB before slot 0, faults.
 *
 * No lock and, for the heap's own thread, no atomic read-modify-write:
 * only the thread that holds the chunk's heap writes its live bits (with
 * plain stores); another thread's free sets the slot's bit in a second
 * bitmap with an atomic OR, whose old value tells a double free, and the
 * owner clears those slots' live bits when its chunks run out of room.
 * malloc(0) gets here through the size table, whose entry for 0 is a
 * class with an always empty front (HAK_NO_CLASS): the fast path has no
 * test for it.
 * SPDX-License-Identifier: MIT */
#include "internal.h"
#include "os.h"
#include "registry.h"

#include <errno.h>
#include <string.h>

#if HAK_HARDEN_ZERO_SIZE_GUARD

#define ZERO_SLOT   16
#define ZERO_HEADER ((size_t)36 << 10)  /* header and bitmaps, then a guard page */
#define ZERO_SLOTS  ((HAK_CHUNK_SIZE - ZERO_HEADER) / ZERO_SLOT)
#define ZERO_WORDS  (ZERO_SLOTS / 64)

struct ZeroChunk {
    /* the owner's: written by the thread that holds heap */
    Heap             *heap;
    struct ZeroChunk *next;              /* the heap's chunks, newest first   */
    size_t            cursor;            /* the slot to look at first         */
    bool              full;              /* its last search found no room     */
    /* other threads' frees: slots in remote, not yet cleared from live */
    _Alignas(64) _Atomic uint32_t pending;
    _Alignas(64) _Atomic uint64_t live[ZERO_WORDS];
    _Atomic uint64_t  remote[ZERO_WORDS];
};
_Static_assert(ZERO_SLOTS % 64 == 0, "whole bitmap words");
_Static_assert(sizeof(ZeroChunk) + HAK_PAGE_SIZE <= ZERO_HEADER, "a guard page before the slots");

#define relaxed memory_order_relaxed

static ZeroChunk *zero_chunk_new(Heap *h)
{
    bool zeroed;
    size_t head = ZERO_HEADER - HAK_PAGE_SIZE;
    char *base = extent_alloc(HAK_CHUNK_SIZE, HAK_CHUNK_SIZE, 0, &zeroed);
    if (!base)
        return NULL;
    if (!os_protect(base + head, HAK_CHUNK_SIZE - head, false)) {
        extent_free(base, HAK_CHUNK_SIZE);
        return NULL;
    }
    ZeroChunk *c = (ZeroChunk *)base;
    if (!zeroed)
        memset(c, 0, sizeof *c);
    c->heap = h;
    c->next = h->zero;
    registry_set(base, HAK_CHUNK_SIZE, CHUNK_ZERO);
    h->zero = c;
    return c;
}

/* Clear the live bits of the slots other threads freed (owner).  A remote
 * bit on a slot that is not live is a double free that raced with the
 * free before it: an owner's free, or this merge, cleared the live bit
 * after the second free had read it (that slot was never handed out
 * again meanwhile: zero_take passes over remote bits).
 * pending and remote are sequentially consistent on both sides: a
 * remote free that saw pending still set must have its bit seen here. */
static bool zero_merge_remote(ZeroChunk *c)
{
    if (!atomic_exchange(&c->pending, 0))
        return false;
    for (size_t w = 0; w < ZERO_WORDS; w++)
        if (atomic_load(&c->remote[w])) {
            uint64_t r = atomic_exchange(&c->remote[w], 0);
            uint64_t live = atomic_load_explicit(&c->live[w], relaxed);
            if (r & ~live)
                invalid_free_report("double free", (char *)c + ZERO_HEADER +
                                    (w * 64 + (size_t)__builtin_ctzll(r & ~live)) * ZERO_SLOT);
            atomic_store_explicit(&c->live[w], live & ~r, relaxed);
        }
    return true;
}

/* A free slot of c, or NULL (owner).  Next fit from the slot after the
 * last one handed out, so that a slot just freed is usually not the next
 * one handed out (a second free of it stays a double free until the
 * cursor comes round).  A slot with a remote bit is not free yet, even if
 * its live bit is clear (a double free, reported at the merge). */
static void *zero_take(ZeroChunk *c)
{
    if (c->full && !zero_merge_remote(c))
        return NULL;
    for (int pass = 0; pass < 2; pass++) {
        size_t w = c->cursor / 64;
        uint64_t below = (1ull << (c->cursor % 64)) - 1; /* passed over in w */
        /* ZERO_WORDS + 1 words: w again at the end, without the mask */
        for (size_t n = 0; n <= ZERO_WORDS; n++) {
            uint64_t live = atomic_load_explicit(&c->live[w], relaxed);
            uint64_t taken = live | atomic_load_explicit(&c->remote[w], relaxed) | (n == 0 ? below : 0);
            if (taken != UINT64_MAX) {
                unsigned bit = (unsigned)__builtin_ctzll(~taken);
                atomic_store_explicit(&c->live[w], live | 1ull << bit, relaxed);
                size_t slot = w * 64 + bit;
                c->cursor = slot + 1 == ZERO_SLOTS ? 0 : slot + 1;
                c->full = false;
                return (char *)c + ZERO_HEADER + slot * ZERO_SLOT;
            }
            w = w + 1 == ZERO_WORDS ? 0 : w + 1;
        }
        if (!zero_merge_remote(c))
            break;
    }
    c->full = true;
    return NULL;
}

void *zero_alloc(Heap *h)
{
    for (ZeroChunk *c = h->zero; c; c = c->next) {
        void *p = zero_take(c);
        if (p)
            return p;
    }
    ZeroChunk *c = zero_chunk_new(h);
    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    return zero_take(c);
}

/* p's chunk and slot, or NULL if p is in a CHUNK_ZERO chunk but no slot. */
static ZeroChunk *zero_slot(const void *p, size_t *slot)
{
    uintptr_t a = (uintptr_t)p, off = a & (HAK_CHUNK_SIZE - 1);
    if (off < ZERO_HEADER || off % ZERO_SLOT)
        return NULL;
    *slot = (off - ZERO_HEADER) / ZERO_SLOT;
    return (ZeroChunk *)(a - off);
}

bool zero_live(const void *p)
{
    size_t slot;
    ZeroChunk *c = zero_slot(p, &slot);
    if (!c)
        return false;
    uint64_t bit = 1ull << (slot % 64);
    return (atomic_load_explicit(&c->live[slot / 64], relaxed) & bit) &&
           !(atomic_load_explicit(&c->remote[slot / 64], relaxed) & bit);
}

void zero_free(void *p)
{
    size_t slot;
    ZeroChunk *c = zero_slot(p, &slot);
    if (!c) {
        invalid_free_report("free of a pointer that is not an allocated block", p);
        return;
    }
    size_t w = slot / 64;
    uint64_t bit = 1ull << (slot % 64), live = atomic_load_explicit(&c->live[w], relaxed);
    bool freed = !(live & bit) || (atomic_load_explicit(&c->remote[w], relaxed) & bit);
    if (!freed && c->heap == thread_front.heap) {
        atomic_store_explicit(&c->live[w], live & ~bit, relaxed);
        c->full = false;
        return;
    }
    if (freed || (atomic_fetch_or(&c->remote[w], bit) & bit)) {
        invalid_free_report("double free", p);
        return;
    }
    if (!atomic_load(&c->pending)) /* (see zero_merge_remote) */
        atomic_store(&c->pending, 1);
}
#endif
