/* bench_idle_threads: what a pool of threads keeps resident once it idles.
 *
 * usage: bench_idle_threads THREADS OPS MIN RANGE WAIT_MS [SEED]
 *   THREADS  threads, each running OPS operations on a ring of 16 blocks:
 *            free the oldest, allocate a new one (sizes uniform in
 *            [MIN, MIN+RANGE)) and write every page of it
 *   WAIT_MS  then every thread frees its ring and blocks (alive, making
 *            no allocator call), and the main thread reads the process's
 *            RSS every 250 ms for WAIT_MS ms, with no allocator call either
 *   SEED     default 42
 *
 * Prints "rss_busy_kb=N" (every ring full), "rss_idle_kb=N" (all freed,
 * before the wait), one "t=MS rss_kb=N" line per sample and "rss_end_kb=N":
 * memory a server's idle worker threads hold on to until they run again.
 * SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench_util.h"

#define RING 16

static uint64_t n_threads, n_ops, min_size, range, wait_ms, seed = 42;
static pthread_barrier_t filled, freed;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int done;

/* RSS from /proc/self/statm: open and read, no allocation. */
static unsigned long rss_kb(void)
{
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *p = buf;
    while (*p && *p != ' ') p++;
    while (*p == ' ') p++;
    unsigned long pages = 0;
    while (*p >= '0' && *p <= '9') pages = pages * 10 + (unsigned long)(*p++ - '0');
    return pages * (unsigned long)(sysconf(_SC_PAGESIZE) / 1024);
}

static unsigned char *make(uint64_t *rng)
{
    return bench_block(rng, min_size, range, 4096, "bench_idle_threads");
}

static void *worker(void *arg)
{
    uint64_t rng = rng_seed(seed + (uintptr_t)arg);
    unsigned char *ring[RING];
    for (int i = 0; i < RING; i++)
        ring[i] = make(&rng);
    for (uint64_t op = 0; op < n_ops; op++) {
        free(ring[op % RING]);
        ring[op % RING] = make(&rng);
    }
    pthread_barrier_wait(&filled);
    pthread_barrier_wait(&filled); /* the main thread read RSS */
    for (int i = 0; i < RING; i++)
        free(ring[i]);
    pthread_barrier_wait(&freed);
    pthread_mutex_lock(&mu);
    while (!done)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) { }
}

int main(int argc, char **argv)
{
    if ((argc != 6 && argc != 7) || parse_u64(argv[1], 1, &n_threads) ||
        parse_u64(argv[2], 0, &n_ops) || parse_u64(argv[3], 1, &min_size) ||
        parse_u64(argv[4], 0, &range) || parse_u64(argv[5], 0, &wait_ms) ||
        (argc == 7 && parse_u64(argv[6], 0, &seed))) {
        fprintf(stderr, "usage: %s THREADS OPS MIN RANGE WAIT_MS [SEED]\n", argv[0]);
        return 2;
    }
    pthread_t *t = calloc(n_threads, sizeof *t);
    if (!t || pthread_barrier_init(&filled, NULL, (unsigned)n_threads + 1) ||
        pthread_barrier_init(&freed, NULL, (unsigned)n_threads + 1)) {
        perror("bench_idle_threads");
        return 1;
    }
    for (uint64_t i = 0; i < n_threads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i)) {
            perror("pthread_create");
            return 1;
        }
    pthread_barrier_wait(&filled);
    printf("rss_busy_kb=%lu\n", rss_kb());
    pthread_barrier_wait(&filled);
    pthread_barrier_wait(&freed);
    printf("rss_idle_kb=%lu\n", rss_kb());
    unsigned long last = 0;
    for (uint64_t ms = 250; ms <= wait_ms; ms += 250) {
        sleep_ms(250);
        printf("t=%llu rss_kb=%lu\n", (unsigned long long)ms, last = rss_kb());
    }
    printf("rss_end_kb=%lu\n", wait_ms >= 250 ? last : rss_kb());
    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (uint64_t i = 0; i < n_threads; i++)
        pthread_join(t[i], NULL);
    free(t);
    return 0;
}
