/* C++ operator new, every form, beside cxx_delete.c's operator delete (new
 * and delete come as a set: see there), so that C++ programs allocate
 * through hakmem with no hop through libstdc++.  The array forms call the
 * scalar ones and the nothrow forms the ones they stand for, through the
 * symbols, as the standard's defaults do, so that a program's own plain
 * forms (weak here: a static link beside its definitions keeps theirs)
 * receive every other form.
 *
 * C cannot catch what a new handler throws: where hakmem has no memory
 * to give, or a nothrow new has to call a program's own operator new, the
 * form hands the request to the next definition of itself (the C++
 * runtime's: dlsym(RTLD_NEXT), or the runtime a library loaded with
 * RTLD_LOCAL brought), which calls the new handler, throws or returns NULL
 * as the standard says, and allocates through malloc, hakmem's again.
 * With none, the scalar forms run the new handler loop themselves and
 * throw std::bad_alloc through the C++ ABI (a program with no C++ runtime
 * at all is told on stderr and aborts).  The static archive has this file
 * as a member of its own (HAK_CXX_ARCHIVE), with the scalar forms only: a
 * static link takes the rest from the C++ runtime's archive, and they call
 * these.
 * (std::align_val_t is a size_t enum, std::nothrow_t const& a pointer.)
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef HAK_NO_GLIBC_NAMES
#define CXX_API HAK_API __attribute__((weak))

/* The C++ runtime's (libstdc++ or libc++: names of the Itanium C++ ABI):
 * std::get_new_handler, and what `throw std::bad_alloc()` compiles to.
 * Weak in libhakmem.so, which C programs load too.  In the static
 * archive's member of its own (HAK_CXX_ARCHIVE), taken only by programs
 * that call operator new, they are strong: a static link then takes these
 * from the runtime's archive, as it would for libstdc++'s own new. */
#ifdef HAK_CXX_ARCHIVE
#define CXX_RUNTIME
#define CXX_HAVE(sym) true
#else
#define CXX_RUNTIME __attribute__((weak))
#define CXX_HAVE(sym) ((sym) != NULL)
#endif
typedef void (*NewHandler)(void);
extern NewHandler _ZSt15get_new_handlerv(void) CXX_RUNTIME;
extern void *__cxa_allocate_exception(size_t) CXX_RUNTIME;
extern void __cxa_throw(void *, void *, void (*)(void *)) CXX_RUNTIME __attribute__((noreturn));
extern char _ZTISt9bad_alloc[] CXX_RUNTIME; /* its type_info */
extern char _ZTVSt9bad_alloc[] CXX_RUNTIME; /* its vtable */
extern void _ZNSt9bad_allocD1Ev(void *) CXX_RUNTIME;
#ifdef HAK_CXX_ARCHIVE
/* The runtime is linked in: the handler loop below is the whole of what
 * its scalar forms would do, and the others are its own. */
#define NEXT(type, name) ((type)NULL)
#else
#pragma weak dlsym
#pragma weak dlopen

/* The next definition of the form called name, after hakmem's, or NULL;
 * looked up once, on the first failure.  RTLD_NEXT sees the global scope
 * only: a C++ library that a C program loaded with RTLD_LOCAL (a Python
 * extension) brought its C++ runtime in where only a look at that runtime
 * itself finds it (RTLD_NOLOAD: never loaded here; the handle is kept, so
 * that the runtime stays while hakmem may call into it). */
static void *next_form(void *_Atomic *cache, const char *name)
{
    static const char *const runtimes[] = { "libstdc++.so.6", "libc++.so.1" };
    void *f = atomic_load_explicit(cache, memory_order_relaxed);
    if (!f && dlsym) {
        f = dlsym(RTLD_NEXT, name);
        for (unsigned i = 0; !f && dlopen && i < sizeof runtimes / sizeof *runtimes; i++) {
            void *rt = dlopen(runtimes[i], RTLD_LAZY | RTLD_NOLOAD);
            f = rt ? dlsym(rt, name) : NULL;
        }
        atomic_store_explicit(cache, f ? f : (void *)1, memory_order_relaxed);
    }
    return f == (void *)1 ? NULL : f;
}
#define NEXT(type, name)                                   \
    ({                                                     \
        static void *_Atomic cache;                        \
        (type) next_form(&cache, name);                    \
    })
#endif

/* No memory and no next definition: std::bad_alloc if the program has it */
static HAK_COLD void no_memory(void)
{
    if (CXX_HAVE(__cxa_allocate_exception) && CXX_HAVE(__cxa_throw) && CXX_HAVE(_ZTISt9bad_alloc) &&
        CXX_HAVE(_ZTVSt9bad_alloc) && CXX_HAVE(_ZNSt9bad_allocD1Ev)) {
        /* a std::bad_alloc is its vtable pointer alone, which points past
         * the vtable's offset-to-top and type_info entries */
        void **e = __cxa_allocate_exception(sizeof(void *));
        e[0] = _ZTVSt9bad_alloc + 2 * sizeof(void *);
        __cxa_throw(e, _ZTISt9bad_alloc, _ZNSt9bad_allocD1Ev);
    }
    /* (write(2) itself: the archive's member has no write_fd to call) */
    static const char msg[] = "hakmem: out of memory in operator new, and no std::bad_alloc to throw\n";
    ssize_t written = write(2, msg, sizeof msg - 1);
    (void)written;
    abort();
}

/* No next definition: the new handler loop of [new.delete.single] around
 * an allocation (of n bytes, aligned to al if not 0) that failed once.
 * NULL only if nothrow. */
static HAK_NOINLINE void *new_loop(size_t n, size_t al, bool nothrow)
{
    for (;;) {
        NewHandler h = CXX_HAVE(_ZSt15get_new_handlerv) ? _ZSt15get_new_handlerv() : NULL;
        if (!h) {
            if (!nothrow)
                no_memory();
            return NULL;
        }
        h();
        void *p = al ? hak_aligned_alloc(al, n) : hak_malloc(n);
        if (p)
            return p;
    }
}

/* The scalar forms: hakmem's memory, or the next form's way of failing.
 * (An alignment that is no power of two fails: bad_alloc, as libstdc++.) */
static void *new_scalar(size_t n)
{
    void *p = hak_malloc(n ? n : 1);
    if (likely(p != NULL))
        return p;
    void *(*next)(size_t) = NEXT(void *(*)(size_t), "_Znwm");
    return next ? next(n) : new_loop(n ? n : 1, 0, false);
}
static void *new_scalar_aligned(size_t n, size_t al)
{
    void *p = hak_aligned_alloc(al, n ? n : 1);
    if (likely(p != NULL))
        return p;
    void *(*next)(size_t, size_t) = NEXT(void *(*)(size_t, size_t), "_ZnwmSt11align_val_t");
    if (next && n <= SIZE_MAX - al) /* (libstdc++ 12 rounds a size past that up to 0) */
        return next(n, al);
    if (!is_pow2(al))
        no_memory();
    return new_loop(n ? n : 1, al, false);
}
CXX_API void *_Znwm(size_t n) __attribute__((alias("new_scalar")));
CXX_API void *_ZnwmSt11align_val_t(size_t n, size_t al) __attribute__((alias("new_scalar_aligned")));

#ifndef HAK_CXX_ARCHIVE
/* The array forms call the scalar ones, as the standard's do.  (A static
 * link takes them, and the nothrow forms, from the C++ runtime's archive:
 * they call the scalar forms, hakmem's, and catch what C cannot.) */
CXX_API void *_Znam(size_t n);
CXX_API void *_Znam(size_t n) { return _Znwm(n); }
CXX_API void *_ZnamSt11align_val_t(size_t n, size_t al);
CXX_API void *_ZnamSt11align_val_t(size_t n, size_t al) { return _ZnwmSt11align_val_t(n, al); }
extern void *new_array(size_t n) __attribute__((visibility("hidden"), alias("_Znam")));
extern void *new_array_aligned(size_t n, size_t al)
    __attribute__((visibility("hidden"), alias("_ZnamSt11align_val_t")));

/* Are the forms a nothrow new calls hakmem's?  (the GOT, as for delete) */
static inline bool new_is_ours(void) { return likely(_Znwm == new_scalar); }
static inline bool new_array_is_ours(void) { return likely(_Znam == new_array) && new_is_ours(); }
static inline bool new_aligned_is_ours(void) { return likely(_ZnwmSt11align_val_t == new_scalar_aligned); }
static inline bool new_array_aligned_is_ours(void)
{
    return likely(_ZnamSt11align_val_t == new_array_aligned) && new_aligned_is_ours();
}

/* The nothrow forms: hakmem's memory while the form they call is hakmem's,
 * else the next definition's (which calls that form and catches); with
 * none, the form itself (its exception then passes) or the handler loop. */
#define CXX_NOTHROW(mangled, params, args, ours, called, fast, loop)          \
    CXX_API void *mangled params;                                             \
    CXX_API void *mangled params                                              \
    {                                                                         \
        void *p;                                                              \
        if (ours() && likely((p = fast) != NULL))                             \
            return p;                                                         \
        void *(*next) params = NEXT(void *(*) params, #mangled);              \
        return next ? next args : !ours() ? called : loop;                    \
    }
CXX_NOTHROW(_ZnwmRKSt9nothrow_t, (size_t n, const void *nt), (n, nt), new_is_ours, _Znwm(n),
            hak_malloc(n ? n : 1), new_loop(n ? n : 1, 0, true))
CXX_NOTHROW(_ZnamRKSt9nothrow_t, (size_t n, const void *nt), (n, nt), new_array_is_ours, _Znam(n),
            hak_malloc(n ? n : 1), new_loop(n ? n : 1, 0, true))
CXX_NOTHROW(_ZnwmSt11align_val_tRKSt9nothrow_t, (size_t n, size_t al, const void *nt), (n, al, nt),
            new_aligned_is_ours, _ZnwmSt11align_val_t(n, al), hak_aligned_alloc(al, n ? n : 1),
            is_pow2(al) ? new_loop(n ? n : 1, al, true) : NULL)
CXX_NOTHROW(_ZnamSt11align_val_tRKSt9nothrow_t, (size_t n, size_t al, const void *nt), (n, al, nt),
            new_array_aligned_is_ours, _ZnamSt11align_val_t(n, al), hak_aligned_alloc(al, n ? n : 1),
            is_pow2(al) ? new_loop(n ? n : 1, al, true) : NULL)
#endif
#endif
