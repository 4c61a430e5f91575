/* Process life cycle: fork handlers and the report at exit.
 *
 * hakmem needs no initialisation before its first malloc: all its state is
 * statically initialised, and the first thread heap sets up the rest
 * (heap.c, runtime_init).  This constructor only adds what must be
 * registered once, at a point where calling into libc is safe.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <pthread.h>

__attribute__((constructor)) static void hak_process_start(void)
{
    hak_free(hak_malloc(1)); /* first heap, options, size classes */
    pthread_atfork(heaps_fork_prepare, heaps_fork_parent, heaps_fork_child);
}

__attribute__((destructor)) static void hak_process_end(void)
{
    if (hak_opt.stats)
        hak_stats_print();
}
