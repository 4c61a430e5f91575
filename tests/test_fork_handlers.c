/* fork() in a program whose own pthread_atfork handlers allocate, registered
 * from a constructor that runs before hakmem's (priority 101) and before
 * its first malloc.  The program's prepare handler runs while other
 * handlers may already have run; whatever order hakmem's own fork handling
 * is set up in, malloc/free must work inside the program's prepare, parent
 * and child handlers (all tiers, 1 MiB included), and the child and the
 * parent must keep working after the fork.
 *
 * Forks from the main thread, then from a second thread while other
 * threads allocate.  alarm() turns a deadlock in the parent into a
 * failure; the parent kills a child that does not exit in time.
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <sys/wait.h>
#include "testutil.h"

enum { WORKERS = 3, FORKS_MAIN = 8, FORKS_THREAD = 8 };

static unsigned long prepare_runs, parent_runs, child_runs;
static int handler_bad;

/* malloc and free 1 MiB plus small and mid blocks; checks the contents. */
static int alloc_some(unsigned char tag)
{
    static const size_t sz[] = { 1 * MiB, 24, 700, 5000, 40000, 100000 };
    void *b[sizeof sz / sizeof *sz];
    int bad = 0;
    for (size_t i = 0; i < sizeof sz / sizeof *sz; i++) {
        b[i] = malloc(sz[i]);
        if (!b[i]) { bad++; continue; }
        memset(b[i], tag + (int)i, sz[i]);
    }
    for (size_t i = 0; i < sizeof sz / sizeof *sz; i++) {
        if (!b[i]) continue;
        unsigned char *p = b[i];
        if (p[0] != (unsigned char)(tag + i) || p[sz[i] - 1] != (unsigned char)(tag + i))
            bad++;
        free(b[i]);
    }
    return bad;
}

static void on_prepare(void)
{
    __atomic_add_fetch(&prepare_runs, 1, __ATOMIC_RELAXED);
    if (alloc_some(0x11)) __atomic_add_fetch(&handler_bad, 1, __ATOMIC_RELAXED);
}
static void on_parent(void)
{
    __atomic_add_fetch(&parent_runs, 1, __ATOMIC_RELAXED);
    if (alloc_some(0x22)) __atomic_add_fetch(&handler_bad, 1, __ATOMIC_RELAXED);
}
static void on_child(void)
{
    child_runs++;
    if (alloc_some(0x33)) handler_bad++;
}

/* Priority 101: before the constructors of default priority (hakmem's),
 * and no malloc before pthread_atfork. */
__attribute__((constructor(101))) static void register_handlers(void)
{
    pthread_atfork(on_prepare, on_parent, on_child);
}

static int stop;
static unsigned long iters[WORKERS];
static volatile pid_t current_child; /* killed if the parent times out */

static void *worker(void *arg)
{
    int idx = (int)(intptr_t)arg;
    tu_churn(idx, &stop, iters, 64, 256, 0, (uint64_t)idx + 7);
    return NULL;
}

static int child_main(unsigned long prep_before)
{
    alarm(8);
    int bad = 0;
    if (child_runs != 1) bad |= 1;            /* the child handler ran once, here */
    if (handler_bad) bad |= 2;                /* and its allocations worked */
    if (prepare_runs != prep_before + 1) bad |= 4;
    if (alloc_some(0x44)) bad |= 8;           /* the child allocates */
    void *big = malloc(3 * MiB);
    if (!big) bad |= 16; else { memset(big, 1, 3 * MiB); free(big); }
    return bad;
}

/* Fork once, wait for the child; returns nothing, CHECKs the outcome. */
static void fork_once(const char *who, int f)
{
    unsigned long prep = __atomic_load_n(&prepare_runs, __ATOMIC_RELAXED);
    unsigned long par = __atomic_load_n(&parent_runs, __ATOMIC_RELAXED);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0)
        _exit(child_main(prep));
    CHECK(pid > 0, "%s fork %d: %s", who, f, strerror(errno));
    if (pid < 0) return;
    current_child = pid;
    CHECK(__atomic_load_n(&parent_runs, __ATOMIC_RELAXED) > par,
          "%s fork %d: the parent handler did not run", who, f);
    CHECK(__atomic_load_n(&prepare_runs, __ATOMIC_RELAXED) > prep,
          "%s fork %d: the prepare handler did not run", who, f);
    int st = 0;
    pid_t got = 0;
    double end = tu_now() + 8;
    while ((got = waitpid(pid, &st, WNOHANG)) == 0 && tu_now() < end)
        usleep(1000);
    current_child = 0;
    if (got == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        CHECK(0, "%s fork %d: child hung (deadlock in the child handler?), killed", who, f);
        return;
    }
    CHECK(got == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "%s fork %d: child %s %d (exit bits: 1 child handler count, 2 child handler "
          "allocation, 4 prepare count, 8/16 child allocation)",
          who, f, WIFSIGNALED(st) ? "killed by signal" : "exited with",
          WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    void *p = malloc(100 + (size_t)f * 3000);
    CHECK(p != NULL, "%s: parent malloc after fork", who);
    free(p);
}

static void *forker(void *arg)
{
    (void)arg;
    for (int f = 0; f < FORKS_THREAD; f++) {
        fork_once("thread", f);
        usleep(2000);
    }
    return NULL;
}

static void on_alarm(int sig)
{
    (void)sig;
    pid_t c = current_child; /* a child stuck in a fork handler has no alarm */
    if (c > 0)
        kill(c, SIGKILL);
    static const char m[] = "test_fork_handlers: FAILED: timed out (deadlock at fork?)\n";
    if (write(2, m, sizeof m - 1) < 0) { /* nothing to do */ }
    _exit(1);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    alarm(20); /* a deadlock in the parent fails instead of hanging */

    /* the handlers were registered before anything was allocated */
    CHECK(prepare_runs == 0 && parent_runs == 0, "handlers ran before any fork");

    for (int f = 0; f < FORKS_MAIN; f++)
        fork_once("main", f);

    pthread_t w[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        CHECK(pthread_create(&w[i], NULL, worker, (void *)(intptr_t)i) == 0, "pthread_create");
    usleep(20000);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, forker, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);

    unsigned long before[WORKERS];
    for (int i = 0; i < WORKERS; i++) before[i] = __atomic_load_n(&iters[i], __ATOMIC_RELAXED);
    /* every worker goes on (a lock left held by a fork would stop it);
     * on a loaded machine one may not run for a while: wait up to 5 s */
    for (int i = 0; i < WORKERS; i++) {
        for (int ms = 0; ms < 5000 && __atomic_load_n(&iters[i], __ATOMIC_RELAXED) == before[i]; ms++)
            usleep(1000);
        CHECK(__atomic_load_n(&iters[i], __ATOMIC_RELAXED) > before[i],
              "worker %d made no progress after the forks", i);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < WORKERS; i++) pthread_join(w[i], NULL);

    CHECK(handler_bad == 0, "%d fork handler runs in the parent lost an allocation", handler_bad);
    CHECK(prepare_runs == FORKS_MAIN + FORKS_THREAD && parent_runs == FORKS_MAIN + FORKS_THREAD,
          "prepare ran %lu times, parent %lu times, for %d forks", prepare_runs, parent_runs,
          FORKS_MAIN + FORKS_THREAD);
    alarm(0);
    return TU_DONE();
}
