/* Unwinder test library, the part compiled WITHOUT frame pointers
 * (-fomit-frame-pointer): a frame that uses rbp as a general register (so the
 * caller's rbp must be recovered from its save slot), and a call through
 * libc's qsort (Debian's libc has no frame pointers either). */
#include <stdint.h>
#include <stdlib.h>

typedef void (*uw_cb)(uintptr_t ip, uintptr_t sp, uintptr_t bp);

void *uw_fake_malloc(uw_cb cb);

static uw_cb g_cb;
static int g_called;

/* Called by qsort; the first call "allocates" from inside libc's frames. */
__attribute__((noinline)) int uw_cmp(const void *a, const void *b) {
    if (!g_called) {
        g_called = 1;
        uw_fake_malloc(g_cb);
    }
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) int uw_nofp_inner(uw_cb cb, int n) {
    int v[16];
    for (int i = 0; i < 16; i++)
        v[i] = (i * 7919 + n) % 31;
    uw_fake_malloc(cb); /* direct */
    g_cb = cb;
    g_called = 0;
    qsort(v, 16, sizeof v[0], uw_cmp); /* through libc */
    return v[0] + v[15];
}

/* Twelve values live across the call: gcc uses rbp as a general register. */
__attribute__((noinline)) int uw_nofp_mid(uw_cb cb, int n) {
    volatile long src[12];
    for (int i = 0; i < 12; i++)
        src[i] = i * 3 + n;
    long a = src[0], b = src[1], c = src[2], d = src[3], e = src[4], f = src[5];
    long g = src[6], h = src[7], i = src[8], j = src[9], k = src[10], l = src[11];
    long m = uw_nofp_inner(cb, n);
    return (int)(a * m ^ (b + m) ^ (c - m) ^ d * (m + 1) ^ (e + f * m) ^ (g - h * m) ^
                 (i * j + m) ^ (k + l * m));
}
