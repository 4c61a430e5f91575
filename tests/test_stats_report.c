/* HAKMEM_STATS=1's report at exit: it reaches stderr as it was at start-up
 * even when the program closed descriptor 2 before exit (coreutils do),
 * and it is never written into a file the program opened under the number
 * of hakmem's copy of stderr after closing that copy, or under 2 after
 * closing stderr.  Each case runs in
 * this program re-executed with HAKMEM_STATS=1, stderr on a pipe.
 * SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>
#include "testutil.h"

static void *blocks[1000];
static void *producer(void *arg)
{
    for (int i = 0; i < 1000; i++)
        blocks[i] = malloc(64);
    return arg;
}

/* The child's part: mode "close" closes stderr before it exits; mode
 * "reopen" frees another thread's blocks (so that the report has its lines
 * of cross-thread frees), closes stderr and writes a file of its own under
 * number 2; mode "reuse" closes every descriptor above stderr (hakmem's
 * copy among them) and writes a file of its own, which takes the lowest
 * free number. */
static int child(const char *mode, const char *path)
{
    free(tu_launder(malloc(100)));
    if (!strcmp(mode, "close")) {
        close(2);
        return 0;
    }
    if (!strcmp(mode, "reopen")) {
        for (int i = 0; i < 5000; i++) /* a heap of its own: no take-over */
            free(tu_launder(malloc(32)));
        pthread_t t;
        if (pthread_create(&t, NULL, producer, NULL) != 0 || pthread_join(t, NULL) != 0)
            return 1;
        for (int i = 0; i < 1000; i++)
            free(blocks[i]);
        close(2);
        int f = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
        return f == 2 && write(f, "mine\n", 5) == 5 ? 0 : 1;
    }
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    int f = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (f < 0 || write(f, "mine\n", 5) != 5)
        return 1;
    return 0; /* f stays open: the report at exit could see it */
}

/* Does the file at path hold exactly want? */
static bool file_is(const char *path, const char *want)
{
    char file[256] = { 0 };
    int f = open(path, O_RDONLY);
    ssize_t n = f >= 0 ? read(f, file, sizeof file - 1) : -1;
    if (f >= 0)
        close(f);
    return n == (ssize_t)strlen(want) && !strcmp(file, want);
}

/* Run mode; its stderr goes to out. */
static int run(const char *self, const char *mode, const char *path, char *out, size_t outlen)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        setenv("HAKMEM_STATS", "1", 1);
        execl(self, self, mode, path, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    return tu_collect(fds[0], pid, out, outlen);
}

int main(int argc, char **argv)
{
    if (argc == 3)
        return child(argv[1], argv[2]);
    static char out[64 << 10];
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(len > 0, "readlink /proc/self/exe");
    if (len <= 0)
        return TU_DONE();
    self[len] = 0;
    char path[] = "/tmp/hakmem-stats-report.XXXXXX";
    int f = mkstemp(path);
    CHECK(f >= 0, "mkstemp");
    close(f);

    int st = run(self, "close", path, out, sizeof out);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child (close) exited with status %d", st);
    CHECK(strstr(out, "hakmem") && strstr(out, "peak RSS"),
          "no report at exit after the program closed stderr: \"%.80s\"", out);

    st = run(self, "reopen", path, out, sizeof out);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child (reopen) exited with status %d", st);
    CHECK(strstr(out, "cross-thread frees sent") && strstr(out, "peak RSS"),
          "no whole report at exit after the program reopened descriptor 2: \"%.80s\"", out);
    CHECK(file_is(path, "mine\n"), "the program's file under descriptor 2 got part of the report");

    st = run(self, "reuse", path, out, sizeof out);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child (reuse) exited with status %d", st);
    CHECK(strstr(out, "peak RSS") != NULL, "no report on stderr when the copy was closed");
    CHECK(file_is(path, "mine\n"), "the program's own file holds more than its line (the report went into it?)");

    /* malloc_stats() writes to stderr as the program has it (glibc's
     * fprintf to stderr): after the text its stream holds, into the file
     * it made stderr (until 2026-12-08 always descriptor 2, first) */
    FILE *saved = stderr, *mine = fopen(path, "w+");
    CHECK(mine != NULL, "fopen %s", path);
    if (mine) {
        stderr = mine;
        setvbuf(mine, NULL, _IOFBF, 4096);
        fputs("before\n", stderr);
        malloc_stats();
        stderr = saved;
        char got[8192] = { 0 };
        rewind(mine);
        size_t n = fread(got, 1, sizeof got - 1, mine);
        fclose(mine);
        CHECK(n > 7 && !strncmp(got, "before\nhakmem ", 14) && strstr(got, "peak RSS"),
              "malloc_stats did not follow the program's text into its stderr file: \"%.40s\"", got);
    }
    unlink(path);
    return TU_DONE();
}
