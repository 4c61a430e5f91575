/* C++ operator delete, every form, so that C++ programs free through
 * hakmem's checks: a sized `delete p` (C++14 sized deallocation) passes the
 * static type's size, which hak_free_sized compares with the block's, so
 * `delete` of the wrong type and `delete` of a new[] array are reported.
 * operator new stays libstdc++'s: it calls malloc, and only C++ can throw
 * std::bad_alloc and run the new handler.  The aligned forms take blocks
 * that aligned_alloc rounded up, so they are not size-checked.
 * (std::align_val_t is a size_t enum, std::nothrow_t const& a pointer.)
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#ifndef HAK_NO_GLIBC_NAMES
#define CXX_DELETE(mangled, params, call) \
    HAK_API void mangled params;          \
    HAK_API void mangled params { call; }

CXX_DELETE(_ZdlPv, (void *p), hak_free(p))
CXX_DELETE(_ZdaPv, (void *p), hak_free(p))
CXX_DELETE(_ZdlPvm, (void *p, size_t n), hak_free_sized(p, n))
CXX_DELETE(_ZdaPvm, (void *p, size_t n), hak_free_sized(p, n))
CXX_DELETE(_ZdlPvRKSt9nothrow_t, (void *p, const void *nt), hak_free(p))
CXX_DELETE(_ZdaPvRKSt9nothrow_t, (void *p, const void *nt), hak_free(p))
CXX_DELETE(_ZdlPvSt11align_val_t, (void *p, size_t al), hak_free(p))
CXX_DELETE(_ZdaPvSt11align_val_t, (void *p, size_t al), hak_free(p))
CXX_DELETE(_ZdlPvmSt11align_val_t, (void *p, size_t n, size_t al), hak_free(p))
CXX_DELETE(_ZdaPvmSt11align_val_t, (void *p, size_t n, size_t al), hak_free(p))
CXX_DELETE(_ZdlPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt), hak_free(p))
CXX_DELETE(_ZdaPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, const void *nt), hak_free(p))
#endif
