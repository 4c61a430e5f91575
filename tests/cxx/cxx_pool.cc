// A shared library with an operator new and delete of its own (a pool, a
// leak tracker: a tag before each block, checked by its delete), and a
// program that uses new and delete and links it (tests/test_cxx.sh).
// hakmem comes before the library in the lookup order (preloaded, or
// linked first): new and delete must then come from the same one of the
// two, whichever it is, never the library's new with hakmem's delete.
// Built with -DCXX_POOL_LIB for the library.
// SPDX-License-Identifier: MIT
#include <cstdio>
#include <cstdlib>
#include <new>

#ifdef CXX_POOL_LIB
static const std::size_t HDR = 16;
static const unsigned long TAG = 0x706f6f6c74616721ul;

void *operator new(std::size_t n)
{
    char *b = static_cast<char *>(std::malloc(n + HDR));
    if (!b)
        throw std::bad_alloc();
    *reinterpret_cast<unsigned long *>(b) = TAG;
    return b + HDR;
}
void operator delete(void *p) noexcept
{
    if (!p)
        return;
    char *b = static_cast<char *>(p) - HDR;
    if (*reinterpret_cast<unsigned long *>(b) != TAG) {
        std::fprintf(stderr, "cxx_pool: delete of a block its new did not make\n");
        std::abort();
    }
    std::free(b);
}
#else
#include <string>
#include <vector>

struct Obj { long v[4]; };
template <class T> static T *escape(T *p)
{
    asm volatile("" : "+r"(p));
    return p;
}

int main()
{
    for (int i = 0; i < 1000; i++) {
        delete escape(new Obj());
        delete[] escape(new int[7 + i % 5]);
        delete escape(new (std::nothrow) Obj());
    }
    std::vector<std::string> v;
    for (int i = 0; i < 1000; i++)
        v.push_back(std::string(40 + i % 60, 'x'));
    std::printf("cxx_pool: ok\n");
    return 0;
}
#endif
