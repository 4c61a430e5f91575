/* HAKMEM_STATS=1's report at exit: it reaches stderr as it was at start-up
 * even when the program closed descriptor 2 before exit (coreutils do),
 * and it is never written into a file the program opened under the number
 * of hakmem's copy of stderr after closing that copy.  Each case runs in
 * this program re-executed with HAKMEM_STATS=1, stderr on a pipe.
 * SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "testutil.h"

/* The child's part: mode "close" closes stderr before it exits; mode
 * "reuse" closes every descriptor above stderr (hakmem's copy among them)
 * and writes a file of its own, which takes the lowest free number. */
static int child(const char *mode, const char *path)
{
    free(tu_launder(malloc(100)));
    if (!strcmp(mode, "close")) {
        close(2);
        return 0;
    }
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    int f = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (f < 0 || write(f, "mine\n", 5) != 5)
        return 1;
    return 0; /* f stays open: the report at exit could see it */
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

    st = run(self, "reuse", path, out, sizeof out);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child (reuse) exited with status %d", st);
    CHECK(strstr(out, "peak RSS") != NULL, "no report on stderr when the copy was closed");
    char file[256] = { 0 };
    f = open(path, O_RDONLY);
    ssize_t n = f >= 0 ? read(f, file, sizeof file - 1) : -1;
    if (f >= 0)
        close(f);
    CHECK(n == 5 && !strcmp(file, "mine\n"),
          "the program's own file holds %zd bytes (the report went into it?): \"%.40s\"", n, file);
    unlink(path);
    return TU_DONE();
}
