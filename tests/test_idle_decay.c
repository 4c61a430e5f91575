/* An idle process gives memory back: after a spike is freed, free memory
 * unused for HAKMEM_DECAY_MS goes back to the OS even if no thread calls
 * into the allocator again (docs/OPTIONS.md, HAKMEM_DECAY_MS).
 *
 * The test re-executes itself with HAKMEM_DECAY_MS=200 (options are read
 * at start-up).  A spike of ~256 MiB: ~224 MiB of large blocks (64 KiB ..
 * 4 MiB) in the main thread, and ~32 MiB of small and mid blocks allocated
 * and freed by a worker thread that then exits (so none of them stays in a
 * thread front).  Every page is touched, everything is freed, and then the
 * main thread only sleeps and reads /proc/self/statm (open/read into a
 * stack buffer: no malloc, no free, no stdio) for up to 2.5 s.  Then the
 * test runs again ("main-only") without the worker: the last allocator
 * call of the process is then a free, and nothing else starts the purger.
 * A third run ("no-purger") is a process that cannot start threads (its
 * pthread_create, below, fails as at a thread limit): hakmem tries once,
 * and decay goes on inside the program's next large mallocs instead.
 *
 * What may legitimately stay resident: the main thread's front (a few small
 * blocks from start-up), the registry and extent-table pages, heap
 * metadata, at most one spare SuperSlab per heap: a few MiB.  RSS must come
 * back to within 32 MiB of what it was before the spike.
 * SPDX-License-Identifier: MIT */
#include <dlfcn.h>
#include <stdbool.h>
#include "testutil.h"

#define DECAY_MS "200"
#define LARGE_TOTAL (224 * MiB)
#define SMALL_TOTAL (32 * MiB)
#define SLACK (32 * MiB)
#define WAIT_MS 2500

/* The no-purger run: every pthread_create of the process fails (hakmem,
 * linked in, calls this one), and is counted. */
static bool threads_fail;
static int creates_failed;
int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
    if (threads_fail) {
        creates_failed++;
        return EAGAIN;
    }
    int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
        (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(RTLD_NEXT, "pthread_create");
    return real(t, a, fn, arg);
}


static void touch(unsigned char *p, size_t n, unsigned char v)
{
    for (size_t off = 0; off < n; off += 4096)
        p[off] = v;
    p[n - 1] = v;
}

/* Small and mid blocks, allocated, touched and freed by this thread. */
static void *small_spike(void *arg)
{
    (void)arg;
    enum { MAXB = 200000 };
    static void *b[MAXB];
    static size_t bn[MAXB];
    tu_rng r = tu_rng_seed(5);
    size_t total = 0;
    int n = 0;
    while (total < SMALL_TOTAL && n < MAXB) {
        size_t sz = tu_rand(&r) % 4 ? tu_range(&r, 1, HAK_TINY_MAX)
                                    : tu_range(&r, HAK_TINY_MAX + 1, HAK_MID_MAX);
        b[n] = malloc(sz);
        CHECK(b[n] != NULL, "malloc(%zu)", sz);
        if (!b[n]) break;
        bn[n] = sz;
        touch(b[n], sz, (unsigned char)n);
        total += sz;
        n++;
    }
    size_t bad = 0;
    for (int i = 0; i < n; i++) {
        unsigned char *p = b[i];
        bad += p[0] != (unsigned char)i || p[bn[i] - 1] != (unsigned char)i;
        free(p);
    }
    CHECK(bad == 0, "%zu small/mid blocks corrupted", bad);
    return NULL;
}

int main(int argc, char **argv)
{
    bool no_purger = argc > 1 && strcmp(argv[1], "no-purger") == 0;
    bool main_only = no_purger || (argc > 1 && strcmp(argv[1], "main-only") == 0);
    threads_fail = no_purger;
    tu_run_with_option("HAKMEM_DECAY_MS", DECAY_MS, argv);
    if (tu_failures())
        return TU_DONE();
    alarm(60);
    size_t rss0 = tu_rss_bytes();
    CHECK(rss0 > 0, "cannot read /proc/self/statm");
    /* a program that has used less than 16 MiB has no purger thread */
    CHECK(!tu_purger_running(), "a hakmem-purge thread before the program used 16 MiB");

    enum { MAXL = 4096 };
    static unsigned char *lb[MAXL];
    static size_t ln[MAXL];
    tu_rng r = tu_rng_seed(11);
    size_t total = 0;
    int nl = 0;
    while (total < LARGE_TOTAL && nl < MAXL) {
        /* 64 KiB .. 4 MiB, more of the smaller ones */
        size_t sz = tu_rand(&r) % 4 ? tu_range(&r, 64 << 10, 512 << 10)
                                    : tu_range(&r, 512 << 10, 4 * MiB);
        lb[nl] = malloc(sz);
        CHECK(lb[nl] != NULL, "malloc(%zu)", sz);
        if (!lb[nl]) break;
        ln[nl] = sz;
        touch(lb[nl], sz, (unsigned char)(nl + 1));
        total += sz;
        nl++;
    }
    if (!main_only) {
        pthread_t t;
        int rc = pthread_create(&t, NULL, small_spike, NULL);
        CHECK(rc == 0, "pthread_create: %s", strerror(rc));
        if (rc == 0) pthread_join(t, NULL);
    }
    size_t rss_peak = tu_rss_bytes();
    size_t bad = 0;
    for (int i = 0; i < nl; i++) {
        bad += lb[i][0] != (unsigned char)(i + 1) || lb[i][ln[i] - 1] != (unsigned char)(i + 1);
        free(lb[i]);
    }
    CHECK(bad == 0, "%zu large blocks corrupted", bad);
    CHECK(rss_peak >= rss0 + LARGE_TOTAL / 2,
          "the spike did not show in RSS (%zu -> %zu KiB): nothing to test", rss0 >> 10,
          rss_peak >> 10);

    /* Idle: no allocator call from here until the verdict (without a
     * purger: a 64 MiB malloc and free every 20 ms, the pages untouched). */
    size_t rss = tu_rss_bytes();
    long waited = 0;
    while (rss > rss0 + SLACK && waited < WAIT_MS) {
        tu_sleep_ms(20);
        waited += 20;
        if (no_purger)
            free(tu_launder(malloc(64 * MiB)));
        rss = tu_rss_bytes();
    }
    printf("%sRSS back to %.1f MiB after %ld ms %s (%.1f MiB before the spike, %.1f MiB at "
           "its peak, HAKMEM_DECAY_MS=%s)\n",
           no_purger ? "no purger thread: " : main_only ? "main thread only: " : "", rss / 1048576.0,
           waited, no_purger ? "of a large malloc every 20 ms" : "idle", rss0 / 1048576.0,
           rss_peak / 1048576.0, DECAY_MS);
    CHECK(rss <= rss0 + SLACK,
          "RSS still %.1f MiB after %ld ms idle with HAKMEM_DECAY_MS=%s (%.1f MiB before the "
          "spike, %.1f MiB at its peak): free memory is not returned while no thread calls "
          "the allocator",
          rss / 1048576.0, waited, DECAY_MS, rss0 / 1048576.0, rss_peak / 1048576.0);
    if (no_purger) {
        CHECK(creates_failed == 1 && !tu_purger_running(),
              "%d pthread_create calls failed: hakmem should try to start its purger once",
              creates_failed);
        return TU_DONE();
    }
    CHECK(tu_purger_running(), "no hakmem-purge thread after the spike");
    if (!tu_failures()) {
        char *again[] = { argv[0], main_only ? "no-purger" : "main-only", NULL };
        fflush(NULL);
        execv("/proc/self/exe", again);
        CHECK(0, "re-exec for the main-only run failed: %s", strerror(errno));
    }
    return TU_DONE();
}
