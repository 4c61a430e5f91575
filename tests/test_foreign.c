/* Foreign pointers (glibc's own blocks) and invalid frees.
 *
 *   test_foreign                 the test
 *   test_foreign --ignore-child  (internal) run with HAKMEM_INVALID_FREE=ignore
 * SPDX-License-Identifier: MIT */
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <malloc.h>
#include "testutil.h"

/* glibc's allocator itself: __libc_malloc and the rest are hakmem's too
 * (names some code calls directly), so they are taken from libc.so.6. */
static void *(*glibc_malloc)(size_t);
static void *(*glibc_calloc)(size_t, size_t);
static void *(*glibc_memalign)(size_t, size_t);

static void *libc_symbol(const char *name)
{
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void *f = libc ? dlsym(libc, name) : NULL;
    CHECK(f != NULL, "glibc's %s not found", name);
    return f;
}

/* __libc_free on a block of hakmem's, __libc_malloc's block freed with
 * free: one allocator behind both sets of names. */
static void libc_names(void)
{
    extern void *__libc_malloc(size_t);
    extern void *__libc_calloc(size_t, size_t);
    extern void *__libc_realloc(void *, size_t);
    extern void *__libc_memalign(size_t, size_t);
    extern void __libc_free(void *);
    static const size_t sizes[] = { 1, 100, 1000, 5000, 60000, 300000, 3 << 20 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        char *p = __libc_malloc(n);
        CHECK(p && hak_ptr_kind(p) != HAK_KIND_FOREIGN, "__libc_malloc(%zu) not hakmem's", n);
        if (!p) continue;
        tu_fill_idx(p, 0, n, i);
        p = realloc(p, n * 2);
        CHECK(p && tu_verify_idx(p, n, i) == TU_OK, "realloc(__libc_malloc(%zu)) lost data", n);
        free(p);
        p = malloc(n);
        if (!p) continue;
        tu_fill_idx(p, 0, n, i);
        p = __libc_realloc(p, n / 2 + 1);
        CHECK(p && tu_verify_idx(p, n / 2 + 1, i) == TU_OK, "__libc_realloc(malloc(%zu)) lost data", n);
        __libc_free(p);
        unsigned char *c = __libc_calloc(n, 1);
        size_t nz = 0;
        for (size_t k = 0; c && k < n; k++) nz += c[k] != 0;
        CHECK(c && nz == 0, "__libc_calloc(%zu, 1) not zero", n);
        hak_free(c);
        p = __libc_memalign(4096, n);
        CHECK(p && ((uintptr_t)p & 4095) == 0 && hak_ptr_kind(p) != HAK_KIND_FOREIGN,
              "__libc_memalign(4096, %zu)", n);
        __libc_free(p);
    }
}

static void foreign_blocks(void)
{
    struct hak_stats s0 = tu_stats();
    int nfree = 0;
    static const size_t sizes[] = { 1, 100, 1000, 5000, 60000, 300000 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        /* glibc's malloc, freed with free and with hak_free */
        for (int how = 0; how < 2; how++) {
            char *p = glibc_malloc(n);
            CHECK(p != NULL, "glibc malloc(%zu)", n);
            if (!p) continue;
            CHECK(hak_ptr_kind(p) == HAK_KIND_FOREIGN, "kind(glibc malloc(%zu)) = %d", n,
                  hak_ptr_kind(p));
            CHECK(malloc_usable_size(p) >= n, "malloc_usable_size(glibc %zu) = %zu", n,
                  malloc_usable_size(p));
            CHECK(hak_usable_size(p) >= n, "hak_usable_size(glibc %zu) = %zu", n, hak_usable_size(p));
            memset(p, 0x11, n);
            (how ? hak_free : free)(p);
            nfree++;
        }
        /* glibc's calloc: zeroed, realloc'd by hakmem keeps contents */
        unsigned char *c = glibc_calloc(1, n);
        CHECK(c != NULL, "glibc calloc(%zu)", n);
        if (c) {
            CHECK(hak_ptr_kind(c) == HAK_KIND_FOREIGN, "kind(glibc calloc) = %d", hak_ptr_kind(c));
            size_t nz = 0;
            for (size_t k = 0; k < n; k++) nz += c[k] != 0;
            CHECK(nz == 0, "glibc calloc not zero");
            tu_fill_idx(c, 0, n, i);
            for (int step = 0; step < 4; step++) {
                size_t m = step == 0 ? n * 3 + 10 : step == 1 ? n / 2 + 1 : step == 2 ? 100000 : 7;
                size_t keep = m < n ? m : n;
                unsigned char *q = realloc(c, m);
                CHECK(q != NULL, "realloc(glibc block %zu -> %zu)", n, m);
                if (!q) break;
                CHECK(tu_verify_idx(q, keep, i) == TU_OK, "realloc of glibc block %zu -> %zu "
                      "lost contents", n, m);
                CHECK(malloc_usable_size(q) >= m, "usable %zu < %zu", malloc_usable_size(q), m);
                tu_fill_idx(q, 0, m, i);
                c = q;
                n = m; /* refilled: the whole new size is patterned */
            }
            free(c);
        }
        n = sizes[i];
        /* glibc's memalign */
        char *a = glibc_memalign(256, n);
        CHECK(a != NULL && ((uintptr_t)a & 255) == 0, "glibc memalign(256, %zu)", n);
        if (a) {
            CHECK(hak_ptr_kind(a) == HAK_KIND_FOREIGN, "kind(glibc memalign) = %d", hak_ptr_kind(a));
            CHECK(malloc_usable_size(a) >= n, "usable of glibc memalign(%zu) = %zu", n,
                  malloc_usable_size(a));
            memset(a, 0x22, n);
            free(a);
            nfree++;
        }
        /* hak_realloc on a glibc block */
        char *h = glibc_malloc(n);
        if (h) {
            tu_fill_idx(h, 0, n, 77);
            char *q = hak_realloc(h, n + 3000);
            CHECK(q && tu_verify_idx(q, n, 77) == TU_OK, "hak_realloc(glibc block) lost data");
            hak_free(q);
        }
    }
    struct hak_stats s1 = tu_stats();
    CHECK(s1.foreign_frees - s0.foreign_frees >= (uint64_t)nfree,
          "foreign_frees grew by %llu after %d frees of glibc blocks",
          (unsigned long long)(s1.foreign_frees - s0.foreign_frees), nfree);
}

/* ---- invalid frees --------------------------------------------------- */
static void do_invalid(int which)
{
    switch (which) {
    case 0: { /* stack address */
        char buf[64];
        memset(buf, 1, sizeof buf);
        free(tu_launder(buf));
        break;
    }
    case 1: { /* middle of a large block */
        char *p = malloc(1 << 20);
        if (!p) break;
        memset(p, 3, 1 << 20);
        free(tu_launder(p + (512 << 10)));
        /* in ignore mode the block is still intact and freeable */
        size_t bad = 0;
        for (size_t i = 0; i < (1 << 20); i += 512) bad += p[i] != 3;
        CHECK(bad == 0, "block changed by an ignored interior free");
        free(p);
        break;
    }
    case 2: { /* double free of a large block */
        char *p = malloc(2 << 20);
        if (!p) break;
        memset(p, 4, 4096);
        char *again = tu_launder(p);
        free(p);
        free(again);
        break;
    }
    case 3: { /* double free of a large block long after its free: the
               * hardened build's quarantine has let it go, and its header
               * lies in free memory that is kept PROT_NONE (it faulted) */
        char *p = malloc(300000), *neighbour = malloc(300000); /* keeps the reservation */
        if (!p || !neighbour) break;
        memset(p, 5, 4096);
        char *again = tu_launder(p);
        free(p);
        for (size_t i = 0; i < 40; i++) /* too big for its place */
            free(tu_launder(malloc((1 << 20) + (i << 16))));
        free(again);
        free(neighbour);
        break;
    }
    case 4: { /* a pointer into the program's own PROT_NONE memory: mapped,
               * so mincore alone lets the look at a glibc header fault */
        char *m = mmap(NULL, 2 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) break;
        free(tu_launder(m + 4096 + 64));
        munmap(m, 2 * 4096);
        break;
    }
    case 5: { /* a pointer into a large block just freed: with a quarantine
               * its extent waits PROT_NONE, and the "header" is in it */
        char *p = malloc(300000);
        if (!p) break;
        memset(p, 6, 8192);
        char *inside = tu_launder(p + 4096);
        free(p);
        free(inside);
        break;
    }
    }
}

static const char *const invalid_name[] = { "free(stack address)", "free(middle of large block)",
                                            "double free of large block",
                                            "double free of large block after 40 bigger frees",
                                            "free(address in PROT_NONE memory)",
                                            "free(inside a large block just freed)" };
#define N_INVALID 6

static void invalid_abort(void)
{
    for (int which = 0; which < N_INVALID; which++) {
        int fd[2];
        CHECK(pipe(fd) == 0, "pipe");
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            struct rlimit rl = { 0, 0 };
            setrlimit(RLIMIT_CORE, &rl);
            alarm(20);
            close(fd[0]);
            dup2(fd[1], 2);
            do_invalid(which);
            _exit(0); /* survived: wrong */
        }
        close(fd[1]);
        char out[4096];
        size_t len = 0;
        ssize_t r;
        while (len < sizeof out - 1 && (r = read(fd[0], out + len, sizeof out - 1 - len)) > 0)
            len += (size_t)r;
        out[len] = 0;
        close(fd[0]);
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "%s: child %s %d, want SIGABRT",
              invalid_name[which], WIFSIGNALED(st) ? "killed by signal" : "exited with",
              WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        CHECK(strstr(out, "hakmem") != NULL, "%s: stderr does not mention hakmem: \"%s\"",
              invalid_name[which], out);
        size_t lines = 0;
        for (size_t i = 0; i < len; i++) lines += out[i] == '\n';
        CHECK(len > 0 && (lines == 1 && out[len - 1] == '\n'),
              "%s: want a one-line message, got %zu bytes, %zu lines: \"%s\"",
              invalid_name[which], len, lines, out);
    }
}

void free_aligned_sized(void *p, size_t alignment, size_t size); /* (C23: not in older headers) */
static int ignore_child(void)
{
    struct hak_stats s0 = tu_stats();
    for (int which = 0; which < N_INVALID; which++) do_invalid(which);
    struct hak_stats s1 = tu_stats();
    CHECK(s1.invalid_frees - s0.invalid_frees == N_INVALID,
          "HAKMEM_INVALID_FREE=ignore: invalid_frees grew by %llu after %d invalid frees",
          (unsigned long long)(s1.invalid_frees - s0.invalid_frees), N_INVALID);
    /* Low addresses are unknown like any other: checked, never read
     * (page 0 used to look like a remembered glibc page). */
    static const uintptr_t low[] = { 0x1000, 0x1010, 0x2000, 0xff0, 0x10000 };
    struct hak_stats s2 = tu_stats();
    for (size_t i = 0; i < sizeof low / sizeof *low; i++)
        free(tu_launder((void *)low[i]));
    struct hak_stats s3 = tu_stats();
    CHECK(s3.invalid_frees - s2.invalid_frees == sizeof low / sizeof *low,
          "frees of low addresses: invalid_frees grew by %llu",
          (unsigned long long)(s3.invalid_frees - s2.invalid_frees));
    /* A sized free of what is no block is free's to report: once */
    char *b = malloc(100);
    struct hak_stats s4 = tu_stats();
    hak_free_sized(tu_launder(b + 16), 100);
    free_aligned_sized(tu_launder(b + 16), 64, 100);
    struct hak_stats s5 = tu_stats();
    CHECK(s5.invalid_frees - s4.invalid_frees == 2,
          "two sized frees of an interior pointer: invalid_frees grew by %llu",
          (unsigned long long)(s5.invalid_frees - s4.invalid_frees));
    free(b);
    /* the allocator still works */
    void *v[100];
    for (int i = 0; i < 100; i++) {
        v[i] = malloc(1 + i * 3000);
        CHECK(v[i] != NULL, "malloc after ignored invalid frees");
        if (v[i]) tu_fill(v[i], 1 + i * 3000, i);
    }
    for (int i = 0; i < 100; i++) {
        if (v[i]) CHECK(tu_verify(v[i], 1 + i * 3000, i) == TU_OK, "block corrupted");
        free(v[i]);
    }
    return TU_DONE();
}

static void invalid_ignore(const char *self)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60);
        setenv("HAKMEM_INVALID_FREE", "ignore", 1);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1); /* the child's "ok" line is noise */
        execl(self, self, "--ignore-child", (char *)NULL);
        _exit(127);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid, "fork/wait");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "with HAKMEM_INVALID_FREE=ignore the invalid frees were not ignored: child %s %d",
          WIFSIGNALED(st) ? "killed by signal" : "exited with",
          WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--ignore-child") == 0)
        return ignore_child();
    glibc_malloc = (void *(*)(size_t))libc_symbol("malloc");
    glibc_calloc = (void *(*)(size_t, size_t))libc_symbol("calloc");
    glibc_memalign = (void *(*)(size_t, size_t))libc_symbol("memalign");
    if (glibc_malloc && glibc_calloc && glibc_memalign)
        foreign_blocks();
    libc_names();
    invalid_abort();
    invalid_ignore("/proc/self/exe");
    return TU_DONE();
}
