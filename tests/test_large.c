/* Large tier (> 52 KiB): sizes up to 256 MiB, no syscalls in a stable
 * alloc/free pattern, realloc grow/shrink, malloc_trim returns memory,
 * requests larger than memory fail.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include "testutil.h"


static void touch_and_check(char *p, size_t n, uint64_t seed)
{
    for (size_t off = 0; off < n - 1; off += 4096)
        p[off] = (char)(off / 4096 + seed);
    p[n - 1] = (char)seed;
    size_t bad = 0;
    for (size_t off = 0; off < n - 1; off += 4096)
        if (p[off] != (char)(off / 4096 + seed)) bad++;
    CHECK(bad == 0 && p[n - 1] == (char)seed, "%zu-byte block: %zu pages lost their byte", n, bad);
}

static void sizes(void)
{
    static const size_t sz[] = { 53249, 53250, 64 * 1024, 100000, MiB, MiB + 1, 5 * MiB,
                                 64 * MiB, 256 * MiB };
    void *b[sizeof sz / sizeof *sz];
    struct hak_stats s0 = tu_stats();
    size_t total = 0;
    for (size_t i = 0; i < sizeof sz / sizeof *sz; i++) {
        size_t n = sz[i];
        char *p = (i & 1) ? hak_malloc(n) : malloc(n);
        b[i] = p;
        CHECK(p != NULL, "malloc(%zu) = NULL", n);
        if (!p) continue;
        total += n;
        CHECK(hak_ptr_kind(p) == HAK_KIND_LARGE, "malloc(%zu): kind %d", n, hak_ptr_kind(p));
        CHECK(malloc_usable_size(p) >= n, "malloc(%zu): usable %zu", n, malloc_usable_size(p));
        CHECK(((uintptr_t)p & 15) == 0, "malloc(%zu) = %p not 16-aligned", n, (void *)p);
        /* interior pointers are not blocks, but the block is still large */
        touch_and_check(p, n, i);
    }
    struct hak_stats s1 = tu_stats();
    CHECK(s1.large_allocs - s0.large_allocs >= sizeof sz / sizeof *sz,
          "large_allocs grew by %llu for %zu large blocks",
          (unsigned long long)(s1.large_allocs - s0.large_allocs), sizeof sz / sizeof *sz);
    CHECK(s1.large_bytes_in_use >= total, "large_bytes_in_use %llu < %zu bytes live",
          (unsigned long long)s1.large_bytes_in_use, total);
    for (size_t i = 0; i < sizeof sz / sizeof *sz; i++) {
        if (b[i]) CHECK(((char *)b[i])[sz[i] - 1] == (char)i, "block %zu changed", sz[i]);
        (i & 2 ? hak_free : free)(b[i]);
    }
    struct hak_stats s2 = tu_stats();
    CHECK(s2.large_frees - s1.large_frees >= sizeof sz / sizeof *sz,
          "large_frees grew by %llu after freeing %zu large blocks",
          (unsigned long long)(s2.large_frees - s1.large_frees), sizeof sz / sizeof *sz);
    /* calloc of large sizes is zero */
    for (int k = 0; k < 3; k++) {
        char *p = malloc(8 * MiB);
        if (p) memset(p, 0xAB, 8 * MiB);
        free(p);
        unsigned char *c = calloc(8, MiB);
        CHECK(c != NULL, "calloc(8, 1MiB)");
        if (!c) continue;
        size_t nz = 0;
        for (size_t i = 0; i < 8 * MiB; i++) nz += c[i] != 0;
        CHECK(nz == 0, "calloc(8 MiB) after a dirty free has %zu non-zero bytes", nz);
        free(c);
    }
}

static void no_syscalls_steady(void)
{
    static const size_t sz[] = { 2 * MiB, 3 * MiB + 5, 8 * MiB, 100000, MiB + 4096 * 3 };
    enum { NS = sizeof sz / sizeof *sz };
    void *b[NS];
    uint64_t before = 0;
    for (int it = 0; it < 1100; it++) {
        if (it == 100) {
            struct hak_stats s = tu_stats();
            before = s.os_mmap + s.os_munmap;
        }
        for (int i = 0; i < NS; i++) {
            b[i] = malloc(sz[i]);
            CHECK(b[i] != NULL, "malloc(%zu)", sz[i]);
            if (b[i]) { ((char *)b[i])[0] = 1; ((char *)b[i])[sz[i] - 1] = 1; }
        }
        for (int i = 0; i < NS; i++) free(b[(i + it) % NS]);
    }
    struct hak_stats s = tu_stats();
    uint64_t after = s.os_mmap + s.os_munmap;
    CHECK(after == before, "stable large alloc/free pattern made %llu mmap+munmap calls in "
          "1000 iterations after warm-up", (unsigned long long)(after - before));
}

static void realloc_large(void)
{
    static const size_t path[] = { 60000, 200000, 3 * MiB, 40 * MiB, 40 * MiB + 1, 7 * MiB,
                                   100 * MiB, 55000, 2 * MiB, 53249 };
    char *p = NULL;
    size_t have = 0;
    for (size_t i = 0; i < sizeof path / sizeof *path; i++) {
        size_t n = path[i];
        char *q = realloc(p, n);
        CHECK(q != NULL, "realloc(%zu -> %zu)", have, n);
        if (!q) break;
        p = q;
        size_t keep = have < n ? have : n;
        size_t bad = tu_verify_idx(p, keep, 31);
        CHECK(bad == TU_OK, "large realloc %zu -> %zu lost byte %zu", have, n, bad);
        CHECK(malloc_usable_size(p) >= n, "usable %zu < %zu", malloc_usable_size(p), n);
        CHECK(hak_ptr_kind(p) == HAK_KIND_LARGE, "kind %d after realloc to %zu", hak_ptr_kind(p), n);
        tu_fill_idx(p, keep, n, 31);
        have = n;
    }
    free(p);
}

/* The tail canary: a large block is usable up to its requested size,
 * exactly, through malloc and each kind of realloc (shrink in place, grow
 * in place, move); the byte after it is checked on free. */
static const size_t tail_path[] = { 300000, 200001, 250007, 3 * MiB + 5, 1000003 };
static void overflow_after(size_t steps)
{
    char *p = malloc(tail_path[0]);
    for (size_t i = 1; i <= steps; i++)
        p = realloc(p, tail_path[i]);
    ((volatile char *)tu_launder(p))[tail_path[steps]] ^= 0x5a; /* one byte past the end */
    free(tu_launder(p));
}
static void tail_canary(void)
{
    size_t steps = sizeof tail_path / sizeof *tail_path - 1;
    char *p = malloc(tail_path[0]);
    for (size_t i = 0; i <= steps; i++) {
        size_t n = tail_path[i];
        if (i)
            p = realloc(p, n);
        CHECK(p && malloc_usable_size(p) == n, "usable size %zu of a %zu-byte block", p ? malloc_usable_size(p) : 0, n);
        memset(p, (int)i, n); /* up to the last byte is the program's */
    }
    free(p);
    for (size_t i = 0; i <= steps; i++) {
        char err[512];
        int st = tu_in_child(overflow_after, i, err, sizeof err);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, "block overflow"),
              "a byte past a %zu-byte block (after %zu reallocs): status %#x, '%s'", tail_path[i], i, st, err);
    }
}

static void trim_rss(void)
{
    malloc_trim(0);
    size_t start = tu_rss_bytes();
    enum { NL = 224, NM = 3200 };
    static void *l[NL], *m[NM];
    for (int i = 0; i < NL; i++) { /* 896 MiB of 4 MiB blocks */
        l[i] = malloc(4 * MiB);
        CHECK(l[i] != NULL, "malloc(4 MiB)");
        if (l[i]) memset(l[i], i, 4 * MiB);
    }
    for (int i = 0; i < NM; i++) { /* ~128 MiB of 40 KiB mid blocks */
        m[i] = malloc(40 * 1024);
        CHECK(m[i] != NULL, "malloc(40 KiB)");
        if (m[i]) memset(m[i], i, 40 * 1024);
    }
    size_t peak = tu_rss_bytes();
    CHECK(peak >= start + 900 * MiB, "RSS %zu MiB did not grow by the 1 GiB burst (start %zu MiB)",
          peak / MiB, start / MiB);
    for (int i = 0; i < NL; i++) free(l[i]);
    for (int i = 0; i < NM; i++) free(m[i]);
    malloc_trim(0);
    size_t end = tu_rss_bytes();
    CHECK(end <= start + 64 * MiB, "RSS after free + malloc_trim(0) is %zu MiB, started at %zu MiB "
          "(peak %zu MiB)", end / MiB, start / MiB, peak / MiB);
}

/* A big block at a big alignment is one reservation of size + alignment,
 * mapped once (it used to loop over thousands of too-small reservations
 * and fail with ENOMEM). */
static void aligned_huge(void)
{
    struct hak_stats s0 = tu_stats();
    const size_t al = MiB, n = 1300000000; /* not a multiple of the alignment */
    void *p = NULL;
    int rc = posix_memalign(&p, al, n);
    struct hak_stats s1 = tu_stats();
    CHECK(rc == 0 && p && ((uintptr_t)p & (al - 1)) == 0, "posix_memalign(1 MiB, 1.3e9) = %d", rc);
    CHECK(s1.os_mmap - s0.os_mmap <= 2, "posix_memalign(1 MiB, 1.3e9) made %llu mmap calls",
          (unsigned long long)(s1.os_mmap - s0.os_mmap));
    if (rc == 0 && p) {
        ((char *)p)[0] = 1;
        ((char *)p)[n - 1] = 2;
        CHECK(((char *)p)[0] == 1 && ((char *)p)[n - 1] == 2, "aligned huge block");
        free(p);
    }
    malloc_trim(0);
}

/* A request larger than memory and swap fails with ENOMEM, as under
 * glibc, whose mmap of it the kernel refuses unless the overcommit policy
 * is "always" (vm.overcommit_memory 1).  Until 2026-12-07 every mapping
 * was MAP_NORESERVE, which the default policy does not judge: the request
 * succeeded, and the program was killed when it used the memory
 * (python3's bytearray(30 GiB) raises MemoryError under glibc). */
static void larger_than_memory(void)
{
    char mode = '0';
    int fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &mode, 1) != 1)
            mode = '0';
        close(fd);
    }
    struct sysinfo si;
    if (mode == '1' || sysinfo(&si) != 0) {
        printf("SKIP larger_than_memory: vm.overcommit_memory is 1 (or no sysinfo)\n");
        return;
    }
    size_t n = ((size_t)si.totalram + si.totalswap) * si.mem_unit + (size_t)(1 << 30);
    errno = 0;
    void *p = malloc(n);
    CHECK(!p && errno == ENOMEM, "malloc(%zu), more than memory and swap: %p, errno %d", n, p, errno);
    free(p);
    errno = 0;
    p = calloc(n / 4096, 4096);
    CHECK(!p && errno == ENOMEM, "calloc of %zu bytes: %p, errno %d", n / 4096 * 4096, p, errno);
    free(p);
    p = NULL;
    int rc = posix_memalign(&p, MiB, n);
    CHECK(rc == ENOMEM && !p, "posix_memalign(1 MiB, %zu) = %d", n, rc);
    char *q = malloc(100000);
    strcpy(q, "kept");
    errno = 0;
    void *r = realloc(q, n);
    CHECK(!r && errno == ENOMEM && strcmp(q, "kept") == 0, "realloc to %zu: %p, errno %d", n, r, errno);
    free(r ? r : q);
}

/* Out of address space (RLIMIT_AS, `ulimit -v`): memory that was freed
 * serves a later request of another size, as under glibc, which unmaps a
 * freed big block at once: a big block after a smaller one (whose own
 * reservation must be unmapped for it), a big block after many 1 MiB
 * ones (the large cache's and the extents' free memory), and mid blocks
 * after those (new SuperSlabs).  In a child, which keeps the limit; its
 * exit status says which step failed (until 2026-12-08, 11: hakmem kept
 * every reservation it had mapped and never looked at them again). */
static size_t vm_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    size_t pages = 0;
    if (!f || fscanf(f, "%zu", &pages) != 1)
        pages = 0;
    if (f)
        fclose(f);
    return pages * 4096;
}

static void address_limit_child(size_t limit)
{
    struct rlimit rl = { vm_bytes() + limit, RLIM_INFINITY };
    if (setrlimit(RLIMIT_AS, &rl) != 0)
        _exit(9);
    char *a = malloc(limit * 2 / 3);
    if (!a)
        _exit(10);
    a[0] = a[limit * 2 / 3 - 1] = 1;
    free(a);
    char *b = malloc(limit * 5 / 6);
    if (!b)
        _exit(11);
    b[0] = b[limit * 5 / 6 - 1] = 1;
    free(b);
    static char *blocks[16384];
    size_t n = 0;
    while (n < 4096 && (blocks[n] = malloc(MiB)) != NULL)
        blocks[n++][0] = 1;
    if (n == 4096 || n < limit / MiB / 2 || errno != ENOMEM)
        _exit(12); /* the limit holds, and failing says so */
    for (size_t i = 0; i < n; i++)
        free(blocks[i]);
    b = malloc(n / 2 * MiB);
    if (!b)
        _exit(13);
    free(b);
    size_t mids = 0;
    while (mids < 16384 && mids * 32 * KiB < n / 3 * MiB && (blocks[mids] = malloc(32 * KiB)) != NULL)
        blocks[mids++][0] = 1;
    if (mids * 32 * KiB < n / 3 * MiB)
        _exit(14);
}

static void address_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur != RLIM_INFINITY) {
        printf("SKIP address_limit: RLIMIT_AS is set already\n");
        return;
    }
    char err[512];
    int st = tu_in_child(address_limit_child, 1200 * MiB, err, sizeof err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "under RLIMIT_AS: step %d failed (status %#x) %s",
          WIFEXITED(st) ? WEXITSTATUS(st) : -1, st, err);
}

/* A block bigger than the next reservation gets one of its own size,
 * which no bigger request can use: freed and purged (past the cap on
 * resident free memory, or its decay time), it is unmapped, so a loop of
 * ever bigger blocks freed at once keeps its address space bounded (it
 * kept every one until malloc_trim: 100 rounds mapped 120 GiB, and at
 * 4096 reservations malloc failed with nothing in use). */
static void solo_reservations(void)
{
    size_t most = 0;
    for (size_t i = 0; i < 100; i++) {
        size_t n = 1024 * MiB + i * 4 * MiB;
        char *p = tu_launder(malloc(n));
        CHECK(p != NULL, "malloc(%zu) in round %zu", n, i);
        if (!p)
            break;
        p[0] = p[n - 1] = 1;
        free(p);
        struct hak_stats st = tu_stats();
        if (st.bytes_mapped > most)
            most = st.bytes_mapped;
    }
    CHECK(most < 4096 * MiB, "100 blocks of 1-1.4 GiB, each freed at once, kept %zu MiB mapped", most / MiB);
}

/* malloc and free keep errno (POSIX: free shall not modify it), also
 * when their lock is contended and a thread sleeps on its futex, whose
 * system call fails with EAGAIN whenever the lock was released first.
 * Blocks above the cached classes take the extents' lock every time
 * (with errno not kept in os.c, this failed 2 runs of 3 on 2 cores). */
static _Atomic unsigned long errno_changed;
static void errno_under_contention(int idx, void *ctx)
{
    for (int i = 0; i < 4000; i++) {
        int mine = 4242 + idx;
        errno = mine;
        char *p = tu_launder(malloc((size_t)5 * MiB + (size_t)(i % 64) * 4096));
        if (!p || errno != mine)
            atomic_fetch_add(&errno_changed, 1);
        p[0] = 1;
        free(p);
        if (errno != mine)
            atomic_fetch_add(&errno_changed, 1);
    }
}

static void errno_kept(void)
{
    uint64_t waits = tu_stats().lock_extents_contended;
    tu_run_threads(8, errno_under_contention, NULL);
    waits = tu_stats().lock_extents_contended - waits;
    CHECK(atomic_load(&errno_changed) == 0, "malloc/free changed errno %lu times (%llu lock waits)",
          atomic_load(&errno_changed), (unsigned long long)waits);
}

/* Threads that all find no free range at once wait for one of them to map
 * a reservation instead of each mapping its own.  Each round starts from
 * trimmed extents; 16 threads meet at a barrier and take 4 blocks of 5 MiB
 * each (above the cached classes: they come from the extents), 320 MiB in
 * all, so the reservations are needed while the threads race for them.
 * The reservations double every second one (32 MiB .. 1 GiB), so what they
 * need stays under twice what is in use plus the first ones; racing
 * threads that each mapped one reserved 0.6-1.9 GiB for 40 MB in use in
 * bench_large_mt at 16 threads. */
enum { RACE_THREADS = 16, RACE_BLOCKS = 4 };
static pthread_barrier_t race_start, race_held;
static _Atomic uint64_t race_mapped_max;
static void reserve_racer(int idx, void *ctx)
{
    void *p[RACE_BLOCKS];
    pthread_barrier_wait(&race_start);
    for (int i = 0; i < RACE_BLOCKS; i++) {
        p[i] = malloc((size_t)5 * MiB);
        CHECK(p[i] != NULL, "malloc(5 MiB) under a reservation race");
    }
    if (pthread_barrier_wait(&race_held) == PTHREAD_BARRIER_SERIAL_THREAD) {
        uint64_t mapped = tu_stats().bytes_mapped;
        if (mapped > atomic_load(&race_mapped_max))
            atomic_store(&race_mapped_max, mapped);
    }
    pthread_barrier_wait(&race_held);
    for (int i = 0; i < RACE_BLOCKS; i++)
        free(p[i]);
}
static void reservation_race(void)
{
    pthread_barrier_init(&race_start, NULL, RACE_THREADS);
    pthread_barrier_init(&race_held, NULL, RACE_THREADS);
    uint64_t grown = tu_stats().lock_growth_acquired;
    for (int round = 0; round < 8; round++) {
        malloc_trim(0);
        tu_run_threads(RACE_THREADS, reserve_racer, NULL);
    }
    uint64_t in_use = (uint64_t)RACE_THREADS * RACE_BLOCKS * 5 * MiB;
    CHECK(atomic_load(&race_mapped_max) <= 2 * in_use + 64 * MiB,
          "%d threads holding %llu MiB had %llu MiB reserved", RACE_THREADS,
          (unsigned long long)(in_use / MiB), (unsigned long long)(atomic_load(&race_mapped_max) / MiB));
    CHECK(tu_stats().lock_growth_acquired > grown, "the growth lock was never counted");
    pthread_barrier_destroy(&race_start);
    pthread_barrier_destroy(&race_held);
    malloc_trim(0);
}

/* calloc must read zeros whatever the extents did before: a free range is
 * taken for zero only if all of it was purged.  First the case that got it
 * wrong (2026-12-06): an aligned carve from the middle of a range split
 * its count of dirty bytes all to the part below, so the part above,
 * holding a freed block's bytes, was counted 0 and, merged with the old
 * place of a block realloc had moved (purged), read as purged.  Then a
 * random mix of the operations that cut, merge and purge ranges. */
static size_t nonzero(const char *p, size_t n) /* a byte in every 64, and the last */
{
    size_t bad = n && p[n - 1] != 0;
    for (size_t i = 0; i < n; i += 64)
        bad += p[i] != 0;
    return bad;
}
static void calloc_zero_after_churn(void)
{
    char *h = malloc(100 * MiB); /* a reservation of its own, then free */
    CHECK(h != NULL, "malloc(100 MiB)");
    uintptr_t base = (uintptr_t)h & ~(uintptr_t)(2 * MiB - 1);
    free(h);
    char *k = malloc(40 * MiB), *q = malloc(5 * MiB);
    CHECK(k && q, "malloc(40 MiB), malloc(5 MiB)");
    malloc_trim(0);
    memset(q, 0xBB, 5 * MiB);
    free(tu_launder(q));
    size_t align = 8 * MiB; /* lands between the purged bottom and q's bytes */
    while (align < 64 * MiB && (((base + align) & ~(align - 1)) - base) < 5 * MiB + 8192)
        align <<= 1;
    char *a = memalign(align, MiB);
    char *k2 = realloc(k, 80 * MiB);
    char *c = calloc(1, 45 * MiB);
    CHECK(a && k2 && c, "memalign, realloc, calloc");
    if (c)
        CHECK(nonzero(c, 45 * MiB) == 0, "calloc(45 MiB) after an aligned carve and a moving realloc is not zero");
    free(a);
    free(k2);
    free(c);

    enum { SLOTS = 24, OPS = 3000 };
    char *slot[SLOTS] = { 0 };
    size_t len[SLOTS] = { 0 };
    tu_rng r = tu_rng_seed(1206);
    for (int op = 0; op < OPS; op++) {
        unsigned i = (unsigned)tu_range(&r, 0, SLOTS - 1);
        size_t n = tu_range(&r, 64 * KiB, 6 * MiB);
        switch (tu_range(&r, 0, 5)) {
        case 0: /* free, after filling it with bytes calloc must not show */
            if (slot[i])
                memset(slot[i], 0xBB, len[i]);
            free(tu_launder(slot[i]));
            slot[i] = NULL;
            break;
        case 1:
            if (!slot[i]) {
                slot[i] = memalign((size_t)1 << tu_range(&r, 12, 24), n);
                len[i] = n;
                if (slot[i])
                    memset(slot[i], 0xBB, n);
            }
            break;
        case 2:
            if (slot[i]) {
                char *g = realloc(slot[i], n);
                if (g) {
                    slot[i] = g;
                    len[i] = n;
                    memset(g, 0xBB, n);
                }
            }
            break;
        case 3:
            if (!slot[i]) {
                slot[i] = calloc(1, n);
                len[i] = n;
                CHECK(slot[i] && nonzero(slot[i], n) == 0, "calloc(%zu) at operation %d is not zero", n, op);
                if (slot[i])
                    memset(slot[i], 0xBB, n);
            }
            break;
        case 4:
            if (op % 50 == 0)
                malloc_trim(0);
            break;
        default:
            if (!slot[i]) {
                slot[i] = malloc(n);
                len[i] = n;
                if (slot[i])
                    memset(slot[i], 0xBB, n);
            }
        }
    }
    for (unsigned i = 0; i < SLOTS; i++)
        free(slot[i]);
    malloc_trim(0);
}

int main(void)
{
    calloc_zero_after_churn();
    trim_rss();
    sizes();
    no_syscalls_steady();
    realloc_large();
    tail_canary();
    aligned_huge();
    larger_than_memory();
    address_limit();
    solo_reservations();
    errno_kept();
    reservation_race();
    return TU_DONE();
}
