/* What the files of the slab tiers' slow paths share: size_class.c (the
 * class table), span.c (SuperSlabs and spans), free.c (the slow paths of
 * free), heap.c (refill, heap life cycle, fork) and validate.c (the debug
 * build's checks); stats.c walks the heaps.  Each function here runs only
 * on the heap's owner: its thread, or whoever holds an abandoned heap
 * (HEAP_BUSY).
 * SPDX-License-Identifier: MIT */
#ifndef HAK_HEAP_H
#define HAK_HEAP_H

#include "internal.h"

#define FULL_MASK (~(uint32_t)1) /* slabs 1..31 of a SuperSlab: slab 0 is the header */

/* size_class.c */
void   classes_init(void);

/* span.c */
void   partial_push(Heap *h, Span *s);
void   partial_remove(Heap *h, Span *s);
Span  *span_new(Heap *h, unsigned cls);
/* All free blocks of s for the thread front (*count of them), or NULL. */
Block *span_take(Heap *h, SuperSlab *ss, Span *s, uint32_t *count);
/* b goes back to s; true if that released the whole SuperSlab. */
bool   span_put(Heap *h, SuperSlab *ss, Span *s, Block *b);
bool   span_after_put(Heap *h, SuperSlab *ss, Span *s);
bool   span_release(Heap *h, SuperSlab *ss, Span *s);
/* With h->slabs_lock held. */
void   superslab_to_extents(Heap *h, SuperSlab *ss);
/* The free slabs of h's SuperSlabs that may hold resident pages go back to
 * the OS (malloc_trim, collecting an abandoned heap); returns the bytes. */
size_t heap_purge_free_slabs(Heap *h);
/* The purger (heaps_decay, under the heap list's lock): the same for each
 * SuperSlab of h that released no span for a decay time, if h's thread is
 * not changing its slabs right now, at most SLABS_PURGE_MAX slabs a look;
 * returns when to look again (0: nothing to give). */
uint64_t heap_slabs_decay(Heap *h, uint64_t now);

/* free.c */
void   front_flush(Heap *h, ThreadFront *front, unsigned cls, uint32_t keep);
void   heap_drain_delayed(Heap *h);

/* validate.c: the debug build's invariant checks (empty otherwise) */
#if HAK_DEBUG
void   span_validate(SuperSlab *ss, const Span *s);
void   heap_validate(Heap *h, const ThreadFront *front);
#else
static inline void span_validate(SuperSlab *ss, const Span *s) { }
static inline void heap_validate(Heap *h, const ThreadFront *front) { }
#endif

/* heap.c */
extern HAK_HIDDEN Lock  heaps_mutex;     /* the heap list and the abandoned queue */
extern HAK_HIDDEN Heap *all_heaps;       /* every heap, linked by all_next */
extern HAK_HIDDEN Heap *abandoned_heaps; /* heaps of exited threads, oldest first */
Heap  *heap_acquire(ThreadFront *front, bool at_exit);
bool   heap_take_over(ThreadFront *front, Heap *h);

#endif
