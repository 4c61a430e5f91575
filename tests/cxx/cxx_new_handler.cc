// operator new under hakmem when memory runs out (tests/test_cxx.sh): the
// new handler is called until it is taken away, then std::bad_alloc; an
// exception the handler throws reaches the caller; the nothrow forms
// return NULL instead of throwing, also when the handler throws; every
// form (scalar, array, aligned) alike.
// Sizes no allocator can give (2^62 bytes and more) stand for memory
// running out.  Last, memory that runs out and comes back (RLIMIT_AS,
// which a handler raises again): an aligned new then served by the C++
// runtime's own loop, whose size it rounds up to the alignment, must be
// taken back by the sized aligned delete of the size the program asked
// for (hakmem reported it as a wrong size until 2026-12-08).  Prints "cxx_new_handler: ok" or the failed checks.
// Built with -DCXX_PLUGIN it is a shared library whose cxx_new_handler()
// runs the same, for a C program that loads it with RTLD_LOCAL.
// SPDX-License-Identifier: MIT
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sys/resource.h>

static int calls, failed;
#define CHECK(c, what)                                                    \
    do {                                                                  \
        if (!(c)) {                                                       \
            failed++;                                                     \
            std::printf("FAIL line %d: %s (handler calls %d)\n", __LINE__, what, calls); \
        }                                                                 \
    } while (0)

template <class T> static T opaque(T v)
{
    asm volatile("" : "+r"(v));
    return v;
}
static void give_up_at_3()
{
    if (++calls == 3)
        std::set_new_handler(nullptr);
}
struct HandlerError {};
static void throw_own()
{
    ++calls;
    throw HandlerError();
}

static struct rlimit saved_as;
static void make_room()
{
    ++calls;
    setrlimit(RLIMIT_AS, &saved_as);
}
// The address space in use now (VmSize), or 0.
static std::size_t vm_size()
{
    std::FILE *f = std::fopen("/proc/self/status", "r");
    char line[256];
    std::size_t kb = 0;
    while (f && std::fgets(line, sizeof line, f))
        if (std::strncmp(line, "VmSize:", 7) == 0)
            kb = std::strtoull(line + 7, nullptr, 10);
    if (f)
        std::fclose(f);
    return kb << 10;
}

enum Form { SCALAR, ARRAY, ALIGNED, ARRAY_ALIGNED };
static const char *const names[] = { "new", "new[]", "aligned new", "aligned new[]" };
static void *call(Form f, std::size_t n)
{
    switch (f) {
    case SCALAR: return ::operator new(n);
    case ARRAY: return ::operator new[](n);
    case ALIGNED: return ::operator new(n, std::align_val_t(4096));
    default: return ::operator new[](n, std::align_val_t(4096));
    }
}
static void *call_nothrow(Form f, std::size_t n)
{
    switch (f) {
    case SCALAR: return ::operator new(n, std::nothrow);
    case ARRAY: return ::operator new[](n, std::nothrow);
    case ALIGNED: return ::operator new(n, std::align_val_t(4096), std::nothrow);
    default: return ::operator new[](n, std::align_val_t(4096), std::nothrow);
    }
}
static void release(Form f, void *p)
{
    if (f == SCALAR) ::operator delete(p);
    else if (f == ARRAY) ::operator delete[](p);
    else if (f == ALIGNED) ::operator delete(p, std::align_val_t(4096));
    else ::operator delete[](p, std::align_val_t(4096));
}

#ifdef CXX_PLUGIN
extern "C" int cxx_new_handler()
#else
int main()
#endif
{
    // (not SIZE_MAX: libstdc++'s aligned new rounds it up to 0 bytes)
    const std::size_t sizes[] = { SIZE_MAX - 8191, SIZE_MAX / 2, std::size_t(1) << 62 };
    for (int fi = 0; fi < 4; fi++) {
        Form f = Form(fi);
        for (std::size_t n : sizes) {
            calls = 0;
            std::set_new_handler(give_up_at_3);
            bool threw = false;
            try {
                CHECK(call(f, opaque(n)) == nullptr, names[fi]);
                CHECK(false, "an impossible new returned");
            } catch (std::bad_alloc &) {
                threw = true;
            }
            CHECK(threw && calls == 3, "new handler called 3 times, then std::bad_alloc");

            calls = 0;
            std::set_new_handler(throw_own);
            bool own = false;
            try {
                call(f, opaque(n));
            } catch (HandlerError &) {
                own = true;
            } catch (...) {
            }
            CHECK(own && calls == 1, "the handler's exception reaches the caller");

            calls = 0;
            std::set_new_handler(nullptr);
            threw = false;
            try {
                call(f, opaque(n));
            } catch (std::bad_alloc &) {
                threw = true;
            }
            CHECK(threw && calls == 0, "no handler: std::bad_alloc at once");

            calls = 0;
            std::set_new_handler(give_up_at_3);
            CHECK(call_nothrow(f, opaque(n)) == nullptr && calls == 3, "nothrow: handler 3 times, then NULL");
            calls = 0;
            std::set_new_handler(throw_own);
            bool passed = false;
            try {
                passed = call_nothrow(f, opaque(n)) == nullptr;
            } catch (...) {
            }
            CHECK(passed && calls == 1, "nothrow with a throwing handler: NULL");
            std::set_new_handler(nullptr);
            CHECK(call_nothrow(f, opaque(n)) == nullptr, "nothrow, no handler: NULL");
        }
        calls = 0;
        std::set_new_handler(give_up_at_3);
        void *p = call(f, 100);
        CHECK(p != nullptr && calls == 0, "an ordinary request needs no handler");
        if (fi >= 2)
            CHECK((reinterpret_cast<std::uintptr_t>(p) & 4095) == 0, "aligned to 4096");
        release(f, p);
        std::set_new_handler(nullptr);
    }
    // 256 MiB + 100 bytes, aligned to 4096, while only 64 MiB more fit (and
    // twice that for the array form, which the first one's memory, kept
    // by the allocator, must not serve)
    std::size_t vm = vm_size();
    CHECK(vm != 0 && getrlimit(RLIMIT_AS, &saved_as) == 0, "VmSize and RLIMIT_AS");
    for (int array = 0; array < 2 && vm && saved_as.rlim_cur == RLIM_INFINITY; array++) {
        const std::size_t big = (std::size_t(256) << 20 << array) + 100;
        struct rlimit tight = saved_as;
        tight.rlim_cur = vm_size() + (std::size_t(64) << 20);
        calls = 0;
        std::set_new_handler(make_room);
        void *p = nullptr;
        if (setrlimit(RLIMIT_AS, &tight) == 0) {
            try {
                p = array ? ::operator new[](opaque(big), std::align_val_t(4096))
                          : ::operator new(opaque(big), std::align_val_t(4096));
            } catch (std::bad_alloc &) {
            }
            setrlimit(RLIMIT_AS, &saved_as);
        }
        std::set_new_handler(nullptr);
        CHECK(p != nullptr && calls == 1, "memory back after the handler: aligned new succeeds");
        if (!p)
            continue;
        CHECK((reinterpret_cast<std::uintptr_t>(p) & 4095) == 0, "aligned to 4096");
        static_cast<char *>(p)[0] = 1;
        static_cast<char *>(p)[big - 1] = 1;
        if (array)
            ::operator delete[](p, big, std::align_val_t(4096));
        else
            ::operator delete(p, big, std::align_val_t(4096));
    }
    if (failed)
        return 1;
    std::printf("cxx_new_handler: ok\n");
    return 0;
}
