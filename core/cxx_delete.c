/* C++ operator delete, every form, so that C++ programs free through
 * hakmem's checks: a sized `delete p` (C++14 sized deallocation) passes the
 * static type's size, which hak_free_sized compares with the block's, so
 * `delete` of the wrong type and `delete` of a new[] array are reported.
 * The aligned sized forms are checked the same way, against the class
 * aligned_alloc takes for that size and alignment.  operator new is
 * cxx_new.c's: new and delete come as a set, or a library after hakmem in
 * the lookup order that has its own pair (a pool, tcmalloc linked with -l)
 * would see its new paired with hakmem's delete.
 *
 * A program may replace operator new and delete (a pool, a leak tracker,
 * blocks with a header of its own), often only the plain pair.  The
 * standard's default forms then reach its replacement: a sized or nothrow
 * delete calls the plain delete of its family, an array delete the scalar
 * one.  So does every form here, through the symbols (weak, so a static
 * link beside a program's own definitions keeps theirs), except that a
 * sized delete checks the size itself when the forms it would call are
 * still hakmem's: the test is one load of a GOT entry.
 * (std::align_val_t is a size_t enum, std::nothrow_t const& a pointer.)
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#ifndef HAK_NO_GLIBC_NAMES
#define CXX_API HAK_API __attribute__((weak))

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
#define CXX_SIZED(mangled, params, ours, checked, plain) \
    CXX_API void mangled params;                         \
    CXX_API void mangled params                          \
    {                                                    \
        if (ours())                                      \
            checked;                                     \
        else                                             \
            plain;                                       \
    }
CXX_SIZED(_ZdlPvm, (void *p, size_t n), plain_is_ours, hak_free_sized(p, n), _ZdlPv(p))
CXX_SIZED(_ZdaPvm, (void *p, size_t n), array_is_ours, hak_free_sized(p, n), _ZdaPv(p))

#define CXX_FORWARD(mangled, params, call) \
    CXX_API void mangled params;           \
    CXX_API void mangled params { call; }

CXX_FORWARD(_ZdlPvRKSt9nothrow_t, (void *p, const void *nt), _ZdlPv(p))
CXX_FORWARD(_ZdaPvRKSt9nothrow_t, (void *p, const void *nt), _ZdaPv(p))
/* The aligned family: its two plain forms, their sized forms (checked
 * while the plain ones are hakmem's), the rest */
static void delete_aligned(void *p, size_t al) { hak_free(p); }
CXX_API void _ZdlPvSt11align_val_t(void *p, size_t al) __attribute__((alias("delete_aligned")));
CXX_API void _ZdaPvSt11align_val_t(void *p, size_t al);
CXX_API void _ZdaPvSt11align_val_t(void *p, size_t al) { _ZdlPvSt11align_val_t(p, al); }
extern void delete_array_aligned(void *p, size_t al)
    __attribute__((visibility("hidden"), alias("_ZdaPvSt11align_val_t")));
static inline bool aligned_is_ours(void) { return likely(_ZdlPvSt11align_val_t == delete_aligned); }
static inline bool array_aligned_is_ours(void)
{
    return likely(_ZdaPvSt11align_val_t == delete_array_aligned) && aligned_is_ours();
}
CXX_SIZED(_ZdlPvmSt11align_val_t, (void *p, size_t n, size_t al), aligned_is_ours, free_sized_aligned(p, n, al),
          _ZdlPvSt11align_val_t(p, al))
CXX_SIZED(_ZdaPvmSt11align_val_t, (void *p, size_t n, size_t al), array_aligned_is_ours,
          free_sized_aligned(p, n, al), _ZdaPvSt11align_val_t(p, al))
CXX_FORWARD(_ZdlPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt),
            _ZdlPvSt11align_val_t(p, al))
CXX_FORWARD(_ZdaPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt),
            _ZdaPvSt11align_val_t(p, al))
#endif
