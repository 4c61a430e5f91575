/* Reporting misuse and corruption: one line on stderr, then abort().
 * Nothing here allocates (snprintf into a stack buffer, write(2)).
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void write_fd(int fd, const char *msg)
{
    int saved = errno; /* the statistics at exit, malloc_stats */
    size_t len = strlen(msg);
    while (len) {
        ssize_t n = write(fd, msg, len);
        if (n <= 0)
            break;
        msg += n;
        len -= (size_t)n;
    }
    errno = saved;
}

void fatal_corruption(const char *what, const void *addr)
{
    char buf[192];
    snprintf(buf, sizeof buf, "hakmem: heap corruption: %s %p\n", what, addr);
    write_stderr(buf);
    abort();
}

void invalid_free_report(const char *what, const void *addr)
{
    STAT_INC(invalid_frees);
    runtime_ensure(); /* the policy is an option */
    if (options.invalid_free == 1) /* HAKMEM_INVALID_FREE=ignore */
        return;
    char buf[192];
    snprintf(buf, sizeof buf, "hakmem: %s: %p\n", what, addr);
    write_stderr(buf);
    abort();
}

void assert_failed(const char *cond, const char *file, int line)
{
    char buf[256];
    snprintf(buf, sizeof buf, "hakmem: assertion failed: %s (%s:%d)\n", cond, file, line);
    write_stderr(buf);
    abort();
}
