/* dlopen without RTLD_DEEPBIND (libhakmem.so only; the archive has none).
 *
 * A library loaded with RTLD_DEEPBIND looks its symbols up in itself and
 * its own dependencies first, libc among them: its malloc and free are
 * glibc's while the program's are hakmem's, and glibc's free of a block
 * hakmem handed out aborts or, worse, takes it into glibc's heap.  Stock
 * php loads every extension that way (it crashed at startup under
 * hakmem, as under every preloaded allocator), and so do TBB's hwloc
 * binding and some vendors' plugins.  glibc's malloc hooks, which other
 * allocators used for this, are gone since glibc 2.34.  So hakmem's
 * dlopen clears the flag and goes on to libc's: the library then binds
 * to the one malloc of the process, like every other.  What it loses is
 * the preference for its own definitions over the program's, which only
 * matters where two objects define the same names.
 *
 * dlopen is a jump to libc's, not a call: glibc takes the caller's
 * address to find the calling object, whose RUNPATH it searches and whose
 * namespace the library joins, and that must stay the program's.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <dlfcn.h>

typedef void *dlopen_fn(const char *, int);
_Static_assert(RTLD_DEEPBIND == 8, "the jump below clears bit 3");

HAK_HIDDEN dlopen_fn *next_dlopen;

/* The thunk below, by a name nobody can interpose: `dlopen` itself, read
 * in C, is whatever the GOT holds, libc's where hakmem was loaded after
 * it in its own scope (by dlopen, or reached by a later RTLD_DEEPBIND
 * load), and compared with that every dlopen failed. */
HAK_HIDDEN extern char dlopen_thunk[];

/* No dlopen after hakmem's (it cannot happen with glibc): fail as dlopen
 * does, with dlerror() saying why (the failed lookup's message). */
static void *dlopen_missing(const char *file, int mode)
{
    (void)file;
    (void)mode;
    (void)dlsym(RTLD_NEXT, "dlopen");
    return NULL;
}

/* libc's dlopen (next_definition: the next one after hakmem's, else the
 * first, where libc was loaded before hakmem).  Looked up on the first
 * call (a library's constructor may call dlopen before hakmem's have
 * run). */
HAK_HIDDEN dlopen_fn *dlopen_resolve(void)
{
    dlopen_fn *f = (dlopen_fn *)next_definition("dlopen", dlopen_thunk);
    if (!f)
        f = dlopen_missing;
    __atomic_store_n(&next_dlopen, f, __ATOMIC_RELEASE);
    return f;
}

/* dlopen(file, mode): mode &= ~RTLD_DEEPBIND, then a tail jump to the next
 * dlopen (resolved first if need be, with the arguments saved around the
 * call; the stack stays 16-byte aligned at it). */
__asm__(".text\n"
        ".globl dlopen\n"
        ".type dlopen, @function\n"
        ".globl dlopen_thunk\n"
        ".hidden dlopen_thunk\n"
        "dlopen:\n"
        "dlopen_thunk:\n"
        "    endbr64\n"
        "    movq next_dlopen(%rip), %rax\n"
        "    testq %rax, %rax\n"
        "    jnz 1f\n"
        "    pushq %rdi\n"
        "    pushq %rsi\n"
        "    subq $8, %rsp\n"
        "    call dlopen_resolve\n"
        "    addq $8, %rsp\n"
        "    popq %rsi\n"
        "    popq %rdi\n"
        "1:  andl $~8, %esi\n" /* ~RTLD_DEEPBIND */
        "    jmp *%rax\n"
        ".size dlopen, .-dlopen\n");
