/* A process ends when its last thread does, with hakmem's purger thread
 * running: a main thread that calls pthread_exit while a worker goes on,
 * and a fork child whose only thread (the one that forked) ends by
 * returning from its start routine, as Python's threads do.  Under glibc
 * the process then exits with status 0 and runs its atexit handlers; the
 * purger, a thread of the process that blocks every signal, must not keep
 * it alive (it would then never end, deaf even to SIGTERM).
 *
 * Each case runs in a child process that must end with status 0 within
 * 10 s (else it is killed, with its own fork child, and the case fails); it first makes sure the
 * purger runs (a spike of 64 MiB, then a look at /proc/self/task), and its
 * atexit handler writes one byte to a pipe the test reads.
 * SPDX-License-Identifier: MIT */
#include <poll.h>
#include <stdbool.h>
#include "testutil.h"

#define LIMIT_MS 10000

static int atexit_fd = -1;
static uint64_t now_ms(void) { return (uint64_t)(tu_now() * 1000); }
static void at_exit(void)
{
    if (write(atexit_fd, "x", 1) != 1)
        _exit(5);
}


/* A spike that makes hakmem want its purger, which a malloc then starts;
 * exits 3 if it does not (the case would test nothing). */
static void start_purger(void)
{
    enum { N = 32 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = malloc(2 * MiB);
        if (!p[i])
            _exit(4);
        memset(p[i], i, 4096);
    }
    for (int i = 0; i < N; i++)
        free(p[i]);
    for (int i = 0; i < 100; i++)
        free(malloc(100000 + i));
    if (!tu_purger_running())
        _exit(3);
}

static void *worker(void *ms)
{
    uint64_t until = now_ms() + (uintptr_t)ms;
    while (now_ms() < until) { /* keeps allocating after main is gone */
        void *p = malloc(300000);
        char *q = malloc(100);
        if (!p || !q)
            _exit(4);
        memset(p, 1, 300000);
        free(p);
        free(q);
        tu_sleep_ms(5);
    }
    return NULL;
}

/* The main thread ends first, by pthread_exit; the worker goes on for ms. */
static void main_exits_first(uintptr_t ms)
{
    start_purger();
    pthread_t t;
    if (pthread_create(&t, NULL, worker, (void *)ms) != 0)
        _exit(4);
    pthread_exit(NULL);
}

/* A worker that makes its first malloc only after the main thread ended
 * (and gave its heap back, so for a while no thread held one): the purger
 * must still be there for it (it used to stop for good then). */
static void *late_worker(void *unused)
{
    tu_sleep_ms(50);
    start_purger();
    if (!tu_purger_running())
        _exit(9);
    return NULL;
}
static void main_exits_before_first_malloc(uintptr_t unused)
{
    start_purger();
    pthread_t t;
    if (pthread_create(&t, NULL, late_worker, NULL) != 0)
        _exit(4);
    pthread_exit(NULL);
}

/* Python's os.fork() from a thread: the child's only thread is the one
 * that forked, and it ends by returning from its start routine. */
static void *fork_then_return(void *unused)
{
    pid_t pid = fork();
    if (pid < 0)
        _exit(4);
    if (pid == 0) {
        start_purger(); /* the child's own purger */
        return NULL;    /* the child's last thread ends here */
    }
    int st;
    waitpid(pid, &st, 0); /* (the test bounds the whole run) */
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 6);
}
static void forked_from_thread(uintptr_t unused)
{
    start_purger(); /* the parent has one too */
    pthread_t t;
    if (pthread_create(&t, NULL, fork_then_return, NULL) != 0)
        _exit(4);
    pthread_join(t, NULL);
    _exit(7); /* not reached: the thread exits the process */
}

/* The main thread lives on and takes over the heap a worker left (it
 * frees the worker's blocks, having made few mallocs of its own), so for
 * a moment no thread holds a heap: the purger must keep running. */
static void *leave_blocks(void *blocks)
{
    for (int i = 0; i < 64; i++)
        ((void **)blocks)[i] = malloc(100 + i);
    return NULL;
}
static void main_lives_on(uintptr_t unused)
{
    start_purger();
    for (int round = 0; round < 4; round++) {
        void *blocks[64];
        pthread_t t;
        if (pthread_create(&t, NULL, leave_blocks, blocks) != 0)
            _exit(4);
        pthread_join(t, NULL);
        for (int i = 0; i < 64; i++)
            free(blocks[i]);
    }
    tu_sleep_ms(50);
    if (tu_stats().heaps_taken_over == 0)
        _exit(10); /* the case would test nothing */
    exit(tu_purger_running() ? 0 : 9);
}

static void run_case(const char *name, void (*body)(uintptr_t), uintptr_t arg)
{
    int fds[2];
    if (pipe(fds) != 0) {
        CHECK(0, "pipe: %s", strerror(errno));
        return;
    }
    fflush(NULL);
    uint64_t t0 = now_ms();
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0); /* a fork child of its own dies with it, below */
        close(fds[0]);
        atexit_fd = fds[1];
        atexit(at_exit);
        body(arg);
        _exit(8);
    }
    close(fds[1]);
    int st = 0;
    pid_t got = 0;
    while ((got = waitpid(pid, &st, WNOHANG)) == 0 && now_ms() - t0 < LIMIT_MS)
        tu_sleep_ms(2);
    if (got == 0) {
        kill(-pid, SIGKILL);
        waitpid(pid, &st, 0);
        CHECK(0, "%s: the process did not end within %d ms of its last thread", name, LIMIT_MS);
    } else {
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: exit status %d (3: no purger thread ran; 9: it stopped while a program thread lives; 10: no heap was taken over)",
              name, WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
        char b;
        struct pollfd pf = { fds[0], POLLIN, 0 };
        CHECK(poll(&pf, 1, 0) == 1 && read(fds[0], &b, 1) == 1, "%s: the atexit handler did not run", name);
        printf("%s: ended after %llu ms\n", name, (unsigned long long)(now_ms() - t0));
    }
    close(fds[0]);
}

int main(int argc, char **argv)
{
    tu_run_with_option("HAKMEM_DECAY_MS", "250", argv); /* the default, whatever the caller's */
    run_case("main thread ends first, worker right after", main_exits_first, 0);
    run_case("main thread ends first, worker 300 ms later", main_exits_first, 300);
    run_case("main thread ends first, worker's first malloc 50 ms later", main_exits_before_first_malloc, 0);
    run_case("fork child's only thread returns", forked_from_thread, 0);
    run_case("main thread lives on, takes a worker's heap over", main_lives_on, 0);
    return TU_DONE();
}
