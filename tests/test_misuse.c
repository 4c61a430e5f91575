/* Misuse detection in the default build: each case runs in a child that
 * must die with SIGABRT after one line on stderr naming the problem.
 * Prints the matrix; fails if a case that hakmem promises to catch
 * (docs/ARCHITECTURE.md, "Misuse detection") is not caught.
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/wait.h>
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>
#include "testutil.h"

/* Every case misuses memory on purpose. */
#pragma GCC diagnostic ignored "-Wuse-after-free"
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"

static char global_buf[64];

static void *launder(void *p) { return tu_launder(p); }

static void free_stack(void) { char b[64]; free(launder(b + 16)); }
static void free_global(void) { free(launder(global_buf + 16)); }
static void free_low(void) { free(launder((void *)0x10)); }
static void free_page1(void) { free(launder((void *)0x1000)); }
static void free_tiny_interior(void) { char *p = malloc(100); free(launder(p + 16)); }
static void free_tiny_misaligned(void) { char *p = malloc(100); free(launder(p + 8)); }
static void free_mid_interior(void) { char *p = malloc(20000); free(launder(p + 4096)); }
static void free_large_interior(void) { char *p = malloc(300000); free(launder(p + 4096)); }
static void double_tiny(void) { void *p = malloc(64); free(p); free(launder(p)); }
static void double_mid(void) { void *p = malloc(9000); free(p); free(launder(p)); }
static void double_large(void) { void *p = malloc(1 << 20); free(p); free(launder(p)); }
static void realloc_stack(void) { char b[64]; void *q = realloc(launder(b + 16), 100); (void)q; }
static void realloc_freed_large(void) { void *p = malloc(200000); free(p); void *q = realloc(launder(p), 10); (void)q; }
/* a realloc that would keep the freed block in place (the same class) */
static void realloc_freed_slab(size_t n) { void *p = malloc(n); free(p); void *q = realloc(launder(p), n - 16); (void)q; }
static void realloc_freed_tiny(void) { realloc_freed_slab(200); }
static void realloc_freed_mid(void) { realloc_freed_slab(1400); }
static void usable_then_free_header(void)
{
    /* a pointer to the start of a SuperSlab (its header slab) */
    char *p = malloc(32);
    free(launder((void *)((uintptr_t)p & ~(uintptr_t)(2 * 1024 * 1024 - 1))));
}
static void *remote_free_twice(void *p) { free(p); free(launder(p)); return NULL; }
static void double_remote(void)
{
    void *p = malloc(48);
    pthread_t t;
    pthread_create(&t, NULL, remote_free_twice, p);
    pthread_join(t, NULL);
}
/* Another thread frees p, other blocks, then p again: once before the
 * owner takes its cross-thread frees back, once after (p is then on the
 * owner's lists, and a second copy on the span's cross-thread list would
 * have malloc hand it out twice). */
static void *remote_free_between(void *arg)
{
    void **v = arg;
    free(v[0]);
    for (int i = 1; i < 8; i++)
        free(v[i]);
    if (v[8]) { /* the owner collects meanwhile */
        sem_post(v[8]);
        sem_wait(v[9]);
    }
    free(launder(v[0]));
    return NULL;
}
static void double_remote_between(bool collected)
{
    sem_t ask, done;
    sem_init(&ask, 0, 0);
    sem_init(&done, 0, 0);
    void *v[10] = { 0 };
    for (int i = 0; i < 8; i++)
        v[i] = malloc(48);
    void *keep = launder(malloc(48)); /* v[0]'s span stays in use */
    if (collected) {
        v[8] = &ask;
        v[9] = &done;
    }
    pthread_t t;
    pthread_create(&t, NULL, remote_free_between, v);
    if (collected) {
        sem_wait(&ask);
        malloc_trim(0); /* the owner's trim takes the cross-thread frees */
        sem_post(&done);
    }
    pthread_join(t, NULL);
    int copies = 0; /* missed: the next mallocs may hand p out twice */
    for (int i = 0; i < 16; i++)
        copies += malloc(48) == v[0];
    if (copies > 1)
        _exit(3);
    free(keep);
}
/* The same misuses from a thread past its first cross-thread frees
 * (RECLAIM_WINDOW, 1024), whose frees take the short path (free.c). */
enum { WARM = 2048 };
struct remote_misuse { void **warm; char *p; int kind; };
static void *remote_misuse_run(void *arg)
{
    struct remote_misuse *m = arg;
    for (int i = 0; i < WARM; i++)
        free(m->warm[i]);
    if (m->kind == 0) {
        free(m->p);
        free(launder(m->p));          /* double free */
    } else if (m->kind == 1) {
        free(launder(m->p + 16));     /* interior */
    } else {
        free(launder(m->p + 64 * 200)); /* a block start not carved yet */
    }
    return NULL;
}
static void remote_misuse(int kind)
{
    static void *warm[WARM];
    for (int i = 0; i < WARM; i++)
        warm[i] = malloc(48);
    struct remote_misuse m = { warm, malloc(64), kind };
    pthread_t t;
    pthread_create(&t, NULL, remote_misuse_run, &m);
    pthread_join(t, NULL);
}
static void double_remote_warm(void) { remote_misuse(0); }
static void interior_remote_warm(void) { remote_misuse(1); }
static void never_carved_remote_warm(void) { remote_misuse(2); }
static void double_remote_later(void) { double_remote_between(false); }
static void double_remote_collected(void) { double_remote_between(true); }
/* free(p); free(q); free(p): if missed, the next mallocs hand p out
 * twice, which the case detects itself (exit 3, "missed"). */
static void double_free_between(size_t size)
{
    void *p = malloc(size), *q = malloc(size);
    free(p);
    free(q);
    free(launder(p));
    void *got[3] = { malloc(size), malloc(size), malloc(size) };
    if (got[0] == got[1] || got[0] == got[2] || got[1] == got[2])
        _exit(3);
}
static void double_tiny_later(void) { double_free_between(64); }
static void double_mid_later(void) { double_free_between(9000); }
/* The block came back from malloc and was freed again: the second free
 * of the old pointer is a double free. */
static void double_after_reuse(void)
{
    void *p = malloc(64);
    free(p);
    void *q = malloc(64);
    free(q);
    free(launder(p));
}
/* Enough frees that the front flushed the block back to its span. */
static void double_after_flush(void)
{
    enum { N = 5000 };
    static void *v[N];
    for (int i = 0; i < N; i++)
        v[i] = malloc(48);
    for (int i = 0; i < N; i++)
        free(v[i]);
    free(launder(v[7]));
}
/* Block starts that malloc never returned: one already carved (free in the
 * thread front), others in a page of the span not carved yet. */
static void free_never_allocated_tiny(void) { char *p = malloc(64); free(launder(p + 64 * 5)); }
static void free_never_carved_tiny(void) { char *p = malloc(64); free(launder(p + 64 * 200)); }
static void free_never_carved_mid(void)
{
    char *p = malloc(20000); /* class 20480: the first carve takes 4 blocks */
    free(launder(p + 20480 * 5));
}

/* A large block's header sits right before it: an underflow that changes
 * the extent's recorded length must be reported, not freed (or grown)
 * with the length it now says. */
static char *large_header_overwritten(void)
{
    char *p = launder(malloc(300000));
    size_t len;
    memcpy(&len, p - 24, sizeof len); /* LargeHeader.extent_len */
    len += 1 << 20;
    memcpy(p - 24, &len, sizeof len);
    return p;
}
static void free_large_header(void) { free(launder(large_header_overwritten())); }
static void realloc_large_header(void) { void *q = realloc(launder(large_header_overwritten()), 400000); (void)q; }

struct misuse { const char *name; void (*fn)(void); bool promised; };
static const struct misuse cases[] = {
    { "free of a stack address", free_stack, true },
    { "free of a global", free_global, true },
    { "free of address 0x10", free_low, true },
    { "free of address 0x1000", free_page1, true },
    { "free into the middle of a tiny block", free_tiny_interior, true },
    { "free of a misaligned tiny pointer", free_tiny_misaligned, true },
    { "free into the middle of a mid block", free_mid_interior, true },
    { "free into the middle of a large block", free_large_interior, true },
    { "free of a SuperSlab header address", usable_then_free_header, true },
    { "double free (tiny, immediately)", double_tiny, true },
    { "double free (mid, immediately)", double_mid, true },
    { "double free (large)", double_large, true },
    { "double free by another thread", double_remote, true },
    { "double free by another thread, frees between", double_remote_later, true },
    { "double free by another thread, owner took the first", double_remote_collected, true },
    { "double free by a thread after 2048 remote", double_remote_warm, true },
    { "interior free by a thread after 2048 remote", interior_remote_warm, true },
    { "uncarved free by a thread after 2048 remote", never_carved_remote_warm, true },
    { "realloc of a stack address", realloc_stack, true },
    { "realloc of a freed large block", realloc_freed_large, true },
    { "realloc of a freed tiny block", realloc_freed_tiny, true },
    { "realloc of a freed mid block", realloc_freed_mid, true },
    { "free of a large block, header overwritten", free_large_header, true },
    { "realloc of a large block, header overwritten", realloc_large_header, true },
    { "double free with frees in between (tiny)", double_tiny_later, true },
    { "double free with frees in between (mid)", double_mid_later, true },
    { "double free after the block was reused", double_after_reuse, true },
    { "double free after the block went to its span", double_after_flush, true },
    { "free of a tiny block never handed out", free_never_allocated_tiny, true },
    { "free of a tiny block never carved", free_never_carved_tiny, true },
    { "free of a mid block never carved", free_never_carved_mid, true },
};

static void run_case(size_t i) { cases[i].fn(); }

int main(void)
{
    int caught = 0, total = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[512];
        int st = tu_in_child(run_case, i, err, sizeof err);
        bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, "hakmem:") != NULL;
        total++;
        caught += ok;
        char *nl = strchr(err, '\n');
        if (nl) *nl = 0;
        printf("  %-45s %s  %s\n", cases[i].name, ok ? "caught" : "missed", ok ? err : "");
        if (cases[i].promised)
            CHECK(ok, "%s: not caught (status %#x, stderr '%s')", cases[i].name, st, err);
    }
    printf("test_misuse: %d of %d misuse cases caught\n", caught, total);
    return TU_DONE();
}
