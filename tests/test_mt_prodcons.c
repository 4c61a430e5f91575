/* Multithreaded producer/consumer (every block consumed exactly once,
 * contents intact) and a "free storm" (many threads freeing one thread's
 * blocks at once) with a live-address set that catches double hand-outs.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include "testutil.h"

/* ---- blocks: header + pattern --------------------------------------- */
struct hdr {
    uintptr_t self;   /* the block's own address */
    uint64_t seq;
    uint32_t producer;
    uint32_t size;
};
#define PAT_HEAD 256
#define PAT_TAIL 64

static size_t pick_size(tu_rng *r)
{
    uint64_t x = tu_rand(r) % 100;
    if (x < 70) return tu_range(r, sizeof(struct hdr), HAK_TINY_MAX);
    if (x < 97) return tu_range(r, HAK_TINY_MAX + 1, HAK_MID_MAX);
    return tu_range(r, HAK_MID_MAX + 1, 1 << 20);
}

static void *make_block(size_t n, uint32_t producer, uint64_t seq)
{
    struct hdr *h = malloc(n);
    if (!h) return NULL;
    h->self = (uintptr_t)h;
    h->seq = seq;
    h->producer = producer;
    h->size = (uint32_t)n;
    uint8_t *b = (uint8_t *)h;
    size_t head = n < PAT_HEAD ? n : PAT_HEAD;
    tu_fill(b + sizeof *h, head - sizeof *h, seq);
    if (n > PAT_HEAD) {
        size_t t = n - PAT_HEAD < PAT_TAIL ? n - PAT_HEAD : PAT_TAIL;
        tu_fill(b + n - t, t, seq ^ 0xABCD);
    }
    return h;
}

static int check_block(const void *p)
{
    const struct hdr *h = p;
    if (h->self != (uintptr_t)p) return 0;
    size_t n = h->size;
    const uint8_t *b = p;
    size_t head = n < PAT_HEAD ? n : PAT_HEAD;
    if (tu_verify(b + sizeof *h, head - sizeof *h, h->seq) != TU_OK) return 0;
    if (n > PAT_HEAD) {
        size_t t = n - PAT_HEAD < PAT_TAIL ? n - PAT_HEAD : PAT_TAIL;
        if (tu_verify(b + n - t, t, h->seq ^ 0xABCD) != TU_OK) return 0;
    }
    return malloc_usable_size((void *)p) >= n;
}

/* ---- producer/consumer ---------------------------------------------- */
enum { NPROD = 4, NCONS = 4, QCAP = 4096, MAXSEQ = 1 << 21 };
static struct {
    pthread_mutex_t mu;
    pthread_cond_t not_full, not_empty;
    void *ring[QCAP];
    size_t head, tail;
} q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, 0, 0 };

static void q_push(void *p)
{
    pthread_mutex_lock(&q.mu);
    while (q.tail - q.head == QCAP) pthread_cond_wait(&q.not_full, &q.mu);
    q.ring[q.tail++ % QCAP] = p;
    pthread_cond_signal(&q.not_empty);
    pthread_mutex_unlock(&q.mu);
}

static void *q_pop(void)
{
    pthread_mutex_lock(&q.mu);
    while (q.tail == q.head) pthread_cond_wait(&q.not_empty, &q.mu);
    void *p = q.ring[q.head++ % QCAP];
    pthread_cond_signal(&q.not_full);
    pthread_mutex_unlock(&q.mu);
    return p;
}

static uint64_t *seen[NPROD];           /* bitmaps: consumed seq numbers */
static uint64_t produced[NPROD];
static uint64_t consumed_total, dup_consumed, bad_blocks;
static double deadline;

static void producer(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(1000 + idx);
    uint64_t seq = 0;
    while (seq < MAXSEQ && (seq < 20000 || tu_now() < deadline)) {
        void *p = make_block(pick_size(&r), (uint32_t)idx, seq);
        CHECK(p != NULL, "producer malloc failed");
        if (!p) break;
        q_push(p);
        seq++;
    }
    produced[idx] = seq;
}

static void consumer(int idx, void *ctx)
{
    for (;;) {
        struct hdr *h = q_pop();
        if (!h) return; /* sentinel */
        if (!check_block(h)) {
            __atomic_add_fetch(&bad_blocks, 1, __ATOMIC_RELAXED);
        } else if (h->producer < NPROD && h->seq < MAXSEQ) {
            uint64_t bit = 1ull << (h->seq & 63);
            uint64_t old = __atomic_fetch_or(&seen[h->producer][h->seq >> 6], bit, __ATOMIC_RELAXED);
            if (old & bit) __atomic_add_fetch(&dup_consumed, 1, __ATOMIC_RELAXED);
        }
        __atomic_add_fetch(&consumed_total, 1, __ATOMIC_RELAXED);
        free(h);
    }
}

static void pc_thread(int idx, void *ctx)
{
    if (idx < NPROD) producer(idx, ctx);
    else consumer(idx - NPROD, ctx);
}

static void prodcons(void)
{
    for (int i = 0; i < NPROD; i++) {
        seen[i] = calloc(MAXSEQ / 64, sizeof(uint64_t));
        CHECK(seen[i] != NULL, "calloc bitmap");
        if (!seen[i]) return;
    }
    deadline = tu_now() + tu_stress_seconds() / 2;
    /* producers first; consumers get one NULL each after all producers end */
    pthread_t pt[NPROD], ct[NCONS];
    struct tu_thread_arg_ pa[NPROD], ca[NCONS];
    for (int i = 0; i < NCONS; i++) {
        ca[i] = (struct tu_thread_arg_){ pc_thread, NULL, NPROD + i };
        CHECK(pthread_create(&ct[i], NULL, tu_thread_tramp_, &ca[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < NPROD; i++) {
        pa[i] = (struct tu_thread_arg_){ pc_thread, NULL, i };
        CHECK(pthread_create(&pt[i], NULL, tu_thread_tramp_, &pa[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < NPROD; i++) pthread_join(pt[i], NULL);
    for (int i = 0; i < NCONS; i++) q_push(NULL);
    for (int i = 0; i < NCONS; i++) pthread_join(ct[i], NULL);

    uint64_t total = 0, missing = 0;
    for (int i = 0; i < NPROD; i++) {
        total += produced[i];
        for (uint64_t s = 0; s < produced[i]; s++)
            if (!(seen[i][s >> 6] >> (s & 63) & 1)) missing++;
        free(seen[i]);
    }
    CHECK(bad_blocks == 0, "%llu consumed blocks had a wrong header/pattern",
          (unsigned long long)bad_blocks);
    CHECK(dup_consumed == 0, "%llu blocks consumed twice", (unsigned long long)dup_consumed);
    CHECK(missing == 0, "%llu produced blocks never consumed", (unsigned long long)missing);
    CHECK(consumed_total == total, "consumed %llu blocks, produced %llu",
          (unsigned long long)consumed_total, (unsigned long long)total);
}

/* ---- live-address set: sharded linear probing ------------------------ */
enum { SHARDS = 64, SCAP = 1 << 15 };
static struct shard {
    pthread_mutex_t mu;
    uintptr_t *slot;
    size_t count;
} live[SHARDS];

static inline uint64_t hmix(uintptr_t a) { return (a >> 4) * 0x9E3779B97F4A7C15ull; }
static inline struct shard *shard_of(uintptr_t a) { return &live[hmix(a) >> 58]; }
static inline size_t home_of(uintptr_t a) { return (hmix(a) >> 20) & (SCAP - 1); }

static void live_init(void)
{
    for (int i = 0; i < SHARDS; i++) {
        pthread_mutex_init(&live[i].mu, NULL);
        live[i].slot = calloc(SCAP, sizeof(uintptr_t));
        live[i].count = 0;
        CHECK(live[i].slot != NULL, "calloc shard");
    }
}

/* Returns 0 if a was already live (handed out twice). */
static int live_add(void *p)
{
    uintptr_t a = (uintptr_t)p;
    struct shard *s = shard_of(a);
    int ok = 1;
    pthread_mutex_lock(&s->mu);
    if (s->count >= SCAP * 3 / 4) {
        pthread_mutex_unlock(&s->mu);
        CHECK(0, "live set shard full");
        return 1;
    }
    size_t i = home_of(a);
    while (s->slot[i]) {
        if (s->slot[i] == a) { ok = 0; break; }
        i = (i + 1) & (SCAP - 1);
    }
    if (ok) { s->slot[i] = a; s->count++; }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* Returns 0 if a was not live. */
static int live_del(void *p)
{
    uintptr_t a = (uintptr_t)p;
    struct shard *s = shard_of(a);
    pthread_mutex_lock(&s->mu);
    size_t i = home_of(a);
    while (s->slot[i] && s->slot[i] != a) i = (i + 1) & (SCAP - 1);
    if (!s->slot[i]) { pthread_mutex_unlock(&s->mu); return 0; }
    /* backward-shift deletion */
    size_t j = i;
    for (;;) {
        j = (j + 1) & (SCAP - 1);
        if (!s->slot[j]) break;
        size_t k = home_of(s->slot[j]);
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            s->slot[i] = s->slot[j];
            i = j;
        }
    }
    s->slot[i] = 0;
    s->count--;
    pthread_mutex_unlock(&s->mu);
    return 1;
}

static size_t live_count(void)
{
    size_t n = 0;
    for (int i = 0; i < SHARDS; i++) n += live[i].count;
    return n;
}

static unsigned long dup_handout, bad_free;

static void *alloc_tracked(tu_rng *r, uint64_t seq)
{
    size_t n = pick_size(r);
    if (n > HAK_MID_MAX && tu_rand(r) % 4) n = tu_range(r, sizeof(struct hdr), 4000);
    void *p = make_block(n, 0, seq);
    CHECK(p != NULL, "malloc(%zu)", n);
    if (p && !live_add(p)) {
        if (__atomic_add_fetch(&dup_handout, 1, __ATOMIC_RELAXED) < 5)
            CHECK(0, "address %p handed out while still live", p);
    }
    return p;
}

static void free_tracked(void *p)
{
    if (!check_block(p)) __atomic_add_fetch(&bad_blocks, 1, __ATOMIC_RELAXED);
    if (!live_del(p)) __atomic_add_fetch(&bad_free, 1, __ATOMIC_RELAXED);
    free(p);
}

/* ---- free storm ------------------------------------------------------ */
enum { STORM_N = 120000, STORMERS = 8 };
static void **storm_blk;
static pthread_barrier_t storm_bar;
static void **storm_extra[STORMERS];
enum { EXTRA = STORM_N / STORMERS / 3 };

static void stormer(int idx, void *ctx)
{
    tu_rng r = tu_rng_seed(777 + idx);
    if (idx == 0) {
        /* the owner: allocates everything, then keeps allocating and
         * freeing its own blocks while the others free its blocks */
        for (size_t i = 0; i < STORM_N; i++) storm_blk[i] = alloc_tracked(&r, i);
        pthread_barrier_wait(&storm_bar);
        void *mine[256] = { 0 };
        for (int i = 0; i < 30000; i++) {
            if (mine[i & 255]) free_tracked(mine[i & 255]);
            mine[i & 255] = alloc_tracked(&r, 5000000 + i);
        }
        for (int i = 0; i < 256; i++) if (mine[i]) free_tracked(mine[i]);
        pthread_barrier_wait(&storm_bar);
        return;
    }
    pthread_barrier_wait(&storm_bar);
    /* interleaved slices: neighbouring blocks are freed by different threads */
    size_t k = 0;
    for (size_t i = idx - 1; i < STORM_N; i += STORMERS - 1) {
        if (storm_blk[i]) free_tracked(storm_blk[i]);
        if ((i / (STORMERS - 1)) % 3 == 0 && k < EXTRA)
            {
            storm_extra[idx][k] = alloc_tracked(&r, 1000000 * idx + k);
            k++;
        }
    }
    pthread_barrier_wait(&storm_bar);
    /* free the blocks a neighbour allocated during the storm */
    int victim = idx % (STORMERS - 1) + 1;
    for (size_t j = 0; j < EXTRA; j++)
        if (storm_extra[victim][j]) free_tracked(storm_extra[victim][j]);
}

static void storm(void)
{
    live_init();
    storm_blk = calloc(STORM_N, sizeof *storm_blk);
    CHECK(storm_blk != NULL, "calloc");
    for (int i = 0; i < STORMERS; i++) {
        storm_extra[i] = calloc(EXTRA, sizeof(void *));
        CHECK(storm_extra[i] != NULL, "calloc");
    }
    int rounds = 0;
    double end = tu_now() + tu_stress_seconds() / 2;
    do {
        pthread_barrier_init(&storm_bar, NULL, STORMERS);
        for (int i = 0; i < STORMERS; i++) memset(storm_extra[i], 0, EXTRA * sizeof(void *));
        tu_run_threads(STORMERS, stormer, NULL);
        pthread_barrier_destroy(&storm_bar);
        rounds++;
    } while (tu_now() < end && rounds < 1000);
    CHECK(dup_handout == 0, "%lu addresses handed out while live", dup_handout);
    CHECK(bad_free == 0, "%lu freed blocks were not in the live set", bad_free);
    CHECK(bad_blocks == 0, "%llu blocks corrupted before free", (unsigned long long)bad_blocks);
    CHECK(live_count() == 0, "%zu blocks still live after the storm", live_count());
    free(storm_blk);
    for (int i = 0; i < STORMERS; i++) free(storm_extra[i]);
    for (int i = 0; i < SHARDS; i++) free(live[i].slot);
}

int main(void)
{
    prodcons();
    storm();
    return TU_DONE();
}
