// operator new under hakmem when memory runs out (tests/test_cxx.sh): the
// new handler is called until it is taken away, then std::bad_alloc; an
// exception the handler throws reaches the caller; the nothrow forms
// return NULL instead of throwing, also when the handler throws; every
// form (scalar, array, aligned) alike.
// Sizes no allocator can give (2^62 bytes and more) stand for memory
// running out.  Prints "cxx_new_handler: ok" or the failed checks.
// Built with -DCXX_PLUGIN it is a shared library whose cxx_new_handler()
// runs the same, for a C program that loads it with RTLD_LOCAL.
// SPDX-License-Identifier: MIT
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

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
    if (failed)
        return 1;
    std::printf("cxx_new_handler: ok\n");
    return 0;
}
