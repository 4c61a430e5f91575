/* glibc semantics of the malloc family, through the exported symbols
 * (malloc, free, ...) and through the hak_* API.
 * SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include "api_table.h"
#include "testutil.h"

static int global_var;


static void test_zero_and_null(const struct api *volatile A)
{
    void *a = A->malloc(0), *b = A->malloc(0);
    CHECK(a != NULL, "%s malloc(0) returned NULL", A->name);
    CHECK(b != NULL, "%s malloc(0) returned NULL", A->name);
    CHECK(a != b, "%s two malloc(0) calls returned the same pointer %p", A->name, a);
    CHECK(((uintptr_t)a & 15) == 0, "%s malloc(0)=%p not 16-aligned", A->name, a);
    A->free(a);
    A->free(b);

    A->free(NULL);
    CHECK(1, "free(NULL) returned");

    static const size_t sizes[] = { 1, 100, 1024, 5000, 60000, 300000 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        char *p = A->realloc(NULL, n);
        CHECK(p != NULL, "%s realloc(NULL, %zu) returned NULL", A->name, n);
        if (!p) continue;
        CHECK(A->usable(p) >= n, "%s realloc(NULL,%zu) usable %zu", A->name, n, A->usable(p));
        tu_fill(p, n, i + 1);
        CHECK(tu_verify(p, n, i + 1) == TU_OK, "%s realloc(NULL) block corrupt", A->name);
        /* realloc(p, 0): frees; returns NULL (glibc) or a freeable pointer */
        errno = 0;
        void *q = A->realloc(p, 0);
        if (q) A->free(q);
        CHECK(1, "realloc(p,0) returned");
    }
    CHECK(A->usable(NULL) == 0, "%s usable_size(NULL) = %zu", A->name, A->usable(NULL));
}

static void test_huge(const struct api *volatile A)
{
    const size_t huge[] = {
        SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 4095, SIZE_MAX - 65536,
        SIZE_MAX / 2, (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX,
        (size_t)1 << 62, (size_t)1 << 50,
    };
    for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
        size_t n = tu_opaque(huge[i]);
        errno = 0;
        void *p = A->malloc(n);
        int e = errno;
        CHECK(p == NULL, "%s malloc(%#zx) returned %p", A->name, n, p);
        CHECK(e == ENOMEM, "%s malloc(%#zx) errno %d, want ENOMEM", A->name, n, e);
        if (p) A->free(p);

        errno = 0;
        p = A->aligned_alloc(64, n & ~(size_t)63);
        e = errno;
        CHECK(p == NULL && e == ENOMEM, "%s aligned_alloc(64,%#zx) = %p errno %d",
              A->name, n, p, e);
        if (p) A->free(p);

        void *out = (void *)0x1234;
        int rc = A->posix_memalign(&out, 4096, n);
        CHECK(rc == ENOMEM, "%s posix_memalign(4096,%#zx) = %d want ENOMEM", A->name, n, rc);
        CHECK(out == (void *)0x1234, "%s posix_memalign modified *out on failure", A->name);
        if (rc == 0) A->free(out);

        /* realloc to huge fails and keeps the original */
        char *q = A->malloc(100);
        CHECK(q != NULL, "malloc(100)");
        if (!q) continue;
        tu_fill_idx(q, 0, 100, 7);
        errno = 0;
        void *r = A->realloc(q, n);
        e = errno;
        CHECK(r == NULL && e == ENOMEM, "%s realloc(p,%#zx) = %p errno %d", A->name, n, r, e);
        if (r) { A->free(r); continue; }
        CHECK(tu_verify_idx(q, 100, 7) == TU_OK, "%s realloc failure damaged block", A->name);
        A->free(q);
    }

    struct { size_t a, b; } ov[] = {
        { SIZE_MAX / 2, 3 }, { SIZE_MAX, SIZE_MAX }, { ((size_t)1 << 32) + 1, (size_t)1 << 32 },
        { 3, SIZE_MAX / 2 }, { (size_t)1 << 33, (size_t)1 << 31 }, { SIZE_MAX / 16 + 1, 16 },
    };
    for (size_t i = 0; i < sizeof ov / sizeof *ov; i++) {
        size_t a = tu_opaque(ov[i].a), b = tu_opaque(ov[i].b);
        errno = 0;
        void *p = A->calloc(a, b);
        int e = errno;
        CHECK(p == NULL && e == ENOMEM, "%s calloc(%#zx,%#zx) = %p errno %d", A->name, a, b, p, e);
        if (p) A->free(p);

        char *q = A->malloc(200);
        CHECK(q != NULL, "malloc(200)");
        if (!q) continue;
        tu_fill_idx(q, 0, 200, 9);
        errno = 0;
        void *r = A->reallocarray(q, a, b);
        e = errno;
        CHECK(r == NULL && e == ENOMEM, "%s reallocarray(p,%#zx,%#zx) = %p errno %d",
              A->name, a, b, r, e);
        if (r) { A->free(r); continue; }
        CHECK(tu_verify_idx(q, 200, 9) == TU_OK, "%s reallocarray failure damaged block", A->name);
        A->free(q);
    }
    /* reallocarray without overflow behaves like realloc */
    char *q = A->reallocarray(NULL, 10, 10);
    CHECK(q && A->usable(q) >= 100, "%s reallocarray(NULL,10,10)", A->name);
    if (q) {
        tu_fill_idx(q, 0, 100, 3);
        q = A->reallocarray(q, 1000, 10);
        CHECK(q && A->usable(q) >= 10000, "%s reallocarray grow", A->name);
        if (q) CHECK(tu_verify_idx(q, 100, 3) == TU_OK, "%s reallocarray lost data", A->name);
        A->free(q);
    }
}

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

static void test_calloc(const struct api *volatile A)
{
    tu_rng r = tu_rng_seed(11);
    /* fresh calloc for many sizes and counts */
    for (size_t n = 1; n <= 4096; n += (n < 300 ? 1 : 37)) {
        size_t cnt = 1 + tu_rand(&r) % 3;
        unsigned char *p = A->calloc(cnt, n);
        CHECK(p != NULL, "%s calloc(%zu,%zu) NULL", A->name, cnt, n);
        if (!p) continue;
        CHECK(all_zero(p, cnt * n), "%s calloc(%zu,%zu) not zeroed", A->name, cnt, n);
        memset(p, 0x5C, cnt * n);
        A->free(p);
    }
    /* calloc after reuse of freed dirty memory */
    static const size_t sizes[] = { 1, 8, 16, 24, 48, 100, 256, 1000, 1024, 1025, 3000,
                                    20000, 53248, 53249, 65536, 300000, 1 << 20,
                                    5 << 20 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        enum { K = 16 };
        for (int round = 0; round < 3; round++) {
            void *blk[K];
            for (int k = 0; k < K; k++) {
                blk[k] = A->malloc(n);
                CHECK(blk[k] != NULL, "malloc(%zu)", n);
                if (blk[k]) memset(blk[k], 0xAA, A->usable(blk[k]));
            }
            for (int k = K - 1; k >= 0; k--)
                A->free(blk[k]);
            for (int k = 0; k < K; k++) {
                blk[k] = A->calloc(1, n);
                CHECK(blk[k] != NULL, "%s calloc(1,%zu)", A->name, n);
                /* all that malloc_usable_size says is there, as glibc
                 * (a tiny block's slack kept its link and old bytes) */
                if (blk[k])
                    CHECK(all_zero(blk[k], A->usable(blk[k])),
                          "%s calloc(1,%zu) after dirty free not zero (usable %zu)", A->name, n,
                          A->usable(blk[k]));
                if (blk[k]) memset(blk[k], 0xAA, n);
            }
            for (int k = 0; k < K; k++)
                A->free(blk[k]);
        }
        /* split count/size too */
        unsigned char *p = A->malloc(n);
        if (p) { memset(p, 0xEE, n); A->free(p); }
        p = A->calloc(n >= 4 ? n / 4 : 1, n >= 4 ? 4 : n);
        CHECK(p && all_zero(p, n >= 4 ? n / 4 * 4 : n), "%s calloc(n/4,4) n=%zu", A->name, n);
        A->free(p);
    }
    /* calloc(0, x) / calloc(x, 0) behave like malloc(0) */
    void *z1 = A->calloc(0, 10), *z2 = A->calloc(10, 0);
    CHECK(z1 && z2 && z1 != z2, "%s calloc with zero count/size: %p %p", A->name, z1, z2);
    A->free(z1);
    A->free(z2);
}

static void test_memalign(const struct api *volatile A)
{
    static const size_t bad[] = { 0, 3, 24, sizeof(void *) / 2, 1, 2, 12, 48, 100, 96,
                                  4097, 3 << 20, (size_t)1 << 63 | 1 };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        void *out = (void *)0x5678;
        int rc = A->posix_memalign(&out, bad[i], 100);
        CHECK(rc == EINVAL, "%s posix_memalign(align=%zu) = %d want EINVAL", A->name, bad[i], rc);
        CHECK(out == (void *)0x5678, "%s posix_memalign(align=%zu) modified *out", A->name, bad[i]);
        if (rc == 0) A->free(out);
    }
    /* memalign rounds a bad alignment up to a power of two, as glibc: one
     * above 2^63 is EINVAL, one that rounds up to 2^63 finds no memory */
    static const struct { size_t align; int err; } huge[] = {
        { ((size_t)1 << 62) + 1, ENOMEM }, { (size_t)1 << 63, ENOMEM },
        { ((size_t)1 << 63) + 1, EINVAL }, { SIZE_MAX, EINVAL } };
    for (size_t i = 0; i < sizeof huge / sizeof *huge; i++) {
        errno = 0;
        void *m = A->memalign(huge[i].align, 16);
        CHECK(!m && errno == huge[i].err, "%s memalign(%#zx, 16) = %p, errno %d, want NULL, %d",
              A->name, huge[i].align, m, errno, huge[i].err);
    }
    static const size_t sizes[] = { 1, 100, 5000, 100000 };
    for (size_t al = sizeof(void *); al <= ((size_t)4 << 20); al <<= 1) {
        for (size_t i = 0; i < 4; i++) {
            size_t n = sizes[i];
            void *p = NULL;
            int rc = A->posix_memalign(&p, al, n);
            CHECK(rc == 0 && p, "%s posix_memalign(%zu,%zu) = %d", A->name, al, n, rc);
            if (rc || !p) continue;
            CHECK(((uintptr_t)p & (al - 1)) == 0, "%s posix_memalign(%zu,%zu) = %p misaligned",
                  A->name, al, n, p);
            CHECK(A->usable(p) >= n, "%s posix_memalign usable %zu < %zu", A->name, A->usable(p), n);
            tu_fill(p, n, al + n);
            CHECK(tu_verify(p, n, al + n) == TU_OK, "%s posix_memalign block corrupt", A->name);

            void *q = A->aligned_alloc(al, n);
            CHECK(q && ((uintptr_t)q & (al - 1)) == 0, "%s aligned_alloc(%zu,%zu) = %p",
                  A->name, al, n, q);
            if (q) { CHECK(A->usable(q) >= n, "aligned_alloc usable"); memset(q, 1, n); }
            void *m = A->memalign(al, n);
            CHECK(m && ((uintptr_t)m & (al - 1)) == 0, "%s memalign(%zu,%zu) = %p",
                  A->name, al, n, m);
            if (m) { CHECK(A->usable(m) >= n, "memalign usable"); memset(m, 2, n); }
            CHECK(tu_verify(p, n, al + n) == TU_OK, "%s aligned blocks overlap", A->name);
            A->free(q);
            A->free(m);
            A->free(p);
        }
    }
    /* small alignments are valid for aligned_alloc and memalign */
    for (size_t al = 1; al < sizeof(void *); al <<= 1) {
        void *p = A->aligned_alloc(al, 40), *q = A->memalign(al, 40);
        CHECK(p && q, "%s aligned_alloc/memalign(%zu,40) = %p %p", A->name, al, p, q);
        if (p) memset(p, 3, 40);
        if (q) memset(q, 4, 40);
        A->free(p);
        A->free(q);
    }
    /* glibc memalign rounds a non-power-of-two alignment up */
    void *m = A->memalign(24, 100);
    CHECK(m && ((uintptr_t)m & 31) == 0, "%s memalign(24,100) = %p, want 32-aligned", A->name, m);
    A->free(m);
}

static void test_alignment16(const struct api *volatile A)
{
    enum { K = 8 };
    void *keep[K] = { 0 };
    size_t step = 1;
    int bad = 0;
    for (size_t n = 1; n <= 70000; n += step) {
        void *p = A->malloc(n);
        if (!p || ((uintptr_t)p & 15) || A->usable(p) < n) {
            CHECK(0, "%s malloc(%zu) = %p usable %zu", A->name, n, p, p ? A->usable(p) : 0);
            if (++bad > 10) break;
        }
        if (p) ((char *)p)[n - 1] = 1;
        /* keep a few alive so the allocator cannot just return one slot */
        size_t k = n % K;
        A->free(keep[k]);
        keep[k] = p;
        step = n < 1100 ? 1 : n < 10000 ? 13 : 101;
    }
    TU_COUNT(1);
    for (int k = 0; k < K; k++) A->free(keep[k]);
    static const size_t large[] = { 100000, 1 << 20, (1 << 20) + 1, 5 << 20, (64 << 20) + 3 };
    for (size_t i = 0; i < sizeof large / sizeof *large; i++) {
        char *p = A->malloc(large[i]);
        CHECK(p && ((uintptr_t)p & 15) == 0, "%s malloc(%zu) = %p", A->name, large[i], p);
        if (p) { p[0] = 1; p[large[i] - 1] = 2; }
        A->free(p);
    }
}

static void test_usable(const struct api *volatile A)
{
    static const size_t sizes[] = { 1, 7, 8, 9, 15, 16, 17, 24, 31, 33, 63, 64, 65, 100,
                                    127, 129, 255, 257, 500, 511, 513, 1000, 1023, 1024,
                                    1025, 1500, 2047, 2049, 4095, 4097, 10000, 30000,
                                    53248, 53249, 70000, 200000, 1 << 20 };
    enum { K = 48 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        void *blk[K];
        size_t us[K];
        for (int k = 0; k < K; k++) {
            /* interleave with the neighbouring size so that blocks of
             * different classes sit side by side too */
            size_t m = (k & 1) && i + 1 < sizeof sizes / sizeof *sizes ? sizes[i + 1] : n;
            blk[k] = A->malloc(m);
            us[k] = blk[k] ? A->usable(blk[k]) : 0;
            CHECK(blk[k] && us[k] >= m, "%s usable(malloc(%zu)) = %zu", A->name, m, us[k]);
            if (!blk[k]) us[k] = 0;
            /* usable size must be stable */
            CHECK(!blk[k] || A->usable(blk[k]) == us[k], "usable size changed");
            if (blk[k]) tu_fill(blk[k], us[k], 1000 * i + k);
        }
        for (int k = 0; k < K; k++)
            if (blk[k])
                CHECK(tu_verify(blk[k], us[k], 1000 * i + k) == TU_OK,
                      "%s writing all usable bytes of size %zu corrupted a neighbour",
                      A->name, n);
        for (int k = 0; k < K; k++) A->free(blk[k]);
    }
}

static void test_kinds(void)
{
    static const struct { size_t size; enum hak_kind kind; } cases[] = {
        { 1, HAK_KIND_TINY }, { 2, HAK_KIND_TINY }, { 8, HAK_KIND_TINY }, { 16, HAK_KIND_TINY },
        { 17, HAK_KIND_TINY }, { 512, HAK_KIND_TINY }, { 1000, HAK_KIND_TINY },
        { 1023, HAK_KIND_TINY }, { 1024, HAK_KIND_TINY },
        { 1025, HAK_KIND_MID }, { 1026, HAK_KIND_MID }, { 2000, HAK_KIND_MID },
        { 4096, HAK_KIND_MID }, { 32768, HAK_KIND_MID }, { 49152, HAK_KIND_MID },
        { 53247, HAK_KIND_MID }, { 53248, HAK_KIND_MID },
        { 53249, HAK_KIND_LARGE }, { 53250, HAK_KIND_LARGE }, { 65536, HAK_KIND_LARGE },
        { 100000, HAK_KIND_LARGE }, { 1 << 20, HAK_KIND_LARGE }, { 8 << 20, HAK_KIND_LARGE },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = cases[i].size;
        void *p = malloc(n), *q = hak_malloc(n);
        /* (the table is the default build's, where tu_tier_of agrees) */
        int want = hak_mitigations() & HAK_MIT_CANARY ? tu_tier_of(n) : (int)cases[i].kind;
        CHECK(tu_tier_of(n) == want, "tu_tier_of(%zu) = %d, the table says %d", n, tu_tier_of(n), want);
        CHECK((int)hak_ptr_kind(p) == want, "kind(malloc(%zu)) = %d", n, hak_ptr_kind(p));
        CHECK((int)hak_ptr_kind(q) == want, "kind(hak_malloc(%zu)) = %d", n, hak_ptr_kind(q));
        free(p);
        hak_free(q);
    }
    int local = 0;
    CHECK(hak_ptr_kind(tu_launder(&local)) == HAK_KIND_FOREIGN, "kind(stack) = %d",
          hak_ptr_kind(&local));
    CHECK(hak_ptr_kind(&global_var) == HAK_KIND_FOREIGN, "kind(global) = %d",
          hak_ptr_kind(&global_var));
    CHECK(hak_ptr_kind((void *)test_kinds) == HAK_KIND_FOREIGN, "kind(code) = %d",
          hak_ptr_kind((void *)test_kinds));
    CHECK(hak_ptr_kind(NULL) == HAK_KIND_FOREIGN, "kind(NULL) = %d", hak_ptr_kind(NULL));
}

static void test_page_alloc(void)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    static const size_t sizes[] = { 1, 100, 4095, 4096, 4097, 10000, 70000, 1 << 20 };
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        char *v = valloc(n);
        CHECK(v && ((uintptr_t)v & (pg - 1)) == 0, "valloc(%zu) = %p", n, (void *)v);
        if (v) { CHECK(malloc_usable_size(v) >= n, "valloc usable"); memset(v, 1, n); }
        char *pv = pvalloc(n);
        size_t rounded = (n + pg - 1) & ~(pg - 1);
        CHECK(pv && ((uintptr_t)pv & (pg - 1)) == 0, "pvalloc(%zu) = %p", n, (void *)pv);
        if (pv) {
            CHECK(malloc_usable_size(pv) >= rounded, "pvalloc(%zu) usable %zu < %zu", n,
                  malloc_usable_size(pv), rounded);
            memset(pv, 2, rounded); /* pvalloc rounds the size up to a page */
        }
        if (v) CHECK(v[n - 1] == 1, "valloc block overwritten");
        free(v);
        free(pv);
    }
}

static void test_glibc_extras(void)
{
    /* mallopt: no effect, glibc 2.36's answers (0 where it refuses the value) */
    static const struct { int param, value, want; } opts[] = {
        { M_MMAP_THRESHOLD, 1 << 20, 1 }, { M_MMAP_THRESHOLD, 64 << 20, 1 }, { M_MMAP_THRESHOLD, -1, 1 },
        { M_TRIM_THRESHOLD, 1 << 20, 1 }, { M_ARENA_MAX, 4, 1 },            { M_MXFAST, 64, 1 },
        { M_MXFAST, 1000000, 0 },         { M_MXFAST, -1, 0 },               { 12345, 1, 1 },
    };
    for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
        CHECK(mallopt(opts[i].param, opts[i].value) == opts[i].want, "mallopt(%d, %d) != %d", opts[i].param,
              opts[i].value, opts[i].want);

    enum { K = 2000 };
    void *blk[K];
    for (int k = 0; k < K; k++) {
        blk[k] = malloc(16 + (k % 50) * 40);
        if (blk[k]) memset(blk[k], 1, 16);
    }
    struct mallinfo2 mi0 = mallinfo2();
    void *big = malloc(4 << 20);
    if (big) memset(big, 1, 4 << 20);
    struct mallinfo2 mi = mallinfo2();
    CHECK(mi.arena > 0, "mallinfo2.arena = %zu", mi.arena);
    CHECK(mi.uordblks > 0, "mallinfo2.uordblks = %zu", mi.uordblks);
    CHECK(mi.uordblks <= mi.arena + mi.hblkhd, "mallinfo2 uordblks %zu > arena %zu + hblkhd %zu",
          mi.uordblks, mi.arena, mi.hblkhd);
    CHECK(mi.uordblks + mi.hblkhd >= (size_t)1 << 20,
          "mallinfo2 in-use %zu + %zu < 1 MiB while >= 5 MiB are live", mi.uordblks, mi.hblkhd);
    /* as glibc's: a large (there mmapped) block is in hblkhd, not in
     * uordblks, so that the two add up to what is in use */
    CHECK(mi.hblkhd - mi0.hblkhd >= (size_t)4 << 20 && mi.uordblks - mi0.uordblks < (size_t)1 << 20,
          "mallinfo2 after malloc(4 MiB): uordblks %zu -> %zu, hblkhd %zu -> %zu", mi0.uordblks, mi.uordblks,
          mi0.hblkhd, mi.hblkhd);
    /* malloc_info: glibc's XML, with the bytes reserved as its "system
     * current" and the live large block among "mmap" */
    char *xml = NULL;
    size_t xml_len = 0;
    FILE *f = open_memstream(&xml, &xml_len);
    errno = 0;
    CHECK(f && malloc_info(0, f) == 0 && errno == 0, "malloc_info(0, f) fails or sets errno (%d)", errno);
    if (f) fclose(f);
    static const char head[] = "<malloc version=\"1\">\n", current[] = "<system type=\"current\" size=\"",
                      mmap_total[] = "<total type=\"mmap\" count=\"";
    unsigned long long cur = 0, mmap_count = 0;
    const char *c = xml ? strstr(xml, current) : NULL, *m = xml ? strstr(xml, mmap_total) : NULL;
    CHECK(xml && strncmp(xml, head, strlen(head)) == 0 && strstr(xml, "</malloc>\n") &&
          c && sscanf(c + strlen(current), "%llu", &cur) == 1 && cur == mi.arena &&
          m && sscanf(m + strlen(mmap_total), "%llu", &mmap_count) == 1 && mmap_count >= 1,
          "malloc_info printed '%s' (arena %zu)", xml ? xml : "(nothing)", mi.arena);
    free(xml);
    errno = 0;
    CHECK(malloc_info(1, stdout) == EINVAL && errno == 0, "malloc_info(1, f): options must be 0 (EINVAL, as glibc)");
    /* through a descriptor (write(2) after a flush), in order after what the stream held */
    FILE *tf = tmpfile();
    char back[2048] = "";
    if (tf) {
        fputs("before\n", tf);
        CHECK(malloc_info(0, tf) == 0, "malloc_info(0, tmpfile) fails");
        rewind(tf);
        size_t got = fread(back, 1, sizeof back - 1, tf);
        back[got] = 0;
        fclose(tf);
    }
    static const char want_start[] = "before\n<malloc version=\"1\">\n";
    CHECK(strncmp(back, want_start, strlen(want_start)) == 0 && strstr(back, "</malloc>\n"),
          "malloc_info to a file wrote '%s'", back);

    for (int k = 0; k < K; k++) free(blk[k]);
    free(big);

    int t = malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim(0) = %d", t);
    t = malloc_trim(1 << 20);
    CHECK(t == 0 || t == 1, "malloc_trim(1M) = %d", t);
    int h = hak_trim();
    CHECK(h == 0 || h == 1, "hak_trim() = %d", h);

    fflush(stderr);
    int saved = dup(2);
    int devnull = open("/dev/null", O_WRONLY);
    CHECK(saved >= 0 && devnull >= 0, "dup/open");
    if (saved >= 0 && devnull >= 0) {
        dup2(devnull, 2);
        malloc_stats();
        hak_stats_print();
        fflush(stderr);
        dup2(saved, 2);
    }
    if (devnull >= 0) close(devnull);
    if (saved >= 0) close(saved);
    CHECK(1, "malloc_stats returned");
}

/* C23's free_aligned_sized (glibc 2.43; not in older headers) frees what
 * aligned_alloc gave, at every tier: what is in use does not grow. */
void free_aligned_sized(void *p, size_t alignment, size_t size);
static void test_free_aligned_sized(void)
{
    static const size_t sizes[] = { 100, 3000, 40000, 200000 };
    for (size_t al = 16; al <= 8192; al <<= 3) {
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            malloc_trim(0); /* (the hardened build's quarantine holds freed blocks) */
            struct hak_stats s0 = tu_stats();
            for (int k = 0; k < 2000; k++) {
                char *p = aligned_alloc(al, sizes[i]);
                CHECK(p && ((uintptr_t)p & (al - 1)) == 0, "aligned_alloc(%zu, %zu)", al, sizes[i]);
                if (!p) break;
                p[0] = p[sizes[i] - 1] = 1;
                free_aligned_sized(tu_launder(p), al, sizes[i]);
            }
            malloc_trim(0);
            struct hak_stats s1 = tu_stats();
            uint64_t in0 = s0.tiny_bytes_in_use + s0.mid_bytes_in_use + s0.large_bytes_in_use;
            uint64_t in1 = s1.tiny_bytes_in_use + s1.mid_bytes_in_use + s1.large_bytes_in_use;
            CHECK(in1 <= in0 + 16 * sizes[i] + (64 << 10),
                  "free_aligned_sized(%zu, %zu) freed nothing: %llu bytes in use, %llu before", al,
                  sizes[i], (unsigned long long)in1, (unsigned long long)in0);
        }
    }
    /* Every size and alignment aligned_alloc takes is accepted back (a
     * false report aborts the test) */
    for (size_t al = 32; al <= 65536; al <<= 1)
        for (size_t n = 0; n <= 70000; n = n < 64 ? n + 1 : n + n / 7 + 13)
            free_aligned_sized(tu_launder(aligned_alloc(al, n)), al, n);
    free_aligned_sized(NULL, 3, 5); /* nothing, as free(NULL) */
    CHECK(1, "free_aligned_sized of every size and alignment");
}

/* The misuses of free_aligned_sized it reports, each in a child */
static void aligned_wrong_size(size_t n) { free_aligned_sized(tu_launder(aligned_alloc(64, n)), 64, n / 8); }
static void aligned_wrong_alignment(size_t n)
{
    char *p = aligned_alloc(64, n);
    uintptr_t has = (uintptr_t)p & -(uintptr_t)p; /* its alignment: twice that it lacks */
    free_aligned_sized(tu_launder(p), 2 * has, n);
}
static void aligned_not_pow2(size_t n) { free_aligned_sized(tu_launder(aligned_alloc(64, n)), 3, n); }
static void test_free_aligned_sized_misuse(void)
{
    static const struct { void (*fn)(size_t); const char *what; } cases[] = {
        { aligned_wrong_size, "the wrong size" },
        { aligned_wrong_alignment, "the wrong alignment" },
        { aligned_not_pow2, "an alignment that is no power of two" },
    };
    static const size_t sizes[] = { 200, 3000, 40000, 200000 };
    char err[512];
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            int st = tu_in_child(cases[c].fn, sizes[i], err, sizeof err);
            CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT && strstr(err, "wrong size or alignment"),
                  "free_aligned_sized of a %zu-byte block with %s: status %#x (%s)", sizes[i], cases[c].what,
                  st, err);
        }
}

int main(void)
{
    const struct api *apis[] = { &libc_api, &hak_api };
    for (int i = 0; i < 2; i++) {
        test_zero_and_null(apis[i]);
        test_huge(apis[i]);
        test_calloc(apis[i]);
        test_memalign(apis[i]);
        test_alignment16(apis[i]);
        test_usable(apis[i]);
    }
    /* blocks from one API freed with the other */
    void *p = malloc(100), *q = hak_malloc(100000);
    CHECK(hak_usable_size(p) >= 100 && malloc_usable_size(q) >= 100000, "cross-API usable size");
    hak_free(p);
    free(q);
    test_kinds();
    test_page_alloc();
    test_glibc_extras();
    test_free_aligned_sized();
    test_free_aligned_sized_misuse();
    return TU_DONE();
}
