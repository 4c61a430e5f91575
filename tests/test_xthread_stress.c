/* Many-thread cross-thread free stress (issue #11): 72 threads allocate
 * blocks at and around every tiny/mid size class boundary (and a few large
 * sizes), fill every byte with a pattern of (address, size, producer, seq)
 * and post them to other threads' mailboxes; the receiver verifies every
 * byte and frees it.  Half of the threads exit (and are joined) while
 * blocks they allocated still wait in mailboxes, to be freed by threads
 * that keep running; then new threads take their slots (and adopt their
 * heaps), several times.  Every block must be received exactly once, and
 * at the end nothing may be left in use.  Runs for STRESS_SECONDS (and at
 * least MIN_OPS ops per thread); also in the hardened build, where
 * canaries make usable sizes (and the tier of the last mid sizes) differ.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include "testutil.h"

enum {
    NSLOTS    = 72,    /* threads running at once (issue #11: 64+)          */
    MBOX_CAP  = 64,    /* blocks a mailbox holds; bounds the memory in flight */
    DRAIN     = 16,    /* blocks a worker takes from its mailbox per op      */
    WAVES     = 6,     /* exits + restarts of half the threads               */
    MIN_OPS   = 800,   /* per worker, however short STRESS_SECONDS is        */
    EPOCH_OPS = 64,    /* ops a worker still does after any other's exit     */
    WILL      = 4,     /* blocks a worker allocates last, for main to post   */
    MAX_GID   = NSLOTS * (WAVES + 3),
    NCLASS    = 47,    /* HAK_NCLASS (core/types.h)                          */
    LARGE_ONE_IN = 64, /* one block in 64 is large                           */
};

/* ---- sizes ------------------------------------------------------------ */
/* Each class's block size as core/heap.c classes_init computes it (the
 * last one cut to HAK_MID_MAX), with the sizes either side: size is the
 * largest request of its class, size + 1 the smallest of the next. */
static size_t sizes[NCLASS * 3 + 1];
static unsigned char size_group[NCLASS * 3 + 1]; /* 0: tiny, else 1 + class % 4 */
static unsigned nsizes;
static const size_t large_sizes[] = {
    HAK_MID_MAX + 1, 65535, 65536, 65537, 131072, 262145, 524288, 1048575, 1048576,
};
#define NLARGE (sizeof large_sizes / sizeof large_sizes[0])

static void add_size(size_t n, unsigned c)
{
    if (n < 1) n = 1;
    if (n > HAK_MID_MAX) n = HAK_MID_MAX;
    for (unsigned i = 0; i < nsizes; i++)
        if (sizes[i] == n) return;
    size_group[nsizes] = n <= HAK_TINY_MAX ? 0 : 1 + c % 4;
    sizes[nsizes++] = n;
}

/* Each class's largest size and its neighbours: 16..128 by 16, then 5/4,
 * 6/4, 7/4 and 8/4 of each power of two, and from 4 KiB up 9/8 before
 * 5/4 (the last class ends at 52 KiB). */
static void add_boundary(size_t size, unsigned c)
{
    if (size > HAK_MID_MAX) size = HAK_MID_MAX;
    add_size(size - 1, c);
    add_size(size, c);
    add_size(size + 1, c);
}

static void sizes_init(void)
{
    add_size(1, 0);
    unsigned c = 0;
    for (size_t size = 16; size <= 128; size += 16)
        add_boundary(size, c++);
    for (size_t pow2 = 128; c < NCLASS; pow2 *= 2) {
        if (pow2 >= 4096)
            add_boundary(pow2 * 9 / 8, c++);
        for (size_t quarters = 5; quarters <= 8 && c < NCLASS; quarters++)
            add_boundary(pow2 * quarters / 4, c++);
    }
}

/* ---- pattern ---------------------------------------------------------- */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* The seed depends on the address: a block handed out twice, or copied
 * or moved, no longer verifies. */
static inline uint64_t block_seed(const void *p, size_t n, unsigned gid, uint64_t seq)
{
    return mix64((uintptr_t)p ^ mix64(n ^ ((uint64_t)gid << 40) ^ (seq << 8)));
}
static inline uint64_t pat_word(uint64_t seed, size_t w)
{
    return seed ^ (w * 0x9E3779B97F4A7C15ull);
}
static inline uint8_t pat_byte(uint64_t seed, size_t i)
{
    return (uint8_t)(pat_word(seed, i >> 3) >> (8 * (i & 7)));
}

/* Every byte, a word at a time (the byte tail last): a full check of a
 * 1 MiB block costs well under a millisecond even at -O1. */
static void fill(void *p, size_t n, uint64_t seed)
{
    uint8_t *b = p;
    size_t w = 0;
    for (; (w + 1) * 8 <= n; w++) {
        uint64_t v = pat_word(seed, w);
        memcpy(b + w * 8, &v, 8);
    }
    for (size_t i = w * 8; i < n; i++) b[i] = pat_byte(seed, i);
}

/* Offset of the first wrong byte, or TU_OK. */
static size_t verify(const void *p, size_t n, uint64_t seed)
{
    const uint8_t *b = p;
    size_t w = 0;
    for (; (w + 1) * 8 <= n; w++) {
        uint64_t v;
        memcpy(&v, b + w * 8, 8);
        if (v != pat_word(seed, w)) break;
    }
    for (size_t i = w * 8; i < n; i++)
        if (b[i] != pat_byte(seed, i)) return i;
    return TU_OK;
}

static size_t first_nonzero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return i;
    return TU_OK;
}

/* ---- mailboxes -------------------------------------------------------- */
/* What travels with a block (the block itself holds only its pattern, so
 * that 1-byte blocks take part too). */
struct entry {
    void    *p;
    uint32_t size;
    uint32_t gid;   /* producer: one per thread ever started */
    uint64_t seq;   /* the producer's count: (gid, seq) names a block */
};

/* One per thread slot; it outlives the slot's threads, so what a thread
 * did not take before it exited goes to the next thread of the slot. */
static struct mailbox {
    pthread_mutex_t mu;
    unsigned head, tail;
    struct entry e[MBOX_CAP];
} mbox[NSLOTS];

/* Post e to the slot; if its mailbox is full (its thread is slow, or
 * between waves), take the oldest block out to make room: the poster then
 * frees that one, which still is (almost always) another thread's. */
static int mbox_put(unsigned slot, const struct entry *e, struct entry *old)
{
    struct mailbox *m = &mbox[slot];
    int took = 0;
    pthread_mutex_lock(&m->mu);
    if (m->tail - m->head == MBOX_CAP) {
        *old = m->e[m->head++ % MBOX_CAP];
        took = 1;
    }
    m->e[m->tail++ % MBOX_CAP] = *e;
    pthread_mutex_unlock(&m->mu);
    return took;
}

static int mbox_get(unsigned slot, struct entry *e)
{
    struct mailbox *m = &mbox[slot];
    int ok = 0;
    pthread_mutex_lock(&m->mu);
    if (m->tail != m->head) {
        *e = m->e[m->head++ % MBOX_CAP];
        ok = 1;
    }
    pthread_mutex_unlock(&m->mu);
    return ok;
}

/* ---- workers ---------------------------------------------------------- */
struct worker {
    pthread_t    tid;
    unsigned     slot, gid;
    int          drain_only; /* the last wave: empty the mailbox, allocate nothing */
    int          stop;       /* set by main */
    unsigned     nwill;
    struct entry will[WILL]; /* allocated just before the thread ends */
};
static struct worker workers[NSLOTS];

/* exited[gid] != 0: that producer has been joined (in stop_and_join call
 * number exited[gid]), so its heap is abandoned (or adopted by a new
 * thread) when its blocks are freed. */
static unsigned exited[MAX_GID];
/* Bumped by main after each join; see worker_thread. */
static unsigned epoch;
/* Set while main starts or joins threads: see worker_thread. */
static int main_busy;

/* Totals, added by each thread once at its end.  The sum of hashes of
 * (gid, seq) received must equal the sum over those produced, and so must
 * the counts: a block lost, received twice, or mixed up with another
 * cannot pass both. */
static uint64_t produced_n, produced_sum, consumed_n, consumed_sum;
static uint64_t orphan_frees, calloc_n, large_n, own_frees;
static uint64_t bad_blocks;

struct tally { uint64_t n, sum, orphans; };

static inline uint64_t id_hash(unsigned gid, uint64_t seq)
{
    return mix64(((uint64_t)gid << 40) ^ seq ^ 0x5eed);
}

static void tally_add(const struct tally *t)
{
    __atomic_add_fetch(&consumed_n, t->n, __ATOMIC_RELAXED);
    __atomic_add_fetch(&consumed_sum, t->sum, __ATOMIC_RELAXED);
    __atomic_add_fetch(&orphan_frees, t->orphans, __ATOMIC_RELAXED);
}

/* Verify every byte of e's block and free it (free or hak_free). */
static void consume(const struct entry *e, struct tally *t, int is_worker)
{
    uint64_t seed = block_seed(e->p, e->size, e->gid, e->seq);
    size_t off = verify(e->p, e->size, seed);
    size_t usable = e->seq & 2 ? malloc_usable_size(e->p) : hak_usable_size(e->p);
    t->n++;
    t->sum += id_hash(e->gid, e->seq);
    if (off != TU_OK || usable < e->size) {
        __atomic_add_fetch(&bad_blocks, 1, __ATOMIC_RELAXED);
        if (off != TU_OK)
            CHECK(0, "block %p of %u bytes (producer %u, seq %llu): byte %zu is 0x%02x, "
                  "expected 0x%02x", e->p, e->size, e->gid, (unsigned long long)e->seq, off,
                  ((const uint8_t *)e->p)[off], pat_byte(seed, off));
        else
            CHECK(0, "block %p of %u bytes (producer %u, seq %llu): usable size %zu", e->p,
                  e->size, e->gid, (unsigned long long)e->seq, usable);
        return; /* leaked: freeing a damaged block could only cloud the report */
    }
    if (is_worker && __atomic_load_n(&exited[e->gid], __ATOMIC_ACQUIRE)) t->orphans++;
    if (e->seq & 1) free(e->p); else hak_free(e->p);
}

/* A filled block of n bytes, from malloc, hak_malloc, calloc or hak_calloc. */
static int produce(tu_rng *r, size_t n, unsigned gid, uint64_t seq, uint64_t *ncalloc,
                   struct entry *e)
{
    void *p;
    if (tu_rand(r) % 16 == 0) {
        /* a block freed by another thread and handed out again must be
         * cleared like any other */
        p = seq & 1 ? calloc(1, n) : hak_calloc(n, 1);
        if (p) {
            (*ncalloc)++;
            size_t nz = first_nonzero(p, n);
            CHECK(nz == TU_OK, "calloc(%zu) = %p: byte %zu is not zero", n, p, nz);
        }
    } else {
        p = seq & 1 ? hak_malloc(n) : malloc(n);
    }
    CHECK(p != NULL, "malloc(%zu) failed", n);
    if (!p) return 0;
    fill(p, n, block_seed(p, n, gid, seq));
    *e = (struct entry){ p, (uint32_t)n, gid, seq };
    return 1;
}

static void *worker_thread(void *arg)
{
    struct worker *w = arg;
    struct tally t = { 0, 0, 0 };
    struct entry e, old;
    if (w->drain_only) {
        while (mbox_get(w->slot, &e)) consume(&e, &t, 1);
        tally_add(&t);
        return NULL;
    }
    tu_rng r = tu_rng_seed(0x1234 + w->gid);
    /* Every tiny size, and the mid sizes of one class in four (by gid):
     * a heap serving all 23 mid classes holds a span of up to 512 KiB for
     * each, which for 72 threads alone comes near a GiB. */
    size_t mine[NCLASS * 3 + 1];
    unsigned nmine = 0;
    for (unsigned i = 0; i < nsizes; i++)
        if (size_group[i] == 0 || size_group[i] == 1 + w->gid % 4) mine[nmine++] = sizes[i];
    uint64_t seq = 0, psum = 0, ncalloc = 0, nlarge = 0, nown = 0;
    unsigned seen_epoch = __atomic_load_n(&epoch, __ATOMIC_ACQUIRE), since = 0;
    /* Each op: take up to DRAIN blocks from the own mailbox, then allocate
     * one and post it to another slot.  A worker leaves only when main
     * asks, after MIN_OPS ops, and after EPOCH_OPS ops since the last
     * thread exit: so every exit is followed by work (and frees of the
     * exited thread's blocks) in the threads still running. */
    for (;;) {
        unsigned ep = __atomic_load_n(&epoch, __ATOMIC_ACQUIRE);
        if (ep != seen_epoch) { seen_epoch = ep; since = 0; }
        if (seq >= MIN_OPS && since >= EPOCH_OPS && __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
            break;
        since++;
        /* Against 72 busy threads, main and the threads exiting get so
         * little CPU that starting and joining half of them took seconds:
         * meanwhile, those not asked to stop sleep 1 ms between ops (they
         * still run, and free what the exiting threads allocated). */
        if (__atomic_load_n(&main_busy, __ATOMIC_RELAXED) &&
            !__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
            struct timespec ts = { 0, 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
        for (int i = 0; i < DRAIN && mbox_get(w->slot, &e); i++) consume(&e, &t, 1);

        size_t n;
        if (tu_rand(&r) % LARGE_ONE_IN == 0) {
            n = large_sizes[tu_rand(&r) % NLARGE];
            nlarge++;
        } else {
            n = mine[tu_rand(&r) % nmine];
        }
        if (!produce(&r, n, w->gid, seq, &ncalloc, &e)) break;
        psum += id_hash(w->gid, seq);
        seq++;
        unsigned to = (w->slot + 1 + (unsigned)(tu_rand(&r) % (NSLOTS - 1))) % NSLOTS;
        if (mbox_put(to, &e, &old)) {
            nown += old.gid == w->gid;
            consume(&old, &t, 1);
        }
    }
    /* The last blocks, one large: main posts them once this thread is
     * joined, so some blocks are certainly freed after their producer. */
    for (w->nwill = 0; w->nwill < WILL; w->nwill++) {
        size_t n = w->nwill ? mine[tu_rand(&r) % nmine] : large_sizes[tu_rand(&r) % NLARGE];
        if (!produce(&r, n, w->gid, seq, &ncalloc, &w->will[w->nwill])) break;
        psum += id_hash(w->gid, seq);
        seq++;
    }
    __atomic_add_fetch(&produced_n, seq, __ATOMIC_RELAXED);
    __atomic_add_fetch(&produced_sum, psum, __ATOMIC_RELAXED);
    __atomic_add_fetch(&calloc_n, ncalloc, __ATOMIC_RELAXED);
    __atomic_add_fetch(&large_n, nlarge, __ATOMIC_RELAXED);
    __atomic_add_fetch(&own_frees, nown, __ATOMIC_RELAXED);
    tally_add(&t);
    return NULL;
}

static unsigned next_gid;
static struct tally main_tally; /* blocks main frees (pushed out by a will) */
static uint64_t wills_posted, waiting_at_exit;
static unsigned joins;

static void start(unsigned slot, int drain_only)
{
    struct worker *w = &workers[slot];
    if (next_gid >= MAX_GID) {
        fprintf(stderr, "test_xthread_stress: more than %d threads\n", MAX_GID);
        exit(1);
    }
    w->slot = slot;
    w->gid = next_gid++;
    w->drain_only = drain_only;
    w->stop = 0;
    w->nwill = 0;
    int rc = pthread_create(&w->tid, NULL, worker_thread, w);
    if (rc) {
        fprintf(stderr, "test_xthread_stress: pthread_create: %s\n", strerror(rc));
        exit(1);
    }
}

/* Stop and join the workers of the slots of the given parity (all slots
 * if parity < 0), then post their wills to the other slots, whose
 * threads are still running. */
static void stop_and_join(int parity)
{
    for (unsigned s = 0; s < NSLOTS; s++)
        if (parity < 0 || (int)(s % 2) == parity)
            __atomic_store_n(&workers[s].stop, 1, __ATOMIC_RELEASE);
    joins++;
    for (unsigned s = 0; s < NSLOTS; s++) {
        if (parity >= 0 && (int)(s % 2) != parity) continue;
        pthread_join(workers[s].tid, NULL);
        __atomic_store_n(&exited[workers[s].gid], joins, __ATOMIC_RELEASE);
    }
    /* how many blocks of the threads just joined still wait (wills aside) */
    for (unsigned s = 0; s < NSLOTS; s++) {
        struct mailbox *m = &mbox[s];
        pthread_mutex_lock(&m->mu);
        for (unsigned i = m->head; i != m->tail; i++)
            waiting_at_exit += __atomic_load_n(&exited[m->e[i % MBOX_CAP].gid],
                                               __ATOMIC_RELAXED) == joins;
        pthread_mutex_unlock(&m->mu);
    }
    for (unsigned s = 0; s < NSLOTS; s++) {
        struct worker *w = &workers[s];
        if (parity >= 0 && (int)(s % 2) != parity) continue;
        for (unsigned k = 0; k < w->nwill; k++) {
            struct entry old;
            /* an odd distance: a slot of the other parity */
            if (mbox_put((s + 1 + 2 * k) % NSLOTS, &w->will[k], &old))
                consume(&old, &main_tally, 0);
            wills_posted++;
        }
        w->nwill = 0;
    }
    __atomic_add_fetch(&epoch, 1, __ATOMIC_RELEASE);
}

static void sleep_until(double t)
{
    double d = t - tu_now();
    if (d <= 0) return;
    struct timespec ts = { (time_t)d, (long)((d - (time_t)d) * 1e9) };
    nanosleep(&ts, NULL);
}

int main(void)
{
    sizes_init();
    CHECK(nsizes > 100 && sizes[nsizes - 1] == HAK_MID_MAX, "%u sizes, the last %zu", nsizes,
          sizes[nsizes - 1]);
    for (unsigned s = 0; s < NSLOTS; s++) pthread_mutex_init(&mbox[s].mu, NULL);
    double t0 = tu_now();
    double wave_time = tu_stress_seconds() / (WAVES + 1);
    struct hak_stats s0 = tu_stats();

    __atomic_store_n(&main_busy, 1, __ATOMIC_RELAXED);
    for (unsigned s = 0; s < NSLOTS; s++) start(s, 0);
    __atomic_store_n(&main_busy, 0, __ATOMIC_RELAXED);
    for (int w = 0; w < WAVES && !tu_failures(); w++) {
        sleep_until(t0 + (w + 1) * wave_time);
        /* half of the threads go while the others keep running; new
         * threads (adopting the heaps just abandoned) take their slots */
        __atomic_store_n(&main_busy, 1, __ATOMIC_RELAXED);
        stop_and_join(w % 2);
        for (unsigned s = w % 2; s < NSLOTS; s += 2) start(s, 0);
        __atomic_store_n(&main_busy, 0, __ATOMIC_RELAXED);
    }
    sleep_until(t0 + (WAVES + 1) * wave_time);
    stop_and_join(-1);
    /* the last wave only frees what is left, in heaps of exited threads */
    for (unsigned s = 0; s < NSLOTS; s++) start(s, 1);
    for (unsigned s = 0; s < NSLOTS; s++) pthread_join(workers[s].tid, NULL);
    tally_add(&main_tally);

    size_t left = 0;
    for (unsigned s = 0; s < NSLOTS; s++) left += mbox[s].tail - mbox[s].head;
    CHECK(left == 0, "%zu blocks left in mailboxes", left);
    CHECK(bad_blocks == 0, "%llu blocks corrupted", (unsigned long long)bad_blocks);
    CHECK(consumed_n == produced_n, "%llu blocks produced, %llu received",
          (unsigned long long)produced_n, (unsigned long long)consumed_n);
    CHECK(consumed_sum == produced_sum,
          "the blocks received are not those produced, each exactly once");
    /* every will posted was freed by a worker after its producer had been
     * joined, unless main pushed it out again */
    CHECK(orphan_frees > 0 && orphan_frees + main_tally.n >= wills_posted,
          "%llu frees after the producer exited, %llu wills posted, %llu freed by main",
          (unsigned long long)orphan_frees, (unsigned long long)wills_posted,
          (unsigned long long)main_tally.n);
    CHECK(calloc_n > 0 && large_n > 0, "calloc %llu, large %llu: size mix not exercised",
          (unsigned long long)calloc_n, (unsigned long long)large_n);

    /* Take what other threads sent to the abandoned heaps back to their
     * spans, so that bytes in use count only blocks not freed. */
    hak_trim();
    struct hak_stats s1 = tu_stats();
    CHECK(s1.remote_frees > s0.remote_frees, "remote_frees %llu -> %llu: no cross-thread free "
          "counted", (unsigned long long)s0.remote_frees, (unsigned long long)s1.remote_frees);
    CHECK(s1.heaps_adopted > s0.heaps_adopted, "no heap adopted by the later waves");
    CHECK(s1.large_allocs - s0.large_allocs == s1.large_frees - s0.large_frees,
          "%llu large blocks allocated, %llu freed",
          (unsigned long long)(s1.large_allocs - s0.large_allocs),
          (unsigned long long)(s1.large_frees - s0.large_frees));
    CHECK(s1.large_bytes_in_use <= s0.large_bytes_in_use, "large bytes in use %llu -> %llu",
          (unsigned long long)s0.large_bytes_in_use, (unsigned long long)s1.large_bytes_in_use);
    /* Slack for glibc's own allocations (the dtv of each stack it keeps
     * cached, a few hundred bytes each); lost blocks of this test would
     * be megabytes. */
    uint64_t in0 = s0.tiny_bytes_in_use + s0.mid_bytes_in_use;
    uint64_t in1 = s1.tiny_bytes_in_use + s1.mid_bytes_in_use;
    CHECK(in1 <= in0 + 64 * 1024, "tiny+mid bytes in use %llu -> %llu after every block "
          "was freed", (unsigned long long)in0, (unsigned long long)in1);

    printf("test_xthread_stress: %u threads, %llu blocks (%llu large, %llu calloc), "
           "%llu freed by their producer, %llu after it exited (%llu waiting at its exit), "
           "%llu remote frees, %.2fs\n", next_gid, (unsigned long long)produced_n,
           (unsigned long long)large_n, (unsigned long long)calloc_n,
           (unsigned long long)own_frees, (unsigned long long)orphan_frees,
           (unsigned long long)waiting_at_exit,
           (unsigned long long)(s1.remote_frees - s0.remote_frees), tu_now() - t0);
    return TU_DONE();
}
