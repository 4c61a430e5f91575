/* Single-threaded semantics of every tier through hak_* only, for the
 * sanitizer builds (UBSan, TSan): the library there has no glibc names and
 * malloc/free are the sanitizer runtime's.
 * SPDX-License-Identifier: MIT */
#include "testutil.h"


static enum hak_kind kind_for(size_t n)
{
    return n <= HAK_TINY_MAX ? HAK_KIND_TINY : n <= HAK_MID_MAX ? HAK_KIND_MID : HAK_KIND_LARGE;
}

static void check_block(void *p, size_t n, size_t align, const char *what)
{
    tu_check_block(p, n, align, -1, what);
}

static void test_basics(void)
{
    void *a = hak_malloc(0), *b = hak_malloc(0);
    check_block(a, 0, 16, "malloc");
    CHECK(a != b, "two malloc(0) are equal");
    hak_free(a);
    hak_free(b);
    hak_free(NULL);
    CHECK(hak_usable_size(NULL) == 0, "usable_size(NULL)");
    CHECK(hak_ptr_kind(NULL) == HAK_KIND_FOREIGN, "kind(NULL)");
    int local;
    CHECK(hak_ptr_kind(&local) == HAK_KIND_FOREIGN, "kind(stack)");
    static const size_t huge[] = { SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1, (size_t)1 << 50 };
    for (size_t i = 0; i < 4; i++) {
        errno = 0;
        void *p = hak_malloc(huge[i]);
        CHECK(p == NULL && errno == ENOMEM, "malloc(%zu) = %p errno %d", huge[i], p, errno);
        errno = 0;
        p = hak_calloc(huge[i], 2);
        CHECK(p == NULL && errno == ENOMEM, "calloc(%zu, 2) = %p errno %d", huge[i], p, errno);
        void *q = NULL;
        CHECK(hak_posix_memalign(&q, 4096, huge[i]) == ENOMEM, "posix_memalign(huge)");
    }
    errno = 0;
    CHECK(hak_reallocarray(NULL, SIZE_MAX / 2, 3) == NULL && errno == ENOMEM, "reallocarray overflow");
}

static void test_tiers(void)
{
    static void *ptrs[2048];
    size_t k = 0;
    for (size_t n = 1; n <= HAK_TINY_MAX + 64; n++) {
        void *p = hak_malloc(n);
        check_block(p, n, 16, "malloc");
        if (!p) continue;
        CHECK(hak_ptr_kind(p) == kind_for(n), "kind of malloc(%zu) = %d", n, hak_ptr_kind(p));
        tu_fill(p, n, n);
        ptrs[k++] = p;
    }
    for (size_t i = 0; i < k; i++) {
        CHECK(tu_verify(ptrs[i], i + 1, i + 1) == TU_OK, "tiny block %zu corrupt", i + 1);
        hak_free(ptrs[i]);
    }
    k = 0;
    for (size_t n = HAK_TINY_MAX + 1; n <= HAK_MID_MAX + 4096; n += 61) {
        void *p = n % 3 ? hak_malloc(n) : hak_calloc(1, n);
        check_block(p, n, 16, "malloc/calloc");
        if (!p) continue;
        if (n % 3 == 0)
            for (size_t i = 0; i < n; i++)
                if (((unsigned char *)p)[i]) { CHECK(0, "calloc(%zu) byte %zu", n, i); break; }
        CHECK(hak_ptr_kind(p) == kind_for(n), "kind of malloc(%zu) = %d", n, hak_ptr_kind(p));
        tu_fill(p, n, n);
        ptrs[k] = p;
        if (++k == 2048) break;
    }
    for (size_t i = 0, n = HAK_TINY_MAX + 1; i < k; i++, n += 61) {
        CHECK(tu_verify(ptrs[i], n, n) == TU_OK, "mid block %zu corrupt", n);
        hak_free(ptrs[i]);
    }
    static const size_t large[] = { HAK_MID_MAX + 1, 100 * KiB, MiB - 1, MiB, 3 * MiB + 17, 20 * MiB };
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < 6; i++) {
            size_t n = large[i];
            char *p = round == 1 ? hak_calloc(n, 1) : hak_malloc(n);
            check_block(p, n, 16, "large");
            if (!p) continue;
            if (round == 1)
                CHECK(p[0] == 0 && p[n / 2] == 0 && p[n - 1] == 0, "calloc(%zu) not zero", n);
            memset(p, 0x5a, n);
            CHECK(p[n - 1] == 0x5a, "large write");
            hak_free(p);
        }
}

static void test_realloc(void)
{
    uint64_t seed = 77;
    size_t have = 1;
    char *p = hak_malloc(1);
    tu_fill_idx(p, 0, 1, seed);
    for (size_t n = 2; n <= 8 * MiB; n = n * 3 / 2 + 1) {
        char *q = hak_realloc(p, n);
        check_block(q, n, 16, "realloc");
        if (!q) break;
        p = q;
        CHECK(tu_verify_idx(p, have, seed) == TU_OK, "realloc %zu -> %zu lost data", have, n);
        tu_fill_idx(p, have, n, seed);
        have = n;
    }
    for (size_t n = have; n > 10; n = n / 2 - 1) {
        char *q = n % 2 ? hak_realloc(p, n) : hak_reallocarray(p, n / 2, 2);
        n = n / 2 * 2 + n % 2;
        check_block(q, n, 16, "realloc shrink");
        if (!q) break;
        p = q;
        CHECK(tu_verify_idx(p, n, seed) == TU_OK, "shrink to %zu lost data", n);
        have = n;
    }
    CHECK(hak_realloc(p, 0) == NULL, "realloc(p, 0) returns NULL (glibc semantics)");
    p = hak_realloc(NULL, 100);
    check_block(p, 100, 16, "realloc(NULL)");
    hak_free(p);
}

static void test_aligned(void)
{
    for (size_t al = 1; al <= 16 * MiB; al <<= 1)
        for (size_t n = 1; n < 5 * MiB; n = n * 7 + 3) {
            void *p = NULL;
            int rc = hak_posix_memalign(&p, al, n);
            if (al < sizeof(void *)) {
                CHECK(rc == EINVAL, "posix_memalign(%zu) = %d", al, rc);
                continue;
            }
            CHECK(rc == 0, "posix_memalign(%zu, %zu) = %d", al, n, rc);
            check_block(p, n, al, "posix_memalign");
            if (p) memset(p, 1, n < 8192 ? n : 8192);
            hak_free(p);
            p = hak_aligned_alloc(al, n);
            check_block(p, n, al, "aligned_alloc");
            hak_free(p);
            p = hak_memalign(al, n);
            check_block(p, n, al, "memalign");
            hak_free(p);
        }
    void *p = NULL;
    CHECK(hak_posix_memalign(&p, 24, 10) == EINVAL, "posix_memalign(24)");
    errno = 0;
    CHECK(hak_aligned_alloc(24, 10) == NULL && errno == EINVAL, "aligned_alloc(24)");
    p = hak_memalign(24, 100); /* rounded up to 32 */
    check_block(p, 100, 32, "memalign(24)");
    hak_free(p);
}

/* Random operations on a table of slots, contents checked on free. */
static void test_random(void)
{
    enum { SLOTS = 1000 };
    static struct { char *p; size_t n; uint64_t seed; } s[SLOTS];
    tu_rng r = tu_rng_seed(5);
    double end = tu_now() + tu_stress_seconds() / 2;
    for (long op = 0; op < 2000000 && (op % 1024 || tu_now() < end); op++) {
        unsigned i = (unsigned)tu_range(&r, 0, SLOTS - 1);
        if (s[i].p) {
            CHECK(tu_verify_idx(s[i].p, s[i].n, s[i].seed) == TU_OK, "slot %u corrupt", i);
            if (tu_range(&r, 0, 3) == 0) {
                size_t n = tu_range(&r, 1, tu_range(&r, 0, 9) ? 4096 : 300000);
                char *q = hak_realloc(s[i].p, n);
                check_block(q, n, 16, "realloc");
                if (!q) continue;
                size_t keep = n < s[i].n ? n : s[i].n;
                CHECK(tu_verify_idx(q, keep, s[i].seed) == TU_OK, "realloc lost data");
                tu_fill_idx(q, keep, n, s[i].seed);
                s[i].p = q;
                s[i].n = n;
                continue;
            }
            hak_free(s[i].p);
            s[i].p = NULL;
            continue;
        }
        size_t n = tu_range(&r, 0, tu_range(&r, 0, 15) ? 2048 : tu_range(&r, 0, 7) ? 60000 : 400000);
        s[i].p = hak_malloc(n);
        check_block(s[i].p, n, 16, "malloc");
        s[i].n = s[i].p ? n : 0;
        s[i].seed = (uint64_t)op;
        if (s[i].p) tu_fill_idx(s[i].p, 0, n, s[i].seed);
    }
    for (unsigned i = 0; i < SLOTS; i++)
        if (s[i].p) {
            CHECK(tu_verify_idx(s[i].p, s[i].n, s[i].seed) == TU_OK, "slot %u corrupt at end", i);
            hak_free(s[i].p);
        }
}

int main(void)
{
    test_basics();
    test_tiers();
    test_realloc();
    test_aligned();
    test_random();
    hak_trim();
    struct hak_stats st = tu_stats();
    CHECK(st.large_allocs >= st.large_frees, "stats: large allocs %llu < frees %llu",
          (unsigned long long)st.large_allocs, (unsigned long long)st.large_frees);
    CHECK(st.invalid_frees == 0, "invalid frees counted: %llu", (unsigned long long)st.invalid_frees);
    return TU_DONE();
}
