/* A program linked fully statically against libhakmem.a (tests/test_static.sh):
 * glibc's own allocator is not in the binary, so every allocation, glibc's
 * internal ones (stdio buffers, strdup, qsort, getline, threads' TLS)
 * included, is hakmem's.  Exits 0 after checking each tier, threads, fork
 * and realloc; with the argument "invalid", frees a stack address, which
 * must end in hakmem's one-line report and abort (no glibc to hand it to).
 * SPDX-License-Identifier: MIT */
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hakmem.h"

/* Names hakmem uses inside: the static library keeps them local (its
 * hidden symbols are localized), so a program may have its own. */
int heaps_mutex = 7;
unsigned size_class_compute(unsigned x) { return x * 3; }
void *extent_alloc(size_t n) { return (void *)(uintptr_t)n; }

static int failures;
#define EXPECT(c, what)                                                   \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "static_app: %s failed\n", what);             \
            failures++;                                                   \
        }                                                                 \
    } while (0)

static void *worker(void *arg)
{
    uintptr_t seed = (uintptr_t)arg;
    for (int round = 0; round < 200; round++) {
        size_t sizes[] = { 8, 100, 1000, 20000, 100000, 3 << 20 };
        char *p[6];
        for (int i = 0; i < 6; i++) {
            p[i] = malloc(sizes[i]);
            if (!p[i])
                return (void *)1;
            memset(p[i], (int)(seed + i), sizes[i]);
        }
        for (int i = 0; i < 6; i++) {
            if (p[i][0] != (char)(seed + i) || p[i][sizes[i] - 1] != (char)(seed + i))
                return (void *)1;
            free(p[i]);
        }
    }
    return NULL;
}

static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int main(int argc, char **argv)
{
    EXPECT(heaps_mutex == 7 && size_class_compute(5) == 15 && extent_alloc(3) == (void *)3,
           "the program's own symbols named like hakmem's internal ones");
    if (argc > 1 && strcmp(argv[1], "invalid") == 0) {
        char buf[64];
        void *volatile p = buf + 16;
        free(p);
        return 0; /* not reached: hakmem aborts */
    }
    /* stdio, strdup and qsort allocate inside glibc: they get hakmem's blocks */
    char *s = strdup("static hakmem");
    EXPECT(s && hak_ptr_kind(s) != HAK_KIND_FOREIGN, "strdup from hakmem");
    free(s);
    int *v = malloc(10000 * sizeof *v);
    for (int i = 0; i < 10000; i++)
        v[i] = (i * 7919) % 10000;
    qsort(v, 10000, sizeof *v, cmp);
    EXPECT(v[0] == 0 && v[9999] == 9999, "qsort");
    v = realloc(v, 5000000);
    EXPECT(v && v[1234] == 1234 && hak_ptr_kind(v) == HAK_KIND_LARGE, "realloc to large");
    free(v);
    void *a = aligned_alloc(4096, 12345);
    EXPECT(a && ((uintptr_t)a & 4095) == 0 && malloc_usable_size(a) >= 12345, "aligned_alloc");
    free(a);
    FILE *f = tmpfile();
    EXPECT(f != NULL, "tmpfile");
    if (f) {
        fputs("line one\nline two\n", f);
        rewind(f);
        char *line = NULL;
        size_t cap = 0;
        int lines = 0;
        while (getline(&line, &cap, f) > 0)
            lines++;
        EXPECT(lines == 2 && hak_ptr_kind(line) != HAK_KIND_FOREIGN, "getline");
        free(line);
        fclose(f);
    }
    pthread_t t[4];
    for (uintptr_t i = 0; i < 4; i++)
        EXPECT(pthread_create(&t[i], NULL, worker, (void *)i) == 0, "pthread_create");
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        EXPECT(r == NULL, "thread contents");
    }
    pid_t pid = fork();
    if (pid == 0)
        _exit(worker((void *)9) == NULL ? 0 : 1);
    int st = 0;
    waitpid(pid, &st, 0);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "malloc in a fork child");
    /* the rest of glibc's malloc family: none may pull in its malloc.o */
    struct mallinfo2 mi = mallinfo2();
    FILE *null = fopen("/dev/null", "w");
    EXPECT(mi.arena > 0 && null && malloc_info(0, null) == 0 && mallopt(M_ARENA_MAX, 1) == 1 &&
           malloc_trim(0) >= 0, "mallinfo2, malloc_info, mallopt, malloc_trim");
    if (null)
        fclose(null);
    struct hak_stats hs;
    hak_stats_get(&hs);
    EXPECT(hs.foreign_frees == 0, "no foreign frees in a static program");
    if (failures)
        return 1;
    printf("static_app: ok\n");
    return 0;
}
