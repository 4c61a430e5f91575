#!/bin/bash
# dlopen/dlclose of a plugin that is linked with -lhakmem, from threads that
# then exit.  After dlclose unloads the library, nothing of it may still be
# called: a thread-exit destructor (pthread key) left behind by the unloaded
# library crashes the thread's exit.
#
# Builds, into a temporary directory and for each library under test
# ($HAK_TEST_LIB, and $HAK_TEST_DEBUG_LIB if it exists):
#   plugin.so  linked against that libhakmem.so (path + rpath); exports
#              plugin_work(), which calls hak_malloc/hak_free (all tiers)
#              and plain malloc/free
#   driver     NOT linked with hakmem; dlopen(RTLD_NOW|RTLD_LOCAL)s the
#              plugin, calls plugin_work, dlcloses it, from: worker threads
#              one after another, worker threads at the same time, then
#              the main thread; then 1100 load/unload cycles (a library
#              that leaked a pthread key per load would exhaust the 1024
#              keys), and checks that the process can still create keys and
#              threads.  Exits 0.
#   lastthread NOT linked with hakmem either: its main thread starts a
#              worker and ends by pthread_exit; the worker loads the
#              plugin (so hakmem's constructor runs on a thread that is
#              not the first), makes a 64 MiB spike that starts hakmem's
#              purger thread, and returns: the process must then end with
#              status 0, as under glibc (a purger that outlived the
#              program's threads kept it running for ever).
# Prints one PASS/FAIL line per library; exits 1 if any failed.
#
# Env: ROOT (repo root), HAK_TEST_LIB, HAK_TEST_DEBUG_LIB (set by tests/run.sh).
# SPDX-License-Identifier: MIT
set -u
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
HAK_TEST_LIB=${HAK_TEST_LIB:-$ROOT/out/release/libhakmem.so}
HAK_TEST_DEBUG_LIB=${HAK_TEST_DEBUG_LIB:-$ROOT/out/debug/libhakmem.so}
CC=${CC:-cc}
unset LD_PRELOAD HAKMEM_STATS HAKMEM_VERBOSE || true

if [ ! -f "$HAK_TEST_LIB" ]; then
    echo "FAIL test_dlclose: $HAK_TEST_LIB does not exist (run make)"
    exit 1
fi
LIBS=("$HAK_TEST_LIB")
[ -f "$HAK_TEST_DEBUG_LIB" ] && LIBS+=("$HAK_TEST_DEBUG_LIB")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/hakmem-dlclose.XXXXXX") || { echo "FAIL test_dlclose: mktemp"; exit 1; }
trap 'rm -rf "$TMP"' EXIT

cat >"$TMP/plugin.c" <<'EOF'
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
/* include/hakmem.h */
void *hak_malloc(size_t size);
void  hak_free(void *ptr);
void *hak_realloc(void *ptr, size_t size);

/* Returns 0 if every block kept its contents. */
__attribute__((visibility("default"))) int plugin_work(int seed)
{
    static const size_t sz[] = { 1, 16, 100, 1000, 4000, 30000, 53248, 70000, 300000,
                                 (size_t)3 << 20 };
    enum { N = sizeof sz / sizeof *sz };
    unsigned char *h[N], *m[N];
    int bad = 0;
    for (int i = 0; i < N; i++) {
        h[i] = hak_malloc(sz[i]);
        m[i] = malloc(sz[i]);
        if (!h[i] || !m[i])
            return 100 + i;
        memset(h[i], seed + i, sz[i]);
        memset(m[i], seed - i, sz[i]);
    }
    /* a block that moves tiers */
    unsigned char *r = hak_malloc(100);
    if (!r)
        return 99;
    memset(r, 7, 100);
    r = hak_realloc(r, 200000);
    if (!r)
        return 98;
    for (int i = 0; i < 100; i++)
        bad |= r[i] != 7;
    hak_free(r);
    for (int i = N - 1; i >= 0; i--) {
        bad |= h[i][0] != (unsigned char)(seed + i) || h[i][sz[i] - 1] != (unsigned char)(seed + i);
        bad |= m[i][0] != (unsigned char)(seed - i) || m[i][sz[i] - 1] != (unsigned char)(seed - i);
        hak_free(h[i]);
        free(m[i]);
    }
    return bad;
}

/* 64 MiB in use at once, then freed: hakmem starts its purger. */
__attribute__((visibility("default"))) int plugin_spike(void)
{
    void *p[32];
    for (int i = 0; i < 32; i++) {
        if (!(p[i] = hak_malloc((size_t)2 << 20)))
            return 1;
        memset(p[i], i, 4096);
    }
    for (int i = 0; i < 32; i++)
        hak_free(p[i]);
    for (int i = 0; i < 100; i++) /* the purger starts at a malloc */
        hak_free(hak_malloc(100000 + (size_t)i));
    return 0;
}
EOF

cat >"$TMP/lastthread.c" <<'EOF'
#include <dlfcn.h>
#include "testutil.h" /* tu_purger_running */

static void *worker(void *plugin)
{
    void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    int (*spike)(void) = h ? (int (*)(void))dlsym(h, "plugin_spike") : NULL;
    if (!spike || spike() != 0) {
        fprintf(stderr, "lastthread: %s\n", h ? "plugin_spike failed" : dlerror());
        _exit(1);
    }
    printf("lastthread: purger running %d\n", tu_purger_running());
    fflush(stdout);
    return NULL; /* the process's last thread but hakmem's ends here */
}

int main(int argc, char **argv)
{
    pthread_t t;
    if (argc != 2 || pthread_create(&t, NULL, worker, argv[1]) != 0)
        return 2;
    pthread_exit(NULL);
}
EOF

cat >"$TMP/driver.c" <<'EOF'
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *plugin;
static pthread_barrier_t barrier;
static int failures;

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "driver: %s: %s\n", what, detail ? detail : "");
    __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
}

/* One load / call / unload cycle. */
static void cycle(int seed)
{
    void *h = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fail("dlopen", dlerror());
        return;
    }
    int (*work)(int) = (int (*)(int))dlsym(h, "plugin_work");
    if (!work) {
        fail("dlsym plugin_work", dlerror());
    } else {
        int rc = work(seed);
        if (rc) {
            char b[32];
            snprintf(b, sizeof b, "returned %d", rc);
            fail("plugin_work", b);
        }
    }
    if (dlclose(h) != 0)
        fail("dlclose", dlerror());
}

static void *worker(void *arg)
{
    long idx = (long)arg;
    int concurrent = idx >= 100;
    for (int k = 0; k < 3; k++) {
        if (concurrent)
            pthread_barrier_wait(&barrier); /* load and unload at the same time */
        cycle((int)idx * 3 + k);
    }
    return NULL; /* the thread exits with the library unloaded */
}

static void run_threads(int n, long base, int together)
{
    pthread_t t[16];
    if (together)
        pthread_barrier_init(&barrier, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        int rc = pthread_create(&t[i], NULL, worker, (void *)(base + i));
        if (rc) {
            fail("pthread_create", strerror(rc));
            exit(1);
        }
        if (!together)
            pthread_join(t[i], NULL);
    }
    if (together) {
        for (int i = 0; i < n; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&barrier);
    }
}

static void *nop(void *arg) { return arg; }

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: driver PLUGIN\n");
        return 2;
    }
    plugin = argv[1];
    alarm(60);
    run_threads(4, 0, 0);   /* one after another */
    run_threads(4, 100, 1); /* four at a time */
    run_threads(8, 200, 1);
    cycle(1);               /* the main thread too */
    for (int i = 0; i < 1100; i++) /* no per-load resource may leak */
        cycle(i);
    pthread_key_t k;
    int rc = pthread_key_create(&k, NULL);
    if (rc)
        fail("pthread_key_create after 1100 load/unload cycles", strerror(rc));
    else
        pthread_key_delete(k);
    pthread_t t;
    if ((rc = pthread_create(&t, NULL, nop, NULL)) != 0)
        fail("pthread_create at the end", strerror(rc));
    else
        pthread_join(t, NULL);
    run_threads(2, 300, 1); /* and load again from threads after all that */
    if (failures)
        return 1;
    printf("driver: ok\n");
    return 0;
}
EOF

fail_count=0
if ! "$CC" -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Wall -Wextra -Werror \
        -o "$TMP/driver" "$TMP/driver.c" -ldl >"$TMP/cc.log" 2>&1; then
    echo "FAIL test_dlclose: building the driver: $(grep -m1 -i error "$TMP/cc.log")"
    exit 1
fi
if ! "$CC" -O1 -g -std=gnu11 -D_GNU_SOURCE -pthread -Wall -Wextra -Werror -I"$ROOT/tests" -I"$ROOT/include" \
        -o "$TMP/lastthread" "$TMP/lastthread.c" -ldl >"$TMP/cc.log" 2>&1; then
    echo "FAIL test_dlclose: building lastthread: $(grep -m1 -i error "$TMP/cc.log")"
    exit 1
fi
i=0
for lib in "${LIBS[@]}"; do
    i=$((i + 1))
    case $lib in /*) ;; *) lib=$PWD/$lib ;; esac
    d=$TMP/lib$i
    mkdir -p "$d"
    # Link the library file itself (it is called libhakmem.so in both
    # out/release and out/debug, so -L/-l could pick the wrong one).
    if ! "$CC" -O1 -g -std=gnu11 -shared -fPIC -Wall -Wextra -Werror -o "$d/plugin.so" \
            "$TMP/plugin.c" "$lib" -Wl,-rpath,"$(dirname "$lib")" >"$d/cc.log" 2>&1; then
        echo "FAIL test_dlclose $lib: building the plugin: $(grep -m1 -i error "$d/cc.log")"
        fail_count=$((fail_count + 1))
        continue
    fi
    timeout -k 5 90 "$d/../driver" "$d/plugin.so" >"$d/out" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && grep -q '^driver: ok' "$d/out"; then
        echo "PASS test_dlclose $lib"
    else
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            why="timed out"
        elif [ $rc -gt 128 ]; then
            why="killed by signal $((rc - 128))"
        else
            why="exit status $rc"
        fi
        detail=$(grep -m1 . "$d/out")
        echo "FAIL test_dlclose $lib: driver $why${detail:+: $detail}"
        fail_count=$((fail_count + 1))
    fi
    t0=$SECONDS
    timeout -k 2 20 "$TMP/lastthread" "$d/plugin.so" >"$d/last" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && grep -q '^lastthread: purger running 1' "$d/last"; then
        echo "PASS test_dlclose $lib: loaded by a worker, the process ends with it ($((SECONDS - t0)) s)"
    elif [ $rc -eq 0 ]; then
        echo "FAIL test_dlclose $lib: lastthread tested nothing: $(grep -m1 . "$d/last")"
        fail_count=$((fail_count + 1))
    else
        echo "FAIL test_dlclose $lib: loaded by a worker, the process did not end by itself (exit status $rc)"
        fail_count=$((fail_count + 1))
    fi
done
[ $fail_count -eq 0 ]
