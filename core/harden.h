/* The hardened build's checks (mitigations.h), as the tiers call them.
 * In the default build every function here is an empty inline or absent
 * (the tail canary that every build has is in internal.h), and the fast
 * paths compile as if this file did not exist.
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
 * is a double free.  used: the bytes from ext its block may have written
 * (zeroed when it leaves). */
void   large_quarantine_put(char *ext, size_t len, size_t used, const void *p);
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
    if (unlikely(b->free_mark != block_mark(b) ||
                 (n && ((uintptr_t)n & (HAK_MIN_ALIGN - 1) || registry_kind(n) != CHUNK_SUPERSLAB))))
        fatal_corruption("write after free (a free block's link or mark was overwritten) at", b);
#endif
    return n;
}

/* fork handlers' part (heap.c): 0 prepare, 1 parent, 2 child. */
void   harden_fork(int phase);

#endif
