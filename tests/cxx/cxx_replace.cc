// A C++ program with operator new and delete of its own (tests/test_cxx.sh),
// as pools and leak trackers have them: only the plain pairs, scalar and
// aligned, each block behind a 64-byte header the program checks.  The
// standard's other forms (sized, array, nothrow) must reach these under
// hakmem as under libstdc++; a form that went to hakmem's free instead
// would hand it a pointer 64 bytes into a block, which it reports.  Prints
// the number of news and deletes that reached the replacements.
// SPDX-License-Identifier: MIT
#include <cstdio>
#include <cstdlib>
#include <map>
#include <new>
#include <string>
#include <vector>

static const std::size_t HDR = 64;  // keeps every alignment up to 64
static const unsigned long MAGIC = 0x6e6577636f756e74ul, DEAD = 0xdeadul;
static unsigned long news, deletes;

static void *take(std::size_t n)
{
    char *b = static_cast<char *>(std::malloc(n + HDR));
    if (!b)
        throw std::bad_alloc();
    *reinterpret_cast<unsigned long *>(b) = MAGIC;
    news++;
    return b + HDR;
}
static void give(void *p)
{
    if (!p)
        return;
    char *b = static_cast<char *>(p) - HDR;
    if (*reinterpret_cast<unsigned long *>(b) != MAGIC) {
        std::fprintf(stderr, "cxx_replace: delete of a block this program's new did not make\n");
        std::abort();
    }
    *reinterpret_cast<unsigned long *>(b) = DEAD;
    deletes++;
    std::free(b);
}

void *operator new(std::size_t n) { return take(n); }
void operator delete(void *p) noexcept { give(p); }
void *operator new(std::size_t n, std::align_val_t al)
{
    if (static_cast<std::size_t>(al) > HDR)
        throw std::bad_alloc();
    return take(n);
}
void operator delete(void *p, std::align_val_t) noexcept { give(p); }

struct Obj { long v[5] = { 1 }; ~Obj() { v[0] = 0; } };  // new[] keeps a count
struct alignas(64) Line { char bytes[64]; ~Line() { bytes[0] = 0; } };

template <class T> static T *escape(T *p)
{
    asm volatile("" : "+r"(p));
    return p;
}

int main()
{
    for (int i = 0; i < 1000; i++) {
        delete escape(new Obj);                              // sized delete
        delete[] escape(new Obj[3 + i % 5]);                 // sized delete[]
        delete[] escape(new int[10 + i % 7]);                // delete[]
        int *n = escape(new (std::nothrow) int(i));          // nothrow
        ::operator delete(n, std::nothrow);
        ::operator delete[](escape(::operator new[](40, std::nothrow)), std::nothrow);
        delete escape(new Line);                             // aligned, sized
        delete[] escape(new Line[2]);                        // aligned delete[]
        ::operator delete(escape(::operator new(64, std::align_val_t(64))), std::align_val_t(64),
                          std::nothrow);
        ::operator delete[](escape(::operator new[](64, std::align_val_t(64))), std::size_t(64),
                            std::align_val_t(64));
    }
    std::map<std::string, std::vector<int>> m;  // the library's containers
    for (int i = 0; i < 5000; i++)
        m["key" + std::to_string(i % 700)].push_back(i);
    m.clear();
    std::printf("cxx_replace: %s (%lu news, %lu deletes)\n", news == deletes ? "balanced" : "UNBALANCED",
                news, deletes);
    return news == deletes && news >= 10000 ? 0 : 1;
}
