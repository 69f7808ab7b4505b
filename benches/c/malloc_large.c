/*
 * malloc_large.c - mimalloc-bench "malloc-large" style test.
 *
 * Models a program that repeatedly allocates big buffers: a set of `live`
 * slots holds blocks of random size in [5 MiB, 25 MiB] (not page multiples).
 * Every iteration picks a random slot, verifies and frees its block, then
 * mallocs a new block and touches it by writing one pattern word into every
 * 4 KiB page (plus the last word), so the cost of obtaining, faulting in and
 * returning large memory regions (mmap/munmap, madvise, page zeroing) is what
 * gets measured.  Single-threaded.
 *
 * Usage: malloc_large [iterations=1000] [live=8]
 *   iterations   number of allocations (after the initial `live` ones)
 *   live         number of blocks kept alive at the same time
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator) and "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o malloc_large malloc_large.c
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

#define STRIDE 4096
#define MIN_SIZE (5u << 20)
#define MAX_SIZE (25u << 20)

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: malloc_large [iterations=1000] [live=8]");
        return 0;
    }
    uint64_t iters = arg_u64(argc, argv, 1, 1000, 0);
    uint64_t live = arg_u64(argc, argv, 2, 8, 1);

    void **ptr = xalloc(live * sizeof *ptr);
    size_t *size = xalloc(live * sizeof *size);
    uint64_t *tag = xalloc(live * sizeof *tag);
    for (uint64_t i = 0; i < live; i++)
        ptr[i] = NULL;
    rng_t r = { 0x6c61726765000000ULL };
    uint64_t cs = 0;
    for (uint64_t it = 0; it < iters + live; it++) {
        uint64_t k = it < live ? it : rng_next(&r) % live;
        if (ptr[k] != NULL) {
            cs += check(ptr[k], size[k], tag[k], STRIDE);
            free(ptr[k]);
        }
        size_t n = (size_t)rng_range(&r, MIN_SIZE, MAX_SIZE);
        uint64_t t = rng_next(&r);
        ptr[k] = xalloc(n);
        size[k] = n;
        tag[k] = t;
        fill(ptr[k], n, t, STRIDE);
    }
    for (uint64_t i = 0; i < live; i++) {
        cs += check(ptr[i], size[i], tag[i], STRIDE);
        free(ptr[i]);
    }
    free(tag);
    free(size);
    free(ptr);
    printf("ops: %" PRIu64 "\n", iters + live);
    print_result(cs);
    return 0;
}
