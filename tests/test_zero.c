/* Zero-size blocks: malloc(0) and calloc(0, n) return distinct,
 * 16-byte-aligned addresses that any thread can free, and double and
 * invalid frees of them are reported, through fork and thread exit.  In
 * the default build they are 16-byte blocks that can be written (as
 * glibc's 24-byte ones can); with ZERO_SIZE_GUARD (the hardened build,
 * core/zero.c) any access faults, before and after free, and the slots
 * are reused, so a program that churns malloc(0) does not grow.
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <sys/wait.h>
#include <malloc.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include "testutil.h"

/* The misuse below is on purpose (pragma GCC: clang takes it too). */
#pragma GCC diagnostic ignored "-Wpragmas"
#pragma GCC diagnostic ignored "-Wunknown-warning-option"
#pragma GCC diagnostic ignored "-Wuse-after-free"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Warray-bounds"

/* More than one 2 MiB chunk holds (about 129,000 slots). */
enum { MANY = 300000, THREADS = 4, PER_THREAD = 20000 };

static bool guard; /* ZERO_SIZE_GUARD */

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

static void test_basics(void)
{
    void *p = malloc(0), *q = calloc(0, 8), *r = calloc(8, 0), *s = hak_malloc(0);
    void *all[] = { p, q, r, s };
    for (int i = 0; i < 4; i++) {
        CHECK(all[i] != NULL, "zero-size block %d is NULL", i);
        CHECK(((uintptr_t)all[i] & 15) == 0, "zero-size block %p not 16-aligned", all[i]);
        size_t usable = malloc_usable_size(all[i]);
        /* (with canaries, what was asked for: bytes past it are the canary's) */
        bool exact = guard || (hak_mitigations() & HAK_MIT_CANARY);
        CHECK(exact ? usable == 0 : usable >= 16, "usable size of %p is %zu", all[i], usable);
        if (!exact) /* the compatibility the default build keeps */
            memset(all[i], 0x5a, 16);
        CHECK(hak_ptr_kind(all[i]) == HAK_KIND_TINY, "kind of live %p is %d", all[i],
              hak_ptr_kind(all[i]));
        for (int j = 0; j < i; j++)
            CHECK(all[i] != all[j], "blocks %d and %d are both %p", i, j, all[i]);
    }
    free(p);
    CHECK(!guard || hak_ptr_kind(p) == HAK_KIND_FOREIGN, "kind of freed %p is %d", p, hak_ptr_kind(p));
    /* the block just freed is not the next one handed out */
    void *again = malloc(0);
    CHECK(again != p, "malloc(0) handed back %p, freed just before", p);
    free(again);
    /* realloc grows it into a real block; realloc(x, 0) frees (glibc) */
    q = realloc(q, 100);
    CHECK(q && malloc_usable_size(q) >= 100, "realloc of a zero-size block to 100");
    memset(q, 7, 100);
    CHECK(realloc(q, 0) == NULL, "realloc(p, 0) did not free");
    hak_free_sized(r, 0);
    hak_free(s);
    /* aligned requests of 0 bytes are real blocks, aligned as asked */
    void *a = NULL;
    CHECK(posix_memalign(&a, 64, 0) == 0 && a && ((uintptr_t)a & 63) == 0,
          "posix_memalign(64, 0) = %p", a);
    free(a);
    a = aligned_alloc(16, 0);
    CHECK(a != NULL, "aligned_alloc(16, 0) is NULL");
    free(a);
}

/* Many live at once: all distinct; freed and allocated again, the slots
 * are reused (the second round stays inside the first's chunks). */
static void *many[MANY];
static uintptr_t chunks[16];
static size_t nchunks;
static bool known_chunk(const void *p)
{
    uintptr_t c = (uintptr_t)p & ~(2 * MiB - 1);
    for (size_t i = 0; i < nchunks; i++)
        if (chunks[i] == c)
            return true;
    return false;
}

static void test_many(void)
{
    for (int i = 0; i < MANY; i++) {
        many[i] = malloc(0);
        if (!known_chunk(many[i]) && nchunks < 16)
            chunks[nchunks++] = (uintptr_t)many[i] & ~(2 * MiB - 1);
    }
    CHECK(!guard || (nchunks >= 2 && nchunks <= 4), "%d zero-size blocks in %zu chunks", MANY, nchunks);
    qsort(many, MANY, sizeof *many, cmp_ptr);
    size_t dups = 0;
    for (int i = 1; i < MANY; i++)
        dups += many[i] == many[i - 1];
    CHECK(dups == 0 && many[0] != NULL, "%zu repeated zero-size blocks in %d", dups, MANY);
    for (int i = 0; i < MANY; i++)
        free(many[i]);
    size_t outside = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < MANY; i++) {
            many[i] = malloc(0);
            outside += !known_chunk(many[i]);
        }
        for (int i = MANY - 1; i >= 0; i--)
            free(many[i]);
    }
    CHECK(!guard || outside == 0, "%zu zero-size blocks outside the first round's chunks", outside);
}

/* Threads allocate and free each other's zero-size blocks. */
static void *handed[THREADS][PER_THREAD];
static pthread_barrier_t bar;
static void cross_worker(int idx, void *ctx)
{
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < PER_THREAD; i++)
            handed[idx][i] = malloc(0);
        pthread_barrier_wait(&bar);
        /* free the next thread's, while allocating our own again */
        void **theirs = handed[(idx + 1) % THREADS];
        for (int i = 0; i < PER_THREAD; i++) {
            CHECK(hak_ptr_kind(theirs[i]) == HAK_KIND_TINY, "live block %p of thread %d has kind %d",
                  theirs[i], (idx + 1) % THREADS, hak_ptr_kind(theirs[i]));
            free(theirs[i]);
            void *mine = malloc(0);
            free(mine);
        }
        pthread_barrier_wait(&bar);
    }
}

static void test_threads(void)
{
    pthread_barrier_init(&bar, NULL, THREADS);
    tu_run_threads(THREADS, cross_worker, NULL);
    pthread_barrier_destroy(&bar);
}

/* A thread's blocks outlive it; its heap's next thread keeps going. */
static void *exited_blocks[1000];
static void *exiting(void *arg)
{
    for (int i = 0; i < 1000; i++)
        exited_blocks[i] = malloc(0);
    return NULL;
}

static void test_thread_exit(void)
{
    for (int t = 0; t < 4; t++) {
        pthread_t th;
        pthread_create(&th, NULL, exiting, NULL);
        pthread_join(th, NULL);
        for (int i = 0; i < 1000; i++) {
            CHECK(hak_ptr_kind(exited_blocks[i]) == HAK_KIND_TINY, "block of an exited thread");
            free(exited_blocks[i]);
        }
    }
}

/* fork: the child frees the parent's blocks and makes its own. */
static void test_fork(void)
{
    void *keep[100];
    for (int i = 0; i < 100; i++)
        keep[i] = malloc(0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        for (int i = 0; i < 100; i++) {
            bad += hak_ptr_kind(keep[i]) != HAK_KIND_TINY;
            free(keep[i]);
            void *p = malloc(0);
            bad += p == NULL;
            free(p);
        }
        _exit(bad ? 1 : 0);
    }
    int st = -1;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork child: status %#x", st);
    for (int i = 0; i < 100; i++)
        free(keep[i]);
}

/* ---- misuse: each in a child, which must die as said ---- */
static void read_live(size_t n) { volatile char *p = malloc(0); (void)p[n]; }
static void write_live(size_t n) { volatile char *p = malloc(0); p[n] = 1; }
static void read_freed(size_t n) { volatile char *p = malloc(0); free((void *)p); (void)p[n]; }
static void write_before(size_t n) { volatile char *p = malloc(0); p[-1 - (long)n] = 1; }
static void double_free(size_t n)
{
    void *p = malloc(0), *q = malloc(0);
    free(p);
    if (n) free(q); /* interleaved */
    free(tu_launder(p));
}
static void interior_free(size_t n) { char *p = malloc(0); free(tu_launder(p + n)); }
static void realloc_freed(size_t n) { void *p = malloc(0); free(p); (void)!realloc(tu_launder(p), 10); }
static void sized_wrong(size_t n) { void *p = malloc(0); hak_free_sized(p, n); }

static void expect_death(void (*fn)(size_t), size_t arg, int sig, const char *msg, const char *what)
{
    char err[512];
    int st = tu_in_child(fn, arg, err, sizeof err);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == sig, "%s (%zu): status %#x, want signal %d", what, arg,
          st, sig);
    if (msg)
        CHECK(strstr(err, msg) != NULL, "%s (%zu): stderr \"%s\", want \"%s\"", what, arg, err, msg);
}

static void test_misuse(void)
{
    if (guard) {
        for (size_t off = 0; off < 64; off += 15) {
            expect_death(read_live, off, SIGSEGV, NULL, "read of a zero-size block");
            expect_death(write_live, off, SIGSEGV, NULL, "write to a zero-size block");
            expect_death(read_freed, off, SIGSEGV, NULL, "read of a freed zero-size block");
        }
        expect_death(write_before, 0, SIGSEGV, NULL, "write 1 byte before a zero-size block");
        expect_death(write_before, 4000, SIGSEGV, NULL, "write 4001 bytes before a zero-size block");
        expect_death(sized_wrong, 8, SIGABRT, "wrong size", "free_sized(zero-size block, 8)");
    }
    expect_death(double_free, 0, SIGABRT, "hakmem: double free", "double free");
    expect_death(double_free, 1, SIGABRT, "hakmem: double free", "interleaved double free");
    expect_death(interior_free, 8, SIGABRT, "hakmem: ", "free of a zero-size block + 8");
    expect_death(realloc_freed, 0, SIGABRT, "realloc of a pointer that is not an allocated block",
                 "realloc of a freed zero-size block");
}

/* Double frees that race with the owner's malloc(0) (ZERO_SIZE_GUARD):
 * a thread frees every block of another thread's full chunk twice in a
 * row while that thread keeps taking blocks (its chunk being full, its
 * mallocs merge the remote frees).  A second free made while the block
 * was still free is a double free and must be reported (counted:
 * HAKMEM_INVALID_FREE=ignore), and such a block is handed out once.  (A
 * second free that comes after the owner took the block back frees a live
 * block, which nothing can tell from a correct free: those blocks are not
 * counted.)  Run in a child started with the option set; every thread
 * stays alive to the end, so that no owner adopts another's heap. */
#define CHUNK ((uintptr_t)2 << 20)
enum { RACE_ROUNDS = 4 };
static size_t race_slots;                 /* blocks in a heap's first chunk */
static void **race_block;
static uint64_t *race_freed, *race_taken; /* sequence numbers */
static unsigned char *race_got;
static _Atomic uint64_t race_seq = 1;
static _Atomic size_t race_pairs, race_step;
static pthread_barrier_t race_end;

static void *race_count_slots(void *arg)
{
    uintptr_t chunk = (uintptr_t)malloc(0) & ~(CHUNK - 1);
    size_t n = 1;
    while (((uintptr_t)malloc(0) & ~(CHUNK - 1)) == chunk)
        n++;
    race_slots = n;
    atomic_store(&race_step, 1);
    pthread_barrier_wait(&race_end);
    return NULL;
}

static void *race_freer(void *arg)
{
    for (size_t v = 0; v < race_slots; v++) {
        free(race_block[v]);
        free(race_block[v]);
        race_freed[v] = atomic_fetch_add(&race_seq, 1);
        atomic_store_explicit(&race_pairs, v + 1, memory_order_release);
    }
    pthread_barrier_wait(&race_end);
    return NULL;
}

/* p's place in the owner's chunk, SIZE_MAX if outside it */
static size_t race_index(void *p)
{
    uintptr_t a = (uintptr_t)p, base = (uintptr_t)race_block[0];
    if ((a & ~(CHUNK - 1)) != (base & ~(CHUNK - 1)) || a < base || (a - base) % 16)
        return SIZE_MAX;
    return (a - base) / 16;
}

static void race_take(size_t v, uint64_t seq)
{
    if (!race_got[v]++)
        race_taken[v] = seq;
}

static void *race_owner(void *arg)
{
    for (size_t v = 0; v < race_slots; v++)
        race_block[v] = malloc(0);
    CHECK(race_index(race_block[race_slots - 1]) == race_slots - 1, "a new heap's first chunk, in order");
    memset(race_got, 0, race_slots);
    struct hak_stats st;
    hak_stats_get(&st);
    uint64_t reported = st.invalid_frees, made = 0, twice = 0;
    atomic_store(&race_pairs, 0);
    pthread_t t;
    pthread_create(&t, NULL, race_freer, NULL);
    for (size_t got = 0; got < race_slots;) {
        if (got >= atomic_load_explicit(&race_pairs, memory_order_acquire))
            continue; /* malloc only with a block free: the full chunk is merged */
        uint64_t seq = atomic_fetch_add(&race_seq, 1);
        size_t v = race_index(malloc(0));
        if (v != SIZE_MAX)
            race_take(v, seq), got++;
    }
    while (atomic_load(&race_pairs) < race_slots)
        ;
    for (size_t v; (v = race_index(malloc(0))) != SIZE_MAX;) /* until the chunk is full */
        race_take(v, atomic_fetch_add(&race_seq, 1));
    hak_stats_get(&st);
    reported = st.invalid_frees - reported;
    for (size_t v = 0; v < race_slots; v++)
        if (race_taken[v] > race_freed[v]) { /* both frees before the malloc that took it */
            made++;
            twice += race_got[v] > 1;
        }
    CHECK(twice == 0, "%" PRIu64 " double-freed blocks handed out twice", twice);
    CHECK(reported >= made && reported <= race_slots, "%" PRIu64 " double frees reported, %" PRIu64 " made",
          reported, made);
    atomic_fetch_add(&race_step, 1);
    pthread_barrier_wait(&race_end);
    pthread_join(t, NULL);
    return NULL;
}

static int race_child(void)
{
    pthread_barrier_init(&race_end, NULL, 2 * RACE_ROUNDS + 2);
    pthread_t counter, owner[RACE_ROUNDS];
    pthread_create(&counter, NULL, race_count_slots, NULL);
    while (atomic_load(&race_step) < 1)
        ;
    race_block = calloc(race_slots, sizeof *race_block);
    race_freed = calloc(race_slots, sizeof *race_freed);
    race_taken = calloc(race_slots, sizeof *race_taken);
    race_got = calloc(race_slots, 1);
    for (int r = 0; r < RACE_ROUNDS; r++) { /* one round at a time */
        pthread_create(&owner[r], NULL, race_owner, NULL);
        while (atomic_load(&race_step) < (size_t)r + 2)
            ;
    }
    pthread_barrier_wait(&race_end);
    for (int r = 0; r < RACE_ROUNDS; r++)
        pthread_join(owner[r], NULL);
    pthread_join(counter, NULL);
    return TU_DONE();
}

static void test_racing_double_free(void)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(120);
        setenv("HAKMEM_INVALID_FREE", "ignore", 1);
        execl("/proc/self/exe", "test_zero", "--race", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid, "fork/wait");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "racing double frees: child status %#x", st);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--race") == 0)
        return race_child();
    guard = hak_mitigations() & HAK_MIT_ZERO_SIZE_GUARD;
    test_basics();
    test_many();
    test_threads();
    test_thread_exit();
    test_fork();
    test_misuse();
    if (guard)
        test_racing_double_free();
    return TU_DONE();
}
