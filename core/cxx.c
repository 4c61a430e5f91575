/* C++ operator new and delete, every form, so that C++ programs allocate
 * and free through hakmem (no hop through libstdc++) and its checks: a
 * sized `delete p` (C++14 sized deallocation) passes the static type's
 * size, which hak_free_sized compares with the block's, so `delete` of
 * the wrong type and `delete` of a new[] array are reported.  The aligned
 * forms take blocks that aligned_alloc rounded up, so they are not
 * size-checked.  new and delete come as a set: with only delete here, a
 * library after hakmem in the lookup order that has its own pair (a pool,
 * tcmalloc linked with -l) would see its new paired with hakmem's delete.
 *
 * A program may replace operator new and delete (a pool, a leak tracker,
 * blocks with a header of its own), often only the plain pair.  The
 * standard's default forms then reach its replacement: an array form
 * calls the scalar one, a sized or nothrow delete the plain delete of its
 * family, a nothrow new the plain new (turning its exception into NULL).
 * So does every form here, through the symbols (weak, so a static link
 * beside a program's own definitions keeps theirs), except that a sized
 * delete checks the size itself when the forms it would call are still
 * hakmem's: the test is one load of a GOT entry.
 *
 * C cannot throw std::bad_alloc or catch what a new handler throws: where
 * hakmem has no memory to give, or a nothrow new has to call a program's
 * own operator new, the form hands the request to the next definition of
 * itself in the lookup order (libstdc++'s: dlsym(RTLD_NEXT)), which calls
 * the new handler, throws or returns NULL as the standard says, and
 * allocates through malloc, hakmem's again.  Without one (a static link,
 * libstdc++ loaded with RTLD_LOCAL), hakmem runs the new handler loop
 * itself and throws with libstdc++'s std::__throw_bad_alloc, if the
 * program has them; an exception a new handler throws then passes through
 * a nothrow new, and with no way to throw, the program is told on stderr
 * and aborts.
 * (std::align_val_t is a size_t enum, std::nothrow_t const& a pointer.)
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <dlfcn.h>
#include <stdlib.h>

#ifndef HAK_NO_GLIBC_NAMES
#define CXX_API HAK_API __attribute__((weak))

/* ---- operator new ---- */

/* libstdc++'s, where the program has them (weak: C programs do not). */
typedef void (*NewHandler)(void);
extern NewHandler _ZSt15get_new_handlerv(void) __attribute__((weak));
extern void _ZSt17__throw_bad_allocv(void) __attribute__((weak, noreturn));
#pragma weak dlsym

/* The next definition of the form called name, after hakmem's, or NULL;
 * looked up once, on the first failure. */
static void *next_form(void *_Atomic *cache, const char *name)
{
    void *f = atomic_load_explicit(cache, memory_order_relaxed);
    if (!f && dlsym) {
        f = dlsym(RTLD_NEXT, name);
        atomic_store_explicit(cache, f ? f : (void *)1, memory_order_relaxed);
    }
    return f == (void *)1 ? NULL : f;
}
#define NEXT(type, name)                                   \
    ({                                                     \
        static void *_Atomic cache;                        \
        (type) next_form(&cache, name);                    \
    })

/* No memory and no next definition: std::bad_alloc if the program has it */
static HAK_COLD void no_memory(void)
{
    if (_ZSt17__throw_bad_allocv)
        _ZSt17__throw_bad_allocv();
    write_stderr("hakmem: out of memory in operator new, and no std::bad_alloc to throw\n");
    abort();
}

/* No next definition: the new handler loop of [new.delete.single] around
 * an allocation (of n bytes, aligned to al if not 0) that failed once.
 * NULL only if nothrow. */
static HAK_NOINLINE void *new_loop(size_t n, size_t al, bool nothrow)
{
    for (;;) {
        NewHandler h = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
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
    if (next)
        return next(n, al);
    if (!is_pow2(al))
        no_memory();
    return new_loop(n ? n : 1, al, false);
}
CXX_API void *_Znwm(size_t n) __attribute__((alias("new_scalar")));
CXX_API void *_ZnwmSt11align_val_t(size_t n, size_t al) __attribute__((alias("new_scalar_aligned")));

/* The array forms call the scalar ones, as the standard's do. */
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

/* ---- operator delete ---- */

/* The two plain forms, and their addresses as defined here (hidden) */
static void delete_plain(void *p) { hak_free(p); }
CXX_API void _ZdlPv(void *p) __attribute__((alias("delete_plain")));
CXX_API void _ZdaPv(void *p);
CXX_API void _ZdaPv(void *p) { _ZdlPv(p); }
extern void delete_array(void *p) __attribute__((visibility("hidden"), alias("_ZdaPv")));

/* Are operator delete(void*) and, for arrays, delete[](void*) hakmem's?
 * The weak symbols are loaded from the GOT: the definition in effect. */
static inline bool plain_is_ours(void) { return likely(_ZdlPv == delete_plain); }
static inline bool array_is_ours(void) { return likely(_ZdaPv == delete_array) && plain_is_ours(); }

/* A sized form: checked here while its plain forms are hakmem's */
#define CXX_SIZED(mangled, ours, plain)        \
    CXX_API void mangled(void *p, size_t n);   \
    CXX_API void mangled(void *p, size_t n)    \
    {                                          \
        if (ours())                            \
            hak_free_sized(p, n);              \
        else                                   \
            plain(p);                          \
    }
CXX_SIZED(_ZdlPvm, plain_is_ours, _ZdlPv)
CXX_SIZED(_ZdaPvm, array_is_ours, _ZdaPv)

#define CXX_FORWARD(mangled, params, call) \
    CXX_API void mangled params;           \
    CXX_API void mangled params { call; }

CXX_FORWARD(_ZdlPvRKSt9nothrow_t, (void *p, const void *nt), _ZdlPv(p))
CXX_FORWARD(_ZdaPvRKSt9nothrow_t, (void *p, const void *nt), _ZdaPv(p))
/* The aligned family's plain form, and the rest of it */
CXX_FORWARD(_ZdlPvSt11align_val_t, (void *p, size_t al), hak_free(p))
CXX_FORWARD(_ZdaPvSt11align_val_t, (void *p, size_t al), _ZdlPvSt11align_val_t(p, al))
CXX_FORWARD(_ZdlPvmSt11align_val_t, (void *p, size_t n, size_t al), _ZdlPvSt11align_val_t(p, al))
CXX_FORWARD(_ZdaPvmSt11align_val_t, (void *p, size_t n, size_t al), _ZdaPvSt11align_val_t(p, al))
CXX_FORWARD(_ZdlPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt),
            _ZdlPvSt11align_val_t(p, al))
CXX_FORWARD(_ZdaPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt),
            _ZdaPvSt11align_val_t(p, al))
#endif
