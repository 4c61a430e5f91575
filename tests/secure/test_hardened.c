/* The hardened build (libhakmem-secure, -DHAK_SECURE): block canaries,
 * guard pages around large blocks, random order of fresh blocks.
 * Built only against out/secure/libhakmem.a.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <malloc.h>
#include <unistd.h>
#include "testutil.h"

static volatile char sink;

static void overflow_small(size_t n)
{
    char *p = tu_launder(malloc(n));
    size_t u = malloc_usable_size(p);
    memset(p, 0x5a, u + 1); /* one byte past the usable size */
    free(tu_launder(p));
}

static void exact_small(size_t n)
{
    char *p = tu_launder(malloc(n));
    memset(p, 0x5a, malloc_usable_size(p)); /* all usable bytes: fine */
    free(tu_launder(p));
}

static void overflow_large(size_t n)
{
    volatile char *p = tu_launder(malloc(n));
    p[malloc_usable_size((void *)p) + 16] = 1; /* lands on the guard page */
}

static void underflow_large(size_t n)
{
    char *p = tu_launder(malloc(n));
    volatile char *hdr_page = (char *)((uintptr_t)(p - 64) & ~(uintptr_t)4095);
    hdr_page[-1] = 1; /* the page before the header is a guard */
}

static void canaries(void)
{
    static const size_t sizes[] = { 1, 8, 24, 100, 1000, 1016, 5000, 50000 };
    char err[512];
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        int st = tu_in_child(overflow_small, sizes[i], err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT,
              "overflow of a %zu-byte block not caught (status %#x)", sizes[i], st);
        CHECK(strstr(err, "hakmem") && strstr(err, "overflow"),
              "overflow of %zu bytes: message '%s'", sizes[i], err);
        st = tu_in_child(exact_small, sizes[i], err, sizeof err);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "writing exactly the usable size of a %zu-byte block failed (status %#x: %s)",
              sizes[i], st, err);
    }
}

static void guards(void)
{
    static const size_t sizes[] = { 60000, 100000, 1 << 20, 5 << 20 };
    char err[512];
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        int st = tu_in_child(overflow_large, sizes[i], err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
              "overflow of a %zu-byte large block did not fault (status %#x)", sizes[i], st);
        st = tu_in_child(underflow_large, sizes[i], err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
              "underflow of a %zu-byte large block did not fault (status %#x)", sizes[i], st);
    }
    /* freed guarded extents are reusable and writable again */
    for (int round = 0; round < 50; round++) {
        size_t n = 70000 + (size_t)round * 40000;
        char *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p) continue;
        memset(p, round, malloc_usable_size(p));
        char *q = realloc(p, n * 2);
        CHECK(q && q[n - 1] == (char)round, "realloc kept contents");
        free(q);
    }
    CHECK(tu_stats().os_mprotect > 0, "no guard pages were set");
}

/* A block grown by realloc in small steps grows in place or moves its
 * pages (not copied on every step, which made growth quadratic): it keeps
 * its guards all the same.  The step is not a page multiple, so that the
 * block ends inside a page and the bytes past it are the canary's (a
 * block that was copied ended at its guard page: a byte past it faulted;
 * now free reports it). */
static char *grown(size_t n)
{
    char *p = malloc(n);
    for (size_t s = n; p && s < 3 * n; s += 8192 + 48) {
        char *q = realloc(p, s);
        if (!q)
            abort();
        p = q;
        memset(p, 0x5a, s);
    }
    return tu_launder(p);
}
static void grown_overflow_byte(size_t n)
{
    char *p = grown(n);
    p[malloc_usable_size(p)] = 1; /* the canary's first byte */
    free(tu_launder(p));
}
static void grown_overflow_far(size_t n)
{
    volatile char *p = grown(n);
    /* past the last page: the guard, and the room to grow it covers */
    p[malloc_usable_size((void *)p) + 4096 + n / 4] = 1;
}
static void grown_underflow(size_t n)
{
    char *p = grown(n);
    volatile char *hdr_page = (char *)((uintptr_t)(p - 64) & ~(uintptr_t)4095);
    hdr_page[-1] = 1;
}
static void grown_use_after_free(size_t n)
{
    char *p = grown(n);
    uintptr_t dangling = (uintptr_t)p;
    free(p);
    ((volatile char *)dangling)[n / 2] = 1; /* it waits PROT_NONE in the quarantine */
}

/* A block that realloc moved (its pages, with mremap) leaves its old
 * address in the quarantine, as a freed block does: through a pointer kept
 * from before the realloc, a read faults and a free is a double free
 * (until 2026-12-07 the old extent went straight back to the extents, so
 * that the next malloc of its size was put there: the stale pointer read
 * it, and its free freed it without a word). */
static char *moved(size_t n, char **old)
{
    char *q = NULL;
    /* until one cannot grow in place (the blocks that did stay) */
    for (int tries = 0; tries < 64 && q == *old; tries++) {
        char *a = malloc(n), *b = malloc(n);
        if (!a || !b)
            abort();
        *old = a < b ? a : b; /* the lower one, more likely to be blocked */
        memset(*old, 0x5a, n);
        q = realloc(*old, 2 * n);
        if (!q)
            abort();
    }
    char *v = malloc(n); /* where the old block was, if it were free */
    memset(v, 0x56, n);
    return q;
}
static void moved_stale_read(size_t n)
{
    char *old = NULL, *q = moved(n, &old);
    sink = ((volatile char *)tu_launder(old))[100];
    if (q != old)
        _exit(3); /* it moved and nothing faulted */
    _exit(4); /* it did not move */
}
static void moved_stale_free(size_t n)
{
    char *old = NULL, *q = moved(n, &old);
    free(tu_launder(old));
    _exit(q != old ? 3 : 4);
}

static void grown_guards(void)
{
    static const size_t sizes[] = { 60000, 300000, 1 << 20, 3 << 20 };
    char err[512];
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        int st = tu_in_child(grown_overflow_byte, n, err, sizeof err);
        CHECK(WIFSIGNALED(st) && (WTERMSIG(st) == SIGSEGV || (WTERMSIG(st) == SIGABRT && strstr(err, "overflow"))),
              "1-byte overflow of a block grown from %zu bytes not caught (status %#x: %s)", n, st, err);
        st = tu_in_child(grown_overflow_far, n, err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
              "overflow past the last page of a block grown from %zu bytes did not fault (status %#x)", n, st);
        st = tu_in_child(grown_underflow, n, err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
              "underflow of a block grown from %zu bytes did not fault (status %#x)", n, st);
        st = tu_in_child(grown_use_after_free, n, err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
              "write after free of a block grown from %zu bytes did not fault (status %#x)", n, st);
    }
    for (size_t n = 1 << 20; n <= 4 << 20; n *= 2) {
        int st = tu_in_child(moved_stale_read, n, err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
              "a read through the old address of a %zu-byte block realloc moved did not fault (status %#x)", n, st);
        st = tu_in_child(moved_stale_free, n, err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, "double free"),
              "a free of the old address of a %zu-byte block realloc moved: status %#x (%s)", n, st, err);
    }
}

/* A freed slab block waits in the quarantine zeroed whole: a read through
 * the dangling pointer sees none of the program's bytes, nor the free
 * mark (which would tell the secret it is made from). */
static void freed_reads_zero(void)
{
    static const size_t sizes[] = { 16, 24, 100, 1000, 5000, 20000, 50000 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i], nonzero = 0;
        unsigned char *p = malloc(n);
        memset(p, 'a', n);
        const volatile unsigned char *q = tu_launder(p);
        free(p);
        for (size_t k = 0; k < n; k++)
            nonzero += q[k] != 0;
        CHECK(nonzero == 0, "%zu of the %zu bytes of a freed block read non-zero", nonzero, n);
    }
}

/* malloc_usable_size of a pointer that is no live block is a misuse the
 * hardened build reports (the default build returns 0) */
static void usable_of(size_t which)
{
    char *p = malloc(which < 3 ? 100 : 300000);
    free(which % 3 == 0 ? tu_launder(p) : NULL);
    const char *q = which % 3 == 0 ? p : which % 3 == 1 ? p + 1 : p + 48;
    _exit(malloc_usable_size(tu_launder((void *)q)) == 0 ? 3 : 4);
}
static void usable_of_no_block(void)
{
    static const char *what[] = { "a freed block", "an unaligned pointer", "an interior pointer" };
    char err[512];
    for (size_t which = 0; which < 6; which++) {
        int st = tu_in_child(usable_of, which, err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, "malloc_usable_size of a pointer"),
              "malloc_usable_size of %s (%s): status %#x (%s)", what[which % 3], which < 3 ? "small" : "large",
              st, err);
    }
}

/* Each live large block is two mappings (the block and the guard after
 * it), so the kernel's cap on a process's mappings (vm.max_map_count,
 * 65530 by default) caps them at about half that: past it malloc returns
 * NULL with ENOMEM, never a block without its guards nor a crash, and
 * works again once blocks are freed.  In a child: the cap is the whole
 * process's.  Exit 5: the cap is too high to reach here. */
static void map_count_child(size_t unused)
{
    long cap = 0;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    if (!f || fscanf(f, "%ld", &cap) != 1 || cap > 262144)
        _exit(5);
    fclose(f);
    char **b = mmap(NULL, (size_t)cap * sizeof *b, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED)
        _exit(5);
    struct hak_stats before;
    hak_stats_get(&before);
    long n = 0;
    for (; n < cap; n++) {
        errno = 0;
        if (!(b[n] = malloc(100000)))
            break;
        b[n][99999] = 1;
    }
    if (n == cap)
        _exit(3); /* never refused */
    if (errno != ENOMEM)
        _exit(2);
    struct hak_stats at_cap;
    hak_stats_get(&at_cap);
    if (at_cap.fallbacks != before.fallbacks)
        _exit(6); /* a guard that could not be made: a block without it */
    for (long i = 0; i < n; i += 2)
        free(b[i]);
    for (int i = 0; i < 100; i++) {
        char *q = malloc(100000), *small = malloc(48);
        if (!q || !small)
            _exit(4);
        q[99999] = small[47] = 1;
        free(q);
        free(small);
    }
    for (long i = 1; i < n; i += 2)
        free(b[i]);
    _exit(0);
}

static void map_count_limit(void)
{
    char err[512];
    int st = tu_in_child(map_count_child, 0, err, sizeof err);
    CHECK(WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == 5),
          "at the cap on mappings: status %#x (2: not ENOMEM, 3: never refused, 4: no malloc after frees, 6: a guard failed): %s",
          st, err);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 5)
        printf("test_hardened: vm.max_map_count above 262144 or unreadable: the cap on mappings not reached\n");
}

static void random_order(void)
{
    /* 64 fresh blocks of a class nothing else uses here: in the default
     * build they come out at increasing addresses, here shuffled. */
    void *p[64];
    int increasing = 0;
    for (int i = 0; i < 64; i++) {
        p[i] = malloc(880);
        if (i && (char *)p[i] > (char *)p[i - 1])
            increasing++;
    }
    CHECK(increasing < 56, "fresh blocks handed out in address order (%d of 63 steps up)",
          increasing);
    for (int i = 0; i < 64; i++) {
        memset(p[i], i, 880);
        sink = ((char *)p[i])[879];
    }
    for (int i = 0; i < 64; i++) {
        CHECK(((unsigned char *)p[i])[0] == i && ((unsigned char *)p[i])[879] == i,
              "block %d overlaps another", i);
        free(p[i]);
    }
}

/* malloc_trim while the quarantine holds a block of a heap whose thread
 * has exited: the flush frees it into that heap, which takes the heap over
 * (heap_take_over), and the trim must go on with the heap taken over,
 * not the one given up (which it took for its own and aborted on:
 * "corrupted thread free list").  In a thread of its own, young enough
 * to take a heap over. */
static void *alloc_four(void *arg)
{
    unsigned char **b = arg;
    for (int i = 0; i < 4; i++) {
        b[i] = malloc(64);
        memset(b[i], 0x5a, 64);
    }
    return NULL;
}

static void *trim_after_take_over(void *arg)
{
    void *mine = malloc(64); /* a heap of its own */
    unsigned char *b[4];
    pthread_t t;
    CHECK(pthread_create(&t, NULL, alloc_four, b) == 0, "pthread_create");
    pthread_join(t, NULL); /* its heap is abandoned */
    struct hak_stats before, after;
    hak_stats_get(&before);
    free(b[0]); /* into the quarantine */
    malloc_trim(0);
    hak_stats_get(&after);
    CHECK(after.heaps_taken_over == before.heaps_taken_over + 1, "taken over %llu -> %llu",
          (unsigned long long)before.heaps_taken_over, (unsigned long long)after.heaps_taken_over);
    for (int i = 1; i < 4; i++) {
        int intact = 1;
        for (int k = 0; k < 64; k++)
            intact &= b[i][k] == 0x5a;
        CHECK(intact, "block %d changed", i);
        free(b[i]);
    }
    free(mine);
    void *p[200];
    for (int i = 0; i < 200; i++)
        p[i] = malloc(16 + (size_t)i * 8);
    for (int i = 0; i < 200; i++)
        free(p[i]);
    malloc_trim(0);
    return arg;
}

int main(void)
{
    /* The quarantine zeroes a big block as it lets it go, without
     * faulting in the pages the program never touched (first, while the
     * quarantine holds little). */
    size_t n = (size_t)32 << 20, grew = tu_zeroing_growth(n, 0x77);
    CHECK(grew < n / 4, "the free of a %zu-byte block written on every third page added %zu bytes of RSS", n, grew);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, trim_after_take_over, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    canaries();
    guards();
    grown_guards();
    random_order();
    freed_reads_zero();
    usable_of_no_block();
    map_count_limit();
    return TU_DONE();
}
