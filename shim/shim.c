/* libmagpie.so's exports: the whole malloc family, glibc's __libc_* aliases and
 * every C++ operator new/delete, forwarding to the magpie_* entry points of the
 * Rust engine (src/front/capi.rs).
 *
 * Nothing here allocates, calls getenv, or uses dlsym: the first malloc of the
 * process (from the dynamic loader or libc's init) goes straight into magpie,
 * which initialises itself from raw syscalls and `environ`. */
#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default"), used))

extern void *magpie_malloc(size_t size);
extern void magpie_free(void *p);
extern void *magpie_calloc(size_t n, size_t size);
extern void *magpie_realloc(void *p, size_t size);
extern void *magpie_reallocarray(void *p, size_t n, size_t size);
extern int magpie_posix_memalign(void **out, size_t align, size_t size);
extern void *magpie_aligned_alloc(size_t align, size_t size);
extern void *magpie_memalign(size_t align, size_t size);
extern void *magpie_valloc(size_t size);
extern void *magpie_pvalloc(size_t size);
extern size_t magpie_malloc_usable_size(void *p);
extern int magpie_malloc_trim(size_t pad);
extern void magpie_fill_mallinfo2(struct mallinfo2 *mi);

/* Leakcheck (MAGPIE_GC=leakcheck): every allocation records its site. The
 * shim passes its caller's registers (return address, CFA, rbp) so the stack
 * starts at the program's call. The shim is compiled with frame pointers, so
 * the caller's rbp is the word at this function's frame address. */
extern unsigned char magpie_leak_tracking;
/* Set once magpie knows no site is recorded: the functions below then
 * tail-call the engine (see TRACKED). */
extern unsigned char magpie_shim_direct;
#define DIRECT() __builtin_expect(__atomic_load_n(&magpie_shim_direct, __ATOMIC_RELAXED), 1)
extern void magpie_leak_record(void *p, size_t size, uintptr_t ip, uintptr_t sp, uintptr_t bp);
#define TRACKING() __builtin_expect(__atomic_load_n(&magpie_leak_tracking, __ATOMIC_RELAXED), 0)
#define RECORD(p, size)                                                                    \
    magpie_leak_record((p), (size), (uintptr_t)__builtin_return_address(0),                \
                       (uintptr_t)__builtin_dwarf_cfa(), *(uintptr_t *)__builtin_frame_address(0))
/* Defines an exported allocation function: `call` computes p, then the site is
 * recorded for `size` bytes when tracking. Without tracking the call is a tail
 * call, so the common case costs one byte load over the engine's own path. */
#define TRACKED(p, size, call)                                                             \
    if (DIRECT())                                                                          \
        return (call);                                                                     \
    void *p = (call);                                                                      \
    if (TRACKING() && p)                                                                   \
        RECORD(p, size);                                                                   \
    return p

/* ---- C ---------------------------------------------------------------- */

EXPORT void *malloc(size_t size) { TRACKED(p, size, magpie_malloc(size)); }
EXPORT void free(void *p) { magpie_free(p); }
EXPORT void cfree(void *p) { magpie_free(p); }
EXPORT void *calloc(size_t n, size_t size) { TRACKED(p, n * size, magpie_calloc(n, size)); }
EXPORT void *realloc(void *old, size_t size) { TRACKED(p, size, magpie_realloc(old, size)); }
EXPORT void *reallocarray(void *old, size_t n, size_t size) { TRACKED(p, n * size, magpie_reallocarray(old, n, size)); }
EXPORT int posix_memalign(void **out, size_t align, size_t size) {
    int r = magpie_posix_memalign(out, align, size);
    if (TRACKING() && r == 0)
        RECORD(*out, size);
    return r;
}
EXPORT void *aligned_alloc(size_t align, size_t size) { TRACKED(p, size, magpie_aligned_alloc(align, size)); }
EXPORT void *memalign(size_t align, size_t size) { TRACKED(p, size, magpie_memalign(align, size)); }
EXPORT void *valloc(size_t size) { TRACKED(p, size, magpie_valloc(size)); }
EXPORT void *pvalloc(size_t size) { TRACKED(p, size, magpie_pvalloc(size)); }
EXPORT size_t malloc_usable_size(void *p) { return magpie_malloc_usable_size(p); }
EXPORT int malloc_trim(size_t pad) { return magpie_malloc_trim(pad); }

/* mallopt: every option is accepted (magpie has its own tuning variables). */
EXPORT int mallopt(int param, int value) {
    (void)param;
    (void)value;
    return 1;
}

EXPORT struct mallinfo2 mallinfo2(void) {
    struct mallinfo2 mi;
    memset(&mi, 0, sizeof mi);
    magpie_fill_mallinfo2(&mi);
    return mi;
}

/* The old mallinfo has int fields: values saturate rather than wrap. */
static int clamp_int(size_t v) { return v > (size_t)INT32_MAX ? INT32_MAX : (int)v; }

EXPORT struct mallinfo mallinfo(void) {
    struct mallinfo2 m2 = mallinfo2();
    struct mallinfo mi;
    mi.arena = clamp_int(m2.arena);
    mi.ordblks = clamp_int(m2.ordblks);
    mi.smblks = clamp_int(m2.smblks);
    mi.hblks = clamp_int(m2.hblks);
    mi.hblkhd = clamp_int(m2.hblkhd);
    mi.usmblks = clamp_int(m2.usmblks);
    mi.fsmblks = clamp_int(m2.fsmblks);
    mi.uordblks = clamp_int(m2.uordblks);
    mi.fordblks = clamp_int(m2.fordblks);
    mi.keepcost = clamp_int(m2.keepcost);
    return mi;
}

/* glibc's internal names, used by some programs and by libc itself. */
EXPORT void *__libc_malloc(size_t size) { TRACKED(p, size, magpie_malloc(size)); }
EXPORT void __libc_free(void *p) { magpie_free(p); }
EXPORT void *__libc_calloc(size_t n, size_t size) { TRACKED(p, n * size, magpie_calloc(n, size)); }
EXPORT void *__libc_realloc(void *old, size_t size) { TRACKED(p, size, magpie_realloc(old, size)); }
EXPORT void *__libc_memalign(size_t align, size_t size) { TRACKED(p, size, magpie_memalign(align, size)); }
EXPORT void *__libc_valloc(size_t size) { TRACKED(p, size, magpie_valloc(size)); }
EXPORT void *__libc_pvalloc(size_t size) { TRACKED(p, size, magpie_pvalloc(size)); }
EXPORT int __posix_memalign(void **out, size_t align, size_t size) {
    int r = magpie_posix_memalign(out, align, size);
    if (TRACKING() && r == 0)
        RECORD(*out, size);
    return r;
}

/* ---- C++ -------------------------------------------------------------- */
/* Throwing operator new must call the installed new_handler and retry, and
 * throw std::bad_alloc when there is none. This file is C: the handler and
 * the throw are reached through weak references to libstdc++'s
 * std::get_new_handler and std::__throw_bad_alloc (present whenever a C++
 * program calls operator new); without them magpie reports and aborts. */
typedef void (*new_handler_fn)(void);
extern new_handler_fn _ZSt15get_new_handlerv(void) __attribute__((weak));
/* std::__throw_bad_alloc(), from libstdc++ when the program uses C++. */
extern void _ZSt17__throw_bad_allocv(void) __attribute__((weak, noreturn));

static void *new_fail_or_retry(size_t size, size_t align, int nothrow) {
    for (;;) {
        new_handler_fn h = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
        if (h == NULL) {
            if (nothrow)
                return NULL;
            /* What the standard asks: throw std::bad_alloc. The shim is
             * compiled with unwind tables, so the exception passes through. */
            if (_ZSt17__throw_bad_allocv)
                _ZSt17__throw_bad_allocv();
            static const char msg[] = "magpie: out of memory in operator new\n";
            ssize_t w = write(2, msg, sizeof msg - 1);
            (void)w;
            abort();
        }
        h();
        void *p = align ? magpie_aligned_alloc(align, size) : magpie_malloc(size);
        if (p)
            return p;
    }
}

static inline void *cxx_new(size_t size) {
    void *p = magpie_malloc(size);
    return p ? p : new_fail_or_retry(size, 0, 0);
}
static inline void *cxx_new_nothrow(size_t size) {
    void *p = magpie_malloc(size);
    return p ? p : new_fail_or_retry(size, 0, 1);
}
static inline void *cxx_new_aligned(size_t size, size_t align) {
    void *p = magpie_aligned_alloc(align, size);
    return p ? p : new_fail_or_retry(size, align, 0);
}
static inline void *cxx_new_aligned_nothrow(size_t size, size_t align) {
    void *p = magpie_aligned_alloc(align, size);
    return p ? p : new_fail_or_retry(size, align, 1);
}

/* new / new[] */
EXPORT void *_Znwm(size_t n) { TRACKED(p, n, cxx_new(n)); }
EXPORT void *_Znam(size_t n) { TRACKED(p, n, cxx_new(n)); }
/* nothrow */
EXPORT void *_ZnwmRKSt9nothrow_t(size_t n, const void *t) { (void)t; TRACKED(p, n, cxx_new_nothrow(n)); }
EXPORT void *_ZnamRKSt9nothrow_t(size_t n, const void *t) { (void)t; TRACKED(p, n, cxx_new_nothrow(n)); }
/* aligned (std::align_val_t) */
EXPORT void *_ZnwmSt11align_val_t(size_t n, size_t al) { TRACKED(p, n, cxx_new_aligned(n, al)); }
EXPORT void *_ZnamSt11align_val_t(size_t n, size_t al) { TRACKED(p, n, cxx_new_aligned(n, al)); }
EXPORT void *_ZnwmSt11align_val_tRKSt9nothrow_t(size_t n, size_t al, const void *t) { (void)t; TRACKED(p, n, cxx_new_aligned_nothrow(n, al)); }
EXPORT void *_ZnamSt11align_val_tRKSt9nothrow_t(size_t n, size_t al, const void *t) { (void)t; TRACKED(p, n, cxx_new_aligned_nothrow(n, al)); }

/* delete / delete[], plain, sized, nothrow, aligned, sized+aligned */
EXPORT void _ZdlPv(void *p) { magpie_free(p); }
EXPORT void _ZdaPv(void *p) { magpie_free(p); }
EXPORT void _ZdlPvm(void *p, size_t n) { (void)n; magpie_free(p); }
EXPORT void _ZdaPvm(void *p, size_t n) { (void)n; magpie_free(p); }
EXPORT void _ZdlPvRKSt9nothrow_t(void *p, const void *t) { (void)t; magpie_free(p); }
EXPORT void _ZdaPvRKSt9nothrow_t(void *p, const void *t) { (void)t; magpie_free(p); }
EXPORT void _ZdlPvSt11align_val_t(void *p, size_t al) { (void)al; magpie_free(p); }
EXPORT void _ZdaPvSt11align_val_t(void *p, size_t al) { (void)al; magpie_free(p); }
EXPORT void _ZdlPvmSt11align_val_t(void *p, size_t n, size_t al) { (void)n; (void)al; magpie_free(p); }
EXPORT void _ZdaPvmSt11align_val_t(void *p, size_t n, size_t al) { (void)n; (void)al; magpie_free(p); }
EXPORT void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t al, const void *t) { (void)al; (void)t; magpie_free(p); }
EXPORT void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t al, const void *t) { (void)al; (void)t; magpie_free(p); }
