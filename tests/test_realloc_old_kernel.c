/* realloc's page moves as kernels before 6.17 allow them.  There mremap
 * refuses (EFAULT) to move a range that spans more than one mapping, and
 * only after it has unmapped the destination; the pages of a large block
 * often span mappings from its second move on (the block moved before is
 * a mapping of its own, the room it grew into is the reservation's; in
 * the hardened build its guards split it too).  This program defines
 * uname, to say 6.1, and mremap, which hakmem's static library then
 * calls: it refuses such moves as those kernels do, destination unmapped,
 * and passes the rest on.  A buffer grown 8 KiB at a time to 64 MiB must
 * move its pages a mapping at a time (a page of it madvised apart now and
 * then, so that it spans mappings for certain), never asking for a move
 * that spans mappings (until 2026-12-07 each such move was copied instead, 3 of 7,
 * into an extent with a hole in it), keep its contents, and change
 * address as rarely as on a new kernel; and keep its contents when parts
 * of a move fail (ENOMEM, before anything is unmapped, as the kernel's
 * check of the count of mappings).  Last, a move whose second part fails
 * and whose old range cannot be mapped afresh either (out of mappings
 * too; this program's mmap refuses it): the old range, which realloc
 * frees as reading zero, must read zero, or a calloc given it returns the
 * block's old bytes (until 2026-12-08: review 15).
 * SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include "testutil.h"

static unsigned refused, passed, fail_every, failed_parts;
static volatile unsigned fail_from_part, parts_seen, remaps_refused;

/* How many mappings [start, end) touches, from /proc/self/maps (read
 * without allocating: this runs inside realloc). */
static int mappings_in(uintptr_t start, uintptr_t end)
{
    static char buf[1 << 20];
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    close(fd);
    buf[n] = 0;
    int count = 0;
    for (char *line = buf; *line;) {
        char *dash;
        uintptr_t lo = strtoul(line, &dash, 16), hi = strtoul(dash + 1, NULL, 16);
        count += lo < end && hi > start;
        char *nl = strchr(line, '\n');
        if (!nl)
            break;
        line = nl + 1;
    }
    return count;
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    void *dst = va_arg(ap, void *);
    va_end(ap);
    if (fail_from_part && ++parts_seen >= fail_from_part) { /* out of mappings from here on */
        errno = ENOMEM;
        return MAP_FAILED;
    }
    if (fail_every && (passed + 1) % fail_every == 0) { /* out of mappings */
        passed++;
        failed_parts++;
        errno = ENOMEM;
        return MAP_FAILED;
    }
    if (mappings_in((uintptr_t)old, (uintptr_t)old + old_len) > 1) {
        refused++;
        syscall(SYS_munmap, dst, new_len); /* as mremap_to() does first */
        errno = EFAULT;
        return MAP_FAILED;
    }
    passed++;
    return (void *)syscall(SYS_mremap, old, old_len, new_len, flags, dst);
}

/* After a part failed: the old range mapped afresh in place needs a
 * mapping more, and there is none. */
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (fail_from_part && parts_seen >= fail_from_part && (flags & MAP_FIXED) &&
        !(flags & MAP_FIXED_NOREPLACE)) {
        remaps_refused++;
        errno = ENOMEM;
        return MAP_FAILED;
    }
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int uname(struct utsname *u)
{
    memset(u, 0, sizeof *u);
    strcpy(u->sysname, "Linux");
    strcpy(u->release, "6.1.0-emulated");
    return 0;
}

/* In a child of its own, so that it starts from an empty heap and its
 * block has to move.  fail: every fail-th move of a part fails too (out of
 * mappings, ENOMEM): a move that got some of the pages across copies the
 * rest, and one that got none copies the block (fallbacks). */
static void grow_phase(size_t fail)
{
    fail_every = (unsigned)fail;
    unsigned long failures = tu_failures(); /* the parent's, inherited */
    struct hak_stats before, after;
    size_t n = 60000;
    unsigned char *p = malloc(n), *keep = malloc(3 << 20); /* something in the way */
    memset(keep, 1, 3 << 20);
    for (size_t i = 0; i < n; i += 4096)
        p[i] = (unsigned char)(i >> 12);
    hak_stats_get(&before);
    /* A page in the middle of the block gets a flag of its own (as a
     * program's madvise gives it), which splits its mapping in three, so
     * that the block's next move spans mappings for certain. */
    unsigned limit = 24, changes = 0;
    for (size_t stage = 1u << 20; stage <= 64u << 20; stage *= 4) {
        changes += tu_grow_by_steps(&p, &n, stage, 8192, changes > limit ? 0 : limit - changes);
        char *mid = (char *)(((uintptr_t)p + n / 2) & ~(uintptr_t)4095);
        CHECK(madvise(mid, 4096, MADV_NOHUGEPAGE) == 0, "madvise: %s", strerror(errno));
    }
    int lost = tu_grown_lost(p, n);
    hak_stats_get(&after);
    free(p);
    free(keep);
    CHECK(lost == 0, "%d pages lost their contents", lost);
    CHECK(changes <= limit, "the buffer changed address %u times by %zu KiB", changes, n >> 10);
    CHECK(refused == 0, "%u moves asked for spanned mappings (%u passed)", refused, passed);
    CHECK(passed > changes, "%u moves for %u address changes: no block spanned mappings, the test tests nothing",
          passed, changes);
    if (fail)
        CHECK(failed_parts > 0, "no part failed (%u refused, %u passed): the test tests nothing", refused, passed);
    else
        CHECK(after.fallbacks == before.fallbacks,
              "%llu moves copied instead (%u refused as before Linux 6.17, %u passed)",
              (unsigned long long)(after.fallbacks - before.fallbacks), refused, passed);
    _exit(tu_failures() != failures);
}

/* A 2 MiB block, its mapping split in two (as a program's madvise does),
 * grown where it cannot grow in place: its second part fails to move and
 * is copied, and its old range is not mapped afresh. */
static void calloc_after_failed_move(size_t unused)
{
    (void)unused;
    unsigned long failures = tu_failures();
    const size_t n = (2u << 20) - 64;
    unsigned char *p = malloc(n), *blocker = malloc(n);
    memset(p, 0xA5, n);
    memset(blocker, 1, 64);
    CHECK(madvise((char *)(((uintptr_t)p + n / 2) & ~(uintptr_t)4095), 4096, MADV_RANDOM) == 0, "madvise: %s",
          strerror(errno));
    uintptr_t old = (uintptr_t)p;
    fail_from_part = 2;
    unsigned char *q = realloc(p, 16u << 20);
    fail_from_part = 0;
    CHECK(q && (uintptr_t)q != old && remaps_refused > 0, "the move: %#lx -> %p, %u parts, %u remaps refused",
          (unsigned long)old, (void *)q, parts_seen, remaps_refused);
    size_t lost = 0;
    for (size_t i = 0; q && i < n; i++)
        lost += q[i] != 0xA5;
    CHECK(lost == 0, "%zu bytes of the moved block lost", lost);
    for (int k = 0; k < 4; k++) {
        unsigned char *c = calloc(1, n);
        size_t dirty = 0;
        for (size_t i = 0; c && i < n; i++)
            dirty += c[i] != 0;
        CHECK(c && dirty == 0, "calloc #%d (%p, the old block was at %#lx): %zu bytes not zero", k, (void *)c,
              (unsigned long)old, dirty);
    }
    _exit(tu_failures() != failures);
}

int main(void)
{
    /* MREMAP_DONTUNMAP needs Linux 5.7: without it every move copies */
    char *probe = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED ||
        (void *)syscall(SYS_mremap, probe, 4096, 4096, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
                        probe + 4096) == MAP_FAILED) {
        printf("test_realloc_old_kernel: this kernel has no MREMAP_DONTUNMAP (before 5.7)\n");
        return 77;
    }
    munmap(probe, 8192);
    char err[2048];
    int st = tu_in_child(grow_phase, 0, err, sizeof err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "moves as before Linux 6.17 (status %#x):\n%s", st, err);
    st = tu_in_child(grow_phase, 2, err, sizeof err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "every other part failing too (status %#x):\n%s", st, err);
    st = tu_in_child(calloc_after_failed_move, 0, err, sizeof err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "calloc after a move that failed part-way (status %#x):\n%s", st,
          err);
    return TU_DONE();
}
