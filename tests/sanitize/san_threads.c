/* Concurrency through hak_* only, for ThreadSanitizer (and UBSan):
 *   1. producers/consumers: blocks of every tier allocated by one thread,
 *      checked and freed by another (cross-thread frees);
 *   2. threads that exit with live blocks, freed later by other threads,
 *      while new threads adopt the abandoned heaps;
 *   3. many threads swapping blocks through shared slots, with thread
 *      churn, and hak_trim running concurrently;
 *   4. a few hundred threads (four at a time) whose own pthread key
 *      destructors re-arm themselves, so that they run in every destructor
 *      round (under TSan all but the last: see DTOR_ROUNDS; one key
 *      created before hakmem's, one after), and allocate and free small,
 *      mid and large blocks in each round, handing one block per round to
 *      the main thread, which checks and frees it;
 *   5. the background purger ("hakmem-purge") racing with threads that
 *      allocate and free large (64 KiB .. 4 MiB) and small blocks, swap
 *      blocks through shared slots, sleep past the decay time, exit and
 *      have their heaps adopted (the purger also collects abandoned heaps);
 *      the main thread checks, while idle, that the purger thread exists
 *      and purges, that a block freed while the purger has nothing to do
 *      is not purged before the decay time, and that hak_trim() leaves
 *      bytes_purged > 0;
 *   6. hak_realloc of large blocks (40 MiB -> 120 MiB, pages moved with
 *      mremap, and back to 40 MiB) in one thread while another maps and
 *      unmaps 8 MiB regions of its own and checks their first and last
 *      bytes (as tests/test_realloc_race.c does with plain malloc).
 * Options are read at start-up: without HAKMEM_DECAY_MS in the
 * environment, the driver re-executes itself with HAKMEM_DECAY_MS=20 (all
 * phases then run with a 20 ms decay time), so that the purger works within
 * phase 5.  With HAKMEM_DECAY_MS set, that value is used, and the checks
 * on when the purger purges apply only for 1 .. 200 ms (10 .. 200 ms for
 * the one that nothing is purged early).
 * SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include "testutil.h"

#define KiB ((size_t)1 << 10)

static size_t pick_size(tu_rng *r)
{
    unsigned t = (unsigned)tu_range(r, 0, 99);
    if (t < 70) return tu_range(r, 1, HAK_TINY_MAX);
    if (t < 97) return tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
    return tu_range(r, HAK_MID_MAX + 1, 300 * KiB);
}

/* A block carries its size and seed in its first 16 bytes. */
typedef struct { size_t n; uint64_t seed; } Hdr;

static void *make(tu_rng *r)
{
    size_t n = pick_size(r);
    if (n < sizeof(Hdr)) n = sizeof(Hdr);
    char *p = hak_malloc(n);
    CHECK(p != NULL, "malloc(%zu) failed", n);
    if (!p) return NULL;
    CHECK(hak_usable_size(p) >= n, "usable %zu < %zu", hak_usable_size(p), n);
    Hdr h = { n, tu_rand(r) };
    memcpy(p, &h, sizeof h);
    size_t m = n < 4096 ? n : 4096;
    tu_fill_idx(p, sizeof h, m, h.seed);
    return p;
}

static void check_free(void *p)
{
    if (!p) return;
    Hdr h;
    memcpy(&h, p, sizeof h);
    size_t m = h.n < 4096 ? h.n : 4096;
    const uint8_t *b = p;
    size_t bad = TU_OK;
    for (size_t i = sizeof h; i < m; i++)
        if (b[i] != tu_pat_(i, h.seed)) { bad = i; break; }
    CHECK(bad == TU_OK, "block %p (%zu bytes) corrupt at %zu", p, h.n, bad);
    hak_free(p);
}

/* ---- 1. producers / consumers over a mutex-protected ring ---------------- */
#define RING 256
static struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    void *slot[RING];
    unsigned head, tail, producers_left;
} q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, 0, 0, 0 };
static long items_per_producer;

static void producer(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(100 + idx);
    for (long i = 0; i < items_per_producer; i++) {
        void *p = make(&r);
        pthread_mutex_lock(&q.mu);
        while (q.head - q.tail == RING)
            pthread_cond_wait(&q.not_full, &q.mu);
        q.slot[q.head++ % RING] = p;
        pthread_cond_signal(&q.not_empty);
        pthread_mutex_unlock(&q.mu);
        /* and some local churn */
        if (i % 4 == 0) check_free(make(&r));
    }
    pthread_mutex_lock(&q.mu);
    q.producers_left--;
    pthread_cond_broadcast(&q.not_empty);
    pthread_mutex_unlock(&q.mu);
}

static void consumer(int idx, void *ctx)
{
    for (;;) {
        pthread_mutex_lock(&q.mu);
        while (q.head == q.tail && q.producers_left)
            pthread_cond_wait(&q.not_empty, &q.mu);
        if (q.head == q.tail) {
            pthread_mutex_unlock(&q.mu);
            return;
        }
        void *p = q.slot[q.tail++ % RING];
        pthread_cond_signal(&q.not_full);
        pthread_mutex_unlock(&q.mu);
        check_free(p);
    }
}

static void prodcons_thread(int idx, void *ctx)
{
    if (idx < 2) producer(idx, ctx); else consumer(idx, ctx);
}

static void test_prodcons(void)
{
    q.producers_left = 2;
    tu_run_threads(4, prodcons_thread, NULL);
    CHECK(q.head == q.tail && q.head == 2 * items_per_producer, "ring: %u in, %u out", q.head, q.tail);
}

/* ---- 2. threads exit with live blocks --------------------------------- */
#define LIVE 1500
static void *live[8][LIVE];

static void leaver(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(200 + idx + 8 * (long)ctx);
    for (int i = 0; i < LIVE; i++)
        live[idx][i] = make(&r);
    /* free a few of its own, keep the rest alive past the thread's exit */
    for (int i = 0; i < LIVE; i += 7) {
        check_free(live[idx][i]);
        live[idx][i] = NULL;
    }
}

static void freer(int idx, void *ctx)
{
    /* thread idx frees the blocks of leaver (idx + 1) % 4, interleaved
     * with its own allocations (it may adopt an abandoned heap) */
    tu_rng r = tu_rng_seed(300 + idx);
    int from = (idx + 1) % 4;
    for (int i = 0; i < LIVE; i++) {
        check_free(live[from][i]);
        live[from][i] = NULL;
        if (i % 16 == 0) check_free(make(&r));
    }
}

static void test_exit_live(void)
{
    for (long round = 0; round < 4; round++) {
        tu_run_threads(4, leaver, (void *)round);
        if (round == 1)
            hak_trim(); /* collects the abandoned heaps */
        tu_run_threads(4, freer, NULL);
    }
}

/* ---- 3. many threads swapping through shared slots -------------------- */
#define SLOTS 512
static _Atomic(void *) shared[SLOTS];
static double swap_end;

static void swapper(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(400 + idx + 64 * (long)ctx);
    for (long i = 0; i < 20000; i++) {
        if (i % 256 == 0 && tu_now() > swap_end)
            break;
        void *p = make(&r);
        unsigned s = (unsigned)tu_range(&r, 0, SLOTS - 1);
        void *old = atomic_exchange_explicit(&shared[s], p, memory_order_acq_rel);
        check_free(old);
        if (idx == 0 && i % 2000 == 0)
            hak_trim();
    }
}

static void test_many(void)
{
    swap_end = tu_now() + tu_stress_seconds();
    for (long round = 0; round < 3; round++)
        tu_run_threads(12, swapper, (void *)round); /* new threads each round */
    for (int s = 0; s < SLOTS; s++)
        check_free(atomic_exchange(&shared[s], NULL));
}

/* ---- helpers for phases 4 .. 6 ------------------------------------------ */
#define MiB ((size_t)1 << 20)
static long decay_ms; /* HAKMEM_DECAY_MS in effect */

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) { }
}

/* A block of n bytes (at least a Hdr) for check_free, whose last byte is
 * patterned too when it is past the first 4 KiB (check_free_n checks it). */
static void *make_n(size_t n, uint64_t seed)
{
    if (n < sizeof(Hdr)) n = sizeof(Hdr);
    uint8_t *p = hak_malloc(n);
    CHECK(p != NULL, "malloc(%zu) failed", n);
    if (!p) return NULL;
    CHECK(hak_usable_size(p) >= n, "usable %zu < %zu", hak_usable_size(p), n);
    Hdr h = { n, seed };
    memcpy(p, &h, sizeof h);
    tu_fill_idx(p, sizeof h, n < 4096 ? n : 4096, seed);
    if (n > 4096) p[n - 1] = tu_pat_(n - 1, seed);
    return p;
}

static void check_free_n(void *p)
{
    if (!p) return;
    Hdr h;
    memcpy(&h, p, sizeof h);
    if (h.n > 4096)
        CHECK(((const uint8_t *)p)[h.n - 1] == tu_pat_(h.n - 1, h.seed),
              "block %p (%zu bytes): last byte lost", p, h.n);
    check_free(p);
}

/* Blocks handed to the main thread, which checks and frees them. */
#define HANDED_MAX 16384
static pthread_mutex_t handed_mu = PTHREAD_MUTEX_INITIALIZER;
static void *handed[HANDED_MAX];
static unsigned nhanded;

static void hand_to_main(void *p)
{
    pthread_mutex_lock(&handed_mu);
    if (p && nhanded < HANDED_MAX) {
        handed[nhanded++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&handed_mu);
    check_free_n(p); /* no room: freed here */
}

static unsigned free_handed(void)
{
    unsigned n = 0;
    for (;;) {
        pthread_mutex_lock(&handed_mu);
        void *p = nhanded ? handed[--nhanded] : NULL;
        pthread_mutex_unlock(&handed_mu);
        if (!p) return n;
        check_free_n(p);
        n++;
    }
}

/* ---- 4. allocation in every round of thread-exit destructors ------------ */
#define DTOR_THREADS 320 /* at most; at least DTOR_MIN, then until the deadline */
#define DTOR_MIN     96
#define DTOR_CONC    4
/* ThreadSanitizer's own key (created first, so its destructor runs first
 * in each round) destroys the thread's TSan state in the last round, and
 * instrumented code that runs after it crashes inside TSan (see
 * google/sanitizers#943): under TSan the destructors here stop one round
 * earlier.  (The UBSan build, and tests/test_tls_dtors.c with the real
 * libraries, cover the last round.) */
#if defined(__SANITIZE_THREAD__)
#define SAN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SAN_TSAN 1
#endif
#endif
#ifdef SAN_TSAN
#define DTOR_ROUNDS (PTHREAD_DESTRUCTOR_ITERATIONS - 1)
#else
#define DTOR_ROUNDS PTHREAD_DESTRUCTOR_ITERATIONS
#endif
static pthread_key_t dtor_key_early, dtor_key_late;
static int dtor_key_early_rc = -1;
static __thread int dtor_left_early, dtor_left_late;
static __thread uint64_t dtor_seed;
static unsigned long dtor_calls;

/* A small, a mid and a large block; one of them (a different tier each
 * call) goes to the main thread, the other two are checked and freed. */
static void dtor_churn(void)
{
    uint64_t s = dtor_seed += 1000;
    tu_rng r = tu_rng_seed(s);
    void *b[3];
    b[0] = make_n(tu_range(&r, 1, HAK_TINY_MAX), s);
    b[1] = make_n(tu_range(&r, HAK_TINY_MAX + 1, HAK_MID_MAX), s + 1);
    b[2] = make_n(tu_range(&r, HAK_MID_MAX + 1, 512 * KiB), s + 2);
    unsigned keep = (unsigned)(s / 1000 % 3);
    for (unsigned i = 0; i < 3; i++) {
        if (i == keep)
            hand_to_main(b[i]);
        else
            check_free_n(b[i]);
    }
    __atomic_add_fetch(&dtor_calls, 1, __ATOMIC_RELAXED);
}

/* Each re-arms itself, so it runs in every destructor round. */
static void dtor_early(void *v)
{
    dtor_churn();
    if (--dtor_left_early > 0) pthread_setspecific(dtor_key_early, v);
}
static void dtor_late(void *v)
{
    dtor_churn();
    if (--dtor_left_late > 0) pthread_setspecific(dtor_key_late, v);
}

/* Normally before hakmem's constructor creates its key: a lower index, so
 * that this destructor runs before hakmem's in the first round. */
__attribute__((constructor(101))) static void dtor_early_key(void)
{
    dtor_key_early_rc = pthread_key_create(&dtor_key_early, dtor_early);
}

static void dtor_thread(int idx, void *ctx)
{
    dtor_seed = ((uint64_t)(uintptr_t)ctx + (uint64_t)idx + 1) * 1000003;
    dtor_left_early = dtor_left_late = DTOR_ROUNDS;
    dtor_churn();
    pthread_setspecific(dtor_key_early, (void *)1);
    pthread_setspecific(dtor_key_late, (void *)1);
}

static void test_dtor_rounds(void)
{
    CHECK(dtor_key_early_rc == 0, "pthread_key_create (constructor) failed");
    int rc = pthread_key_create(&dtor_key_late, dtor_late);
    CHECK(rc == 0, "pthread_key_create: %s", strerror(rc));
    if (rc || dtor_key_early_rc) return;
    double end = tu_now() + 0.75 * tu_stress_seconds();
    unsigned long n = 0, freed = 0;
    while (n < DTOR_THREADS && (n < DTOR_MIN || tu_now() < end)) {
        tu_run_threads(DTOR_CONC, dtor_thread, (void *)(uintptr_t)n);
        n += DTOR_CONC;
        freed += free_handed(); /* remote frees into the exited threads' heaps */
    }
    unsigned long calls = __atomic_load_n(&dtor_calls, __ATOMIC_RELAXED);
    unsigned long expect = n * (1 + 2 * DTOR_ROUNDS);
    CHECK(calls == expect, "%lu allocating calls in %lu threads, expected %lu (every round)",
          calls, n, expect);
    CHECK(freed == expect, "main freed %lu handed blocks, expected %lu", freed, expect);
    pthread_key_delete(dtor_key_late);
    pthread_key_delete(dtor_key_early);
}

/* ---- 5. the purger races with threads that churn and exit ---------------- */
#define PURGE_THREADS 3
#define PURGE_ROUNDS  4
#define PURGE_WINDOW  8
#define PSLOTS 64
static _Atomic(void *) pslot[PSLOTS];

/* 64 KiB .. 4 MiB, more of the smaller ones */
static size_t large_size(tu_rng *r)
{
    return tu_rand(r) % 4 ? tu_range(r, 64 * KiB, 512 * KiB) : tu_range(r, 512 * KiB, 4 * MiB);
}

static void purge_worker(int idx, void *ctx)
{
    long round = (long)ctx;
    tu_rng r = tu_rng_seed(700 + idx + 16 * round);
    void *win[PURGE_WINDOW] = { 0 };
    for (int i = 0; i < 48; i++) {
        int k = i % PURGE_WINDOW;
        check_free_n(win[k]);
        win[k] = make_n(large_size(&r), tu_rand(&r));
        for (int j = 0; j < 4; j++)
            check_free_n(make_n(tu_range(&r, 1, HAK_MID_MAX), tu_rand(&r)));
        /* a small or large block to whichever thread takes the slot next */
        size_t n = i % 3 ? tu_range(&r, 1, HAK_MID_MAX) : large_size(&r);
        void *p = make_n(n, tu_rand(&r));
        unsigned s = (unsigned)tu_range(&r, 0, PSLOTS - 1);
        check_free_n(atomic_exchange_explicit(&pslot[s], p, memory_order_acq_rel));
        if (i % 16 == 5 * idx) /* past the decay time, while the others run */
            sleep_ms(decay_ms <= 200 ? decay_ms + 5 : 5);
    }
    /* leave with a few blocks alive, for the main thread to free */
    for (int k = 0; k < PURGE_WINDOW; k++) {
        if (k % 4 == 0)
            hand_to_main(win[k]);
        else
            check_free_n(win[k]);
    }
}

/* Threads named "hakmem-purge" in this process. */
static int purger_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t len = read(fd, comm, sizeof comm - 1);
        close(fd);
        if (len > 0 && strncmp(comm, "hakmem-purge\n", 13) == 0) n++;
    }
    closedir(d);
    return n;
}

/* A large block freed while the purger sleeps with nothing to do may wake
 * it, and must still wait for the decay time before it is purged.  Judged
 * only when the free and the reading of the statistics took under half the
 * decay time.  1 MiB and 48 MiB blocks: the first may be kept in a cache
 * of large blocks, the second is too large for one and goes back to the
 * extents at once. */
static void check_no_early_purge(void)
{
    int judged = 0, early = 0;
    for (int t = 0; t < 6; t++) {
        size_t n = t % 2 ? 48 * MiB : MiB;
        uint8_t *p = hak_malloc(n);
        CHECK(p != NULL, "malloc(%zu) failed", n);
        if (!p) return;
        memset(p, 0x5a, MiB);
        p[n - 1] = 0x5a;
        hak_trim();                  /* nothing dirty left ... */
        sleep_ms(2 * decay_ms + 10); /* ... so the purger waits for a free */
        uint64_t before = tu_stats().bytes_purged;
        double t0 = tu_now();
        hak_free(p);
        sleep_ms(2); /* time for the purger to wake up */
        uint64_t after = tu_stats().bytes_purged;
        if ((tu_now() - t0) * 1000 < decay_ms / 2.0) {
            judged++;
            early += after > before;
        }
    }
    CHECK(early == 0, "%d of %d large blocks freed while the purger was idle were purged "
          "within a few ms, before the decay time (HAKMEM_DECAY_MS=%ld)", early, judged,
          decay_ms);
}

static void test_purger(void)
{
    bool check = decay_ms > 0 && decay_ms <= 200;
    uint64_t purged0 = tu_stats().bytes_purged;
    int judged = 0, idle_purges = 0;
    for (long round = 0; round < PURGE_ROUNDS; round++) {
        tu_run_threads(PURGE_THREADS, purge_worker, (void *)round);
        /* The large blocks the workers left: remote frees into their heaps'
         * extents, dirty now.  Then idle: only the purger may purge them. */
        free_handed();
        struct hak_stats st = tu_stats();
        if (check && st.bytes_dirty > 0) {
            judged++;
            for (int w = 0; w < 20; w++) {
                sleep_ms(decay_ms + 5);
                if (tu_stats().bytes_purged > st.bytes_purged) {
                    idle_purges++;
                    break;
                }
            }
        }
        if (round == 0 && check)
            CHECK(purger_threads() == 1, "%d threads named hakmem-purge, expected 1",
                  purger_threads());
    }
    CHECK(idle_purges == judged, "the purger purged nothing in %d of %d idle periods that "
          "began with dirty memory (HAKMEM_DECAY_MS=%ld)", judged - idle_purges, judged,
          decay_ms);
    if (check && decay_ms >= 10)
        check_no_early_purge();
    for (int s = 0; s < PSLOTS; s++)
        check_free_n(atomic_exchange(&pslot[s], NULL));
    hak_trim();
    struct hak_stats st = tu_stats();
    CHECK(st.bytes_purged > 0 && st.bytes_purged > purged0,
          "bytes_purged %llu after hak_trim (%llu before the phase)",
          (unsigned long long)st.bytes_purged, (unsigned long long)purged0);
}

/* ---- 6. large realloc (mremap) against another thread's mmap/munmap ------ */
#define RR_OLD  (40 * MiB)
#define RR_NEW  (120 * MiB)
#define RR_BMAP (8 * MiB)
#define RR_KEEP 32
static int rr_stop;
static unsigned long rr_a_iters, rr_b_iters;
static double rr_end;

static void rr_realloc_thread(int idx, void *ctx)
{
    unsigned long it = 0;
    while (tu_now() < rr_end && tu_failures() < 10 &&
           tu_realloc_round(hak_malloc, hak_realloc, hak_free, RR_OLD, RR_NEW, it + 1, it))
        __atomic_store_n(&rr_a_iters, ++it, __ATOMIC_RELAXED);
    __atomic_store_n(&rr_stop, 1, __ATOMIC_RELAXED);
}

static void rr_mmap_thread(int idx, void *ctx)
{
    static unsigned long damaged;
    tu_mapping_churn(RR_BMAP, RR_KEEP, &rr_stop, &rr_b_iters, &damaged);
}

static void rr_thread(int idx, void *ctx)
{
    if (idx == 0) rr_realloc_thread(idx, ctx); else rr_mmap_thread(idx, ctx);
}

static void test_realloc_race(void)
{
    /* hakmem's address space first, so that the other thread's mappings
     * lie below it and a hole in it is where its next mmap would go */
    for (int i = 0; i < 8; i++)
        if (!tu_realloc_round(hak_malloc, hak_realloc, hak_free, RR_OLD, RR_NEW, 0, 0))
            return;
    rr_end = tu_now() + 0.3 * tu_stress_seconds();
    tu_run_threads(2, rr_thread, NULL);
    unsigned long ai = __atomic_load_n(&rr_a_iters, __ATOMIC_RELAXED);
    unsigned long bi = __atomic_load_n(&rr_b_iters, __ATOMIC_RELAXED);
    CHECK(ai >= 5, "only %lu realloc iterations ran", ai);
    CHECK(bi >= 5, "only %lu mmap iterations ran", bi);
}

int main(int argc, char **argv)
{
    const char *d = getenv("HAKMEM_DECAY_MS");
    if (!d) {
        /* options are read at start-up: run again with the option set */
        setenv("HAKMEM_DECAY_MS", "20", 1);
        execv("/proc/self/exe", argv);
        CHECK(0, "re-exec with HAKMEM_DECAY_MS=20 failed: %s", strerror(errno));
        return TU_DONE();
    }
    decay_ms = atol(d);
    items_per_producer = 20000;
    test_prodcons();
    test_exit_live();
    test_many();
    test_dtor_rounds();
    test_purger();
    test_realloc_race();
    hak_trim();
    struct hak_stats st = tu_stats();
    CHECK(st.invalid_frees == 0, "invalid frees: %llu", (unsigned long long)st.invalid_frees);
    CHECK(st.remote_frees > 0, "no remote frees counted");
    return TU_DONE();
}
