/* Tiny helpers shared by the hakmem C tests.
 *
 *   CHECK(cond, fmt, ...)   count a check; on failure print file:line and
 *                           the message to stderr and count a failure
 *   TU_DONE()               print "test_X: ok (K checks)" or the failure
 *                           count; evaluates to main's exit status
 *   tu_rng / tu_rand*       deterministic PRNG (splitmix64)
 *   tu_fill / tu_verify     address+seed pattern: a block copied or
 *                           overlapped by another block no longer verifies
 *   tu_fill_idx / _idx      offset+seed pattern: survives realloc moves
 *   tu_run_threads(n,f,ctx) run f(i, ctx) in n threads and join them
 *   tu_check_block(p,n,..)  a block malloc returned: not NULL, aligned,
 *                           big enough, of the expected tier
 *   tu_keep / tu_kept_check blocks held to be checked and freed together
 *   tu_handoff_push / _free_all  blocks that outlive their thread
 *   tu_mixed_size, tu_churn sizes across the tiers; a background churn
 *   tu_short_life           what a short-lived thread allocates and frees
 *   tu_mark_sparse / _lost  a pattern for blocks too big to fill
 *   tu_grow_by_steps / tu_grown_lost  a buffer grown by realloc in steps
 *   tu_realloc_round        grow and shrink a marked big block, racing ...
 *   tu_mapping_churn        ... mmap/munmap of marked mappings
 *   tu_stress_seconds()     STRESS_SECONDS from the environment (default 2)
 *   tu_sleep_ms, tu_rss_bytes  sleep; RSS now, read without allocating
 *   tu_zeroing_growth       RSS a zeroed free adds for pages never touched
 *   tu_run_with_option      re-execute with a HAKMEM_* option set
 *   tu_purger_running       is the hakmem-purge thread there?  (allocates)
 *
 * Everything is static so each test is a single translation unit.
 * SPDX-License-Identifier: MIT */
#ifndef HAKMEM_TESTUTIL_H
#define HAKMEM_TESTUTIL_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hakmem.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static unsigned long tu_checks_;
static unsigned long tu_failures_;
#define TU_MAX_REPORTS 40

static void __attribute__((format(printf, 4, 5), noinline))
tu_fail_(const char *file, int line, const char *cond, const char *fmt, ...)
{
    unsigned long n = __atomic_add_fetch(&tu_failures_, 1, __ATOMIC_RELAXED);
    if (n > TU_MAX_REPORTS) {
        if (n == TU_MAX_REPORTS + 1)
            fprintf(stderr, "%s: further failures not shown\n",
                    program_invocation_short_name);
        return;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s:%d: CHECK(%s) failed: %s\n", file, line, cond, msg);
}

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        __atomic_add_fetch(&tu_checks_, 1, __ATOMIC_RELAXED);              \
        if (__builtin_expect(!(cond), 0))                                  \
            tu_fail_(__FILE__, __LINE__, #cond, __VA_ARGS__);              \
    } while (0)

/* The tier malloc(n) lands in.  A build with the hardened canary adds its
 * 8 bytes to every slab request, which moves the sizes within 8 bytes
 * below a tier's end up to the next tier. */
static inline __attribute__((unused)) int tu_tier_of(size_t n)
{
    size_t r = n + ((hak_mitigations() & HAK_MIT_CANARY) ? 8 : 0);
    return r <= HAK_TINY_MAX ? HAK_KIND_TINY : r <= HAK_MID_MAX ? HAK_KIND_MID : HAK_KIND_LARGE;
}

/* What an allocation call (what) returned for n bytes: not NULL, aligned
 * to align, at least n usable bytes, and hakmem's block of the given kind,
 * or of the tier above if the canary moved n there (any of hakmem's if
 * kind is -1).  False if p is NULL. */
static inline __attribute__((unused)) int tu_check_block(void *p, size_t n, size_t align, int kind,
                                                         const char *what)
{
    if (kind > 0 && tu_tier_of(n) > kind)
        kind = tu_tier_of(n);
    CHECK(p != NULL, "%s(%zu) = NULL", what, n);
    if (!p)
        return 0;
    CHECK((uintptr_t)p % align == 0, "%s(%zu) = %p not %zu-aligned", what, n, p, align);
    CHECK(hak_usable_size(p) >= n, "%s(%zu): usable %zu", what, n, hak_usable_size(p));
    int k = hak_ptr_kind(p);
    CHECK(kind < 0 ? k != HAK_KIND_FOREIGN : k == kind, "%s(%zu) = %p: kind %d", what, n, p, k);
    return 1;
}

/* Count a check without printing (for hot loops that CHECK on failure). */
#define TU_COUNT(n) __atomic_add_fetch(&tu_checks_, (n), __ATOMIC_RELAXED)

static inline unsigned long tu_failures(void)
{
    return __atomic_load_n(&tu_failures_, __ATOMIC_RELAXED);
}

static __attribute__((unused)) int tu_done_(void)
{
    unsigned long c = __atomic_load_n(&tu_checks_, __ATOMIC_RELAXED);
    unsigned long f = tu_failures();
    if (c == 0) {
        printf("%s: FAILED (no checks ran)\n", program_invocation_short_name);
        return 1;
    }
    if (f == 0) {
        printf("%s: ok (%lu checks)\n", program_invocation_short_name, c);
        fflush(stdout);
        return 0;
    }
    printf("%s: FAILED (%lu of %lu checks failed)\n",
           program_invocation_short_name, f, c);
    fflush(stdout);
    return 1;
}
#define TU_DONE() tu_done_()

/* ---- PRNG ------------------------------------------------------------ */
typedef struct { uint64_t s; } tu_rng;

static inline uint64_t tu_rand(tu_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* uniform in [lo, hi] */
static inline uint64_t tu_range(tu_rng *r, uint64_t lo, uint64_t hi)
{
    return lo + tu_rand(r) % (hi - lo + 1);
}
static inline tu_rng tu_rng_seed(uint64_t seed)
{
    tu_rng r = { seed * 0x2545F4914F6CDD1Dull + 1 };
    return r;
}

/* ---- patterns -------------------------------------------------------- */
static inline uint8_t tu_pat_(uintptr_t a, uint64_t seed)
{
    uint64_t x = (a ^ (seed << 17) ^ seed) * 0x9E3779B97F4A7C15ull;
    return (uint8_t)(x >> 56);
}

/* Address-derived pattern: a block only verifies at the address it was
 * filled at, so a block handed out twice (overlap) shows up. */
static inline void tu_fill(void *p, size_t n, uint64_t seed)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = tu_pat_((uintptr_t)(b + i), seed);
}
/* Index of the first bad byte, or (size_t)-1 if all good. */
static inline size_t tu_verify(const void *p, size_t n, uint64_t seed)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != tu_pat_((uintptr_t)(b + i), seed))
            return i;
    return (size_t)-1;
}

/* Offset-derived pattern: survives realloc moving the block. */
static inline void tu_fill_idx(void *p, size_t from, size_t n, uint64_t seed)
{
    uint8_t *b = p;
    for (size_t i = from; i < n; i++)
        b[i] = tu_pat_(i, seed);
}
static inline size_t tu_verify_idx(const void *p, size_t n, uint64_t seed)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != tu_pat_(i, seed))
            return i;
    return (size_t)-1;
}
#define TU_OK ((size_t)-1)

/* ---- threads --------------------------------------------------------- */
typedef void (*tu_thread_fn)(int idx, void *ctx);
struct tu_thread_arg_ { tu_thread_fn fn; void *ctx; int idx; };

static __attribute__((unused)) void *tu_thread_tramp_(void *a)
{
    struct tu_thread_arg_ *t = a;
    t->fn(t->idx, t->ctx);
    return NULL;
}

/* Run fn(i, ctx) for i in [0, n) on n threads; return after all joined. */
static __attribute__((unused)) void tu_run_threads(int n, tu_thread_fn fn, void *ctx)
{
    pthread_t tid[n];
    struct tu_thread_arg_ arg[n];
    for (int i = 0; i < n; i++) {
        arg[i] = (struct tu_thread_arg_){ fn, ctx, i };
        int rc = pthread_create(&tid[i], NULL, tu_thread_tramp_, &arg[i]);
        CHECK(rc == 0, "pthread_create: %s", strerror(rc));
        if (rc) tid[i] = 0;
    }
    for (int i = 0; i < n; i++)
        if (tid[i]) pthread_join(tid[i], NULL);
}

/* ---- misc ------------------------------------------------------------ */
static inline double tu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void tu_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) { }
}

/* The process's RSS in bytes, from /proc/self/statm without allocating
 * (open/read into a stack buffer: no malloc, no stdio); 0 if unreadable. */
static inline size_t tu_rss_bytes(void)
{
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *p = buf;
    while (*p && *p != ' ') p++; /* skip the size field */
    while (*p == ' ') p++;
    size_t pages = 0;
    while (*p >= '0' && *p <= '9') pages = pages * 10 + (size_t)(*p++ - '0');
    return pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* hakmem reads its options at start-up: unless name=value is set, run
 * this program again with it set (returns only if that fails, having
 * counted a failure). */
static inline void tu_run_with_option(const char *name, const char *value, char **argv)
{
    const char *v = getenv(name);
    if (v && strcmp(v, value) == 0)
        return;
    setenv(name, value, 1);
    execv("/proc/self/exe", argv);
    CHECK(0, "re-exec with %s=%s failed: %s", name, value, strerror(errno));
}

static inline bool tu_purger_running(void)
{
    DIR *d = opendir("/proc/self/task");
    bool found = false;
    for (struct dirent *e; d && !found && (e = readdir(d));) {
        char path[300], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = e->d_name[0] != '.' ? fopen(path, "r") : NULL;
        if (f && fgets(comm, sizeof comm, f))
            found = strcmp(comm, "hakmem-purge\n") == 0;
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    return found;
}

static inline double tu_stress_seconds(void)
{
    const char *s = getenv("STRESS_SECONDS");
    double v = s ? atof(s) : 0;
    return v > 0 ? v : 2.0;
}

/* Hide a pointer from the optimizer (no folding of free(&local) etc). */
static inline void *tu_launder(void *p)
{
    __asm__ volatile("" : "+r"(p));
    return p;
}

/* ZERO_ON_FREE builds: the RSS that the free of an n-byte block adds
 * when the program wrote `pattern` to the first 64 bytes of every third
 * page of it only.
 * Zeroing must not fault in the other pages (before 2026-12-07 a memset
 * did: 2/3 of n).  LARGE_QUARANTINE (32) more large frees come after it,
 * so that the hardened build's quarantine has let it go, and zeroed it. */
static inline size_t tu_zeroing_growth(size_t n, int pattern)
{
    unsigned char *p = malloc(n);
    if (!p)
        return SIZE_MAX;
    /* in small pages: a huge page would make the untouched pages resident */
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    madvise((void *)a, ((uintptr_t)p + n - a) & ~(uintptr_t)4095, MADV_NOHUGEPAGE);
    for (size_t i = 0; i + 64 <= n; i += 3 * 4096)
        memset(p + i, pattern, 64);
    size_t before = tu_rss_bytes();
    if (!before) { /* no telling */
        free(p);
        return SIZE_MAX;
    }
    free(tu_launder(p));
    for (int i = 0; i < 48; i++)
        free(tu_launder(malloc(200000)));
    size_t after = tu_rss_bytes();
    return after > before ? after - before : 0;
}
static inline size_t tu_opaque(size_t v)
{
    __asm__ volatile("" : "+r"(v));
    return v;
}

/* Run fn(arg) in a child process (alarm after 20 s) and return its wait
 * status; err gets what it wrote to stderr.  For cases that misuse the
 * heap on purpose and are expected to die. */
/* Read fd (a child's stderr) into buf until end of file, close it, wait for
 * the child pid; its wait status. */
static inline int tu_collect(int fd, pid_t pid, char *buf, size_t len)
{
    size_t got = 0;
    ssize_t n;
    while (got + 1 < len && (n = read(fd, buf + got, len - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = 0;
    close(fd);
    int st = -1;
    waitpid(pid, &st, 0);
    return st;
}

static inline int tu_in_child(void (*fn)(size_t), size_t arg, char *err, size_t errlen)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        alarm(20);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    return tu_collect(fds[0], pid, err, errlen);
}

static inline struct hak_stats tu_stats(void)
{
    struct hak_stats s;
    memset(&s, 0, sizeof s);
    hak_stats_get(&s);
    return s;
}

/* Blocks held to be checked later: tu_keep fills each with the pattern of
 * its index; tu_kept_check finds any overwritten by another block (what
 * names them in the report) and frees them all, through free and hak_free
 * in turn. */
typedef struct { void *p; size_t n; } tu_block;
static inline __attribute__((unused)) void tu_keep(tu_block *b, size_t *nb, void *p, size_t n)
{
    tu_fill(p, hak_usable_size(p), *nb);
    b[*nb].p = p;
    b[*nb].n = n;
    ++*nb;
}
static inline __attribute__((unused)) void tu_kept_check(tu_block *b, size_t nb, const char *what)
{
    for (size_t i = 0; i < nb; i++)
        if (tu_verify(b[i].p, hak_usable_size(b[i].p), i) != TU_OK)
            CHECK(0, "%s: %zu-byte block %p overwritten by another block", what, b[i].n, b[i].p);
    TU_COUNT(1);
    for (size_t i = 0; i < nb; i++)
        (i & 2 ? hak_free : free)(b[i].p);
}

/* Blocks handed from the thread that made them to whoever frees them later
 * (main, after the thread exited): a block of n bytes, its first check
 * bytes filled by tu_fill with seed, goes on one locked list, its first
 * bytes becoming the link; tu_handoff_free_all checks the rest of those
 * bytes and the usable size, frees every block and returns how many it
 * freed, counting the damaged ones in *bad. */
typedef struct tu_handoff { struct tu_handoff *next; size_t n; uint64_t seed; } tu_handoff;
static pthread_mutex_t tu_handoff_mu = PTHREAD_MUTEX_INITIALIZER;
static tu_handoff *tu_handoff_list;
static inline __attribute__((unused)) void tu_handoff_push(void *block, size_t n, uint64_t seed)
{
    tu_handoff *h = block;
    h->n = n;
    h->seed = seed;
    pthread_mutex_lock(&tu_handoff_mu);
    h->next = tu_handoff_list;
    tu_handoff_list = h;
    pthread_mutex_unlock(&tu_handoff_mu);
}
static inline __attribute__((unused)) size_t tu_handoff_free_all(size_t check, size_t *bad)
{
    pthread_mutex_lock(&tu_handoff_mu);
    tu_handoff *h = tu_handoff_list;
    tu_handoff_list = NULL;
    pthread_mutex_unlock(&tu_handoff_mu);
    size_t freed = 0;
    while (h) {
        tu_handoff *next = h->next;
        size_t len = h->n < check ? h->n : check;
        if (hak_usable_size(h) < h->n ||
            tu_verify((char *)h + sizeof *h, len - sizeof *h, h->seed) != TU_OK)
            ++*bad;
        free(h);
        freed++;
        h = next;
    }
    return freed;
}

/* A size for tests that mix tiers: 70% tiny, 27% mid, 3% large up to
 * large_max bytes. */
static inline __attribute__((unused)) size_t tu_mixed_size(tu_rng *r, size_t large_max)
{
    uint64_t x = tu_rand(r) % 100;
    if (x < 70) return tu_range(r, 1, HAK_TINY_MAX);
    if (x < 97) return tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
    return tu_range(r, HAK_MID_MAX + 1, large_max);
}

/* The background of tests that do something else meanwhile (fork, trim):
 * until *stop, a random one of w (at most 128) slots is checked (its first
 * check bytes hold its slot's pattern) and freed or, with_realloc, half
 * the time reallocated; an empty slot gets a block of tu_mixed_size.
 * iters[idx] counts the rounds. */
static inline __attribute__((unused)) void tu_churn(int idx, const int *stop, unsigned long *iters,
                                                    int w, size_t check, int with_realloc,
                                                    uint64_t seed)
{
    void *b[128] = { 0 };
    size_t n[128] = { 0 };
    tu_rng r = tu_rng_seed(seed);
    unsigned long it = 0;
    if (w > 128)
        w = 128;
    while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
        int k = (int)(tu_rand(&r) % (unsigned)w);
        uint64_t pat = (uint64_t)k + (uint64_t)idx * (uint64_t)w;
        if (b[k]) {
            if (tu_verify(b[k], n[k] < check ? n[k] : check, pat) != TU_OK)
                CHECK(0, "worker %d: block of %zu bytes corrupted", idx, n[k]);
            void *q = NULL;
            size_t m = 0;
            if (with_realloc && (tu_rand(&r) & 1)) {
                m = tu_mixed_size(&r, 2 * MiB); /* realloc keeps the bytes, not the address pattern */
                q = realloc(b[k], m);
                CHECK(q != NULL, "realloc(%zu)", m);
            }
            if (!q)
                free(b[k]);
            else
                tu_fill(q, m < check ? m : check, pat);
            b[k] = q;
            n[k] = m;
        } else {
            n[k] = tu_mixed_size(&r, 2 * MiB);
            b[k] = malloc(n[k]);
            CHECK(b[k] != NULL, "malloc(%zu)", n[k]);
            if (b[k]) tu_fill(b[k], n[k] < check ? n[k] : check, pat);
        }
        __atomic_store_n(&iters[idx], ++it, __ATOMIC_RELAXED);
    }
    for (int k = 0; k < w; k++)
        free(b[k]);
}

/* The life of a short thread: per (at most 512) blocks of tu_mixed_size
 * bytes, each patterned over its first check bytes, every free_every-th
 * freed at once after a check, the others checked and freed at the end;
 * the first handoff ones (sizeof(tu_handoff) to handoff_max bytes) are
 * handed off (tu_handoff_push) if hand_off, else checked and freed too.
 * seed + i is block i's pattern. */
static inline __attribute__((unused)) void tu_short_life(uint64_t seed, int per, int handoff,
                                                         size_t handoff_max, size_t check,
                                                         int free_every, int hand_off)
{
    void *b[512];
    size_t n[512];
    tu_rng r = tu_rng_seed(seed);
    if (per > 512)
        per = 512;
    for (int i = 0; i < per; i++) {
        n[i] = i < handoff ? tu_range(&r, sizeof(tu_handoff), handoff_max) : tu_mixed_size(&r, 300000);
        b[i] = malloc(n[i]);
        CHECK(b[i] != NULL, "malloc(%zu)", n[i]);
        if (b[i]) tu_fill(b[i], n[i] < check ? n[i] : check, seed + i);
        int j = i - 1; /* some right away, in allocation order */
        if (j >= handoff && i % free_every == 0 && b[j]) {
            if (tu_verify(b[j], n[j] < check ? n[j] : check, seed + j) != TU_OK)
                CHECK(0, "thread block of %zu bytes corrupted", n[j]);
            free(b[j]);
            b[j] = NULL;
        }
    }
    for (int i = per - 1; i >= 0; i--) {
        if (!b[i]) continue;
        if (tu_verify(b[i], n[i] < check ? n[i] : check, seed + i) != TU_OK)
            CHECK(0, "thread block of %zu bytes corrupted", n[i]);
        if (i < handoff && hand_off)
            tu_handoff_push(b[i], n[i], seed + i);
        else
            free(b[i]);
    }
    TU_COUNT(1);
}

/* A buffer grown by realloc step bytes at a time from *n bytes up to max,
 * one byte a page written as it grows (the page's number), as a program
 * appends to a growing buffer.  Stops once its address has changed more
 * than limit times (so that a regression fails at once, not after a
 * quadratic run), and returns the count of changes; *n is the size
 * reached.  tu_grown_lost counts the pages whose byte was lost. */
static inline __attribute__((unused)) unsigned tu_grow_by_steps(unsigned char **p, size_t *n, size_t max,
                                                               size_t step, unsigned limit)
{
    unsigned changes = 0;
    while (*n < max && changes <= limit) {
        size_t old = *n;
        unsigned char *q = realloc(*p, *n + step);
        CHECK(q != NULL, "realloc(%zu)", *n + step);
        if (!q)
            break;
        *n += step;
        changes += q != *p;
        *p = q;
        for (size_t i = (old + 4095) & ~(size_t)4095; i < *n; i += 4096)
            q[i] = (unsigned char)(i >> 12);
    }
    return changes;
}
static inline __attribute__((unused)) int tu_grown_lost(const unsigned char *p, size_t n)
{
    int lost = 0;
    for (size_t i = 0; i < n; i += 4096)
        lost += p[i] != (unsigned char)(i >> 12);
    return lost;
}

/* A sparse pattern for blocks too big to fill: the first and the last
 * 4 KiB and one byte in every MiB between.  tu_sparse_lost says where it
 * was lost first ("first page", "last page", "a MiB mark") or NULL. */
static inline __attribute__((unused)) void tu_mark_sparse(uint8_t *p, size_t len, uint64_t seed)
{
    tu_fill_idx(p, 0, 4096, seed);
    tu_fill_idx(p, len - 4096, len, seed);
    for (size_t off = MiB; off < len - 4096; off += MiB)
        p[off] = (uint8_t)(off / MiB + seed);
}
static inline __attribute__((unused)) const char *tu_sparse_lost(const uint8_t *p, size_t len,
                                                                 uint64_t seed)
{
    for (size_t i = 0; i < 4096; i++)
        if (p[i] != tu_pat_(i, seed))
            return "first page";
    for (size_t i = len - 4096; i < len; i++)
        if (p[i] != tu_pat_(i, seed))
            return "last page";
    for (size_t off = MiB; off < len - 4096; off += MiB)
        if (p[off] != (uint8_t)(off / MiB + seed))
            return "a MiB mark";
    TU_COUNT(1);
    return NULL;
}

/* One round of the realloc side of a race: old bytes allocated and marked
 * (tu_mark_sparse), grown to new (the marks kept, the grown part
 * writable), shrunk back (the marks kept), freed.  False if a call failed
 * (reported). */
static inline __attribute__((unused)) int tu_realloc_round(void *(*alloc)(size_t),
                                                           void *(*re)(void *, size_t),
                                                           void (*release)(void *), size_t old,
                                                           size_t new, uint64_t seed,
                                                           unsigned long it)
{
    uint8_t *p = alloc(old);
    CHECK(p != NULL, "malloc(%zu) failed", old);
    if (!p)
        return 0;
    tu_mark_sparse(p, old, seed);
    uint8_t *q = re(p, new);
    CHECK(q != NULL, "realloc(%zu -> %zu) failed", old, new);
    if (!q) {
        release(p);
        return 0;
    }
    const char *lost = tu_sparse_lost(q, old, seed);
    CHECK(!lost, "iteration %lu: realloc %zu -> %zu lost the %s", it, old, new, lost);
    q[old] = 0x5a;
    q[new - 1] = 0xa5;
    CHECK(q[old] == 0x5a && q[new - 1] == 0xa5, "grown part of the block not writable");
    uint8_t *s = re(q, old);
    CHECK(s != NULL, "realloc(%zu -> %zu) failed", new, old);
    if (!s) {
        release(q);
        return 0;
    }
    lost = tu_sparse_lost(s, old, seed);
    CHECK(!lost, "iteration %lu: realloc %zu -> %zu lost the %s", it, new, old, lost);
    release(s);
    return 1;
}

/* The other side of a realloc race: map, mark, check and unmap anonymous
 * mappings of len bytes, keep of them at a time, until *stop.  A mapping
 * whose marks changed had another mapping placed over it (what a wrong
 * mremap would do).  Counts rounds in *iters, damaged mappings in *bad. */
static inline __attribute__((unused)) void tu_mapping_churn(size_t len, int keep, const int *stop,
                                                            unsigned long *iters,
                                                            unsigned long *bad)
{
    unsigned char *ring[64] = { 0 }, tag[64] = { 0 };
    unsigned long it = 0;
    if (keep > 64)
        keep = 64;
    while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
        int k = (int)(it % (unsigned)keep);
        if (ring[k]) {
            unsigned char *m = ring[k];
            if (!(m[0] == tag[k] && m[len - 1] == (unsigned char)~tag[k])) {
                __atomic_add_fetch(bad, 1, __ATOMIC_RELAXED);
                CHECK(0, "own mapping at %p lost its contents (first byte %#x, last %#x, "
                      "expected %#x/%#x): another mapping was placed over it",
                      (void *)m, m[0], m[len - 1], tag[k], (unsigned char)~tag[k]);
            }
            TU_COUNT(1);
            CHECK(munmap(m, len) == 0, "munmap: %s", strerror(errno));
            ring[k] = NULL;
        }
        void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(m != MAP_FAILED, "mmap(%zu): %s", len, strerror(errno));
        if (m == MAP_FAILED)
            break;
        ring[k] = m;
        tag[k] = (unsigned char)(it * 7 + 1) | 1; /* never 0: a zero page shows */
        ring[k][0] = tag[k];
        ring[k][len - 1] = (unsigned char)~tag[k];
        __atomic_store_n(iters, ++it, __ATOMIC_RELAXED);
    }
    for (int k = 0; k < keep; k++) {
        if (!ring[k])
            continue;
        CHECK(ring[k][0] == tag[k] && ring[k][len - 1] == (unsigned char)~tag[k],
              "own mapping at %p lost its contents", (void *)ring[k]);
        munmap(ring[k], len);
    }
}

#endif /* HAKMEM_TESTUTIL_H */
