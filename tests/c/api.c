/* Semantics of every function libmagpie.so exports for C, run under
 * LD_PRELOAD: each symbol must resolve into libmagpie.so, and each must keep
 * the promises of the C standard, POSIX and glibc (alignment, zeroing, usable
 * size, contents across realloc, errno values). Built with -fno-builtin so the
 * compiler keeps every call. */
#include "check.h"

#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <unistd.h>

/* cfree: removed from glibc's headers and a compat-only symbol there, so it
 * is found by dlsym. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
/* __posix_memalign is magpie-only (glibc has no such export): found by dlsym. */

static const char *const exported[] = {
    "malloc", "free", "cfree", "calloc", "realloc", "reallocarray",
    "posix_memalign", "aligned_alloc", "memalign", "valloc", "pvalloc",
    "malloc_usable_size", "malloc_trim", "mallopt", "mallinfo", "mallinfo2",
    "__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc",
    "__libc_memalign", "__libc_valloc", "__libc_pvalloc", "__posix_memalign",
};

/* Sizes across every class boundary region, pages and large spans. */
static size_t test_sizes[256];
static int n_test_sizes;

static void make_sizes(void) {
    size_t s;
    for (s = 0; s <= 64; s++)
        test_sizes[n_test_sizes++] = s;
    for (s = 80; s <= 1024; s = s * 5 / 4 + 3)
        test_sizes[n_test_sizes++] = s;
    for (s = 1500; s <= (40u << 10); s = s * 3 / 2 + 1)
        test_sizes[n_test_sizes++] = s;
    size_t big[] = {8191, 8192, 8193, 32767, 32768, 32769, 65536, 100000,
                    (1u << 20) - 1, 1u << 20, (3u << 20) + 5, 16u << 20};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        test_sizes[n_test_sizes++] = big[i];
}

static void test_symbols(void) {
    for (size_t i = 0; i < sizeof exported / sizeof exported[0]; i++)
        CHECKF(from_magpie(exported[i]), "%s resolves to '%s', not libmagpie.so", exported[i],
               defining_object(exported[i]));
}

/* malloc alignment promise: 16 from 16 bytes up, 8 below (glibc gives 16 always). */
static size_t min_align(size_t n) { return n >= 16 ? 16 : 8; }

static void test_malloc_free(void) {
    /* malloc(0): a unique, freeable pointer. */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 != NULL && z2 != NULL && z1 != z2);
    free(z1);
    free(z2);
    free(NULL);

    /* Alignment, usable size and full-size writes for every size; all blocks
     * live at once so an overlap or an out-of-bounds usable size shows up. */
    void *ps[256];
    size_t us[256];
    for (int i = 0; i < n_test_sizes; i++) {
        size_t n = test_sizes[i];
        ps[i] = malloc(n);
        CHECKF(ps[i] != NULL, "malloc(%zu)", n);
        if (!ps[i])
            continue;
        CHECKF(IS_ALIGNED(ps[i], min_align(n)), "malloc(%zu) = %p", n, ps[i]);
        us[i] = malloc_usable_size(ps[i]);
        CHECKF(us[i] >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, us[i]);
        CHECKF(us[i] <= n + n / 4 + 8192 || n == 0, "usable size %zu for %zu is implausible", us[i], n);
        fill_pat(ps[i], us[i], (uintptr_t)i);
    }
    for (int i = 0; i < n_test_sizes; i++) {
        if (!ps[i])
            continue;
        CHECKF(check_pat(ps[i], us[i], (uintptr_t)i), "block of %zu bytes overwritten", test_sizes[i]);
        free(ps[i]);
    }

    /* Many small blocks are distinct and keep their contents. */
    enum { N = 20000 };
    static void *many[N];
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i * 37) % 300;
        many[i] = malloc(n);
        CHECK(many[i] != NULL);
        fill_pat(many[i], n, (uintptr_t)i);
    }
    for (int i = 0; i < N; i += 2)
        free(many[i]);
    for (int i = 0; i < N; i += 2) {
        size_t n = 1 + (size_t)(i * 37) % 300;
        many[i] = malloc(n);
        fill_pat(many[i], n, (uintptr_t)i);
    }
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i * 37) % 300;
        CHECKF(check_pat(many[i], n, (uintptr_t)i), "small block %d corrupted", i);
        free(many[i]);
    }

    /* Impossible sizes: NULL and ENOMEM. */
    size_t huge[] = {SIZE_MAX, SIZE_MAX - 4095, (size_t)PTRDIFF_MAX + 1, (size_t)1 << 62};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        errno = 0;
        void *p = malloc(huge[i]);
        CHECKF(p == NULL && errno == ENOMEM, "malloc(%#zx) = %p errno %d", huge[i], p, errno);
    }

    /* free keeps errno (POSIX 2024; glibc >= 2.33). */
    void *p = malloc(100);
    errno = 1234;
    free(p);
    CHECKF(errno == 1234, "free changed errno to %d", errno);
    p = malloc(1 << 20);
    errno = 4321;
    free(p);
    CHECKF(errno == 4321, "free (large) changed errno to %d", errno);

    /* cfree is free. */
    void (*cfree_fn)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    CHECK(cfree_fn != NULL);
    p = malloc(48);
    CHECK(p != NULL);
    if (cfree_fn)
        cfree_fn(p);
}

static void test_calloc(void) {
    /* Dirty blocks, freed, then calloc'd: must come back zeroed. */
    for (int i = 0; i < n_test_sizes; i++) {
        size_t n = test_sizes[i];
        for (int round = 0; round < 3; round++) {
            void *d = malloc(n);
            if (d) {
                memset(d, 0xA5, malloc_usable_size(d));
                free(d);
            }
            unsigned char *c = calloc(1, n);
            CHECKF(c != NULL, "calloc(1, %zu)", n);
            if (!c)
                continue;
            CHECKF(IS_ALIGNED(c, min_align(n)), "calloc(1, %zu) = %p", n, c);
            CHECK(malloc_usable_size(c) >= n);
            size_t bad = n;
            for (size_t k = 0; k < n; k++)
                if (c[k]) {
                    bad = k;
                    break;
                }
            CHECKF(bad == n, "calloc(1, %zu): byte %zu is %#x", n, bad, bad < n ? c[bad] : 0);
            free(c);
        }
    }
    /* n * size form. */
    int *a = calloc(1000, sizeof(int));
    CHECK(a != NULL);
    if (a) {
        for (int i = 0; i < 1000; i++)
            CHECK(a[i] == 0);
        free(a);
    }
    void *z = calloc(0, 0);
    CHECK(z != NULL);
    free(z);
    z = calloc(0, 100);
    CHECK(z != NULL);
    free(z);

    /* Overflowing products: NULL and ENOMEM. */
    struct { size_t n, s; } over[] = {
        {SIZE_MAX, 2}, {2, SIZE_MAX}, {(size_t)1 << 32, (size_t)1 << 32},
        {SIZE_MAX / 3 + 1, 3}, {(size_t)PTRDIFF_MAX, 1},
    };
    for (size_t i = 0; i < sizeof over / sizeof over[0]; i++) {
        errno = 0;
        void *p = calloc(over[i].n, over[i].s);
        CHECKF(p == NULL && errno == ENOMEM, "calloc(%#zx, %#zx) = %p errno %d", over[i].n, over[i].s,
               p, errno);
    }
}

static void test_realloc(void) {
    /* realloc(NULL, n) is malloc(n). */
    void *p = realloc(NULL, 40);
    CHECK(p != NULL && IS_ALIGNED(p, 16) && malloc_usable_size(p) >= 40);
    free(p);
    p = realloc(NULL, 0);
    CHECK(p != NULL);
    free(p);

    /* Growing and shrinking through every size keeps the common prefix. */
    size_t have = 1;
    unsigned char *b = malloc(1);
    b[0] = pat(7, 0);
    for (int i = 0; i < n_test_sizes; i++) {
        size_t n = test_sizes[i] ? test_sizes[i] : 1;
        unsigned char *q = realloc(b, n);
        CHECKF(q != NULL, "realloc(%zu -> %zu)", have, n);
        if (!q)
            break;
        size_t keep = have < n ? have : n;
        CHECKF(check_pat(q, keep, 7), "realloc(%zu -> %zu) lost contents", have, n);
        CHECKF(IS_ALIGNED(q, min_align(n)), "realloc to %zu = %p", n, q);
        CHECK(malloc_usable_size(q) >= n);
        fill_pat(q, n, 7);
        b = q;
        have = n;
    }
    for (int i = n_test_sizes - 1; i >= 0; i--) {
        size_t n = test_sizes[i] ? test_sizes[i] : 1;
        unsigned char *q = realloc(b, n);
        CHECKF(q != NULL, "realloc(%zu -> %zu)", have, n);
        if (!q)
            break;
        size_t keep = have < n ? have : n;
        CHECKF(check_pat(q, keep, 7), "realloc(%zu -> %zu) lost contents", have, n);
        CHECK(malloc_usable_size(q) >= n);
        fill_pat(q, n, 7);
        b = q;
        have = n;
    }
    free(b);

    /* Writing up to the usable size then growing keeps every byte. */
    p = malloc(100);
    size_t u = malloc_usable_size(p);
    fill_pat(p, u, 9);
    void *q = realloc(p, u + 1);
    CHECK(q != NULL && check_pat(q, u, 9));
    free(q);

    /* realloc(p, 0) frees and returns NULL (glibc). */
    p = malloc(64);
    q = realloc(p, 0);
    CHECK(q == NULL);

    /* Failure keeps the old block intact and sets ENOMEM. */
    p = malloc(200);
    fill_pat(p, 200, 11);
    errno = 0;
    q = realloc(p, SIZE_MAX - 100);
    CHECKF(q == NULL && errno == ENOMEM, "realloc(p, huge) = %p errno %d", q, errno);
    CHECK(check_pat(p, 200, 11));
    q = realloc(p, 300);
    CHECK(q != NULL && check_pat(q, 200, 11));
    free(q);

    /* Large block, grown and shrunk a lot. */
    p = malloc(1 << 20);
    fill_pat(p, 1 << 20, 13);
    q = realloc(p, 5 << 20);
    CHECK(q != NULL && check_pat(q, 1 << 20, 13));
    p = realloc(q, 100);
    CHECK(p != NULL && check_pat(p, 100, 13));
    free(p);

    /* Aligned blocks can be realloc'd. */
    p = memalign(4096, 100);
    fill_pat(p, 100, 15);
    q = realloc(p, 20000);
    CHECK(q != NULL && check_pat(q, 100, 15));
    free(q);
}

static void test_reallocarray(void) {
    int *a = reallocarray(NULL, 10, sizeof(int));
    CHECK(a != NULL);
    for (int i = 0; i < 10; i++)
        a[i] = i * 3;
    int *b = reallocarray(a, 100000, sizeof(int));
    CHECK(b != NULL);
    for (int i = 0; i < 10; i++)
        CHECK(b[i] == i * 3);
    errno = 0;
    int *c = reallocarray(b, SIZE_MAX / 2, 4);
    CHECKF(c == NULL && errno == ENOMEM, "reallocarray overflow = %p errno %d", (void *)c, errno);
    for (int i = 0; i < 10; i++)
        CHECK(b[i] == i * 3);
    free(b);
}

static void test_aligned(void) {
    /* Every alignment from 1 to 1 MiB, with sizes below, at and above it. */
    for (size_t al = 1; al <= (1u << 20); al <<= 1) {
        size_t sizes[] = {0, 1, 7, 16, 24, al / 2, al - 1, al, al + 1, 3 * al + 5, 100000};
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t n = sizes[k];
            size_t want = al < 8 ? 8 : al; /* glibc's memalign gives at least malloc's alignment */
            void *m = memalign(al, n);
            CHECKF(m != NULL && IS_ALIGNED(m, al), "memalign(%zu, %zu) = %p", al, n, m);
            if (m) {
                CHECK(malloc_usable_size(m) >= n);
                fill_pat(m, n, al);
            }
            void *a = aligned_alloc(al, n);
            CHECKF(a != NULL && IS_ALIGNED(a, al), "aligned_alloc(%zu, %zu) = %p", al, n, a);
            if (a) {
                CHECK(malloc_usable_size(a) >= n);
                fill_pat(a, n, al + 1);
            }
            void *pm = (void *)0x1;
            if (al >= sizeof(void *)) {
                int r = posix_memalign(&pm, al, n);
                CHECKF(r == 0 && pm != NULL && IS_ALIGNED(pm, al), "posix_memalign(%zu, %zu) = %d %p",
                       al, n, r, pm);
                if (r == 0) {
                    CHECK(malloc_usable_size(pm) >= n);
                    fill_pat(pm, n, al + 2);
                }
            }
            (void)want;
            if (m)
                CHECKF(check_pat(m, n, al), "memalign(%zu, %zu) block corrupted", al, n);
            if (a)
                CHECKF(check_pat(a, n, al + 1), "aligned_alloc(%zu, %zu) block corrupted", al, n);
            free(m);
            free(a);
            if (al >= sizeof(void *) && pm != (void *)0x1) {
                CHECK(check_pat(pm, n, al + 2));
                free(pm);
            }
        }
    }

    /* posix_memalign: EINVAL for an alignment that is not a power of two
     * multiple of sizeof(void *); *out untouched. */
    size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 48, 4097, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *out = (void *)0x1234;
        int r = posix_memalign(&out, bad[i], 16);
        CHECKF(r == EINVAL && out == (void *)0x1234, "posix_memalign(align %zu) = %d, out %p", bad[i],
               r, out);
    }
    /* posix_memalign: ENOMEM for impossible sizes, *out untouched. */
    {
        void *out = (void *)0x1234;
        int r = posix_memalign(&out, 64, SIZE_MAX - 10);
        CHECKF(r == ENOMEM && out == (void *)0x1234, "posix_memalign(64, huge) = %d %p", r, out);
        r = posix_memalign(&out, (size_t)1 << 40, 16);
        CHECKF(r == ENOMEM || (r == 0 && IS_ALIGNED(out, (size_t)1 << 40)),
               "posix_memalign(1 TiB align) = %d %p", r, out);
        if (r == 0)
            free(out);
    }

    /* aligned_alloc: an alignment that is not a power of two gives NULL + EINVAL. */
    size_t bad2[] = {0, 3, 24, 100, 4095};
    for (size_t i = 0; i < sizeof bad2 / sizeof bad2[0]; i++) {
        errno = 0;
        void *p = aligned_alloc(bad2[i], 64);
        CHECKF(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 64) = %p errno %d", bad2[i], p, errno);
        free(p);
    }
    errno = 0;
    void *p = aligned_alloc(64, SIZE_MAX - 10);
    CHECKF(p == NULL && errno == ENOMEM, "aligned_alloc(64, huge) = %p errno %d", p, errno);

    /* memalign: glibc rounds a non-power-of-two alignment up to the next
     * power of two; an alignment too large to honour gives EINVAL. */
    p = memalign(24, 10);
    CHECKF(p != NULL && IS_ALIGNED(p, 32), "memalign(24, 10) = %p", p);
    free(p);
    p = memalign(3000, 10);
    CHECKF(p != NULL && IS_ALIGNED(p, 4096), "memalign(3000, 10) = %p", p);
    free(p);
    p = memalign(0, 10);
    CHECKF(p != NULL && IS_ALIGNED(p, 8), "memalign(0, 10) = %p", p);
    free(p);
    errno = 0;
    p = memalign(SIZE_MAX / 2 + 2, 10);
    CHECKF(p == NULL && errno == EINVAL, "memalign(huge align) = %p errno %d", p, errno);
    errno = 0;
    p = memalign(64, SIZE_MAX - 10);
    CHECKF(p == NULL && errno == ENOMEM, "memalign(64, huge) = %p errno %d", p, errno);

    /* valloc: page-aligned. pvalloc: page-aligned, whole pages usable. */
    long page = sysconf(_SC_PAGESIZE);
    size_t vs[] = {0, 1, 100, 4095, 4096, 4097, 10000, 1 << 20};
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        void *v = valloc(vs[i]);
        CHECKF(v != NULL && IS_ALIGNED(v, page), "valloc(%zu) = %p", vs[i], v);
        if (v) {
            CHECK(malloc_usable_size(v) >= vs[i]);
            memset(v, 0x33, vs[i]);
        }
        void *pv = pvalloc(vs[i]);
        size_t rounded = (vs[i] + page - 1) / page * page;
        CHECKF(pv != NULL && IS_ALIGNED(pv, page), "pvalloc(%zu) = %p", vs[i], pv);
        if (pv) {
            CHECKF(malloc_usable_size(pv) >= rounded, "pvalloc(%zu): usable %zu < %zu", vs[i],
                   malloc_usable_size(pv), rounded);
            memset(pv, 0x44, rounded);
        }
        free(v);
        free(pv);
    }
    errno = 0;
    p = pvalloc(SIZE_MAX - 10);
    CHECKF(p == NULL && errno == ENOMEM, "pvalloc(huge) = %p errno %d", p, errno);
    errno = 0;
    p = valloc(SIZE_MAX - 10);
    CHECKF(p == NULL && errno == ENOMEM, "valloc(huge) = %p errno %d", p, errno);
}

static void test_usable_size(void) {
    CHECK(malloc_usable_size(NULL) == 0);
    /* Every byte up to the usable size belongs to the block alone. */
    enum { N = 2000 };
    static void *p[N];
    static size_t u[N];
    for (int i = 0; i < N; i++) {
        size_t n = (size_t)(i * 97) % 5000;
        p[i] = malloc(n);
        u[i] = malloc_usable_size(p[i]);
        CHECK(u[i] >= n);
        fill_pat(p[i], u[i], (uintptr_t)i * 3);
    }
    for (int i = 0; i < N; i++) {
        CHECKF(check_pat(p[i], u[i], (uintptr_t)i * 3), "block %d overlaps a neighbour", i);
        free(p[i]);
    }
}

static void test_trim_mallopt_mallinfo(void) {
    /* mallopt accepts glibc's options (1 = success). */
    CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1);
    CHECK(mallopt(M_TRIM_THRESHOLD, 1 << 20) == 1);
    CHECK(mallopt(M_ARENA_MAX, 2) == 1);

    struct mallinfo2 before = mallinfo2();
    enum { K = 64 };
    void *blocks[K];
    for (int i = 0; i < K; i++) {
        blocks[i] = malloc(256 << 10); /* 16 MiB in all */
        memset(blocks[i], 1, 256 << 10);
    }
    void *smalls[4096];
    for (int i = 0; i < 4096; i++)
        smalls[i] = malloc(512); /* 2 MiB */
    struct mallinfo2 during = mallinfo2();
    struct mallinfo during1 = mallinfo();
    CHECKF(during.uordblks >= before.uordblks + (16u << 20),
           "mallinfo2: uordblks %zu -> %zu after 18 MiB of allocations", before.uordblks, during.uordblks);
    CHECKF(during.arena >= during.uordblks, "mallinfo2: arena %zu < uordblks %zu", during.arena,
           during.uordblks);
    {
        long long d = (long long)during1.uordblks -
                      (long long)(during.uordblks > INT32_MAX ? INT32_MAX : during.uordblks);
        CHECKF(d > -(1 << 20) && d < (1 << 20), "mallinfo (%d) disagrees with mallinfo2 (%zu)",
               during1.uordblks, during.uordblks);
    }
    CHECK(during1.arena >= 0 && during1.uordblks >= 0 && during1.fordblks >= 0);
    for (int i = 0; i < K; i++)
        free(blocks[i]);
    for (int i = 0; i < 4096; i++)
        free(smalls[i]);
    struct mallinfo2 after = mallinfo2();
    CHECKF(after.uordblks + (16u << 20) <= during.uordblks,
           "mallinfo2: uordblks %zu -> %zu after freeing 18 MiB", during.uordblks, after.uordblks);

    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1);
    r = malloc_trim(1 << 20);
    CHECK(r == 0 || r == 1);
    /* The heap still works after a trim. */
    void *p = malloc(300 << 10);
    CHECK(p != NULL);
    memset(p, 2, 300 << 10);
    free(p);
}

static void test_libc_aliases(void) {
    void *p = __libc_malloc(100);
    CHECK(p != NULL && IS_ALIGNED(p, 16) && malloc_usable_size(p) >= 100);
    fill_pat(p, 100, 21);
    p = __libc_realloc(p, 5000);
    CHECK(p != NULL && check_pat(p, 100, 21));
    __libc_free(p);

    unsigned char *c = __libc_calloc(300, 7);
    CHECK(c != NULL);
    int nz = 0;
    for (int i = 0; i < 2100; i++)
        nz |= c[i];
    CHECK(nz == 0);
    free(c); /* mixing the names is fine: one allocator */

    p = __libc_memalign(256, 1000);
    CHECK(p != NULL && IS_ALIGNED(p, 256));
    __libc_free(p);
    p = __libc_valloc(10);
    CHECK(p != NULL && IS_ALIGNED(p, 4096));
    free(p);
    p = __libc_pvalloc(10);
    CHECK(p != NULL && IS_ALIGNED(p, 4096) && malloc_usable_size(p) >= 4096);
    __libc_free(p);
    int (*__posix_memalign)(void **, size_t, size_t) =
        (int (*)(void **, size_t, size_t))dlsym(RTLD_DEFAULT, "__posix_memalign");
    CHECK(__posix_memalign != NULL);
    if (__posix_memalign == NULL)
        return;
    void *out = NULL;
    CHECK(__posix_memalign(&out, 128, 33) == 0 && IS_ALIGNED(out, 128));
    free(out);
    out = (void *)0x1;
    CHECK(__posix_memalign(&out, 12, 33) == EINVAL && out == (void *)0x1);

    errno = 0;
    p = __libc_malloc(SIZE_MAX);
    CHECK(p == NULL && errno == ENOMEM);
    errno = 0;
    p = __libc_calloc(SIZE_MAX, 16);
    CHECK(p == NULL && errno == ENOMEM);
}

/* The pointers libc itself hands out (strdup, getline, open_memstream,
 * asprintf) are magpie's and free()able. */
static void test_libc_internal_allocations(void) {
    char *s = strdup("hello, magpie");
    CHECK(s != NULL && strcmp(s, "hello, magpie") == 0);
    CHECK(magpie_usable(s) >= 14);
    free(s);
    char *a = NULL;
    CHECK(asprintf(&a, "%d-%s", 42, "x") == 4 && strcmp(a, "42-x") == 0);
    CHECK(magpie_usable(a) >= 5);
    free(a);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    for (int i = 0; i < 10000; i++)
        fprintf(m, "%d,", i);
    fclose(m);
    CHECK(len > 40000 && buf != NULL && magpie_usable(buf) >= len);
    free(buf);
}

int main(void) {
    require_magpie();
    make_sizes();
    test_symbols();
    test_malloc_free();
    test_calloc();
    test_realloc();
    test_reallocarray();
    test_aligned();
    test_usable_size();
    test_trim_mallopt_mallinfo();
    test_libc_aliases();
    test_libc_internal_allocations();
    DONE("api");
    return 0;
}
