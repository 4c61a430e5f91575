/* The hardening mitigations: one switch each, in one place.
 *
 * -DHAK_SECURE (out/secure, installed as libhakmem-secure.so) turns them
 * all on; any one can be set on its own with -DHAK_HARDEN_<NAME>=0 or 1
 * to build the set a program needs.  The default build has them all off:
 * what it checks (interior and double frees, foreign pointers, sized
 * delete, the 32 bytes past a mid or large block's requested size) costs
 * nothing measurable on tiny blocks and is always on.
 *
 *   CANARY          a small block's bytes from the requested size to its
 *                   end, and a large block's to the end of its last page
 *                   (the default build checks its first 32), hold a
 *                   pattern; a small block's last word holds a canary that
 *                   encodes the requested size.  free() checks the pattern,
 *                   the canary, and the canary of the block just before
 *                   (an underflow writes there): "block overflow" or
 *                   "block underflow".  malloc_usable_size is then the
 *                   requested size, and reports a pointer that is no live
 *                   block (the default build returns 0).
 *   GUARD_PAGES     large blocks sit between PROT_NONE pages and end at the
 *                   second one (a block grown by realloc ends in the page
 *                   before it, and the guard covers the room it has left
 *                   to grow into); the last page of every span and the
 *                   rest of each SuperSlab's header slab are PROT_NONE too.
 *   RANDOM_ORDER    fresh blocks are linked in a shuffled order.
 *   QUARANTINE      a freed block waits in a per-thread quarantine, which
 *                   gives it back at a random later free; a freed large
 *                   block waits PROT_NONE (any access faults).
 *   ZERO_ON_FREE    a freed block is zeroed; malloc and the quarantine
 *                   check that it still is ("write after free").
 *   (QUARANTINE and ZERO_ON_FREE need CANARY: it records a block's state.)
 *   ZERO_SIZE_GUARD malloc(0) returns a distinct address in a PROT_NONE
 *                   region: any read or write of it faults.
 *
 * SPDX-License-Identifier: MIT */
#ifndef HAK_MITIGATIONS_H
#define HAK_MITIGATIONS_H

#ifdef HAK_SECURE
#define HAK_HARDEN_ALL 1
#else
#define HAK_HARDEN_ALL 0
#endif
#ifndef HAK_HARDEN_CANARY
#define HAK_HARDEN_CANARY HAK_HARDEN_ALL
#endif
#ifndef HAK_HARDEN_GUARD_PAGES
#define HAK_HARDEN_GUARD_PAGES HAK_HARDEN_ALL
#endif
#ifndef HAK_HARDEN_RANDOM_ORDER
#define HAK_HARDEN_RANDOM_ORDER HAK_HARDEN_ALL
#endif
#ifndef HAK_HARDEN_QUARANTINE
#define HAK_HARDEN_QUARANTINE HAK_HARDEN_ALL
#endif
#ifndef HAK_HARDEN_ZERO_ON_FREE
#define HAK_HARDEN_ZERO_ON_FREE HAK_HARDEN_ALL
#endif
#ifndef HAK_HARDEN_ZERO_SIZE_GUARD
#define HAK_HARDEN_ZERO_SIZE_GUARD HAK_HARDEN_ALL
#endif

/* The quarantine and zero-on-free rely on the canary to tell a free block
 * from a live one (double frees): they are not built without it. */
#if (HAK_HARDEN_QUARANTINE || HAK_HARDEN_ZERO_ON_FREE) && !HAK_HARDEN_CANARY
#error "HAK_HARDEN_QUARANTINE and HAK_HARDEN_ZERO_ON_FREE need HAK_HARDEN_CANARY"
#endif

/* The mask hak_mitigations() reports (HAK_MIT_* in hakmem.h). */
#define HAK_MITIGATIONS                                              \
    ((HAK_HARDEN_CANARY ? HAK_MIT_CANARY : 0) |                      \
     (HAK_HARDEN_GUARD_PAGES ? HAK_MIT_GUARD_PAGES : 0) |            \
     (HAK_HARDEN_RANDOM_ORDER ? HAK_MIT_RANDOM_ORDER : 0) |          \
     (HAK_HARDEN_QUARANTINE ? HAK_MIT_QUARANTINE : 0) |              \
     (HAK_HARDEN_ZERO_ON_FREE ? HAK_MIT_ZERO_ON_FREE : 0) |          \
     (HAK_HARDEN_ZERO_SIZE_GUARD ? HAK_MIT_ZERO_SIZE_GUARD : 0))

#endif
