/* Size classes: the table of block sizes, span lengths and thread-front
 * caps, filled once at start-up (classes_init), and the size -> class map.
 * SPDX-License-Identifier: MIT */
#include "heap.h"

#include <string.h>

/* Size 0 has a class of its own from the start, whose front stays empty:
 * the slow path gives it a zero-size block (zero.c). */
uint8_t   class_of_size[(HAK_SMALL_MAX >> HAK_MIN_ALIGN_SHIFT) + 1] = {
    [0] = HAK_HARDEN_ZERO_SIZE_GUARD ? HAK_NO_CLASS : 0 };
ClassInfo size_classes[HAK_NCLASS + 1]; /* + HAK_NO_CLASS, all zero */
uint64_t  class_fast_magic[HAK_NCLASS + 1];

/* Size classes: 16..128 by 16, then four classes per power of two (at
 * most 25% apart), and from 4 KiB up the first quarter above each power
 * of two split in two.  Requests of a few pages are often a power of
 * two plus a header (sqlite's page buffers are 4096 + 8 and 4360 + 8
 * bytes), which the quarter step would round up to 5 KiB; 4.5 KiB takes
 * them with 5-12% waste.  Eighth steps everywhere did not pay: a thread's
 * blocks spread over more spans (test_trim's short threads, +15% RSS). */

/* The class of a size of 1 or more: a constant expression for constant
 * sizes, so that the class counts in types.h are checked against it. */
#define LOG2(x) (63 - __builtin_clzl(x))
#define SPLIT_MIN   ((size_t)4096) /* powers of two from here get the half step */
#define SPLIT_CLASS 28             /* the class just above SPLIT_MIN */
#define QUARTER_CLASS(size)                                                    \
    (8 + (unsigned)(LOG2((size) - 1) - 7) * 4 +                               \
     (unsigned)((((size) - 1) >> (LOG2((size) - 1) - 2)) & 3))
#define CLASS_OF(size)                                                         \
    ((size) <= 128         ? (unsigned)(((size) - 1) >> HAK_MIN_ALIGN_SHIFT)  \
     : (size) <= SPLIT_MIN ? QUARTER_CLASS(size)                              \
                           : QUARTER_CLASS(size) + (unsigned)(LOG2((size) - 1) - 12) + \
                                 (unsigned)((((size) - 1) >> (LOG2((size) - 1) - 3)) != 8))
_Static_assert(CLASS_OF(SPLIT_MIN) == SPLIT_CLASS - 1 && CLASS_OF(SPLIT_MIN + 1) == SPLIT_CLASS,
               "SPLIT_CLASS: the first class above SPLIT_MIN");
_Static_assert(CLASS_OF(HAK_SMALL_MAX) == HAK_NCLASS - 1, "HAK_NCLASS: classes up to HAK_SMALL_MAX");
_Static_assert(CLASS_OF(HAK_TINY_MAX) == HAK_NCLASS_TINY - 1, "HAK_NCLASS_TINY: classes up to 1 KiB");
_Static_assert(HAK_SMALL_MAX == HAK_MID_MAX, "the slab tiers end where hakmem.h says");

unsigned size_class_compute(size_t size)
{
    return size ? CLASS_OF(size) : 0;
}

void classes_init(void)
{
    for (unsigned c = 0; c < HAK_NCLASS; c++) {
        size_t size;
        if (c < 8) {
            size = 16 * (c + 1);
        } else if (c < SPLIT_CLASS) {
            unsigned lg = 7 + (c - 8) / 4, sub = (c - 8) % 4;
            size = ((size_t)1 << lg) + (sub + 1) * ((size_t)1 << (lg - 2));
        } else { /* an eighth above the power of two, then quarters */
            unsigned lg = 12 + (c - SPLIT_CLASS) / 5, step = (c - SPLIT_CLASS) % 5;
            size = ((size_t)1 << lg) + (step ? step * ((size_t)1 << (lg - 2)) : (size_t)1 << (lg - 3));
        }
        if (size > HAK_SMALL_MAX)
            size = HAK_SMALL_MAX;
        /* Span length: enough slabs for SPAN_MIN_BLOCKS blocks (a refill
         * then finds a useful batch of frees), and for mid classes the
         * fewest beyond that whose blocks waste at most 1/32, else the
         * least waste. */
        unsigned kmin = (unsigned)((SPAN_MIN_BLOCKS * size + HAK_SLAB_SIZE - 1) / HAK_SLAB_SIZE);
        if (kmin > HAK_MAX_SPAN) kmin = HAK_MAX_SPAN;
        if (kmin < 1) kmin = 1;
        unsigned best = kmin;
        if (c >= HAK_NCLASS_TINY) {
            size_t best_waste = HAK_SLAB_SIZE;
            for (unsigned k = kmin; k <= HAK_MAX_SPAN; k++) {
                size_t bytes = k * HAK_SLAB_SIZE, waste = bytes % size;
                if (waste * 32 <= bytes) { best = k; break; }
                if (waste * best * HAK_SLAB_SIZE < best_waste * bytes) {
                    best = k;
                    best_waste = waste;
                }
            }
        }
        /* Thread fronts keep up to FRONT_BYTES of a class (at least 32 and
         * at most 2048 blocks) before flushing half back to the spans. */
        size_t front = FRONT_BYTES / size;
        front = front < 32 ? 32 : front > 2048 ? 2048 : front;
        /* (the hardened build keeps each span's last page as a guard) */
        uint64_t magic = UINT64_MAX / size + 1;
        class_fast_magic[c] = MID_CANARY && c >= HAK_NCLASS_TINY ? 0 : magic;
        size_classes[c] = (ClassInfo){ magic, (uint32_t)size,
                                      (uint32_t)((best * HAK_SLAB_SIZE - HAK_GUARD_SIZE) / size),
                                      (uint32_t)front, (uint8_t)best };
    }
    /* The size -> class map, class by class: each size's class is the
     * first whose blocks are as large (computing CLASS_OF for each of its
     * 3,328 entries cost every process 90,000 instructions at start-up,
     * more than the rest of hakmem's start-up together). */
    size_t i = 1;
    for (unsigned c = 0; c < HAK_NCLASS; c++) {
        size_t end = (size_classes[c].block_size >> HAK_MIN_ALIGN_SHIFT) + 1;
        memset(class_of_size + i, (int)c, end - i);
        i = end;
    }
#if HAK_DEBUG
    for (i = 1; i <= (HAK_SMALL_MAX >> HAK_MIN_ALIGN_SHIFT); i++)
        HAK_ASSERT(class_of_size[i] == size_class_compute(i << HAK_MIN_ALIGN_SHIFT));
#endif
}
