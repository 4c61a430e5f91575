/* Reporting misuse and corruption: one line on stderr, then abort().
 * Nothing here allocates (snprintf into a stack buffer, write(2)).
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void hak_write_stderr(const char *msg)
{
    size_t len = strlen(msg);
    while (len) {
        ssize_t n = write(STDERR_FILENO, msg, len);
        if (n <= 0)
            return;
        msg += n;
        len -= (size_t)n;
    }
}

void hak_fatal(const char *what, const void *addr)
{
    char buf[192];
    snprintf(buf, sizeof buf, "hakmem: heap corruption: %s %p\n", what, addr);
    hak_write_stderr(buf);
    abort();
}

void hak_invalid_pointer(const char *what, const void *addr)
{
    STAT_INC(invalid_frees);
    hak_ensure_runtime(); /* the policy is an option */
    if (hak_opt.invalid_free == 1) /* HAKMEM_INVALID_FREE=ignore */
        return;
    char buf[192];
    snprintf(buf, sizeof buf, "hakmem: %s: %p\n", what, addr);
    hak_write_stderr(buf);
    abort();
}

void hak_assert_fail(const char *cond, const char *file, int line)
{
    char buf[256];
    snprintf(buf, sizeof buf, "hakmem: assertion failed: %s (%s:%d)\n", cond, file, line);
    hak_write_stderr(buf);
    abort();
}
