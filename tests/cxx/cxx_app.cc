// A C++ program under LD_PRELOAD=libhakmem.so (tests/test_cxx.sh): the
// standard containers, strings, exceptions, aligned and sized new/delete all
// go through hakmem's malloc and its operator delete.  Prints a checksum that
// must match the run without hakmem.  With an argument it misuses delete the
// way the compiler lets a program do, which hakmem must report (sized
// deallocation tells it the size the program thinks the block has).
// SPDX-License-Identifier: MIT
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

struct Base { long a = 1; };                       // no virtual destructor
struct Derived : Base { long more[40] = { 2 }; };  // 328 bytes
struct alignas(64) Line { char bytes[64]; };
struct alignas(128) Pad { char bytes[200]; ~Pad() { bytes[0] = 0; } };  // new[] keeps a count
struct alignas(4096) Page { char bytes[70000]; };                       // a large block

// Keeps the optimizer from pairing up a new and a delete and removing both.
template <class T> static T *escape(T *p)
{
    asm volatile("" : "+r"(p));
    return p;
}

static unsigned long mix(unsigned long h, unsigned long v) { return (h ^ v) * 1099511628211ul; }

int main(int argc, char **argv)
{
    if (argc > 1 && std::strcmp(argv[1], "wrong-type") == 0) {
        Base *b = escape<Base>(new Derived);  // freed as the 8-byte Base: the wrong size
        delete b;
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "aligned-wrong-size") == 0) {
        Line *l = escape(new Line[3]);
        ::operator delete[](l, sizeof(Line), std::align_val_t(alignof(Line)));  // 3 of them
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "array-as-scalar") == 0) {
        long *v = escape(new long[100]);
        v[99] = 1;
        delete v;  // NOLINT: delete of new[] (sized: 8 bytes, block of 800)
        return 0;
    }
    unsigned long h = 14695981039346656037ul;
    std::map<std::string, std::vector<int>> m;
    for (int i = 0; i < 20000; i++) {
        std::string k = "key" + std::to_string(i * 7919 % 5003);
        m[k].push_back(i);
    }
    for (auto &kv : m)
        h = mix(h, kv.first.size() + kv.second.size() * 31 + kv.second.back());
    std::unordered_map<int, std::unique_ptr<Derived>> um;
    for (int i = 0; i < 5000; i++)
        um[i % 1500] = std::make_unique<Derived>();
    h = mix(h, um.size());
    std::vector<std::unique_ptr<Line>> lines;
    for (int i = 0; i < 3000; i++) {
        lines.emplace_back(new Line);
        h = mix(h, reinterpret_cast<unsigned long>(lines.back().get()) % 64);  // 0: aligned
    }
    for (int round = 0; round < 50; round++) {
        try {
            std::vector<char> big(100000 + round * 20000, 'x');
            if (round % 7 == 3)
                throw std::runtime_error(std::string(200, 'e'));
            h = mix(h, big.size());
        } catch (const std::exception &e) {
            h = mix(h, std::strlen(e.what()));
        }
    }
    // the aligned sized deletes: scalar, array with a count, large
    for (int i = 0; i < 200; i++) {
        Pad *pads = escape(new Pad[1 + i % 9]);
        h = mix(h, reinterpret_cast<unsigned long>(pads) % 128);  // 0: aligned
        delete[] pads;
        Page *page = escape(new Page);
        h = mix(h, reinterpret_cast<unsigned long>(page) % 4096);
        delete page;
        ::operator delete(escape(::operator new(i, std::align_val_t(32))), std::size_t(i), std::align_val_t(32));
    }
    // aligned new(0) asks for 1 byte too, also of the large tier (alignments past 52 KiB)
    for (std::size_t al = 16; al <= (std::size_t(1) << 20); al <<= 2)
        ::operator delete(escape(::operator new(0, std::align_val_t(al))), std::size_t(0), std::align_val_t(al));
    // operator new(0) asks malloc for 1 byte; its sized delete passes 0
    for (int i = 0; i < 100; i++) {
        ::operator delete(escape(::operator new(0)), std::size_t(0));
        ::operator delete[](escape(::operator new[](0)), std::size_t(0));
        std::allocator<int> a;
        a.deallocate(escape(a.allocate(0)), 0);
    }
    std::string s;
    for (int i = 0; i < 10000; i++)
        s += static_cast<char>('a' + i % 26);
    h = mix(h, s.size());
    std::printf("cxx_app: %lu\n", h);
    return 0;
}
