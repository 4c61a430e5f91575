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

static int stop;
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

static void *realloc_loop(void *arg)
{
    double end = *(double *)arg;
    unsigned long it = 0;
    /* at least 10 rounds however long they take (the hardened build's
     * rounds purge and refault 160 MiB: on a loaded machine 2 s held 6) */
    while ((tu_now() < end || it < 10) && tu_failures() < 10 &&
           tu_realloc_round(malloc, realloc, free, OLD, NEW, it + 1, it))
        __atomic_store_n(&a_iters, ++it, __ATOMIC_RELAXED);
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void *mmap_loop(void *arg)
{
    (void)arg;
    tu_mapping_churn(BMAP, KEEP, &stop, &b_iters, &b_bad);
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
    for (int i = 0; i < 32; i++)
        if (!tu_realloc_round(malloc, realloc, free, OLD, NEW, 0, 0))
            break;

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
