/* Unwinder test library, the part compiled WITH frame pointers
 * (-fno-omit-frame-pointer): a malloc stand-in that captures its caller's
 * registers the way the preload shim does, and an outer frame whose CFA is
 * rbp-based (alloca moves rsp by a run-time amount). */
#include <alloca.h>
#include <stdint.h>

typedef void (*uw_cb)(uintptr_t ip, uintptr_t sp, uintptr_t bp);

int uw_nofp_mid(uw_cb cb, int n);

/* As in the shim's malloc: ip = our return address (in the caller), sp = our
 * CFA (the caller's rsp after we return), bp = the caller's rbp, saved by our
 * prologue at [rbp]. */
__attribute__((noinline)) void *uw_fake_malloc(uw_cb cb) {
    cb((uintptr_t)__builtin_return_address(0), (uintptr_t)__builtin_dwarf_cfa(),
       (uintptr_t) * (void **)__builtin_frame_address(0));
    __asm__ volatile("" ::: "memory");
    return 0;
}

__attribute__((noinline)) int uw_fp_outer(uw_cb cb, int n) {
    volatile char *buf = alloca(n);
    buf[0] = 1;
    buf[n - 1] = 2;
    int r = uw_nofp_mid(cb, n);
    return r + buf[0] + buf[n - 1];
}
