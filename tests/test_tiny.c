/* Tiny tier (1..1024 bytes): every size, class boundaries, 200k random
 * blocks without double hand-out, reuse of freed slabs (no churn).
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include "testutil.h"

static void check_block(void *p, size_t n, const char *what)
{
    tu_check_block(p, n, 16, HAK_KIND_TINY, what);
}

static void every_size(void)
{
    enum { PER = 5 };
    static void *b[HAK_TINY_MAX + 1][PER];
    for (int round = 0; round < 2; round++) {
        for (size_t n = 1; n <= HAK_TINY_MAX; n++)
            for (int k = 0; k < PER; k++) {
                void *p = (k & 1) ? hak_malloc(n) : malloc(n);
                check_block(p, n, (k & 1) ? "hak_malloc" : "malloc");
                if (p) tu_fill(p, malloc_usable_size(p), n * PER + k);
                b[n][k] = p;
            }
        for (size_t n = 1; n <= HAK_TINY_MAX; n++)
            for (int k = 0; k < PER; k++)
                if (b[n][k] && tu_verify(b[n][k], malloc_usable_size(b[n][k]), n * PER + k) != TU_OK)
                    CHECK(0, "size %zu block %d (%p) overwritten by another block", n, k, b[n][k]);
        TU_COUNT(1);
        /* free in an order different from allocation */
        for (size_t n = HAK_TINY_MAX; n >= 1; n--)
            for (int k = 0; k < PER; k++)
                (k & 2 ? hak_free : free)(b[n][k]);
    }
}

static void boundaries(void)
{
    static const size_t c[] = { 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024 };
    enum { PER = 200 };
    size_t nb = 0;
    static tu_block b[sizeof c / sizeof *c * 3 * PER];
    for (size_t i = 0; i < sizeof c / sizeof *c; i++)
        for (int d = -1; d <= 1; d++) {
            size_t n = c[i] + d;
            if (n > HAK_TINY_MAX) continue;
            for (int k = 0; k < PER; k++) {
                void *p = malloc(n);
                check_block(p, n, "malloc");
                if (p) tu_keep(b, &nb, p, n);
            }
        }
    tu_kept_check(b, nb, "boundary sizes");
}

struct ent { uintptr_t a; size_t n; };

static int cmp_ent(const void *x, const void *y)
{
    const struct ent *a = x, *b = y;
    return a->a < b->a ? -1 : a->a > b->a;
}

/* No two live blocks may overlap, judged by their usable sizes. */
static void check_no_overlap(void **p, size_t *sz, size_t n, int round)
{
    struct ent *e = malloc(n * sizeof *e);
    CHECK(e != NULL, "malloc");
    if (!e) return;
    for (size_t i = 0; i < n; i++)
        e[i] = (struct ent){ (uintptr_t)p[i], malloc_usable_size(p[i]) };
    qsort(e, n, sizeof *e, cmp_ent);
    size_t bad = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (e[i].a + e[i].n > e[i + 1].a && bad++ < 5)
            CHECK(0, "round %d: blocks %#lx (+%zu) and %#lx overlap%s", round,
                  (unsigned long)e[i].a, e[i].n, (unsigned long)e[i + 1].a,
                  e[i].a == e[i + 1].a ? " (handed out twice)" : "");
    CHECK(bad == 0, "round %d: %zu overlapping pairs", round, bad);
    free(e);
}

static void many(void)
{
    enum { N = 200000, ROUNDS = 20 };
    void **p = malloc(N * sizeof *p);
    size_t *sz = malloc(N * sizeof *sz);
    size_t *order = malloc(N * sizeof *order);
    CHECK(p && sz && order, "malloc");
    if (!p || !sz || !order) return;
    uint64_t mapped_after[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        tu_rng r = tu_rng_seed(12345); /* same demand every round */
        uint64_t requested = 0;
        struct hak_stats s0 = tu_stats();
        for (size_t i = 0; i < N; i++) {
            sz[i] = tu_rand(&r) % 8 ? tu_range(&r, 1, 128) : tu_range(&r, 1, HAK_TINY_MAX);
            p[i] = malloc(sz[i]);
            if (!p[i]) { CHECK(0, "malloc(%zu) failed", sz[i]); sz[i] = 0; continue; }
            requested += sz[i];
            /* pattern at both ends is enough to catch a double hand-out */
            ((uint8_t *)p[i])[0] = (uint8_t)i;
            if (sz[i] > 1) ((uint8_t *)p[i])[sz[i] - 1] = (uint8_t)(i >> 8);
        }
        if (round == 0 || round == ROUNDS - 1) {
            struct hak_stats s = tu_stats();
            CHECK(s.tiny_bytes_in_use - s0.tiny_bytes_in_use >= requested,
                  "stats tiny_bytes_in_use grew by %llu with %llu bytes in live tiny blocks",
                  (unsigned long long)(s.tiny_bytes_in_use - s0.tiny_bytes_in_use),
                  (unsigned long long)requested);
            for (size_t i = 0; i < N; i += 97)
                CHECK((int)hak_ptr_kind(p[i]) == tu_tier_of(sz[i]), "kind of %zu-byte block %d", sz[i],
                      hak_ptr_kind(p[i]));
        }
        size_t badv = 0;
        for (size_t i = 0; i < N; i++)
            if (p[i] && (((uint8_t *)p[i])[0] != (uint8_t)i ||
                         (sz[i] > 1 && ((uint8_t *)p[i])[sz[i] - 1] != (uint8_t)(i >> 8))))
                badv++;
        CHECK(badv == 0, "round %d: %zu blocks overwritten", round, badv);
        if (round < 3 || round == ROUNDS - 1)
            check_no_overlap(p, sz, N, round);
        /* free in random order */
        for (size_t i = 0; i < N; i++) order[i] = i;
        tu_rng o = tu_rng_seed(round + 1);
        for (size_t i = N - 1; i > 0; i--) {
            size_t j = tu_rand(&o) % (i + 1), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (size_t i = 0; i < N; i++)
            free(p[order[i]]);
        mapped_after[round] = tu_stats().superslabs_mapped;
    }
    uint64_t base = mapped_after[1];
    CHECK(base > 0, "superslabs_mapped is 0 after allocating 200k tiny blocks");
    CHECK(mapped_after[ROUNDS - 1] <= base + base / 10 + 2,
          "superslabs_mapped keeps growing over identical fill/free rounds: %llu after round 2, "
          "%llu after round %d", (unsigned long long)base,
          (unsigned long long)mapped_after[ROUNDS - 1], ROUNDS);
    free(p);
    free(sz);
    free(order);
}

/* Blocks freed by another thread come back for reuse. */
static void *remote_free_thread(void *arg)
{
    void **v = arg;
    for (int i = 0; i < 10000; i++) free(v[i]);
    return NULL;
}

static void remote(void)
{
    enum { N = 10000 };
    void **v = malloc(N * sizeof *v);
    CHECK(v != NULL, "malloc");
    if (!v) return;
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < N; i++) {
            v[i] = malloc(1 + i % 200);
            check_block(v[i], 1 + i % 200, "malloc");
            if (v[i]) tu_fill(v[i], 1 + i % 200, i);
        }
        for (int i = 0; i < N; i++)
            if (v[i] && tu_verify(v[i], 1 + i % 200, i) != TU_OK)
                CHECK(0, "block %d overwritten", i);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, remote_free_thread, v) == 0, "pthread_create");
        pthread_join(t, NULL);
    }
    free(v);
}

int main(void)
{
    every_size();
    boundaries();
    many();
    remote();
    return TU_DONE();
}
