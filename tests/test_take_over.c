/* Take-over on free (docs/ARCHITECTURE.md, "Thread heaps"): a thread that
 * frees the blocks of a thread that exited takes over that thread's heap,
 * once, and frees them as their owner.
 *   1. Thread A allocates blocks of many classes, fills them, exits.
 *   2. Thread B, which had a heap of its own before A exited, checks and
 *      frees half of them: one take-over, and none of its frees counted
 *      as cross-thread; it then allocates blocks of the same sizes, which
 *      come from A's SuperSlabs (the memory A's blocks left), and frees
 *      the rest.
 *   3. Thread C makes more cross-thread frees than the window in which a
 *      thread looks for an abandoned owner (RECLAIM_WINDOW, 1024), then
 *      frees the blocks of another exited thread: no take-over, every
 *      free counted as cross-thread.
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include "testutil.h"

#define N 3000
static char *blk[N];
static char *mine[N];
static size_t size_of(int i) { return 16 + (size_t)i * 37 % 1000; }
static unsigned char pattern(int i) { return (unsigned char)(i * 7 + 1); }

static void *alloc_all(void *arg)
{
    for (int i = 0; i < N; i++) {
        blk[i] = malloc(size_of(i));
        memset(blk[i], pattern(i), size_of(i));
    }
    return arg;
}

static int intact(int i)
{
    for (size_t k = 0; k < size_of(i); k++)
        if ((unsigned char)blk[i][k] != pattern(i))
            return 0;
    return 1;
}

static struct hak_stats st(void)
{
    struct hak_stats s;
    hak_stats_get(&s);
    return s;
}

static int in_superslab_of_blocks(const void *p)
{
    uintptr_t ss = (uintptr_t)p >> 21;
    for (int i = 0; i < N; i++)
        if (blk[i] && (uintptr_t)blk[i] >> 21 == ss)
            return 1;
    return 0;
}

static pthread_barrier_t ready, go;

static void *taker(void *arg)
{
    free(tu_launder(malloc(64))); /* a heap of its own, before A exits */
    pthread_barrier_wait(&ready);
    pthread_barrier_wait(&go);
    struct hak_stats before = st();
    int bad = 0;
    for (int i = 0; i < N; i += 2) {
        bad += !intact(i);
        free(blk[i]);
        blk[i] = NULL;
    }
    struct hak_stats after = st();
    CHECK(bad == 0, "%d of A's blocks were changed", bad);
    CHECK(after.heaps_taken_over == before.heaps_taken_over + 1, "taken over %llu -> %llu",
          (unsigned long long)before.heaps_taken_over, (unsigned long long)after.heaps_taken_over);
    CHECK(after.remote_frees == before.remote_frees, "%llu of B's frees were cross-thread",
          (unsigned long long)(after.remote_frees - before.remote_frees));
    int reused = 0;
    for (int i = 0; i < N; i += 2) {
        mine[i] = malloc(size_of(i));
        reused += in_superslab_of_blocks(mine[i]);
    }
    CHECK(reused == N / 2, "%d of %d new blocks in A's SuperSlabs", reused, N / 2);
    for (int i = 1; i < N; i += 2) {
        bad += !intact(i);
        free(blk[i]);
        blk[i] = NULL;
    }
    CHECK(bad == 0, "%d of A's blocks were changed", bad);
    for (int i = 0; i < N; i += 2)
        free(mine[i]);
    return arg;
}

static void *late(void *arg)
{
    /* Past the window: 2000 frees of blocks of a running thread's heap
     * (the main thread's, which allocated mine[]). */
    for (int i = 0; i < 2000; i++)
        free(mine[i]);
    pthread_barrier_wait(&ready);
    pthread_barrier_wait(&go);
    struct hak_stats before = st();
    for (int i = 0; i < N; i++)
        free(blk[i]);
    struct hak_stats after = st();
    CHECK(after.heaps_taken_over == before.heaps_taken_over, "a thread past its window took a heap");
    CHECK(after.remote_frees == before.remote_frees + N, "%llu cross-thread frees, expected %d",
          (unsigned long long)(after.remote_frees - before.remote_frees), N);
    return arg;
}

static void scenario(void *(*freer)(void *))
{
    pthread_t a, b;
    pthread_barrier_init(&ready, NULL, 2);
    pthread_barrier_init(&go, NULL, 2);
    CHECK(pthread_create(&b, NULL, freer, NULL) == 0, "pthread_create");
    pthread_barrier_wait(&ready); /* the freer has its heap */
    CHECK(pthread_create(&a, NULL, alloc_all, NULL) == 0, "pthread_create");
    pthread_join(a, NULL);        /* A's heap is abandoned */
    pthread_barrier_wait(&go);
    pthread_join(b, NULL);
    pthread_barrier_destroy(&ready);
    pthread_barrier_destroy(&go);
}

int main(void)
{
    scenario(taker);
    for (int i = 0; i < 2000; i++) /* the main thread's blocks, for late() */
        mine[i] = malloc(48);
    scenario(late);
    return TU_DONE();
}
