/* The tunables: every number that sets how much hakmem caches, carves,
 * reserves or waits, in one place, each with the reason for its value.
 * (The layout constants, SuperSlab and slab sizes and the class count,
 * are in types.h; the run-time options, HAKMEM_*, in options.c.)
 * SPDX-License-Identifier: MIT */
#ifndef HAK_TUNABLES_H
#define HAK_TUNABLES_H

#include <stddef.h>

/* ---- locks (internal.h) ---- */
/* Tries before a shared lock sleeps: its holders run a few hundred
 * instructions, so a waiter usually gets it without a futex. */
#define LOCK_SPIN            256

/* ---- thread fronts and spans (size_class.c, span.c, heap.c) ---- */
/* Fresh blocks carved per refill: one page's worth, so carving touches
 * memory a page at a time (at least 4 blocks; the hardened build's
 * shuffle buffer in span.c is sized from it). */
#define CARVE_BYTES          4096
/* A span is made for at least this many blocks, so that a refill finds a
 * useful batch of frees in it (capped at HAK_MAX_SPAN slabs: the largest
 * classes get fewer). */
#define SPAN_MIN_BLOCKS      128
/* A thread front keeps up to this many bytes of a class (at least 32 and
 * at most 2048 blocks) before flushing half back to the spans. */
#define FRONT_BYTES          ((size_t)256 << 10)
/* A thread's first RECLAIM_WINDOW cross-thread frees look whether the
 * heap they free into was given up by its thread, to take it over
 * (free.c); later ones never read the owner heap. */
#define RECLAIM_WINDOW       1024
/* ... and take one over only while their own heap has served fewer
 * mallocs than this (a young thread: larson's successors, a new worker);
 * a thread with a working set of its own keeps its heap. */
#define RECLAIM_MAX_ALLOCS   4096
/* Abandoned heaps are collected at most this often (ms) when a SuperSlab
 * is about to be mapped. */
#define COLLECT_INTERVAL_MS  50

/* ---- extents (extent.c, ranges.c) ---- */
/* Reservations from the OS: the first is RESERVE_MIN, doubling every
 * second one up to RESERVE_MAX; a request bigger than that gets its own.
 * The table of reservations holds MAX_RESERVATIONS (past it, ENOMEM: 4096
 * of at least 32 MiB is more address space than a process has). */
#define RESERVE_MIN          ((size_t)32 << 20)
#define RESERVE_MAX          ((size_t)1 << 30)
#define MAX_RESERVATIONS     4096
/* The purger thread starts only once this much waits for decay, so that
 * small programs never get one. */
#define PURGER_MIN_DIRTY     ((size_t)16 << 20)
/* The purger purges at most this many free slabs (16 MiB) of a heap in a
 * look, so that the heap's thread never waits long for its slabs_lock,
 * nor threads starting and exiting for the heap list's lock; a heap with
 * more is looked at again at once, the locks let go meanwhile (span.c). */
#define SLABS_PURGE_MAX      256
/* The decay time (extent.c) doubles up to DECAY_MAX_FACTOR times
 * HAKMEM_DECAY_MS while purged memory is taken back soon after, and halves
 * for each DECAY_CALM_FACTOR times the longest that passes without, once
 * decay has purged something since; the last
 * RECENT_PURGES ranges purged are remembered to tell. */
#define DECAY_MAX_FACTOR     4
#define DECAY_CALM_FACTOR    8
#define RECENT_PURGES        16
/* Ranges looked at in the request's own size bin: best fit among them
 * (a bin above gives its first that fits). */
#define RANGE_SCAN_MAX       32
/* Extents this big are placed at the top of their range, the others at
 * the bottom, so that holes left by big buffers stay big. */
#define BIG_EXTENT           ((size_t)4 << 20)

/* ---- the large tier (large.c, large_cache.c) ---- */
/* realloc of a large block whose extent is at least this big moves its
 * pages (mremap); a smaller one is copied. */
#define MREMAP_MIN           ((size_t)1 << 20)
/* A heap's front of cached extents holds up to LARGE_FRONT_CAP bytes,
 * and all running heaps' fronts together about LARGE_FRONTS_BUDGET: past
 * 16 threads each front gets its share, down to LARGE_FRONT_MIN (128
 * threads of 8 MiB would keep 1 GiB of freed, touched memory). */
#define LARGE_FRONT_CAP      ((size_t)8 << 20)
#define LARGE_FRONTS_BUDGET  ((size_t)128 << 20)
#define LARGE_FRONT_MIN      ((size_t)1 << 20)
/* Shards of the central cache (heaps are spread over them, so that no
 * stack is pushed by every thread), and extents taken from one per visit
 * (one CAS brings a batch into the front). */
#define LARGE_NSHARD         8
#define LARGE_REFILL         16
/* A request may take a cached extent up to this many classes bigger. */
#define LARGE_UP_CLASSES     2
/* Misses in a row after which a front gives its extents back, and the
 * request size from which one miss does: cached extents cannot merge
 * with free neighbours, and kept across misses of such sizes they cost
 * peak RSS (bench_large, every page touched, seeds 42..46: 763 -> 592 MB
 * summed; no cache at all: 578). */
#define LARGE_MISSES_FLUSH   3
#define LARGE_MISS_FLUSH_MIN ((size_t)1 << 20)
/* Mallocs of LARGE_MISS_FLUSH_MIN or more that miss while the front
 * holds big extents score a point each (up to LARGE_STRAIGHT_MAX; a hit
 * clears the score).  From LARGE_STRAIGHT_AFTER points such extents go
 * straight to the extents at free and such mallocs skip the cache; each
 * malloc that an extent freed since the last miss would have served
 * takes LARGE_STRAIGHT_SERVED points off, so that sizes that come back at
 * least one time in four (LARGE_STRAIGHT_SERVED + 1) end it, and one of
 * every LARGE_STRAIGHT_PROBE looks in the cache all the same.  Random
 * sizes of 1-4 MiB met the cache 0.3% of the time, and their trip
 * through it cost a tenth of their instructions. */
#define LARGE_STRAIGHT_AFTER  8
#define LARGE_STRAIGHT_MAX    16
#define LARGE_STRAIGHT_SERVED 3
#define LARGE_STRAIGHT_PROBE  64
/* Past this many bytes in the central cache, extents go to the extents;
 * extents of LARGE_CENTRAL_BIG_MIN and more already past LARGE_CENTRAL_BIG_CAP. */
#define LARGE_CENTRAL_CAP    ((size_t)64 << 20)
#define LARGE_CENTRAL_BIG_CAP ((size_t)16 << 20)
#define LARGE_CENTRAL_BIG_MIN ((size_t)1 << 20)

/* Bytes past a mid or large block's requested size that the default
 * build checks on free and realloc (the tail canary, internal.h: a run of up
 * to this many bytes past the end is reported; the hardened build checks
 * every byte to the block's end). */
#define TAIL_CANARY          32

/* ---- the hardened build (harden.c) ---- */
/* Freed small blocks each thread holds in quarantine (a free replaces a
 * random slot). */
#define HAK_QUARANTINE_SLOTS 256
/* Freed large extents held in quarantine, and the bytes of them kept
 * resident (PROT_NONE) rather than purged. */
#define LARGE_QUARANTINE     32
#define LARGE_QUARANTINE_RESIDENT ((size_t)128 << 20)

#endif
