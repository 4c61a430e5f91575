/* The malloc family in its two spellings, as a table of function pointers:
 * the exported glibc names and the hak_* API, so that a test runs the same
 * checks through both.  Tests call through a volatile pointer to the
 * table, so that the compiler cannot apply its builtin knowledge of malloc
 * (errno, NULL, size folding).
 * SPDX-License-Identifier: MIT */
#ifndef HAKMEM_API_TABLE_H
#define HAKMEM_API_TABLE_H

#include <malloc.h>
#include <stdlib.h>
#include "hakmem.h"

struct api {
    const char *name;
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*reallocarray)(void *, size_t, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    size_t (*usable)(const void *);
};

static size_t libc_usable(const void *p) { return malloc_usable_size((void *)p); }
static void *hak_valloc_(size_t n) { return hak_memalign(4096, n); }

static const struct api libc_api = {
    "libc", malloc, free, calloc, realloc, reallocarray, posix_memalign,
    aligned_alloc, memalign, valloc, libc_usable,
};
static const struct api hak_api = {
    "hak", hak_malloc, hak_free, hak_calloc, hak_realloc, hak_reallocarray,
    hak_posix_memalign, hak_aligned_alloc, hak_memalign, hak_valloc_, hak_usable_size,
};

#endif
