/* fork() while other threads allocate: the child must be able to
 * allocate (all tiers), free inherited blocks, create threads; the
 * parent keeps working.  A child deadlock is turned into a failure by
 * alarm() in the child and a deadline in the parent.
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <sys/wait.h>
#include <malloc.h>
#include "testutil.h"

enum { WORKERS = 4, FORKS = 20, KEEP = 300 };
static int stop;
static unsigned long iters[WORKERS];

static void worker(int idx, void *ctx)
{
    tu_churn(idx, &stop, iters, 128, 512, 1, (uint64_t)idx + 1);
}

/* Blocks allocated before the fork: some by main, some by a thread that
 * has exited (the child has no thread owning them). */
static void *kept[KEEP];
static size_t kept_n[KEEP];

static void *alloc_half(void *arg)
{
    tu_rng r = tu_rng_seed(99);
    for (int i = KEEP / 2; i < KEEP; i++) {
        kept_n[i] = tu_mixed_size(&r, 2 * MiB);
        kept[i] = malloc(kept_n[i]);
        if (kept[i]) tu_fill(kept[i], kept_n[i] < 4096 ? kept_n[i] : 4096, 5000 + i);
    }
    return NULL;
}

static void *child_thread(void *arg)
{
    tu_rng r = tu_rng_seed(4);
    void *v[200];
    for (int i = 0; i < 200; i++) {
        size_t n = tu_mixed_size(&r, 2 * MiB);
        v[i] = malloc(n);
        CHECK(v[i] != NULL, "child thread malloc(%zu)", n);
        if (v[i]) memset(v[i], i, n < 256 ? n : 256);
    }
    for (int i = 0; i < 200; i++) free(v[i]);
    return NULL;
}

static int child_main(void)
{
    alarm(20); /* a deadlock on an allocator lock kills the child */
    /* inherited blocks are intact and freeable */
    for (int i = 0; i < KEEP; i++) {
        if (!kept[i]) continue;
        if (tu_verify(kept[i], kept_n[i] < 4096 ? kept_n[i] : 4096, 5000 + i) != TU_OK)
            CHECK(0, "child: inherited block %d corrupted", i);
        if (i % 3) free(kept[i]);
    }
    TU_COUNT(1);
    static const size_t sz[] = { 1, 24, 100, 1024, 1025, 4000, 30000, 53248, 53249, 200000,
                                 3 << 20, 32 << 20 };
    enum { NS = sizeof sz / sizeof *sz };
    void *b[NS];
    for (int i = 0; i < NS; i++) {
        b[i] = malloc(sz[i]);
        CHECK(b[i] != NULL, "child malloc(%zu)", sz[i]);
        if (b[i]) tu_fill_idx(b[i], 0, sz[i], i);
    }
    for (int i = 0; i < NS; i++) {
        if (!b[i]) continue;
        size_t m = sz[(i + 5) % NS];
        void *q = realloc(b[i], m);
        CHECK(q != NULL, "child realloc(%zu -> %zu)", sz[i], m);
        if (!q) continue;
        size_t keep = m < sz[i] ? m : sz[i];
        CHECK(tu_verify_idx(q, keep, i) == TU_OK, "child realloc %zu -> %zu lost data", sz[i], m);
        b[i] = q;
    }
    for (int i = 0; i < NS; i++) free(b[i]);
    void *c = calloc(1000, 100);
    CHECK(c != NULL, "child calloc");
    free(c);
    void *al = NULL;
    CHECK(posix_memalign(&al, 65536, 1000) == 0 && ((uintptr_t)al & 65535) == 0,
          "child posix_memalign");
    free(al);
    pthread_t t;
    int rc = pthread_create(&t, NULL, child_thread, NULL);
    CHECK(rc == 0, "child pthread_create: %d", rc);
    if (rc == 0) pthread_join(t, NULL);
    /* the child can fork again */
    pid_t g = fork();
    if (g == 0) {
        void *x = malloc(5000);
        _exit(x ? 0 : 1);
    }
    int st = 0;
    CHECK(g > 0 && waitpid(g, &st, 0) == g && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "grandchild failed (status %#x)", st);
    return tu_failures() ? 1 : 0;
}

int main(void)
{
    alarm(240); /* a hang in the parent fails instead of blocking the suite */
    for (int i = 0; i < KEEP / 2; i++) {
        kept_n[i] = 1 + (size_t)i * 977 % 100000;
        kept[i] = malloc(kept_n[i]);
        if (kept[i]) tu_fill(kept[i], kept_n[i] < 4096 ? kept_n[i] : 4096, 5000 + i);
    }
    pthread_t h;
    CHECK(pthread_create(&h, NULL, alloc_half, NULL) == 0, "pthread_create");
    pthread_join(h, NULL);

    pthread_t w[WORKERS];
    struct tu_thread_arg_ wa[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        wa[i] = (struct tu_thread_arg_){ worker, NULL, i };
        CHECK(pthread_create(&w[i], NULL, tu_thread_tramp_, &wa[i]) == 0, "pthread_create");
    }
    usleep(50000);
    for (int f = 0; f < FORKS; f++) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) _exit(child_main());
        CHECK(pid > 0, "fork: %s", strerror(errno));
        if (pid < 0) continue;
        int st = 0;
        pid_t got = 0;
        double end = tu_now() + 30;
        while ((got = waitpid(pid, &st, WNOHANG)) == 0 && tu_now() < end) usleep(2000);
        if (got == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            CHECK(0, "fork %d: child hung, killed", f);
            continue;
        }
        CHECK(got == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "fork %d: child %s %d", f, WIFSIGNALED(st) ? "killed by signal" : "exited with",
              WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        /* between forks the parent allocates too */
        void *p = malloc(100 + f * 5000);
        CHECK(p != NULL, "parent malloc");
        free(p);
        usleep(5000);
    }
    /* the parent's threads keep working after the forks */
    unsigned long before[WORKERS];
    for (int i = 0; i < WORKERS; i++) before[i] = __atomic_load_n(&iters[i], __ATOMIC_RELAXED);
    usleep(200000);
    for (int i = 0; i < WORKERS; i++)
        CHECK(__atomic_load_n(&iters[i], __ATOMIC_RELAXED) > before[i],
              "worker %d made no progress after the forks (stuck at %lu)", i, before[i]);
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < WORKERS; i++) pthread_join(w[i], NULL);
    for (int i = 0; i < KEEP; i++) {
        if (kept[i] && tu_verify(kept[i], kept_n[i] < 4096 ? kept_n[i] : 4096, 5000 + i) != TU_OK)
            CHECK(0, "parent: kept block %d corrupted", i);
        free(kept[i]);
    }
    TU_COUNT(1);
    return TU_DONE();
}
