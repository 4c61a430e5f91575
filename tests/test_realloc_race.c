/* realloc of large blocks (>= 1 MiB, moved with mremap) while another
 * thread maps and unmaps memory of its own with plain mmap/munmap.
 *
 * Moving a block must never expose a moment where part of hakmem's address
 * space is unmapped: a concurrent mmap(NULL, ...) could be given that hole,
 * and hakmem re-mapping it afterwards (MAP_FIXED) would silently replace the
 * other thread's pages with zero pages, or the other thread's munmap would
 * later pull pages out from under hakmem.
 *
 * Thread A loops malloc(40 MiB), patterns its first and last pages,
 * realloc(120 MiB), checks that the old contents survived, writes the new
 * tail, frees.  Thread B loops mmap(8 MiB), writes the first and last byte,
 * keeps the 32 newest mappings and checks both bytes of a mapping before
 * unmapping it.  A lost byte in B's mappings or in A's block is a failed
 * CHECK; a SIGSEGV/SIGBUS is reported and fails the test.
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <sys/mman.h>
#include "testutil.h"

#define OLD   (40 * MiB)
#define NEW   (120 * MiB)
#define BMAP  (8 * MiB)
#define KEEP  32
#define PAGE  4096

static volatile int stop;
static unsigned long a_iters, b_iters, b_bad;

/* A fatal signal is a failure of the test, reported without allocating. */
static void on_fatal(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    char msg[128] = "test_realloc_race: FAILED: fatal signal ";
    size_t n = strlen(msg);
    msg[n++] = (char)('0' + sig / 10);
    msg[n++] = (char)('0' + sig % 10);
    const char *at = " at address 0x";
    memcpy(msg + n, at, strlen(at));
    n += strlen(at);
    uintptr_t a = (uintptr_t)si->si_addr;
    for (int sh = 60; sh >= 0; sh -= 4)
        msg[n++] = "0123456789abcdef"[(a >> sh) & 15];
    memcpy(msg + n, " (a mapping was replaced or removed)\n", 37);
    n += 37;
    if (write(2, msg, n) < 0) { /* nothing to do */ }
    _exit(1);
}

/* offset-derived pattern over [from, to) */
static void fill_range(uint8_t *p, size_t from, size_t to, uint64_t seed)
{
    tu_fill_idx(p, from, to, seed);
}
static size_t verify_range(const uint8_t *p, size_t from, size_t to, uint64_t seed)
{
    for (size_t i = from; i < to; i++)
        if (p[i] != tu_pat_(i, seed))
            return i;
    return TU_OK;
}

static void *realloc_loop(void *arg)
{
    double end = *(double *)arg;
    unsigned long it = 0;
    while (tu_now() < end && tu_failures() < 10) {
        uint64_t seed = it + 1;
        uint8_t *p = malloc(OLD);
        CHECK(p != NULL, "malloc(40 MiB) failed");
        if (!p) break;
        /* first and last page patterned, one byte in every MiB between */
        fill_range(p, 0, PAGE, seed);
        fill_range(p, OLD - PAGE, OLD, seed);
        for (size_t off = MiB; off < OLD - PAGE; off += MiB)
            p[off] = (uint8_t)(off / MiB + seed);
        uint8_t *q = realloc(p, NEW);
        CHECK(q != NULL, "realloc(40 MiB -> 120 MiB) failed");
        if (!q) { free(p); break; }
        size_t bad = verify_range(q, 0, PAGE, seed);
        CHECK(bad == TU_OK, "iteration %lu: realloc lost byte %zu of the first page", it, bad);
        bad = verify_range(q, OLD - PAGE, OLD, seed);
        CHECK(bad == TU_OK, "iteration %lu: realloc lost byte %zu of the old last page", it, bad);
        size_t lost = 0;
        for (size_t off = MiB; off < OLD - PAGE; off += MiB)
            lost += q[off] != (uint8_t)(off / MiB + seed);
        CHECK(lost == 0, "iteration %lu: realloc lost %zu of the MiB marks", it, lost);
        /* the grown part is usable */
        q[OLD] = 0x5a;
        q[NEW - 1] = 0xa5;
        CHECK(q[OLD] == 0x5a && q[NEW - 1] == 0xa5, "grown part of the block not writable");
        free(q);
        __atomic_store_n(&a_iters, ++it, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void *mmap_loop(void *arg)
{
    (void)arg;
    unsigned char *ring[KEEP] = { 0 };
    unsigned char tag[KEEP] = { 0 };
    unsigned long it = 0;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        int k = (int)(it % KEEP);
        if (ring[k]) {
            unsigned char *m = ring[k];
            int ok = m[0] == tag[k] && m[BMAP - 1] == (unsigned char)~tag[k];
            TU_COUNT(1);
            if (!ok) {
                __atomic_add_fetch(&b_bad, 1, __ATOMIC_RELAXED);
                CHECK(0, "thread B's own mapping at %p lost its contents (first byte %#x, last "
                      "byte %#x, expected %#x/%#x): another mapping was placed over it",
                      (void *)m, m[0], m[BMAP - 1], tag[k], (unsigned char)~tag[k]);
            }
            CHECK(munmap(m, BMAP) == 0, "munmap: %s", strerror(errno));
            ring[k] = NULL;
        }
        void *m = mmap(NULL, BMAP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(m != MAP_FAILED, "mmap(8 MiB): %s", strerror(errno));
        if (m == MAP_FAILED) break;
        ring[k] = m;
        tag[k] = (unsigned char)(it * 7 + 1) | 1; /* never 0: a zero page shows */
        ring[k][0] = tag[k];
        ring[k][BMAP - 1] = (unsigned char)~tag[k];
        __atomic_store_n(&b_iters, ++it, __ATOMIC_RELAXED);
    }
    for (int k = 0; k < KEEP; k++) {
        if (!ring[k]) continue;
        CHECK(ring[k][0] == tag[k] && ring[k][BMAP - 1] == (unsigned char)~tag[k],
              "thread B's own mapping at %p lost its contents", (void *)ring[k]);
        munmap(ring[k], BMAP);
    }
    return NULL;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    alarm(120); /* a hang fails instead of blocking the suite */

    /* A few rounds first, so that hakmem's address space is reserved (in
     * its steady state for this pattern) before thread B maps anything: the
     * kernel places a new mapping in the highest free gap that fits, and
     * B's own mappings then lie below hakmem's, so a hole in hakmem's range
     * is where B's next mmap would go. */
    for (int i = 0; i < 32; i++) {
        uint8_t *w = malloc(OLD);
        CHECK(w != NULL, "malloc(40 MiB)");
        if (!w) break;
        w[0] = 1;
        w[OLD - 1] = 2;
        uint8_t *w2 = realloc(w, NEW);
        CHECK(w2 != NULL && w2[0] == 1 && w2[OLD - 1] == 2, "realloc(40 MiB -> 120 MiB)");
        free(w2 ? w2 : w);
    }

    double end = tu_now() + tu_stress_seconds();
    pthread_t a, b;
    CHECK(pthread_create(&b, NULL, mmap_loop, NULL) == 0, "pthread_create");
    CHECK(pthread_create(&a, NULL, realloc_loop, &end) == 0, "pthread_create");
    pthread_join(a, NULL);
    pthread_join(b, NULL);

    unsigned long ai = __atomic_load_n(&a_iters, __ATOMIC_RELAXED);
    unsigned long bi = __atomic_load_n(&b_iters, __ATOMIC_RELAXED);
    CHECK(ai >= 10, "only %lu realloc iterations ran", ai);
    CHECK(bi >= 10, "only %lu mmap iterations ran", bi);
    CHECK(b_bad == 0, "%lu of thread B's mappings were overwritten", b_bad);

    /* after the race, hakmem still works on all tiers */
    for (size_t n = 16; n <= 64 * MiB; n *= 4) {
        uint8_t *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p) continue;
        tu_fill(p, n < 8192 ? n : 8192, n);
        p = realloc(p, 3 * n);
        CHECK(p != NULL, "realloc(%zu -> %zu)", n, 3 * n);
        if (!p) continue;
        p[3 * n - 1] = 1;
        free(p);
    }
    return TU_DONE();
}
