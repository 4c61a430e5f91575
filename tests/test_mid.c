/* Mid tier (1025..53248 bytes): class boundaries, a 97-byte-step sweep,
 * cross-thread frees, blocks outliving their thread, slab reuse.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <stdbool.h>
#include "testutil.h"

static int check_block(void *p, size_t n)
{
    return tu_check_block(p, n, 16, HAK_KIND_MID, "malloc");
}

static void sizes(void)
{
    static const size_t bnd[] = { 1025, 1026, 1279, 1280, 1281, 1535, 1536, 1537, 2047, 2048,
                                  2049, 3071, 3072, 3073, 4095, 4096, 4097, 4103, 4104, 4105,
                                  4607, 4608, 4609, 5119, 5120, 5121, 6143, 6144, 6145,
                                  8191, 8192, 8193, 9215, 9216, 9217, 10239, 10240, 10241,
                                  12287, 12288, 12289, 16383, 16384, 16385, 18431, 18432,
                                  18433, 24575, 24576, 24577, 32767, 32768, 32769, 36863,
                                  36864, 36865, 40959, 40960, 40961, 49151, 49152, 49153,
                                  53247, 53248 };
    enum { PER = 6, NB = sizeof bnd / sizeof *bnd + (53248 - 1025) / 97 + 1 };
    static tu_block b[NB * PER];
    size_t nb = 0;
    for (size_t i = 0; i < sizeof bnd / sizeof *bnd + (53248 - 1025) / 97 + 1; i++) {
        size_t n = i < sizeof bnd / sizeof *bnd ? bnd[i] : 1025 + 97 * (i - sizeof bnd / sizeof *bnd);
        if (n > HAK_MID_MAX) continue;
        for (int k = 0; k < PER; k++) {
            void *p = (k & 1) ? hak_malloc(n) : malloc(n);
            if (check_block(p, n)) tu_keep(b, &nb, p, n);
        }
    }
    tu_kept_check(b, nb, "boundaries and sweep");
}

/* ---- cross-thread frees: producer allocates, consumer frees ---------- */
enum { XN = 4000 };
struct xfer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *blk[XN];
    size_t n[XN];
    int ready;
};

static void *xfer_producer(void *arg)
{
    struct xfer *x = arg;
    tu_rng r = tu_rng_seed((uintptr_t)x);
    for (int i = 0; i < XN; i++) {
        x->n[i] = tu_range(&r, 1025, HAK_MID_MAX);
        x->blk[i] = malloc(x->n[i]);
        if (check_block(x->blk[i], x->n[i])) tu_fill(x->blk[i], x->n[i], i);
    }
    pthread_mutex_lock(&x->mu);
    x->ready = 1;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
    /* keep running (and allocating) while the consumer frees */
    void *v[64] = { 0 };
    for (int i = 0; i < 20000; i++) {
        free(v[i & 63]);
        v[i & 63] = malloc(1025 + (i * 131) % 50000);
    }
    for (int i = 0; i < 64; i++) free(v[i]);
    return NULL;
}

static void *xfer_consumer(void *arg)
{
    struct xfer *x = arg;
    pthread_mutex_lock(&x->mu);
    while (!x->ready) pthread_cond_wait(&x->cv, &x->mu);
    pthread_mutex_unlock(&x->mu);
    for (int i = 0; i < XN; i++) {
        if (!x->blk[i]) continue;
        if (tu_verify(x->blk[i], x->n[i], i) != TU_OK)
            CHECK(0, "cross-thread block %d (%zu bytes) corrupted", i, x->n[i]);
        free(x->blk[i]);
    }
    TU_COUNT(1);
    return NULL;
}

static void cross_thread(void)
{
    enum { PAIRS = 4 };
    struct hak_stats s0 = tu_stats();
    for (int round = 0; round < 3; round++) {
        static struct xfer x[PAIRS];
        pthread_t tp[PAIRS], tc[PAIRS];
        for (int i = 0; i < PAIRS; i++) {
            memset(&x[i], 0, sizeof x[i]);
            pthread_mutex_init(&x[i].mu, NULL);
            pthread_cond_init(&x[i].cv, NULL);
            CHECK(pthread_create(&tp[i], NULL, xfer_producer, &x[i]) == 0, "pthread_create");
            CHECK(pthread_create(&tc[i], NULL, xfer_consumer, &x[i]) == 0, "pthread_create");
        }
        for (int i = 0; i < PAIRS; i++) {
            pthread_join(tp[i], NULL);
            pthread_join(tc[i], NULL);
        }
    }
    struct hak_stats s1 = tu_stats();
    CHECK(s1.remote_frees > s0.remote_frees, "remote_frees did not increase (%llu -> %llu) "
          "after %d cross-thread frees", (unsigned long long)s0.remote_frees,
          (unsigned long long)s1.remote_frees, 3 * PAIRS * XN);
}

/* ---- a thread exits while its blocks are live ------------------------ */
enum { ON = 3000 };
struct orphan { void *blk[ON]; size_t n[ON]; };

static void *orphan_thread(void *arg)
{
    struct orphan *o = arg;
    for (int i = 0; i < ON; i++) {
        o->n[i] = 1025 + (size_t)i * 7919 % (HAK_MID_MAX - 1024);
        o->blk[i] = malloc(o->n[i]);
        if (check_block(o->blk[i], o->n[i])) tu_fill(o->blk[i], o->n[i], i + 7);
    }
    /* free every other block itself before exiting */
    for (int i = 0; i < ON; i += 2) { free(o->blk[i]); o->blk[i] = NULL; }
    return NULL;
}

static void orphans(void)
{
    static struct orphan o[4];
    for (int round = 0; round < 3; round++) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            CHECK(pthread_create(&t[i], NULL, orphan_thread, &o[i]) == 0, "pthread_create");
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        /* main allocates more mid blocks while the orphans are live */
        void *mine[500];
        for (int k = 0; k < 500; k++) {
            mine[k] = malloc(1025 + k * 97);
            if (check_block(mine[k], 1025 + k * 97)) tu_fill(mine[k], 1025 + k * 97, 99999 + k);
        }
        for (int i = 0; i < 4; i++)
            for (int k = 1; k < ON; k += 2)
                if (o[i].blk[k]) {
                    if (tu_verify(o[i].blk[k], o[i].n[k], k + 7) != TU_OK)
                        CHECK(0, "block of exited thread corrupted (%zu bytes)", o[i].n[k]);
                    free(o[i].blk[k]);
                }
        for (int k = 0; k < 500; k++) {
            if (mine[k] && tu_verify(mine[k], 1025 + k * 97, 99999 + k) != TU_OK)
                CHECK(0, "main block %d corrupted", k);
            free(mine[k]);
        }
        TU_COUNT(1);
    }
}

/* ---- emptied slabs are reused --------------------------------------- */
static void reuse(void)
{
    enum { N = 6000, ROUNDS = 20 };
    void **v = malloc(N * sizeof *v);
    CHECK(v != NULL, "malloc");
    if (!v) return;
    uint64_t mapped[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        tu_rng r = tu_rng_seed(4242);
        for (int i = 0; i < N; i++) {
            size_t n = tu_range(&r, 1025, HAK_MID_MAX);
            v[i] = malloc(n);
            CHECK(v[i] != NULL, "malloc(%zu)", n);
            if (v[i]) { ((char *)v[i])[0] = 1; ((char *)v[i])[n - 1] = 2; }
        }
        /* free from the middle outwards */
        for (int i = N / 2; i < N; i++) free(v[i]);
        for (int i = 0; i < N / 2; i++) free(v[i]);
        mapped[round] = tu_stats().superslabs_mapped;
    }
    CHECK(mapped[1] > 0, "superslabs_mapped is 0 after mid allocations");
    CHECK(mapped[ROUNDS - 1] <= mapped[1] + mapped[1] / 10 + 2,
          "superslabs_mapped keeps growing over identical rounds: %llu after round 2, %llu "
          "after round %d", (unsigned long long)mapped[1],
          (unsigned long long)mapped[ROUNDS - 1], ROUNDS);
    free(v);
}

/* The tail canary: a mid block is usable up to its requested size,
 * exactly, through malloc, calloc, memalign and realloc in place; the
 * bytes after it are checked on free, by the owner or another thread.
 * Blocks that fill their class (4096, 53248) or leave it a few bytes have
 * a shorter canary or none, and are never reported. */
enum { MADE_MALLOC, MADE_CALLOC, MADE_MEMALIGN, MADE_SHRUNK, MADE_GROWN, MADE_KINDS };
static const size_t canary_sizes[] = { 1025, 1270, 1279, 1280, 4000, 4090, 4096, 20000, 30001,
                                       HAK_MID_MAX - 7, HAK_MID_MAX };
static char *canary_block(unsigned how, size_t n)
{
    switch (how) {
    case MADE_CALLOC: return calloc(1, n);
    case MADE_MEMALIGN: return memalign(256, n);
    case MADE_SHRUNK: return realloc(malloc(n + n / 8), n); /* kept in place */
    case MADE_GROWN: return realloc(malloc(n - n / 64), n);
    default: return malloc(n);
    }
}
static void *free_in_thread(void *p)
{
    free(tu_launder(p));
    return NULL;
}
static void free_by_another_thread(void *p)
{
    pthread_t t;
    pthread_create(&t, NULL, free_in_thread, p);
    pthread_join(t, NULL);
}
/* Does a block of n bytes made that way fill its class (no canary)?
 * Shrunk ones come from the class above (53248: from a large block). */
static bool fills_class(size_t n, unsigned how)
{
    return n == HAK_MID_MAX || ((n == 1280 || n == 4096) && how != MADE_SHRUNK);
}
/* How the overflowed block is given back */
enum { BY_FREE, BY_REMOTE_FREE, BY_REALLOC_IN_PLACE, BY_KINDS };
/* arg: size index + 16 * how the block was made + 128 * how it goes back */
static void overflow_by_one(size_t arg)
{
    size_t n = canary_sizes[arg % 16];
    char *p = canary_block((unsigned)(arg / 16 % 8), n);
    memset(p, 1, n);
    ((volatile char *)tu_launder(p))[n] ^= 0x5a; /* one byte past the end */
    if (arg / 128 == BY_REMOTE_FREE) {
        free_by_another_thread(p);
    } else if (arg / 128 == BY_REALLOC_IN_PLACE) {
        p = realloc(tu_launder(p), n - 8); /* same class: kept in place */
        printf("realloc kept %p\n", (void *)p);
    } else {
        free(tu_launder(p));
    }
}
static void tail_canary(void)
{
    const size_t nsizes = sizeof canary_sizes / sizeof *canary_sizes;
    for (size_t i = 0; i < nsizes; i++) {
        size_t n = canary_sizes[i];
        for (unsigned how = 0; how < MADE_KINDS; how++) {
            char *p = canary_block(how, n);
            CHECK(p && malloc_usable_size(p) == n, "usable size %zu of a %zu-byte block (made %u)",
                  p ? malloc_usable_size(p) : 0, n, how);
            if (!p)
                continue;
            memset(p, (int)how, n); /* up to the last byte is the program's */
            if (how == MADE_GROWN) /* another thread frees it: no report */
                free_by_another_thread(p);
            else
                free(p);
        }
    }
    /* The byte past the end is reported wherever the class leaves room
     * for it, by free, another thread's free and realloc in place. */
    static const char *const by[BY_KINDS] = { "free", "another thread's free", "realloc in place" };
    for (size_t i = 0; i < nsizes; i++) {
        size_t n = canary_sizes[i];
        for (unsigned how = 0; how < MADE_KINDS; how++) {
            if (fills_class(n, how))
                continue;
            for (size_t back = 0; back < BY_KINDS; back++) {
                char err[512];
                int st = tu_in_child(overflow_by_one, i + 16 * how + 128 * back, err, sizeof err);
                CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, "block overflow"),
                      "a byte past a %zu-byte block (made %u, given back by %s): status %#x, '%s'",
                      n, how, by[back], st, err);
            }
        }
    }
}

int main(void)
{
    sizes();
    tail_canary();
    cross_thread();
    orphans();
    reuse();
    return TU_DONE();
}
