/* The OS layer: every memory system call hakmem makes (mmap, munmap,
 * madvise, mremap, mprotect, mincore), and the clock and random bytes,
 * go through here, so that each memory call is counted (HAKMEM_STATS) and
 * can be failed on purpose in the fault-injection build
 * (HAK_FAULT_INJECTION); the futexes the locks (internal.h) and the purger
 * sleep on are here too, the purger's look at /proc/self/stat
 * (os_last_thread), and the question whether memory can be read
 * (os_readable: a large block's header where free memory is PROT_NONE, a
 * foreign pointer's glibc header).  The others are pthreads' (the purger
 * thread), getauxval and getrusage, and error.c's write to stderr.
 * SPDX-License-Identifier: MIT */
#ifndef HAK_OS_H
#define HAK_OS_H

#include "internal.h"

#include <time.h>

/* Reserve len bytes aligned to align (a power of two >= page size);
 * the memory reads as zero.  NULL on failure.  Reservations are address
 * space (MAP_NORESERVE), which the kernel's overcommit heuristic does not
 * judge; a mapping made for one block is `judged`, as the program's own
 * mmap would be, so that a request larger than memory and swap fails
 * with ENOMEM, as under glibc, instead of succeeding and getting the
 * process killed when it is touched. */
void *os_map_aligned(size_t len, size_t align, bool judged);
void  os_unmap(void *p, size_t len);
/* Give the pages back; they read as zero afterwards. */
bool  os_purge(void *p, size_t len);
/* Make [p, p+len) read as zero; past a few pages, without faulting in the
 * pages that are not resident (they are purged instead). */
void  os_zero(void *p, size_t len);
/* Move the pages of [old, old+len) to dst (replacing what was there);
 * the old range stays mapped and reads as zero (MREMAP_DONTUNMAP, then
 * mapped afresh so that it merges with its neighbours again); on kernels
 * before 6.17, which do not move a range that spans mappings, a mapping
 * at a time.  False if nothing could be moved, e.g. on kernels before
 * 5.7: the caller then copies. */
bool  os_move_pages(void *old, size_t len, void *dst);
/* Make [p, p+len) inaccessible (guard pages) or accessible again. */
bool  os_protect(void *p, size_t len, bool accessible);
/* Guard pages (the hardened build; nothing otherwise): make [p, p+len)
 * inaccessible.  A failure (too many mappings) leaves it accessible, a
 * guard the less, and is counted as a fallback. */
static inline void os_guard(void *p, size_t len)
{
    if (HAK_GUARD_SIZE && !os_protect(p, len, false))
        STAT_INC(fallbacks);
}
/* Is the page holding p mapped?  (mincore) */
bool  os_page_mapped(const void *p);
/* Can the len bytes at p be read?  Asked of the kernel, which answers
 * for a PROT_NONE page instead of faulting: the hardened build's freed
 * extents and guard pages are such pages, and so may be the memory of a
 * foreign pointer (foreign.c).  True where the kernel will not
 * say: the read then faults, as it would have without the question.  Not
 * a memory call: not counted. */
bool  os_readable(const void *p, size_t len);
/* The coarse clock, in ms: read from the vDSO (no syscall), inline on the
 * extents' free path. */
static inline uint64_t os_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
/* Sleep while *word == expected, until woken or until the os_now_ms()
 * time deadline_ms (0: no deadline); may return early for no reason. */
void  os_futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ms);
void  os_futex_wake(_Atomic uint32_t *word, int n);
/* Is the calling thread, one the process started after its first, the
 * only one still running?  Asked of /proc/self/stat, opened for each look
 * and closed at once, never under a number below 3: a descriptor kept
 * open is one the program sees (a daemon's descriptor audit, Python's
 * close_fds checks), may be closed by its closefrom and reused, and a
 * fork child's copy is not hakmem's to close.  1 yes, 0 no, -1 there is
 * no telling (no /proc, no descriptor left, a filter forbids open).  For
 * the purger's rare look (extent.c). */
int   os_last_thread(void);
/* Fill buf with len random bytes from the kernel; false if it has none. */
bool  os_random(void *buf, size_t len);
/* A close-on-exec copy of fd, numbered 3 or above; -1 if none. */
int   os_dup_fd(int fd);
/* What file fd is open on (device and inode); false if it is not open. */
bool  os_fd_file(int fd, uint64_t file[2]);

#ifdef HAK_FAULT_INJECTION
/* Test hook: the next n calls that would map or purge memory fail. */
HAK_API void hak_fault_inject(int fail_after, int fail_count);
#endif

#endif
