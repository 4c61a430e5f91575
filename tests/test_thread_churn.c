/* Thousands of short-lived threads (waves of 32) that allocate, free most
 * of it and hand a few live blocks to main.  Heaps of exited threads must
 * be reused and SuperSlabs must not pile up.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include "testutil.h"

enum { WAVE = 32, MIN_THREADS = 3000, PER_THREAD = 300, HANDOFF = 3 };

struct node { struct node *next; size_t n; uint64_t seed; };
static pthread_mutex_t list_mu = PTHREAD_MUTEX_INITIALIZER;
static struct node *list;
static size_t list_len;

static size_t mixed_size(tu_rng *r)
{
    uint64_t x = tu_rand(r) % 100;
    if (x < 70) return tu_range(r, 1, HAK_TINY_MAX);
    if (x < 98) return tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
    return tu_range(r, HAK_MID_MAX + 1, 300000);
}

static void churn_thread(int idx, void *ctx)
{
    uint64_t base = *(uint64_t *)ctx + (uint64_t)idx * PER_THREAD;
    tu_rng r = tu_rng_seed(base);
    void *b[PER_THREAD];
    size_t n[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++) {
        /* hand-off blocks are small so that what main keeps stays small */
        n[i] = i < HANDOFF ? tu_range(&r, sizeof(struct node), 256) : mixed_size(&r);
        b[i] = malloc(n[i]);
        CHECK(b[i] != NULL, "malloc(%zu)", n[i]);
        if (b[i]) tu_fill(b[i], n[i] < 2048 ? n[i] : 2048, base + i);
        /* free some right away, in allocation order */
        if (i >= HANDOFF && i % 4 == 0 && b[i - 1] && i - 1 >= HANDOFF) {
            if (tu_verify(b[i - 1], n[i - 1] < 2048 ? n[i - 1] : 2048, base + i - 1) != TU_OK)
                CHECK(0, "thread block corrupted");
            free(b[i - 1]);
            b[i - 1] = NULL;
        }
    }
    for (int i = PER_THREAD - 1; i >= HANDOFF; i--) {
        if (!b[i]) continue;
        if (tu_verify(b[i], n[i] < 2048 ? n[i] : 2048, base + i) != TU_OK)
            CHECK(0, "thread block of %zu bytes corrupted", n[i]);
        free(b[i]);
    }
    TU_COUNT(1);
    /* hand the first blocks to main (only the first MIN_THREADS threads,
     * so that main's share stays bounded); a node header overwrites
     * their start */
    for (int i = 0; i < HANDOFF; i++) {
        if (!b[i]) continue;
        if (base >= (uint64_t)MIN_THREADS * PER_THREAD) {
            if (tu_verify(b[i], n[i], base + i) != TU_OK)
                CHECK(0, "block of %zu bytes corrupted", n[i]);
            free(b[i]);
            continue;
        }
        struct node *nd = b[i];
        size_t len = n[i] < 2048 ? n[i] : 2048;
        if (tu_verify(nd, len, base + i) != TU_OK)
            CHECK(0, "hand-off block of %zu bytes corrupted", n[i]);
        nd->n = n[i];
        nd->seed = base + i;
        pthread_mutex_lock(&list_mu);
        nd->next = list;
        list = nd;
        list_len++;
        pthread_mutex_unlock(&list_mu);
    }
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
    size_t freed = 0, bad = 0;
    while (list) {
        struct node *nd = list;
        list = nd->next;
        size_t len = nd->n < 2048 ? nd->n : 2048;
        if (malloc_usable_size(nd) < nd->n ||
            tu_verify((char *)nd + sizeof *nd, len - sizeof *nd, nd->seed) != TU_OK)
            bad++;
        free(nd);
        freed++;
    }
    CHECK(bad == 0, "%zu of %zu handed-off blocks corrupted", bad, freed);
    CHECK(freed == list_len && freed == (size_t)MIN_THREADS * HANDOFF,
          "freed %zu handed-off blocks, expected %zu", freed, list_len);
    return TU_DONE();
}
