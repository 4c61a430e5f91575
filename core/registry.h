/* The ownership registry: one byte for every 2 MiB chunk of the 47-bit
 * user address space (64 MiB of lazily-zeroed BSS, only touched pages are
 * resident).  It answers "is this address hakmem's, and what is it?" with
 * one load, so free() never needs a syscall for hakmem's own memory.
 * SPDX-License-Identifier: MIT */
#ifndef HAK_REGISTRY_H
#define HAK_REGISTRY_H

#include "internal.h"

/* CHUNK_ZERO: the hardened build's PROT_NONE region of malloc(0) blocks. */
enum chunk_kind { CHUNK_NONE = 0, CHUNK_SUPERSLAB = 1, CHUNK_EXTENT = 2, CHUNK_ZERO = 3 };

#define HAK_ADDR_BITS 47
extern HAK_HIDDEN uint8_t chunk_kinds[(size_t)1 << (HAK_ADDR_BITS - HAK_CHUNK_SHIFT)];

static inline unsigned registry_kind(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    if (unlikely(a >> HAK_ADDR_BITS))
        return CHUNK_NONE;
    return __atomic_load_n(&chunk_kinds[a >> HAK_CHUNK_SHIFT], __ATOMIC_RELAXED);
}

/* base and len are multiples of the chunk size. */
static inline void registry_set(const void *base, size_t len, unsigned kind)
{
    uintptr_t c = (uintptr_t)base >> HAK_CHUNK_SHIFT;
    for (size_t i = 0; i < (len >> HAK_CHUNK_SHIFT); i++)
        __atomic_store_n(&chunk_kinds[c + i], (uint8_t)kind, __ATOMIC_RELEASE);
}

#endif
