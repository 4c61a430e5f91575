/* Threads that allocate from their own thread-exit destructors, in every
 * round of pthread key destructors (a destructor that re-arms itself with
 * pthread_setspecific runs PTHREAD_DESTRUCTOR_ITERATIONS times), and from a
 * __cxa_thread_atexit_impl destructor (what C++ thread_local objects use).
 *
 * Whatever round a thread allocates in, its heap must be released when it
 * is gone: the statistics (hak_stats_get, malloc_stats) must not touch the
 * dead thread's memory, and heaps and RSS must not grow with the number of
 * threads.  One key is created in a priority 101 constructor (normally
 * before hakmem's own key exists) and one in main (after it), so that a
 * destructor runs after hakmem's in each round whatever order keys run in;
 * both re-arm themselves, so they also run in the last round.
 * 2000 threads, at most CONC at a time, on stacks that are made
 * inaccessible once the thread is joined (so a read of a dead thread's TLS
 * faults); each keeps a few blocks alive that main frees after joining it.
 * Then threads whose first allocator call comes in the last destructor
 * round, after hakmem's key was looked at for the last time: their heaps
 * are never given back (nothing tells hakmem the thread is gone), and the
 * statistics must still not read their dead TLS.
 * SPDX-License-Identifier: MIT */
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <sys/mman.h>
#include "testutil.h"

enum { THREADS = 2000, CONC = 4, KEEP_PER_CALL = 2 };

static pthread_key_t key_early, key_late;
static __thread int rounds_left_early, rounds_left_late;
static __thread uint64_t tseed;

static unsigned long dtor_calls, dtor_bad;
static const char *volatile phase = "start";

extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso);
extern void *__dso_handle;

/* Allocate and free blocks of all tiers; keep KEEP_PER_CALL for main. */
static void churn(uint64_t seed)
{
    static const size_t sz[] = { 8, 48, 200, 1000, 3000, 20000, 53248, 60000, 200000,
                                 (size_t)2 << 20 };
    enum { N = sizeof sz / sizeof *sz };
    void *b[N];
    for (int i = 0; i < N; i++) {
        b[i] = malloc(sz[i]);
        if (!b[i]) { __atomic_add_fetch(&dtor_bad, 1, __ATOMIC_RELAXED); continue; }
        tu_fill(b[i], sz[i] < 512 ? sz[i] : 512, seed + i);
    }
    for (int i = 0; i < N; i++) {
        if (!b[i]) continue;
        if (tu_verify(b[i], sz[i] < 512 ? sz[i] : 512, seed + i) != TU_OK)
            __atomic_add_fetch(&dtor_bad, 1, __ATOMIC_RELAXED);
        free(b[i]);
    }
    /* blocks that outlive the thread: small, mid and large */
    static const size_t keep_sz[] = { 64, 6000, 100000 };
    for (int i = 0; i < KEEP_PER_CALL; i++) {
        size_t n = keep_sz[(seed + i) % 3];
        void *k = malloc(n);
        if (!k) { __atomic_add_fetch(&dtor_bad, 1, __ATOMIC_RELAXED); continue; }
        tu_fill(k, n < 512 ? n : 512, seed * 7 + i);
        tu_handoff_push(k, n, seed * 7 + i);
    }
    __atomic_add_fetch(&dtor_calls, 1, __ATOMIC_RELAXED);
}

/* Re-arms itself, so it runs in every destructor round. */
static void dtor_early(void *v)
{
    churn(tseed += 100);
    if (--rounds_left_early > 0) pthread_setspecific(key_early, v);
}
static void dtor_late(void *v)
{
    churn(tseed += 100);
    if (--rounds_left_late > 0) pthread_setspecific(key_late, v);
}
static void dtor_cxa(void *v)
{
    (void)v;
    churn(tseed += 100);
}

__attribute__((constructor(101))) static void early_key(void)
{
    /* normally before hakmem creates its key: a lower index than its */
    pthread_key_create(&key_early, dtor_early);
}

/* Allocates in the last round only: the thread's first allocator call. */
static pthread_key_t key_last_round;
static void dtor_last_round(void *v)
{
    if (--rounds_left_late > 0) {
        pthread_setspecific(key_last_round, v);
        return;
    }
    void *volatile p = malloc(100);
    free(p);
    __atomic_add_fetch(&dtor_calls, 1, __ATOMIC_RELAXED);
}

static void *thread_last_round(void *arg)
{
    rounds_left_late = PTHREAD_DESTRUCTOR_ITERATIONS;
    pthread_setspecific(key_last_round, (void *)1);
    return arg;
}

static void *thread_main(void *arg)
{
    tseed = (uint64_t)(uintptr_t)arg * 1000003;
    rounds_left_early = rounds_left_late = PTHREAD_DESTRUCTOR_ITERATIONS + 1;
    churn(tseed);
    __cxa_thread_atexit_impl(dtor_cxa, NULL, &__dso_handle);
    pthread_setspecific(key_early, (void *)1);
    pthread_setspecific(key_late, (void *)1);
    return NULL;
}

/* Free what the threads left behind, checking it. */
static void free_kept(void)
{
    size_t bad = 0;
    tu_handoff_free_all(512, &bad);
    CHECK(bad == 0, "%zu blocks kept from thread destructors were corrupted", bad);
}

/* Thread stacks (and with them the threads' TLS) are the test's own: once
 * a thread is joined its stack is emptied and made inaccessible (and never
 * reused), so any later access to the dead thread's TLS faults instead of
 * reading stale memory. */
#define STACK_SIZE ((size_t)256 << 10)
static void *dead_stacks[THREADS + 200];
static int ndead;

static void run_threads_of(void *(*fn)(void *), int first, int n)
{
    for (int i = 0; i < n; i += CONC) {
        pthread_t t[CONC];
        void *stk[CONC];
        int m = n - i < CONC ? n - i : CONC;
        for (int j = 0; j < m; j++) {
            t[j] = 0;
            stk[j] = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
            CHECK(stk[j] != MAP_FAILED, "mmap of a thread stack: %s", strerror(errno));
            if (stk[j] == MAP_FAILED) continue;
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setstack(&a, stk[j], STACK_SIZE);
            int rc = pthread_create(&t[j], &a, fn, (void *)(uintptr_t)(first + i + j));
            pthread_attr_destroy(&a);
            CHECK(rc == 0, "pthread_create: %s", strerror(rc));
            if (rc) t[j] = 0;
        }
        for (int j = 0; j < m; j++) {
            if (!t[j]) continue;
            pthread_join(t[j], NULL);
            madvise(stk[j], STACK_SIZE, MADV_DONTNEED);
            CHECK(mprotect(stk[j], STACK_SIZE, PROT_NONE) == 0, "mprotect: %s", strerror(errno));
            if (ndead < (int)(sizeof dead_stacks / sizeof *dead_stacks))
                dead_stacks[ndead++] = stk[j];
            else
                munmap(stk[j], STACK_SIZE);
        }
        if ((i / CONC) % 16 == 15)
            free_kept(); /* main frees what the last threads left */
    }
}

static void run_threads(int first, int n) { run_threads_of(thread_main, first, n); }

static void on_fatal(int sig)
{
    char m[200];
    const char *p = phase;
    snprintf(m, sizeof m, "test_tls_dtors: FAILED: signal %d during %s\n", sig, p);
    if (write(2, m, strlen(m)) < 0) { /* nothing to do */ }
    _exit(1);
}

int main(void)
{
    signal(SIGSEGV, on_fatal);
    signal(SIGBUS, on_fatal);
    signal(SIGALRM, on_fatal);
    alarm(120);
    CHECK(pthread_key_create(&key_late, dtor_late) == 0, "pthread_key_create");
    CHECK(key_early < key_late, "key order");

    /* warm up: the main heap and the first thread heaps */
    phase = "the first threads";
    run_threads(0, 100);
    free_kept();
    malloc_trim(0);
    size_t rss0 = tu_rss_bytes();

    phase = "the first half of the threads";
    run_threads(100, THREADS / 2);
    free_kept();
    malloc_trim(0);
    size_t rss1 = tu_rss_bytes();

    phase = "the second half of the threads";
    run_threads(100 + THREADS / 2, THREADS / 2);
    free_kept();
    malloc_trim(0);
    size_t rss2 = tu_rss_bytes();

    unsigned long calls = __atomic_load_n(&dtor_calls, __ATOMIC_RELAXED);
    unsigned long expect = (unsigned long)(THREADS + 100) * (2 + 2 * PTHREAD_DESTRUCTOR_ITERATIONS);
    CHECK(calls == expect, "%lu allocating calls ran, expected %lu (every destructor round)",
          calls, expect);
    CHECK(dtor_bad == 0, "%lu allocations in thread destructors failed or were corrupted",
          dtor_bad);
    /* Each thread's memory is released: no growth with the thread count. */
    CHECK(rss2 <= rss1 + (8u << 20),
          "RSS grew from %.1f MiB after %d threads to %.1f MiB after %d (%.1f MiB at 100): "
          "memory of exited threads is not released",
          rss1 / 1048576.0, 100 + THREADS / 2, rss2 / 1048576.0, 100 + THREADS, rss0 / 1048576.0);

    phase = "hak_stats_get()";
    struct hak_stats s = tu_stats();
    CHECK(s.heaps_created <= CONC + 8,
          "heaps_created %llu after %d threads (at most %d at a time): a heap is leaked per "
          "thread that allocated in its last destructor round",
          (unsigned long long)s.heaps_created, THREADS + 100, CONC);

    phase = "malloc_stats()";
    /* the report goes to stderr: keep it out of the test output */
    fflush(stderr);
    int saved = dup(2);
    FILE *null = fopen("/dev/null", "w");
    if (null && saved >= 0) dup2(fileno(null), 2);
    malloc_stats();
    if (saved >= 0) { dup2(saved, 2); close(saved); }
    if (null) fclose(null);
    TU_COUNT(1); /* survived */

    phase = "the threads after the statistics";
    run_threads(5000, 16);
    free_kept();
    phase = "hak_stats_get() at the end";
    s = tu_stats();
    CHECK(s.heaps_created <= CONC + 8, "heaps_created %llu at the end",
          (unsigned long long)s.heaps_created);

    phase = "threads whose first malloc is in the last destructor round";
    /* (its destructor counts rounds with rounds_left_late: it is the
     * thread's only key in use) */
    CHECK(pthread_key_create(&key_last_round, dtor_last_round) == 0, "pthread_key_create");
    unsigned long calls0 = __atomic_load_n(&dtor_calls, __ATOMIC_RELAXED);
    run_threads_of(thread_last_round, 6000, 40);
    CHECK(__atomic_load_n(&dtor_calls, __ATOMIC_RELAXED) - calls0 == 40,
          "%lu of 40 last-round mallocs ran", __atomic_load_n(&dtor_calls, __ATOMIC_RELAXED) - calls0);
    phase = "hak_stats_get() after threads that allocated in their last destructor round";
    s = tu_stats();
    phase = "mallinfo2() after threads that allocated in their last destructor round";
    struct mallinfo2 mi = mallinfo2();
    CHECK(mi.arena > 0, "mallinfo2 reports no memory");
    alarm(0);
    for (int i = 0; i < ndead; i++)
        munmap(dead_stacks[i], STACK_SIZE);
    return TU_DONE();
}
