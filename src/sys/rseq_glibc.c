/* rseq discovery for magpie, in C because stable Rust cannot declare weak
 * symbols or initial-exec TLS.
 *
 * glibc >= 2.35 registers an rseq area for every thread and publishes where it
 * is (__rseq_offset from the thread pointer) and how big (__rseq_size, 0 when
 * registration failed, e.g. under valgrind or a seccomp filter). We use that
 * area and never register a second one (the kernel allows one per thread).
 * With an older glibc, or glibc's registration disabled by tunable while the
 * kernel supports rseq, we register our own area per thread. */
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>

extern const ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));

#define MAGPIE_RSEQ_SIG 0x53053053u

struct magpie_rseq_area {
    uint32_t cpu_id_start;
    uint32_t cpu_id;
    uint64_t rseq_cs;
    uint32_t flags;
    uint32_t node_id;
    uint32_t mm_cid;
    uint32_t pad;
} __attribute__((aligned(32)));

/* cpu_id starts at -1 (RSEQ_CPU_ID_UNINITIALIZED) so an unregistered thread
 * is never mistaken for CPU 0. */
static __thread struct magpie_rseq_area magpie_own_rseq
    __attribute__((tls_model("initial-exec"))) = {0, (uint32_t)-1, 0, 0, 0, 0, 0};

static inline char *thread_pointer(void) {
    char *tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
}

/* 1 and the offset of glibc's area when glibc registered rseq, else 0. */
int magpie_glibc_rseq(ptrdiff_t *offset) {
    if (&__rseq_size == NULL || &__rseq_offset == NULL || __rseq_size < 20)
        return 0;
    *offset = __rseq_offset;
    return 1;
}

/* The offset of magpie's own area from the thread pointer (the same for every
 * thread under the initial-exec TLS model). */
ptrdiff_t magpie_own_rseq_offset(void) {
    return (char *)&magpie_own_rseq - thread_pointer();
}

/* Registers magpie's own area for the calling thread: 0 on success, else errno
 * as a negative number. On failure cpu_id is set to -2 so the thread uses the
 * locked fallback from then on. */
int magpie_own_rseq_register(void) {
    long r = syscall(SYS_rseq, &magpie_own_rseq, sizeof magpie_own_rseq, 0, MAGPIE_RSEQ_SIG);
    if (r != 0) {
        magpie_own_rseq.cpu_id = (uint32_t)-2;
        return -1;
    }
    return 0;
}

/* The ranges [start, end) of instructions between an allocation pop's commit
 * and the store that marks the slot allocated (see alloc/rseq_ops.rs). The
 * linker collects them in section magpie_alloc_windows. */
extern const uintptr_t __start_magpie_alloc_windows[] __attribute__((weak));
extern const uintptr_t __stop_magpie_alloc_windows[] __attribute__((weak));

int magpie_in_alloc_window(uintptr_t ip) {
    const uintptr_t *p = __start_magpie_alloc_windows, *e = __stop_magpie_alloc_windows;
    if (p == NULL || e == NULL)
        return 0;
    for (; p + 2 <= e; p += 2)
        if (ip >= p[0] && ip < p[1])
            return 1;
    return 0;
}
