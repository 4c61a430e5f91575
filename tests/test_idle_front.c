/* A thread that stops making large mallocs and frees gives its large front
 * back: the extents it cached (up to 8 MiB a thread) are purged a decay
 * time after its last large call, while the thread lives on (blocked,
 * or busy with small blocks), and a thread still using its front keeps it
 * (docs/ARCHITECTURE.md, "Large blocks").
 *
 * Re-executes itself with HAKMEM_DECAY_MS=200 (options are read at
 * start-up), and waits until the purger sleeps with nothing to do, so that
 * the first fronts to fill must wake it.  Phases:
 *   idle:   4 threads each cache ~5 MiB of touched large blocks in their
 *           fronts, then block on a condition variable; within 2.5 s the
 *           fronts must be empty (hak_stats_get: large_bytes_cached), each
 *           counted once (large_fronts_decayed), and RSS must fall by most
 *           of what they held;
 *   busy:   one thread makes a large malloc and free every 20 ms for 5
 *           decay times (the one in effect: the idle phase's threads took
 *           back memory purged 200 ms before, which may have lengthened it):
 *           its front is never given back, while that of an idle thread
 *           beside it is, once;
 *   race:   4 threads alternate bursts of large mallocs and frees with
 *           pauses of 150-300 ms, around the decay time, so that the
 *           purger takes fronts back while their threads wake up; every
 *           block's contents are checked before it is freed; meanwhile
 *           the main thread's front goes idle, and it forks 16 times: each
 *           child uses its front and malloc_trim()s it, and must exit 0.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <stdbool.h>
#include "testutil.h"

#define DECAY_MS "200"
#define NTHREADS 4
#define FRONT_BLOCKS 24   /* 96..320 KiB each: ~5 MiB a thread, under the cap */
#define WAIT_MS 2500

static struct hak_stats stats(void)
{
    struct hak_stats st;
    hak_stats_get(&st);
    return st;
}

/* A large block filled with a pattern of (tag, size), every page touched. */
static unsigned char *make(size_t sz, uint64_t tag)
{
    unsigned char *p = malloc(sz);
    CHECK(p != NULL, "malloc(%zu)", sz);
    if (p)
        tu_fill(p, sz, tag);
    return p;
}

static void check_free(unsigned char *p, size_t sz, uint64_t tag)
{
    if (!p)
        return;
    CHECK(tu_verify(p, sz, tag) == (size_t)-1, "large block %p (%zu bytes) corrupted", (void *)p, sz);
    free(p);
}

/* ---- idle: fronts filled, then their threads block ---- */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int filled, released;

static void *fill_then_block(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    tu_rng r = tu_rng_seed(100 + id);
    unsigned char *b[FRONT_BLOCKS];
    size_t n[FRONT_BLOCKS];
    for (int i = 0; i < FRONT_BLOCKS; i++) {
        n[i] = tu_range(&r, 96 * KiB, 320 * KiB);
        b[i] = make(n[i], id * 1000 + (uint64_t)i);
    }
    for (int i = 0; i < FRONT_BLOCKS; i++)
        check_free(b[i], n[i], id * 1000 + (uint64_t)i);
    pthread_mutex_lock(&mu);
    filled++;
    pthread_cond_broadcast(&cv);
    while (!released)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    /* awake again: the front, given back meanwhile, works as before */
    for (int i = 0; i < FRONT_BLOCKS; i++) {
        b[i] = make(n[i], id * 2000 + (uint64_t)i);
        check_free(b[i], n[i], id * 2000 + (uint64_t)i);
    }
    return NULL;
}

static void phase_idle(void)
{
    pthread_t t[NTHREADS];
    uint64_t decayed0 = stats().large_fronts_decayed;
    for (uintptr_t i = 0; i < NTHREADS; i++)
        CHECK(pthread_create(&t[i], NULL, fill_then_block, (void *)i) == 0, "pthread_create");
    pthread_mutex_lock(&mu);
    while (filled < NTHREADS)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);

    struct hak_stats st = stats();
    size_t held = st.large_bytes_cached, rss_held = tu_rss_bytes();
    CHECK(held >= NTHREADS * 4 * MiB, "the fronts hold %zu KiB, not the ~20 MiB freed into them: "
          "nothing to test", held >> 10);
    /* idle: no allocator call but hak_stats_get until the verdict */
    long waited = 0;
    while (waited < WAIT_MS && st.large_bytes_cached > MiB) {
        tu_sleep_ms(20);
        waited += 20;
        st = stats();
    }
    size_t rss = tu_rss_bytes();
    printf("idle: %d blocked threads' fronts %.1f -> %.1f MiB after %ld ms, RSS %.1f -> %.1f MiB, "
           "%llu fronts given back (HAKMEM_DECAY_MS=%s)\n", NTHREADS, held / 1048576.0,
           st.large_bytes_cached / 1048576.0, waited, rss_held / 1048576.0, rss / 1048576.0,
           (unsigned long long)(st.large_fronts_decayed - decayed0), DECAY_MS);
    CHECK(st.large_bytes_cached <= MiB, "blocked threads' fronts still hold %.1f MiB after %ld ms",
          st.large_bytes_cached / 1048576.0, waited);
    CHECK(st.large_fronts_decayed - decayed0 == NTHREADS, "%llu fronts given back, not %d",
          (unsigned long long)(st.large_fronts_decayed - decayed0), NTHREADS);
    /* what the fronts held was touched: most of it must leave RSS */
    tu_sleep_ms(100); /* the purge right after the give-back */
    rss = tu_rss_bytes();
    CHECK(rss + held / 2 <= rss_held, "RSS %.1f -> %.1f MiB: the fronts' %.1f MiB stayed resident",
          rss_held / 1048576.0, rss / 1048576.0, held / 1048576.0);

    pthread_mutex_lock(&mu);
    released = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
}

/* ---- busy: a thread that keeps using its front keeps it ---- */
static void *busy(void *arg)
{
    int ops = (int)(intptr_t)arg; /* ops x 20 ms: 5 decay times */
    tu_rng r = tu_rng_seed(7);
    unsigned char *b[8] = { 0 };
    size_t n[8] = { 0 };
    for (int op = 0; op < ops; op++) {
        int k = op % 8;
        check_free(b[k], n[k], 5000 + (uint64_t)k);
        n[k] = tu_range(&r, 64 * KiB, 256 * KiB);
        b[k] = make(n[k], 5000 + (uint64_t)k);
        tu_sleep_ms(20);
    }
    for (int k = 0; k < 8; k++)
        check_free(b[k], n[k], 5000 + (uint64_t)k);
    return NULL;
}

/* The control beside it: fills its front and blocks until the busy one is done. */
static pthread_barrier_t control_filled, busy_done;
static void *control(void *arg)
{
    (void)arg;
    size_t sz = 200 * KiB;
    for (int i = 0; i < 4; i++)
        check_free(make(sz, 6000 + (uint64_t)i), sz, 6000 + (uint64_t)i);
    pthread_barrier_wait(&control_filled);
    pthread_barrier_wait(&busy_done);
    return NULL;
}

static void phase_busy(void)
{
    pthread_barrier_init(&control_filled, NULL, 2);
    pthread_barrier_init(&busy_done, NULL, 2);
    pthread_t c, t;
    CHECK(pthread_create(&c, NULL, control, NULL) == 0, "pthread_create");
    pthread_barrier_wait(&control_filled);
    struct hak_stats st = stats();
    uint64_t decayed0 = st.large_fronts_decayed;
    intptr_t ops = (intptr_t)(5 * st.decay_ms / 20);
    CHECK(pthread_create(&t, NULL, busy, (void *)ops) == 0, "pthread_create");
    pthread_join(t, NULL);
    uint64_t decayed = stats().large_fronts_decayed - decayed0;
    pthread_barrier_wait(&busy_done);
    pthread_join(c, NULL);
    printf("busy: a thread with a large malloc and free every 20 ms for %ld ms (decay time %llu "
           "ms), an idle one beside it: %llu fronts given back\n", (long)ops * 20,
           (unsigned long long)st.decay_ms, (unsigned long long)decayed);
    CHECK(decayed == 1, "%llu fronts given back, not 1 (the idle thread's): the purger took back "
          "the front of a thread using it every 20 ms, or not the idle one's",
          (unsigned long long)decayed);
}

/* ---- race: threads wake up as the purger takes their fronts ---- */
static void *bursts(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    tu_rng r = tu_rng_seed(9000 + id);
    for (int round = 0; round < 8; round++) {
        enum { N = 12 };
        unsigned char *b[N];
        size_t n[N];
        for (int i = 0; i < N; i++) {
            n[i] = tu_range(&r, 64 * KiB, 1 * MiB);
            b[i] = make(n[i], id << 32 | (uint64_t)(round * N + i));
        }
        for (int i = 0; i < N; i++)
            check_free(b[i], n[i], id << 32 | (uint64_t)(round * N + i));
        tu_sleep_ms((long)tu_range(&r, 150, 300));
    }
    return NULL;
}

/* A child forked while the purger may be taking fronts back: its own
 * front must work and be given back (malloc_trim waits for a claim). */
static void child_after_fork(uint64_t tag)
{
    tu_rng r = tu_rng_seed(tag);
    for (int i = 0; i < 8; i++) {
        size_t sz = tu_range(&r, 64 * KiB, 1 * MiB);
        check_free(make(sz, tag + (uint64_t)i), sz, tag + (uint64_t)i);
    }
    malloc_trim(0);
    _exit(tu_failures() ? 1 : 0);
}

static void phase_race(void)
{
    uint64_t decayed0 = stats().large_fronts_decayed;
    pthread_t t[NTHREADS];
    for (uintptr_t i = 0; i < NTHREADS; i++)
        CHECK(pthread_create(&t[i], NULL, bursts, (void *)i) == 0, "pthread_create");
    /* meanwhile the main thread's front goes idle and back, and it forks */
    tu_rng r = tu_rng_seed(31);
    int forks = 0;
    for (int k = 0; k < 16; k++) {
        size_t sz = tu_range(&r, 64 * KiB, 512 * KiB);
        check_free(make(sz, 7000 + (uint64_t)k), sz, 7000 + (uint64_t)k);
        tu_sleep_ms((long)tu_range(&r, 60, 140));
        pid_t pid = fork();
        CHECK(pid >= 0, "fork: %s", strerror(errno));
        if (pid == 0)
            child_after_fork(8000 + 100 * (uint64_t)k);
        int status = 0;
        if (pid > 0 && waitpid(pid, &status, 0) == pid) {
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child %d after fork: status %#x", k, status);
            forks++;
        }
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    printf("race: %d threads, bursts between pauses of 150-300 ms, %d forks: %llu fronts given "
           "back\n", NTHREADS, forks, (unsigned long long)(stats().large_fronts_decayed - decayed0));
}

int main(int argc, char **argv)
{
    tu_run_with_option("HAKMEM_DECAY_MS", DECAY_MS, argv);
    if (tu_failures())
        return TU_DONE();
    alarm(60);
    /* 24 MiB in blocks too big to cache: hakmem starts its purger */
    void *big[4];
    for (int i = 0; i < 4; i++)
        big[i] = make(6 * MiB, 77 + (uint64_t)i);
    for (int i = 0; i < 4; i++)
        check_free(big[i], 6 * MiB, 77 + (uint64_t)i);
    /* the purger purges those and then sleeps with nothing to wait for:
     * the fronts that fill next must wake it */
    tu_sleep_ms(4 * atoi(DECAY_MS));
    phase_idle();
    phase_busy();
    phase_race();
    return TU_DONE();
}
