/* hakmem's purger thread keeps no file descriptor of the program's: none
 * is open while it runs (a program that audits its descriptors, as
 * Python's close_fds tests do, sees only its own), it never takes the
 * number of a standard stream the program closed (the old idiom: close
 * 0, open a file, which gets 0), and a fork child keeps every descriptor
 * the program had, after the program closed all of them and opened others
 * (a daemon's closefrom).
 * SPDX-License-Identifier: MIT */
#include <sys/wait.h>
#include "testutil.h"

/* A spike that makes hakmem want its purger, which a malloc then starts. */
static void start_purger(void)
{
    enum { N = 32 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = malloc(2 * MiB);
        CHECK(p[i] != NULL, "malloc");
        if (p[i])
            memset(p[i], i, 4096);
    }
    for (int i = 0; i < N; i++)
        free(p[i]);
    for (int i = 0; i < 100; i++)
        free(malloc(100000 + i));
    usleep(100 * 1000); /* it is running and asleep */
}

/* Descriptors of the process that point under /proc (the purger's look
 * at /proc/self/stat), other than the scan's own. */
static int proc_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char path[300], target[256];
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
            continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, target, sizeof target - 1);
        if (k > 0) {
            target[k] = 0;
            if (!strncmp(target, "/proc/", 6)) {
                printf("  fd %s -> %s\n", e->d_name, target);
                n++;
            }
        }
    }
    closedir(d);
    return n;
}

int main(void)
{
    close(0); /* before the purger starts */
    start_purger();
    CHECK(tu_purger_running(), "no purger thread: nothing to test");
    CHECK(proc_fds() == 0, "the purger keeps a descriptor open");
    int fd = open("/dev/null", O_RDONLY);
    CHECK(fd == 0, "stdin closed, open(\"/dev/null\") gave %d, not 0", fd);

    /* every descriptor but stdout and stderr closed, then a file of the
     * program's gets the lowest number, then fork */
    for (int i = 0; i < 1024; i++)
        if (i != 1 && i != 2)
            close(i);
    char name[] = "/tmp/hakmem-fds-XXXXXX";
    int out = mkstemp(name);
    CHECK(out >= 0, "mkstemp");
    unlink(name);
    for (int i = 0; i < 3; i++) /* the purger runs on meanwhile */
        start_purger();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(write(out, "child\n", 6) == 6 ? 0 : 1);
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid, "fork/wait");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the fork child lost the program's descriptor %d "
          "(status %#x)", out, st);
    CHECK(lseek(out, 0, SEEK_END) == 6, "the child's write did not land");
    return TU_DONE();
}
