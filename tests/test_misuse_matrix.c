/* The misuse matrix: every kind of heap misuse a hardening suite tries,
 * for a small (100 B), medium (20000 B) and large (300000 B) block, each
 * in a child process.  A case is
 *   caught     the child stopped at the misuse or the allocator call that
 *              followed it: hakmem's one-line report and abort, or a fault
 *              (a guard page, a PROT_NONE zero-size block);
 *   prevented  the misuse had no effect the program could see (malloc
 *              returned NULL, the old contents are gone, the freed block
 *              was not handed back at once): the case checks that itself;
 *   missed     the program went on as if nothing had happened.
 * The expected outcome of every cell, for the default build and for the
 * hardened one (hak_mitigations() says which this is), is in the table
 * below; the test prints the matrix and fails on any cell that differs,
 * either way, so that docs/ARCHITECTURE.md's table stays true.
 *
 * Built with -DMATRIX_PEERS against no hakmem (scripts/misuse_peers.sh),
 * it runs under any allocator given by LD_PRELOAD and only reports: any
 * fatal signal counts as caught, and only the control row is checked.
 * SPDX-License-Identifier: MIT */
#include <alloca.h>
#include <malloc.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <unistd.h>
#include "testutil.h"

#pragma GCC diagnostic ignored "-Wuse-after-free"
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#pragma GCC diagnostic ignored "-Warray-bounds"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Walloc-size-larger-than="
#pragma GCC diagnostic ignored "-Wmissing-field-initializers" /* cases without a stray distance */

/* What C++ compilers call for `delete p` and `delete[] p` when the size is
 * known (sized deallocation, C++14): hakmem exports them. */
void cxx_delete_sized(void *p, size_t n) __asm__("_ZdlPvm");
void cxx_delete_array_sized(void *p, size_t n) __asm__("_ZdaPvm");

#ifdef MATRIX_PEERS
#define hak_mitigations() 0u /* not hakmem's expected tables */
#endif

#define PREVENTED 2
static const size_t tier_size[3] = { 100, 20000, 300000 };
static char src[MiB + 300000 + 64]; /* memcpy source for the overflows */

static void *L(void *p) { return tu_launder(p); }
static void prevented(void) { _exit(PREVENTED); }

/* ---- overflow and underflow: one byte at a distance, or a copy ---- */
/* Each stray write changes the byte it hits (a write of the value already
 * there is no misuse any allocator could see, and canaries are random: a
 * fixed value would match one byte in 256 and make the cell flaky).  The
 * copies' sources are the complement of what they overwrite. */
static void flip(char *p) { ((volatile char *)p)[0] ^= (char)0xA5; }
static void copy_over(char *dst, size_t len)
{
    for (size_t i = 0; i < len; i++)
        src[i] = (char)~((volatile char *)dst)[i];
    memcpy(dst, src, len);
}
/* The distance of the stray write, from the case (set before each cell) */
static size_t stray;
static void over_at(size_t n) { char *p = L(malloc(n)); flip(p + n + stray - 1); free(L(p)); }
static void over_copy(size_t n) { char *p = L(malloc(n)); copy_over(p, n + stray); free(L(p)); }
static void under_at(size_t n) { char *p = L(malloc(n)); flip(p - stray); free(L(p)); }
static void under_copy(size_t n) { char *p = L(malloc(n)); copy_over(p - stray, stray); free(L(p)); }

/* ---- double free ---- */
static void df_immediate(size_t n) { void *p = malloc(n); free(p); free(L(p)); }
static void df_delayed(size_t n)
{
    void *p = malloc(n);
    free(p);
    for (int i = 0; i < 20; i++) /* other sizes come and go */
        free(L(malloc(24 + 1000 * (size_t)i)));
    free(L(p));
}
static void df_interleaved(size_t n) { void *p = malloc(n), *q = malloc(n); free(p); free(q); free(L(p)); }
static void df_after_reuse(size_t n)
{
    void *p = malloc(n);
    free(p);
    void *q = malloc(n); /* often p again */
    free(L(p));
    free(L(q));
}

/* ---- invalid free ---- */
static void inv_stack(size_t n) { char b[64]; free(L(b + 16)); }
static void inv_alloca(size_t n) { char *b = alloca(256); b[0] = 0; free(L(b + 32)); }
static void inv_far(size_t n) { char *p = malloc(n); free(L(p + ((size_t)1 << 32))); }
static void inv_close(size_t n) { char *p = malloc(n); free(L(p - 16)); }
static void inv_unaligned(size_t n) { char *p = malloc(n); free(L(p + 1)); }
static void inv_interior(size_t n) { char *p = malloc(n); free(L(p + (n / 2 & ~(size_t)15))); }

/* ---- use after free ---- */
static void uaf_write(size_t n)
{
    char *p = malloc(n);
    free(p);
    ((volatile char *)L(p))[n / 2] = 0x41;
    for (int i = 0; i < 3000; i++) /* reuse: the freed block comes back */
        free(L(malloc(n)));
}
static void uaf_write_reuse(size_t n)
{
    char *p = malloc(n);
    free(p);
    memset(L(p), 0x41, 16); /* where a free list keeps its link */
    for (int i = 0; i < 3000; i++)
        (void)L(malloc(n));
}
static void not_zeroed_free(size_t n)
{
    volatile char *p = malloc(n);
    memset(L((char *)p), 0x5a, n); /* laundered: not a dead store before free */
    free((char *)p);
    if (p[n / 2] != 0x5a)
        prevented();
}
static void not_zeroed_malloc(size_t n)
{
    char *p = malloc(n);
    memset(L(p), 0x5a, n);
    free(p);
    for (int i = 0; i < 300; i++) {
        char *q = L(malloc(n));
        if (q == p || memchr(q, 0x5a, n)) /* old contents visible */
            return;
    }
    prevented();
}
static void reuse_malloc(size_t n)
{
    void *p = malloc(n);
    free(p);
    if (L(malloc(n)) != p)
        prevented();
}
static void reuse_realloc(size_t n)
{
    void *p = malloc(n), *q = malloc(16);
    free(p);
    if (L(realloc(q, n)) != p)
        prevented();
}

/* ---- zero-size blocks ---- */
static void zero_read(size_t n) { volatile char *p = malloc(0); (void)p[0]; free((char *)p); }
static void zero_write(size_t n) { volatile char *p = malloc(0); p[0] = 1; free((char *)p); }
static void zero_read_freed(size_t n) { volatile char *p = malloc(0); free((char *)p); (void)p[0]; }
static void zero_write_freed(size_t n) { volatile char *p = malloc(0); free((char *)p); p[0] = 1; }

/* ---- other ---- */
static void exec_heap(size_t n)
{
    char *p = malloc(n);
    uintptr_t a = (uintptr_t)p;
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perm[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perm) == 3 && a >= lo && a < hi && perm[2] != 'x')
            prevented();
    }
}
static void impossible(size_t n)
{
    if (L(malloc(SIZE_MAX - 4096)) == NULL && L(malloc((size_t)1 << 62)) == NULL)
        prevented();
}

/* ---- C++ delete (what the compiler emits) ---- */
static void cxx_wrong_size(size_t n) { void *p = malloc(n); cxx_delete_sized(L(p), n * 3); }
static void cxx_array_as_scalar(size_t n)
{
    void *p = malloc(n * 8); /* new long[n] */
    cxx_delete_sized(L(p), sizeof(long)); /* delete p */
}
static void cxx_cookie_as_scalar(size_t n)
{
    char *base = malloc(8 + n * 8); /* new T[n], T with a destructor: count first */
    cxx_delete_sized(L(base + 8), 8); /* delete p */
}
static void cxx_scalar_as_array(size_t n)
{
    char *p = malloc(n); /* new T; then delete[] p reads a count before p */
    cxx_delete_array_sized(L(p - 8), n + 8);
}

/* Control cases: correct use must not be reported. */
static void correct_use(size_t n)
{
    char *p = malloc(n);
    memset(p, 1, n);
    p = realloc(p, n * 2);
    memset(p, 2, n * 2);
    free(p);
    cxx_delete_sized(malloc(n), n);
#ifndef MATRIX_PEERS
    /* a block realloc kept in place, freed with the size it was given */
    size_t less = n * 6 / 10;
    p = realloc(malloc(n), less);
    hak_free_sized(p, less);
#endif
}

struct mcase {
    const char *category, *name;
    void (*fn)(size_t);
    bool sized;              /* run for each tier (else once, any size) */
    const char *expect;      /* "default hardened", a letter a tier each: C caught,
                              * P prevented, M missed */
    size_t stray;            /* overflow and underflow: how far (bytes) */
};
/* The stray-write cases, at the three distances */
#define STRAYS(category, before, after, fn, e1, e32, e1M)                       \
    { category, before "1 byte" after, fn, true, e1, 1 },                       \
    { category, before "32 bytes" after, fn, true, e32, 32 },                   \
    { category, before "1 MiB" after, fn, true, e1M, MiB }
static const struct mcase cases[] = {
    { "control", "correct use", correct_use, true, "MMM MMM" },
    STRAYS("overflow", "", " past the end", over_at, "MCC CCC", "MCC CCC", "MMM CCC"),
    STRAYS("overflow", "memcpy ", " too many", over_copy, "MCC CCC", "MCC CCC", "MCC CCC"),
    STRAYS("underflow", "", " before", under_at, "MMC CCC", "MMC CCC", "MMC CCC"),
    STRAYS("underflow", "memcpy over ", " before", under_copy, "MMC CCC", "MMC CCC", "CCC CCC"),
    { "double free", "immediate", df_immediate, true, "CCC CCC" },
    { "double free", "delayed", df_delayed, true, "CCC CCC" },
    { "double free", "interleaved", df_interleaved, true, "CCC CCC" },
    { "double free", "after the block was reused", df_after_reuse, true, "CCC CCC" },
    { "invalid free", "stack", inv_stack, false, "C C" },
    { "invalid free", "alloca", inv_alloca, false, "C C" },
    { "invalid free", "far away (+4 GiB)", inv_far, true, "CCC CCC" },
    { "invalid free", "close to a block (-16)", inv_close, true, "CCC CCC" },
    { "invalid free", "unaligned (+1)", inv_unaligned, true, "CCC CCC" },
    { "invalid free", "interior", inv_interior, true, "CCC CCC" },
    { "use after free", "write, then reuse", uaf_write, true, "MMM CCC" },
    { "use after free", "write over the list link", uaf_write_reuse, true, "CCC CCC" },
    { "use after free", "old contents after free", not_zeroed_free, true, "MMM PPC" },
    { "use after free", "old contents in a new block", not_zeroed_malloc, true, "MMM PPP" },
    { "reuse", "malloc returns the block just freed", reuse_malloc, true, "PPP PPP" },
    { "reuse", "realloc returns the block just freed", reuse_realloc, true, "PPP PPP" },
    { "zero-size", "read", zero_read, false, "M C" },
    { "zero-size", "write", zero_write, false, "M C" },
    { "zero-size", "read after free", zero_read_freed, false, "M C" },
    { "zero-size", "write after free", zero_write_freed, false, "M C" },
    { "executable heap", "block not executable", exec_heap, true, "PPP PPP" },
    { "impossible size", "malloc(SIZE_MAX - 4096)", impossible, false, "P P" },
    { "C++ delete", "wrong size", cxx_wrong_size, true, "CCC CCC" },
    { "C++ delete", "new[] freed by delete", cxx_array_as_scalar, true, "CCC CCC" },
    { "C++ delete", "new[] with count freed by delete", cxx_cookie_as_scalar, true, "CCC CCC" },
    { "C++ delete", "new freed by delete[]", cxx_scalar_as_array, true, "CCC CCC" },
};

/* Run one cell in a child: its outcome letter, or '?' (it failed in a way
 * no case should: another exit code, an abort without hakmem's report, a
 * timeout), with the first line of what it wrote to stderr. */
static char run_cell(void (*fn)(size_t), size_t size, char *msg, size_t msglen)
{
    int st = tu_in_child(fn, size, msg, msglen);
    char *nl = strchr(msg, '\n');
    if (nl)
        *nl = 0;
    if (WIFEXITED(st))
        return WEXITSTATUS(st) == 0 ? 'M' : WEXITSTATUS(st) == PREVENTED ? 'P' : '?';
    if (WIFSIGNALED(st)) {
        int sig = WTERMSIG(st);
        if (sig == SIGSEGV || sig == SIGBUS)
            return 'C';
        if (sig == SIGABRT && strncmp(msg, "hakmem: ", 8) == 0)
            return 'C';
#ifdef MATRIX_PEERS
        if (sig == SIGABRT || sig == SIGILL || sig == SIGTRAP || sig == SIGFPE)
            return 'C'; /* another allocator's report */
#endif
    }
    return '?';
}

int main(void)
{
    unsigned mit = hak_mitigations();
    bool hardened = mit == HAK_MIT_ALL;
    CHECK(mit == 0 || hardened, "a build with some mitigations (%#x): no expected table", mit);
#ifdef MATRIX_PEERS
    const char *build = getenv("MATRIX_NAME") ? getenv("MATRIX_NAME") : "peer";
#else
    const char *build = hardened ? "hardened" : "default";
#endif
    printf("misuse matrix, %s build (C caught, P prevented, M missed)\n", build);
    printf("  %-16s %-36s small medium large\n", "category", "case");
    int cells = 0, stopped = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const struct mcase *c = &cases[i];
        char got[4] = "   ", msg[3][256] = { "", "", "" };
        for (int t = 0; t < (c->sized ? 3 : 1); t++) {
            stray = c->stray;
            got[t] = run_cell(c->fn, tier_size[t], msg[t], sizeof msg[t]);
            char want = c->expect[hardened ? (c->sized ? 4 : 2) + t : t];
#ifdef MATRIX_PEERS
            if (i > 0) /* only the control: correct use is never reported */
                want = got[t];
#endif
            CHECK(got[t] == want, "%s, %s, %s: %c, expected %c (%s)", c->category, c->name,
                  c->sized ? (t == 0 ? "small" : t == 1 ? "medium" : "large") : "any",
                  got[t], want, msg[t][0] ? msg[t] : "no message");
            if (i > 0) { /* the control is no case */
                cells++;
                stopped += got[t] == 'C' || got[t] == 'P';
            }
        }
        if (c->sized)
            printf("  %-16s %-36s   %c     %c      %c\n", c->category, c->name, got[0], got[1], got[2]);
        else
            printf("  %-16s %-36s   %c (any size)\n", c->category, c->name, got[0]);
    }
    printf("test_misuse_matrix: %s build catches or prevents %d of %d cases\n", build, stopped,
           cells);
    return TU_DONE();
}
