/* libFuzzer harness for the hak_* API.
 *
 * The input is a program: each operation is an opcode byte followed by its
 * operands, run on a table of slots.  A shadow model records every live
 * block's size, alignment and content seed; the harness checks, on every
 * operation:
 *   - contents: a block's bytes (all of them up to 64 KiB, else the first
 *     and last 4 KiB and 16 bytes of every 4 KiB page) are verified before
 *     every free and realloc, and after every realloc (the kept prefix);
 *   - alignment (16, or the requested alignment), usable_size >= size,
 *     hak_ptr_kind is not FOREIGN, calloc memory is zero;
 *   - no two live blocks overlap (by their usable sizes);
 *   - errors: NULL only with errno ENOMEM for impossible sizes, EINVAL for
 *     bad alignments (posix_memalign returns it).
 * Any violation prints what happened and abort()s, which libFuzzer records
 * as a crash with the input.  At the end of each input every live block is
 * verified and freed.
 *
 * Build: clang -fsanitize=fuzzer,address against the library built with
 * -DHAK_NO_GLIBC_NAMES (make fuzz).  ASan owns malloc; hakmem's own memory
 * is not poisoned by ASan, the shadow model checks it instead.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakmem.h"

#define NSLOTS   64
#define FULL_MAX ((size_t)64 << 10)
#define MAX_SIZE ((size_t)6 << 20) /* biggest block the fuzzer asks for */

typedef struct {
    uint8_t *p;
    size_t size;    /* requested */
    size_t usable;  /* hak_usable_size at the last check */
    size_t align;
    uint64_t seed;
} Slot;

static Slot slots[NSLOTS];
static const uint8_t *in;
static size_t in_len, in_pos;
static unsigned long op_no;

static uint8_t byte(void) { return in_pos < in_len ? in[in_pos++] : 0; }
static uint32_t u16(void) { uint32_t a = byte(); return a | (uint32_t)byte() << 8; }

static void __attribute__((noreturn, format(printf, 1, 2))) fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz_api: op %lu: ", op_no);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* ---- content pattern (by offset, so it survives realloc moves) ---- */
static inline uint8_t pat(size_t i, uint64_t seed)
{
    uint64_t x = (i ^ (seed << 20) ^ seed) * 0x9E3779B97F4A7C15ull;
    return (uint8_t)(x >> 56);
}
static inline int checked_pos(size_t i, size_t n)
{
    return n <= FULL_MAX || i < 4096 || i + 4096 >= n || (i & 4095) < 16;
}
/* next position to look at after i, for a block of n bytes */
static inline size_t next_pos(size_t i, size_t n)
{
    if (n <= FULL_MAX || i < 4096 || i + 4096 >= n || (i & 4095) < 15)
        return i + 1;
    size_t j = (i | 4095) + 1;
    return j + 4096 >= n ? n - 4096 : j;
}
static void fill(uint8_t *p, size_t from, size_t to, size_t n, uint64_t seed)
{
    /* writes positions checked for a block of n bytes, in [from, to) */
    for (size_t i = from; i < to; i = next_pos(i, n))
        if (checked_pos(i, n))
            p[i] = pat(i, seed);
}
static void verify(const Slot *s, size_t upto, const char *when)
{
    for (size_t i = 0; i < upto; i = next_pos(i, s->size))
        if (checked_pos(i, s->size) && s->p[i] != pat(i, s->seed))
            fail("%s: block %p (size %zu, align %zu) byte %zu is %#x, expected %#x", when,
                 (void *)s->p, s->size, s->align, i, s->p[i], pat(i, s->seed));
}

/* ---- checks on a new or moved block ---- */
static void check_new(Slot *s, int slot, const char *what)
{
    uintptr_t a = (uintptr_t)s->p;
    size_t al = s->align < 16 ? 16 : s->align;
    if (a % al)
        fail("%s(%zu, align %zu) = %p misaligned", what, s->size, s->align, (void *)s->p);
    s->usable = hak_usable_size(s->p);
    if (s->usable < s->size)
        fail("%s(size %zu, align %zu) = %p: usable %zu < size", what, s->size, s->align,
             (void *)s->p, s->usable);
    if (hak_ptr_kind(s->p) == HAK_KIND_FOREIGN)
        fail("%s(size %zu, align %zu) = %p: hak_ptr_kind says foreign", what, s->size, s->align,
             (void *)s->p);
    size_t u = s->usable ? s->usable : 1;
    for (int j = 0; j < NSLOTS; j++) {
        const Slot *o = &slots[j];
        if (j == slot || !o->p)
            continue;
        size_t ou = o->usable ? o->usable : 1;
        if (a < (uintptr_t)o->p + ou && (uintptr_t)o->p < a + u)
            fail("%s(%zu) = %p [+%zu] overlaps slot %d %p [+%zu] (size %zu)", what, s->size,
                 (void *)s->p, u, j, (void *)o->p, ou, o->size);
    }
}

static size_t pick_size(void)
{
    uint8_t t = byte();
    uint32_t v = u16();
    switch (t % 8) {
    case 0: return v % 129;                              /* tiny, small */
    case 1: return v % (HAK_TINY_MAX + 1);               /* tiny */
    case 2: return HAK_TINY_MAX + 1 + v % (HAK_MID_MAX - HAK_TINY_MAX); /* mid */
    case 3: { /* boundaries */
        static const size_t b[] = { 0, 1, 15, 16, 17, 128, 129, 1023, 1024, 1025, 4096,
                                    HAK_MID_MAX - 1, HAK_MID_MAX, HAK_MID_MAX + 1,
                                    65536 - 64, 65536, (1 << 20) - 64, 1 << 20, (2 << 20) + 1 };
        return b[v % (sizeof b / sizeof *b)];
    }
    case 4: return HAK_MID_MAX + 1 + (size_t)v * 8;      /* large, up to ~560 KiB */
    case 5: return ((size_t)v << 6) % MAX_SIZE;          /* anything up to 6 MiB */
    case 6: return (size_t)(v % 64) * 4096 + (t >> 3) % 3 - 1 + HAK_MID_MAX; /* page multiples +-1 */
    default: return v % 4096;
    }
}

static size_t pick_align(void)
{
    uint8_t a = byte();
    switch (a % 4) {
    case 0: return (size_t)1 << (a / 4 % 24);      /* 1 .. 8 MiB */
    case 1: return (size_t)16 << (a / 4 % 8);      /* 16 .. 2 KiB */
    case 2: return (size_t)4096 << (a / 4 % 6);    /* page .. 128 KiB */
    default: return (a / 4) * 8 + 8;               /* often not a power of two */
    }
}

static int is_pow2(size_t x) { return x && !(x & (x - 1)); }

static void slot_free(int i, const char *when)
{
    Slot *s = &slots[i];
    if (!s->p)
        return;
    verify(s, s->size, when);
    hak_free(s->p);
    s->p = NULL;
}

static void op_alloc(int i, int kind)
{
    Slot *s = &slots[i];
    slot_free(i, "free before reuse");
    size_t n = pick_size(), al = 0;
    const char *what = "malloc";
    uint8_t *p = NULL;
    int zero = 0;
    errno = 0;
    if (kind == 0) {
        p = hak_malloc(n);
    } else if (kind == 1) {
        size_t cnt = byte() % 8 + 1;
        n = n / cnt;
        p = hak_calloc(cnt, n);
        n *= cnt;
        what = "calloc";
        zero = 1;
    } else {
        al = pick_align();
        int which = byte() % 3;
        if (which == 0) {
            what = "posix_memalign";
            void *out = (void *)&out;
            int saved = errno = 1234;
            int rc = hak_posix_memalign(&out, al, n);
            if (errno != saved)
                fail("posix_memalign(%zu, %zu) changed errno", al, n);
            if (!is_pow2(al) || al < sizeof(void *)) {
                if (rc != EINVAL)
                    fail("posix_memalign(%zu, %zu) = %d, expected EINVAL", al, n, rc);
                if (out != (void *)&out)
                    fail("failed posix_memalign wrote *out");
                return;
            }
            if (rc)
                fail("posix_memalign(%zu, %zu) = %d", al, n, rc);
            p = out;
        } else if (which == 1) {
            what = "aligned_alloc";
            p = hak_aligned_alloc(al, n);
            if (!is_pow2(al)) {
                if (p || errno != EINVAL)
                    fail("aligned_alloc(%zu, %zu) = %p errno %d, expected EINVAL", al, n, (void *)p, errno);
                return;
            }
        } else {
            what = "memalign";
            p = hak_memalign(al, n);
            if (!is_pow2(al)) { /* rounded up to a power of two */
                size_t a = 1;
                while (a < al) a <<= 1;
                al = a;
            }
        }
    }
    if (!p)
        fail("%s(%zu, align %zu) returned NULL, errno %d", what, n, al, errno);
    *s = (Slot){ p, n, 0, al, ((uint64_t)op_no << 8) ^ (uint64_t)i };
    check_new(s, i, what);
    if (zero)
        for (size_t k = 0; k < n; k = next_pos(k, n))
            if (checked_pos(k, n) && p[k])
                fail("calloc(%zu) byte %zu is %#x", n, k, p[k]);
    fill(p, 0, n, n, s->seed);
}

static void op_realloc(int i, int array)
{
    Slot *s = &slots[i];
    size_t n = pick_size();
    if (s->p)
        verify(s, s->size, "before realloc");
    errno = 0;
    uint8_t *q;
    if (array) {
        size_t cnt = byte() % 4 + 1;
        q = hak_reallocarray(s->p, n / cnt, cnt);
        n = n / cnt * cnt;
    } else {
        q = hak_realloc(s->p, n);
    }
    if (n == 0 && s->p) { /* glibc semantics: freed, NULL */
        if (q)
            fail("realloc(p, 0) = %p, expected NULL", (void *)q);
        s->p = NULL;
        return;
    }
    if (!q)
        fail("realloc(%p, %zu) returned NULL, errno %d", (void *)s->p, n, errno);
    size_t old = s->p ? s->size : 0;
    /* The old pattern's checked positions depend on the old size: check
     * the kept prefix by the old layout, then refill the whole block. */
    size_t keep = old < n ? old : n;
    if (s->p)
        for (size_t k = 0; k < keep; k = next_pos(k, old))
            if (checked_pos(k, old) && q[k] != pat(k, s->seed))
                fail("realloc(%p -> %p, %zu -> %zu) lost byte %zu", (void *)s->p, (void *)q, old, n, k);
    s->p = q;
    s->size = n;
    s->align = 0; /* realloc only promises 16 */
    s->seed = ((uint64_t)op_no << 8) ^ (uint64_t)i ^ 0x55;
    check_new(s, i, "realloc");
    fill(q, 0, n, n, s->seed);
}

static void op_usable(int i)
{
    Slot *s = &slots[i];
    if (!s->p) {
        if (hak_usable_size(NULL) != 0)
            fail("usable_size(NULL) != 0");
        return;
    }
    size_t u = hak_usable_size(s->p);
    if (u < s->size)
        fail("usable_size(%p) = %zu < size %zu", (void *)s->p, u, s->size);
    /* the spare bytes are the caller's too */
    if (u > s->size) {
        s->p[u - 1] = 0xA5;
        s->p[s->size] = 0x5A;
    }
    s->usable = u;
    verify(s, s->size, "after writing the slack");
}

static void op_errors(void)
{
    static const size_t huge[] = { SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1, (size_t)1 << 50 };
    size_t n = huge[byte() % 4];
    errno = 0;
    void *p = hak_malloc(n);
    if (p || errno != ENOMEM)
        fail("malloc(%zu) = %p errno %d", n, p, errno);
    errno = 0;
    p = hak_calloc(n, 3);
    if (p || errno != ENOMEM)
        fail("calloc(%zu, 3) = %p errno %d", n, p, errno);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in = data;
    in_len = size;
    in_pos = 0;
    op_no = 0;
    while (in_pos < in_len && op_no < 4096) {
        uint8_t op = byte();
        int i = byte() % NSLOTS;
        op_no++;
        switch (op % 12) {
        case 0: case 1: case 2: op_alloc(i, 0); break;
        case 3: op_alloc(i, 1); break;
        case 4: op_alloc(i, 2); break;
        case 5: case 6: op_realloc(i, 0); break;
        case 7: op_realloc(i, 1); break;
        case 8: case 9: slot_free(i, "free"); break;
        case 10: op_usable(i); break;
        default:
            if (op & 0x80) hak_trim(); else op_errors();
            break;
        }
    }
    for (int i = 0; i < NSLOTS; i++)
        slot_free(i, "free at end");
    return 0;
}
