/*
 * wp_fault.c - what dirty-page tracking costs a program: the first write to
 * a page write-protected by userfaultfd in asynchronous mode (the kernel
 * resolves the fault itself and remembers the page as written), against the
 * same writes to pages already written.
 *
 * magpie's concurrent mark write-protects its heap this way (src/gc/dirty.rs)
 * and the program pays one such fault for every heap page it first writes
 * while a cycle marks. A mutator that writes pages at random (the pause
 * benchmark, benches/gc/pause.c) takes about one fault per heap page per
 * cycle: at 1 GiB, 262,144 of them.
 *
 * It maps MIB MiB (default 1024) of anonymous memory without huge pages,
 * writes every page, registers the range with a userfaultfd
 * (UFFD_USER_MODE_ONLY, UFFD_FEATURE_WP_ASYNC: no privileges needed) and
 * three times: protects it (UFFDIO_WRITEPROTECT), writes one byte in every
 * page in a random order (each write faults), then writes another byte in
 * every page in the same order (no fault). The difference per page is the
 * fault's cost.
 *
 * Build: gcc -O2 -o wp_fault benches/gc/wp_fault.c
 * Run:   ./wp_fault 1024
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Newer than the kernel headers on some machines (include/uapi/linux/userfaultfd.h). */
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 1024;
    if (mib == 0)
        mib = 1;
    size_t len = mib << 20, pages = len / 4096;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        die("mmap");
    madvise(m, len, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < len; i += 4096)
        m[i] = 1;

    /* A random order of the pages (Fisher-Yates with xorshift64). */
    uint32_t *order = malloc(pages * sizeof *order);
    if (!order)
        die("malloc");
    for (size_t i = 0; i < pages; i++)
        order[i] = (uint32_t)i;
    uint64_t s = 88172645463325252ull;
    for (size_t i = pages - 1; i > 0; i--) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        size_t j = s % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }

    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC};
    if (ioctl(fd, UFFDIO_API, &api))
        die("UFFDIO_API (UFFD_FEATURE_WP_ASYNC needs Linux 6.7)");
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)m, .len = len},
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg))
        die("UFFDIO_REGISTER");

    for (int round = 0; round < 3; round++) {
        struct uffdio_writeprotect wp = {
            .range = {.start = (uintptr_t)m, .len = len},
            .mode = UFFDIO_WRITEPROTECT_MODE_WP,
        };
        double t0 = now_s();
        if (ioctl(fd, UFFDIO_WRITEPROTECT, &wp))
            die("UFFDIO_WRITEPROTECT");
        double t1 = now_s();
        for (size_t i = 0; i < pages; i++)
            m[(size_t)order[i] * 4096 + 64]++;
        double t2 = now_s();
        for (size_t i = 0; i < pages; i++)
            m[(size_t)order[i] * 4096 + 128]++;
        double t3 = now_s();
        printf("%zu pages: protect %.1f ms; first write %.0f ns/page, second write %.0f ns/page: "
               "%.0f ns a fault\n",
               pages, (t1 - t0) * 1e3, (t2 - t1) * 1e9 / (double)pages,
               (t3 - t2) * 1e9 / (double)pages, ((t2 - t1) - (t3 - t2)) * 1e9 / (double)pages);
    }
    return 0;
}
