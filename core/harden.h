/* The hardened build's checks (mitigations.h), as the tiers call them,
 * and the tail canary of large blocks (every build) and of mid blocks
 * (the default build; the hardened build's canaries cover them).
 * In the default build every other function here is an empty inline or
 * absent, and the fast paths compile as if this file did not exist.
 * SPDX-License-Identifier: MIT */
#ifndef HAK_HARDEN_H
#define HAK_HARDEN_H

#include "internal.h"
#include "registry.h"

#include <emmintrin.h>
#include <string.h>

/* ---- canaries ----
 * A block's last word is its canary: a key derived from its address and
 * the secret, XOR the requested size repeated in all four 16-bit lanes
 * (CANARY_FREE while the block is free), so that any byte written over it
 * breaks the lanes' agreement.  The bytes between the requested size and
 * the canary hold tail_byte().  A block changing state (being armed or
 * scrubbed) says CANARY_BUSY meanwhile, so that another thread checking it
 * as a neighbour (harden.c) never takes a half-written block for damage. */
#define CANARY_FREE    0xFFFFu
#define CANARY_BUSY    0xFFFEu
#define CANARY_CORRUPT UINT32_MAX
static inline uint64_t *canary_slot(const void *b, size_t block_size)
{
    return (uint64_t *)((char *)b + block_size - 8);
}
static inline uint64_t canary_key(const void *b)
{
    return ((uintptr_t)b * 0x9E3779B97F4A7C15ull) ^ process_secret;
}
static inline void canary_set(void *b, size_t block_size, uint32_t size)
{
    __atomic_store_n(canary_slot(b, block_size),
                     canary_key(b) ^ ((uint64_t)size * 0x0001000100010001ull), __ATOMIC_RELEASE);
}
/* The size a canary holds, CANARY_FREE, or CANARY_CORRUPT. */
static inline uint32_t canary_get(const void *b, size_t block_size)
{
    uint64_t v = __atomic_load_n(canary_slot(b, block_size), __ATOMIC_ACQUIRE) ^ canary_key(b);
    /* the four lanes agree when a 16-bit rotation leaves v as it is */
    return v == (v << 16 | v >> 48) ? (uint32_t)(v & 0xFFFF) : CANARY_CORRUPT;
}
static inline uint8_t tail_byte(void) { return (uint8_t)tail_pattern; }

/* Are the n bytes at p all v?  Blocks are checked whole at every malloc
 * (ZERO_ON_FREE) and tails at every free: unaligned loads that overlap at
 * the end instead of byte loops, XOR-ed with v and OR-ed together, one
 * test at the end: 8-byte loads below 16 bytes, 16-byte loads from there. */
static inline uint64_t load64(const unsigned char *c) { uint64_t x; memcpy(&x, c, 8); return x; }
static inline uint32_t load32(const unsigned char *c) { uint32_t x; memcpy(&x, c, 4); return x; }
static inline __m128i load128(const unsigned char *c) { return _mm_loadu_si128((const __m128i *)c); }
static inline __attribute__((always_inline)) bool bytes_are(const void *p, size_t n, uint8_t v)
{
    const unsigned char *c = p;
    uint64_t w = v * 0x0101010101010101ull;
    if (n < 8) {
        if (n >= 4)
            return !((load32(c) ^ (uint32_t)w) | (load32(c + n - 4) ^ (uint32_t)w));
        return !n || !((c[0] ^ v) | (c[n / 2] ^ v) | (c[n - 1] ^ v));
    }
    if (n < 16)
        return !((load64(c) ^ w) | (load64(c + n - 8) ^ w));
    __m128i want = _mm_set1_epi8((char)v), diff = _mm_xor_si128(load128(c + n - 16), want);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m128i d01 = _mm_or_si128(_mm_xor_si128(load128(c + i), want), _mm_xor_si128(load128(c + i + 16), want));
        __m128i d23 = _mm_or_si128(_mm_xor_si128(load128(c + i + 32), want), _mm_xor_si128(load128(c + i + 48), want));
        diff = _mm_or_si128(diff, _mm_or_si128(d01, d23));
    }
    for (; i + 16 <= n; i += 16)
        diff = _mm_or_si128(diff, _mm_xor_si128(load128(c + i), want));
    return _mm_movemask_epi8(_mm_cmpeq_epi8(diff, _mm_setzero_si128())) == 0xFFFF;
}

/* The tail canary: the n bytes past a block's requested size hold
 * tail_byte(); free and realloc check them.  n is TAIL_CANARY in the
 * common case, four stores and loads of whole words; it differs where the
 * block ends sooner and for the hardened build's large blocks (all the
 * bytes to the guard page), out of line. */
bool tail_canary_short_intact(const char *t, size_t n); /* n != TAIL_CANARY */
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

/* The default build's mid blocks (internal.h, MID_CANARY): malloc arms a
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
    if (p && size) { /* (an aligned request of 0 bytes: nothing to guard) */
        *mid_size_slot(p) = (uint16_t)size;
        tail_canary_arm((char *)p + size, mid_tail_len(block_size, size));
    }
    return p;
}
static inline __attribute__((always_inline)) void mid_check(const void *b, size_t block_size)
{
    uint16_t *slot = mid_size_slot(b);
    size_t size = *slot;
    if (size) {
        if (unlikely(size > block_size)) /* a stray write into the sizes' page */
            fatal_corruption("block overflow (the block's size slot was overwritten) at", b);
        if (unlikely(!tail_canary_intact((const char *)b + size, mid_tail_len(block_size, size))))
            fatal_corruption("block overflow (bytes past the requested size changed) at", b);
        *slot = 0;
    }
}
/* mid_check where the canary is TAIL_CANARY bytes or there is none (the
 * common case, with no call); false, with nothing done, otherwise. */
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

/* The tail of a live block: its first and its last TAIL_EDGE bytes (all of
 * it if shorter) hold tail_byte(), where a run off the block's end or
 * into the block above's start lands first; the middle of a long tail
 * keeps what it had (zero). */
#define TAIL_EDGE ((size_t)32)

/* The per-block mitigations (CANARY, and QUARANTINE and ZERO_ON_FREE,
 * which need it): free() of a slab block goes through harden_free, malloc
 * through harden_alloc_block. */
#if HAK_HARDEN_CANARY
/* malloc got b (of class cls, or HAK_NO_CLASS: look it up) from a free
 * list or a fresh carve: check that nobody wrote to it while it was free,
 * then arm its canary for size bytes. */
void  *harden_alloc_block(Block *b, size_t size, unsigned cls);
/* free() of a slab block: validate, check the canaries, scrub, quarantine;
 * the block that leaves the quarantine is freed by slab_free. */
void   harden_free(SuperSlab *ss, Block *b, unsigned cls);
/* A live block's requested size; false if p is free. */
bool   harden_live(SuperSlab *ss, Span *s, const void *p, size_t *size);
/* realloc kept b in place at a new size. */
void   harden_resize(void *b, size_t size);
/* span_carve's n fresh blocks at p, before they are linked: zeroed (and
 * the start of what is above them), canary free. */
void   harden_carve(SuperSlab *ss, Span *s, char *p, uint32_t n);
static inline void *harden_alloc(void *p, size_t size, unsigned cls)
{
    return p ? harden_alloc_block(p, size, cls) : NULL;
}
#else
static inline void *harden_alloc(void *p, size_t size, unsigned cls) { return p; }
static inline void harden_carve(SuperSlab *ss, Span *s, char *p, uint32_t n) { }
#endif

#if HAK_HARDEN_QUARANTINE
/* Really free every block of the thread's quarantine (thread exit, trim). */
void   quarantine_flush(ThreadFront *front);
/* Large blocks: a freed extent waits PROT_NONE; a free of one that waits
 * is a double free. */
void   large_quarantine_put(char *ext, size_t len, const void *p);
bool   large_quarantined(const void *p);
void   large_quarantine_flush(void);
#else
static inline void quarantine_flush(ThreadFront *front) { }
static inline bool large_quarantined(const void *p) { return false; }
static inline void large_quarantine_flush(void) { }
#endif

/* The malloc pop: the hardened build checks the free mark and the link of
 * the block it takes (a write after free over them is caught here).  A
 * thread front holds blocks of many SuperSlabs: the link must lead to one. */
static inline Block *block_pop_next(const Block *b)
{
    Block *n = block_next_fast(b);
#if HAK_HARDEN_ZERO_ON_FREE
    if (unlikely(b->free_mark != free_mark_value ||
                 (n && ((uintptr_t)n & (HAK_MIN_ALIGN - 1) || registry_kind(n) != CHUNK_SUPERSLAB))))
        fatal_corruption("write after free (a free block's link or mark was overwritten) at", b);
#endif
    return n;
}

/* fork handlers' part (heap.c): 0 prepare, 1 parent, 2 child. */
void   harden_fork(int phase);

#if HAK_HARDEN_ZERO_SIZE_GUARD
/* malloc(0): a distinct 16-byte slot of a PROT_NONE region (CHUNK_ZERO). */
void  *zero_alloc(void);
void   zero_free(void *p);
bool   zero_live(const void *p);
#endif

#endif
