/* Thousands of short-lived threads (waves of 32) that allocate, free most
 * of it and hand a few live blocks to main.  Heaps of exited threads must
 * be reused and SuperSlabs must not pile up.  Then waves of 4 threads
 * beside a thread that calls malloc_trim without pause: a thread that
 * starts while the trim collects the abandoned heaps must still find one
 * to adopt, or heaps multiply (about 400 after 5,000 waves).
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <stdatomic.h>
#include "testutil.h"

enum { WAVE = 32, MIN_THREADS = 3000, PER_THREAD = 300, HANDOFF = 3 };

static size_t handed_off;

/* Only the first MIN_THREADS threads hand blocks to main, so that main's
 * share stays bounded. */
static void churn_thread(int idx, void *ctx)
{
    uint64_t base = *(uint64_t *)ctx + (uint64_t)idx * PER_THREAD;
    int hand_off = base < (uint64_t)MIN_THREADS * PER_THREAD;
    tu_short_life(base, PER_THREAD, HANDOFF, 256, 2048, 4, hand_off);
    if (hand_off)
        __atomic_add_fetch(&handed_off, HANDOFF, __ATOMIC_RELAXED);
}

static _Atomic int trimming;
static void *trimmer(void *arg)
{
    while (atomic_load(&trimming))
        malloc_trim(0);
    return arg;
}

static void short_thread(int idx, void *ctx)
{
    for (int i = 0; i < 50; i++)
        free(tu_launder(malloc(100 + i * 10)));
    void *keep = malloc(200);
    CHECK(keep != NULL, "malloc(200)");
    if (keep) {
        tu_fill(keep, 200, (uint64_t)idx);
        tu_handoff_push(keep, 200, (uint64_t)idx);
    }
}

/* Heaps made while threads start beside a trimmer. */
static void churn_beside_trim(void)
{
    struct hak_stats s0 = tu_stats();
    atomic_store(&trimming, 1);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, trimmer, NULL) == 0, "pthread_create");
    for (int wave = 0; wave < 3000 && tu_failures() < 20; wave++)
        tu_run_threads(4, short_thread, NULL);
    atomic_store(&trimming, 0);
    pthread_join(t, NULL);
    struct hak_stats s1 = tu_stats();
    CHECK(s1.heaps_created - s0.heaps_created <= 8,
          "%llu heaps made by 3000 waves of 4 threads beside malloc_trim: a thread that started "
          "while the trim collected the abandoned heaps made a new one",
          (unsigned long long)(s1.heaps_created - s0.heaps_created));
    size_t bad = 0;
    tu_handoff_free_all(512, &bad);
    CHECK(bad == 0, "%zu handed-off blocks corrupted", bad);
}

int main(void)
{
    double end = tu_now() + tu_stress_seconds();
    struct hak_stats s0 = tu_stats();
    uint64_t live_max = 0, threads = 0;
    char traj[512];
    size_t tl = 0;
    traj[0] = 0;
    int wave = 0;
    while (threads < MIN_THREADS || tu_now() < end) {
        uint64_t base = threads * PER_THREAD;
        tu_run_threads(WAVE, churn_thread, &base);
        threads += WAVE;
        wave++;
        uint64_t l = tu_stats().superslabs_live;
        if (l > live_max) live_max = l;
        if (wave == 1 || (wave & (wave - 1)) == 0) /* trajectory for the message */
            tl += snprintf(traj + tl, sizeof traj - tl, " %llu@%llu", (unsigned long long)l,
                           (unsigned long long)threads);
        if (tu_failures() > 20) break;
    }
    struct hak_stats s1 = tu_stats();
    uint64_t created = s1.heaps_created - s0.heaps_created;
    CHECK(created <= 200, "heaps_created %llu for %llu threads: heaps of exited threads are "
          "not reused", (unsigned long long)created, (unsigned long long)threads);
    CHECK(created + (s1.heaps_adopted - s0.heaps_adopted) >= threads,
          "heaps_created %llu + heaps_adopted %llu < %llu threads that allocated",
          (unsigned long long)created, (unsigned long long)(s1.heaps_adopted - s0.heaps_adopted),
          (unsigned long long)threads);
    /* SuperSlabs are held by heaps: with heaps reused (bounded above) and
     * each thread's demand bounded, the live count must stay bounded too
     * instead of growing with the number of threads. */
    CHECK(s1.superslabs_live > 0, "superslabs_live is 0 while blocks are live");
    CHECK(live_max <= 2 * created + 16,
          "superslabs_live reached %llu with %llu heaps created (live@threads:%s)",
          (unsigned long long)live_max, (unsigned long long)created, traj);

    /* main frees every handed-off block after checking it */
    size_t bad = 0, freed = tu_handoff_free_all(2048, &bad);
    CHECK(bad == 0, "%zu of %zu handed-off blocks corrupted", bad, freed);
    CHECK(freed == handed_off && freed == (size_t)MIN_THREADS * HANDOFF,
          "freed %zu handed-off blocks, expected %zu", freed, handed_off);
    churn_beside_trim();
    return TU_DONE();
}
