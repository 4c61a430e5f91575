/* The OS layer (see os.h).
 * SPDX-License-Identifier: MIT */
#include "os.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef HAK_FAULT_INJECTION
static _Atomic int fault_countdown = -1, fault_remaining;
void hak_fault_inject(int fail_after, int fail_count)
{
    atomic_store(&fault_remaining, fail_count);
    atomic_store(&fault_countdown, fail_after);
}
static bool fault_now(void)
{
    int c = atomic_load(&fault_countdown);
    while (c > 0) /* still succeeding: count down, stop at 0 */
        if (atomic_compare_exchange_weak(&fault_countdown, &c, c - 1))
            return false;
    if (c < 0)
        return false;
    if (atomic_fetch_sub(&fault_remaining, 1) <= 0) {
        atomic_store(&fault_countdown, -1);
        return false;
    }
    errno = ENOMEM; /* as the kernel would set it: failed() must not pass it on */
    return true;
}
#else
static inline bool fault_now(void) { return false; }
#endif

/* A failed call is counted and leaves errno as it was: every caller falls
 * back (realloc copies, a purge waits) or sets ENOMEM itself, and a
 * malloc, realloc or free that succeeds leaves the program's errno alone
 * (POSIX requires it of free). */
static void failed(int saved_errno)
{
    STAT_INC(os_failures);
    errno = saved_errno;
}

/* Mappings are MAP_NORESERVE, address space that is touched as it is
 * used, except those made for one block (judged): see os_map_aligned. */
static void *map_anon(void *hint, size_t len, int extra_flags, bool judged)
{
    STAT_INC(os_mmap);
    int saved = errno;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (judged ? 0 : MAP_NORESERVE) | extra_flags;
    void *p = fault_now() ? MAP_FAILED : mmap(hint, len, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) {
        failed(saved);
        return NULL;
    }
    return p;
}

void os_unmap(void *p, size_t len)
{
    STAT_INC(os_munmap);
    int saved = errno;
    if (munmap(p, len) != 0)
        failed(saved);
}

void *os_map_aligned(size_t len, size_t align, bool judged)
{
    /* Over-map by the alignment and trim both ends: mmap has no alignment
     * argument.  This happens once per reservation, never per allocation. */
    char *raw = map_anon(NULL, len + align, 0, judged);
    if (!raw)
        return NULL;
    char *p = (char *)align_up((uintptr_t)raw, align);
    if (p > raw)
        os_unmap(raw, (size_t)(p - raw));
    size_t tail = (size_t)(raw + len + align - (p + len));
    if (tail)
        os_unmap(p + len, tail);
    return p;
}

bool os_purge(void *p, size_t len)
{
    STAT_INC(os_madvise);
    int saved = errno;
    if (fault_now() || madvise(p, len, MADV_DONTNEED) != 0) {
        failed(saved);
        return false;
    }
    return true;
}

/* Zeroing by memset would fault in every page of a block the program
 * never touched (a buffer sized for the worst case, a read buffer used in
 * part): a 4 KiB fault for a page that already reads as zero.  So past a
 * few pages, mincore says which pages are resident: those are cleared in
 * place (they are reused without faulting), the others are purged, which
 * is nearly free where nothing is mapped and drops what was swapped out
 * (mincore calls that not resident, yet it holds the old contents).  Runs
 * of either kind are cleared or purged whole, across mincore's batches:
 * memset is fastest on one long run (non-temporal stores past the cache
 * size). */
#define ZERO_BATCH_PAGES 1024 /* mincore's vector, on the stack */

static void zero_run(char *run, size_t len, bool resident)
{
    if (len && (resident || !os_purge(run, len)))
        memset(run, 0, len);
}

void os_zero(void *p, size_t len)
{
    char *a = p, *end = a + len;
    char *first = (char *)align_up((uintptr_t)a, HAK_PAGE_SIZE);
    char *last = (char *)align_down((uintptr_t)end, HAK_PAGE_SIZE);
    if (len < 16 * HAK_PAGE_SIZE || first >= last) {
        memset(a, 0, len);
        return;
    }
    memset(a, 0, (size_t)(first - a));
    memset(last, 0, (size_t)(end - last));
    char *run = first; /* the run of pages of one kind not yet cleared */
    bool resident = true;
    unsigned char vec[ZERO_BATCH_PAGES];
    for (char *q = first; q < last;) {
        size_t pages = (size_t)(last - q) / HAK_PAGE_SIZE;
        if (pages > ZERO_BATCH_PAGES)
            pages = ZERO_BATCH_PAGES;
        int saved = errno;
        STAT_INC(os_mincore);
        if (mincore(q, pages * HAK_PAGE_SIZE, vec) != 0) {
            errno = saved;
            memset(vec, 1, pages); /* cleared like resident pages */
        }
        for (size_t i = 0; i < pages; i++, q += HAK_PAGE_SIZE)
            if ((bool)(vec[i] & 1) != resident) {
                zero_run(run, (size_t)(q - run), resident);
                run = q;
                resident = !resident;
            }
    }
    zero_run(run, (size_t)(last - run), resident);
}

static bool move_range(char *old, size_t len, char *dst)
{
    STAT_INC(os_mremap);
    return !fault_now() &&
           mremap(old, len, len, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, dst) != MAP_FAILED;
}

/* Can mremap move a range that spans mappings?  Since Linux 6.17.  Before,
 * it refuses (EFAULT), and only after it has unmapped the destination: a
 * hole in a reservation, which another thread's mmap could be given. */
static bool moves_span_mappings(void)
{
    static _Atomic int answer; /* 0 unknown, 1 no, 2 yes */
    int a = atomic_load_explicit(&answer, memory_order_relaxed);
    if (!a) {
        struct utsname u;
        unsigned long major = 0, minor = 0;
        if (uname(&u) == 0) {
            char *dot;
            major = strtoul(u.release, &dot, 10);
            if (*dot == '.')
                minor = strtoul(dot + 1, NULL, 10);
        }
        a = major > 6 || (major == 6 && minor >= 17) ? 2 : 1;
        atomic_store_explicit(&answer, a, memory_order_relaxed);
    }
    return a == 2;
}

/* The end of the mapping that holds p, from /proc/self/maps, read in
 * pieces into the stack (no malloc here); 0 if it cannot be read. */
static uintptr_t mapping_end(uintptr_t p)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[4096];
    size_t have = 0;
    uintptr_t end = 0;
    for (;;) {
        ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
        if (r <= 0)
            break;
        have += (size_t)r;
        buf[have] = 0;
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n'))) { /* whole lines: "lo-hi perms ..." */
            char *dash;
            uintptr_t lo = strtoul(line, &dash, 16), hi = strtoul(dash + 1, NULL, 16);
            if (lo <= p && p < hi) {
                end = hi;
                goto done;
            }
            line = nl + 1;
        }
        have = (size_t)(buf + have - line); /* a line cut short: keep it */
        memmove(buf, line, have);
        if (have == sizeof buf - 1)
            break; /* no line is that long */
    }
done:
    close(fd);
    return end;
}

bool os_move_pages(void *old, size_t len, void *dst)
{
    int saved = errno;
    char *from = old, *to = dst, *end = from + len;
    /* Before 6.17 a block's pages, which often span mappings (a block
     * moved before is a mapping of its own, the room it grew into the
     * reservation's), move one mapping at a time; once a part has moved
     * there is no going back, and a part that cannot move is copied. */
    bool parts = !moves_span_mappings();
    while (from < end) {
        size_t part = (size_t)(end - from);
        if (parts) {
            uintptr_t e = mapping_end((uintptr_t)from);
            if (!e && from == (char *)old) { /* no /proc: copy */
                failed(saved);
                return false;
            }
            if (e && e < (uintptr_t)end)
                part = e - (uintptr_t)from;
        }
        if (!move_range(from, part, to)) {
            /* EFAULT comes after the destination was unmapped (a part
             * that spans mappings after all): it is ours again unless
             * another thread's mmap took the hole meanwhile, which hakmem
             * cannot undo */
            if (parts && errno == EFAULT && map_anon(to, part, MAP_FIXED_NOREPLACE, false) != to)
                fatal_corruption("a concurrent mmap took part of the extent realloc moves a block to, at", to);
            if (from == (char *)old) { /* nothing moved: the caller copies */
                failed(saved);
                return false;
            }
            STAT_INC(os_failures);
            STAT_INC(fallbacks);
            memcpy(to, from, (size_t)(end - from));
            /* the old range must read as zero (the caller frees it as
             * purged), whether or not the fresh mapping below is had: a
             * calloc there returned the block's bytes (review 15) */
            if (!os_purge(from, (size_t)(end - from)))
                memset(from, 0, (size_t)(end - from));
            break;
        }
        from += part;
        to += part;
    }
    errno = saved;
    /* The kernel leaves the old range a mapping of its own, which never
     * merges back: a fresh one in its place (still ours, so MAP_FIXED
     * replaces nothing anyone else has) merges with the reservation around
     * it, so that moves do not pile mappings up towards vm.max_map_count.
     * If this fails, the old mapping stays, empty (what was copied is
     * purged above): nothing is lost. */
    map_anon(old, len, MAP_FIXED, false);
    return true;
}

bool os_protect(void *p, size_t len, bool accessible)
{
    STAT_INC(os_mprotect);
    int saved = errno;
    if (mprotect(p, len, accessible ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
        failed(saved);
        return false;
    }
    return true;
}

bool os_page_mapped(const void *p)
{
    unsigned char vec;
    STAT_INC(os_mincore);
    int saved = errno;
    bool ok = mincore((void *)align_down((uintptr_t)p, HAK_PAGE_SIZE), 1, &vec) == 0;
    errno = saved;
    return ok;
}

/* rt_sigprocmask copies the new mask in before it looks at `how`: with a
 * `how` that is none, it reads 8 bytes and changes nothing, and says
 * EFAULT where they cannot be read, EINVAL where they can.  The common
 * seccomp policies let it through (libc calls it all the time: systemd's
 * @system-service, Docker's default), unlike the calls made to read
 * memory (process_vm_readv), which @system-service answers by killing the
 * process.  One call for each page the range touches, read from the
 * page's start. */
bool os_readable(const void *p, size_t len)
{
    int saved = errno;
    bool readable = true;
    uintptr_t page = align_down((uintptr_t)p, HAK_PAGE_SIZE), last = (uintptr_t)p + (len ? len : 1) - 1;
    for (; readable && page <= last; page += HAK_PAGE_SIZE)
        readable = !(syscall(SYS_rt_sigprocmask, -1, (void *)page, NULL, (size_t)8) != 0 && errno == EFAULT);
    errno = saved;
    return readable;
}

/* /proc/self/stat: the third field is the state of the process's first
 * thread ('Z' once it ended by pthread_exit: it stays counted until the
 * process ends), the twentieth the count of its threads. */
int os_last_thread(void)
{
    int saved = errno;
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && fd < 3) { /* the program closed 0, 1 or 2: handed back at once */
        int high = os_dup_fd(fd);
        close(fd);
        fd = high;
    }
    char buf[1024];
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    errno = saved;
    if (n <= 0)
        return -1;
    buf[n] = 0;
    const char *c = strrchr(buf, ')'); /* the name may hold spaces and ')' */
    if (!c || c[1] != ' ' || !c[2])
        return -1;
    char first_state = c[2];
    c += 2; /* at field 3 */
    for (int field = 3; field < 20; field++)
        if (!(c = strchr(c, ' ')) || !*++c)
            return -1;
    long threads = 0;
    while (*c >= '0' && *c <= '9')
        threads = threads * 10 + (*c++ - '0');
    return threads == 1 || (threads == 2 && first_state == 'Z');
}

bool os_random(void *buf, size_t len)
{
    int saved = errno; /* ENOSYS under some filters, EAGAIN early at boot */
    bool ok = getrandom(buf, len, GRND_NONBLOCK) == (ssize_t)len;
    errno = saved;
    return ok;
}

int os_dup_fd(int fd)
{
    int saved = errno;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    errno = saved;
    return copy;
}

bool os_fd_file(int fd, uint64_t file[2])
{
    int saved = errno;
    struct stat st;
    bool ok = fstat(fd, &st) == 0;
    errno = saved;
    if (ok) {
        file[0] = (uint64_t)st.st_dev;
        file[1] = (uint64_t)st.st_ino;
    }
    return ok;
}

/* ---- futexes: the locks' sleep and the purger's ---- */
void os_futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ms)
{
    struct timespec ts = { (time_t)(deadline_ms / 1000), (long)(deadline_ms % 1000) * 1000000L };
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time: the coarse
     * clock's time line, so a deadline from os_now_ms() */
    int saved = errno; /* EAGAIN, ETIMEDOUT, EINTR: never the program's errno (free keeps it) */
    syscall(SYS_futex, word, FUTEX_WAIT_BITSET_PRIVATE, expected, deadline_ms ? &ts : NULL, NULL,
            FUTEX_BITSET_MATCH_ANY);
    errno = saved;
}

void os_futex_wake(_Atomic uint32_t *word, int n)
{
    int saved = errno;
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
    errno = saved;
}

void lock_wait(Lock *l)
{
    for (int i = 0; i < LOCK_SPIN; i++) {
        __builtin_ia32_pause();
        uint32_t free_state = 0;
        if (atomic_load_explicit(&l->state, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(&l->state, &free_state, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
    }
    /* Taken as "held, maybe a sleeper": whoever releases it then wakes
     * one, whether or not another still sleeps (one wake-up too many at
     * worst, never one too few). */
    while (atomic_exchange_explicit(&l->state, 2, memory_order_acquire) != 0)
        os_futex_wait(&l->state, 2, 0);
}

void lock_wake(Lock *l) { os_futex_wake(&l->state, 1); }
