/* Foreign pointers: memory hakmem did not hand out.
 *
 * Under LD_PRELOAD a few blocks may still come from glibc's malloc: those
 * made before hakmem was bound, or by a library that reached glibc's
 * allocator by name (hakmem exports glibc's __libc_malloc family too, so
 * code that calls those directly gets hakmem's blocks).  When the registry
 * does not know a pointer, we look at the glibc chunk header in front of
 * it, but only after mincore() has confirmed that its page is mapped,
 * and os_readable that it is not PROT_NONE (pages of glibc's arenas are
 * remembered, so repeated foreign frees cost no syscall).  A plausible
 * glibc chunk goes to glibc's own free; anything else is an invalid free.
 * SPDX-License-Identifier: MIT */
#include "os.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>

/* glibc's free: __libc_free is hakmem's own here, so glibc's is looked up
 * by name: the next definition after hakmem's (preloaded, linked, or
 * loaded by dlopen: libc comes after it), else the first one (hakmem a
 * dependency of a library that libc came before); never hakmem's own.
 * Once, when hakmem starts: a lookup inside a free would clear a
 * dlerror() the program has not read yet.  None in a fully static
 * program (cc -static ... libhakmem.a: there are no glibc blocks, and
 * glibc's malloc.o must not be linked in beside ours): every unknown
 * pointer is then an invalid free. */
#pragma weak dlsym
void *next_definition(const char *name, const void *own)
{
    void *f = dlsym ? dlsym(RTLD_NEXT, name) : NULL;
    if ((!f || f == own) && dlsym)
        f = dlsym(RTLD_DEFAULT, name);
    return f == own ? NULL : f;
}

typedef void (*FreeFn)(void *);
static void *_Atomic glibc_free_found; /* (void *)1: looked, there is none */

static FreeFn glibc_free(void)
{
    void *f = atomic_load_explicit(&glibc_free_found, memory_order_relaxed);
    if (!f) { /* (a foreign pointer before hakmem's constructor ran) */
        f = next_definition("__libc_free", (void *)hak_free);
        atomic_store_explicit(&glibc_free_found, f ? f : (void *)1, memory_order_relaxed);
    }
    return f == (void *)1 ? NULL : (FreeFn)f;
}

__attribute__((constructor)) static void foreign_start(void)
{
    glibc_free();
}

/* glibc's chunk layout (malloc/malloc.c): a size word before the block,
 * its low bits flags, IS_MMAPPED among them; chunks 16-byte aligned. */
#define GLIBC_CHUNK_IS_MMAPPED ((size_t)2)
#define GLIBC_ALIGN            ((size_t)16)
#define PAGE_CACHE    8

/* Entries are page | 1, so that the zero-initialised slots match no page
 * (page 0 included: a low address must be checked like any other). */
static __thread uintptr_t known_pages[PAGE_CACHE] __attribute__((tls_model("initial-exec")));
static __thread unsigned  known_next __attribute__((tls_model("initial-exec")));

static bool page_known(uintptr_t page)
{
    for (unsigned i = 0; i < PAGE_CACHE; i++)
        if (known_pages[i] == (page | 1))
            return true;
    return false;
}

/* Usable size of the glibc chunk at p, or 0 if p does not look like one. */
static size_t glibc_usable(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    if (a < 4096 || (a & (GLIBC_ALIGN - 1)))
        return 0;
    if (!glibc_free())
        return 0;
    uintptr_t page = align_down(a - 16, HAK_PAGE_SIZE); /* p-16..p-1: one page */
    bool known = page_known(page);
    /* mincore says whether it is mapped; a mapped page may still be
     * PROT_NONE (a guard, a program's own protected memory): asked too */
    if (!known && (!os_page_mapped((void *)page) || !os_readable((void *)page, 16)))
        return 0;
    size_t prev = ((const size_t *)p)[-2], field = ((const size_t *)p)[-1];
    size_t size = field & ~(size_t)7;
    if (size < 32 || (size & (GLIBC_ALIGN - 1)) || size >= ((size_t)1 << 46))
        return 0;
    if (field & GLIBC_CHUNK_IS_MMAPPED) {
        /* an mmapped chunk starts prev bytes after a page boundary */
        if (((a - 16 - prev) & (HAK_PAGE_SIZE - 1)) != 0)
            return 0;
        return size - 16;
    }
    /* Arena pages stay mapped: remember them.  (mmapped chunks are not
     * remembered: glibc unmaps them when they are freed.) */
    if (!known) {
        known_pages[known_next++ % PAGE_CACHE] = page | 1;
    }
    return size - 8;
}

void foreign_free(void *p)
{
    if (!glibc_usable(p)) {
        invalid_free_report("free of a pointer hakmem did not allocate", p);
        return;
    }
    STAT_INC(foreign_frees);
    glibc_free()(p);
}

size_t foreign_usable(const void *p)
{
    return glibc_usable(p);
}

void *foreign_realloc(void *p, size_t size)
{
    size_t usable = glibc_usable(p);
    if (!usable) {
        invalid_free_report("realloc of a pointer hakmem did not allocate", p);
        errno = EINVAL;
        return NULL;
    }
    void *q = hak_malloc(size);
    if (q) {
        memcpy(q, p, usable < size ? usable : size);
        STAT_INC(foreign_frees);
        glibc_free()(p);
    }
    return q;
}
