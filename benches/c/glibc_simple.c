/*
 * glibc_simple.c - glibc "bench-malloc-simple" style single-thread test.
 *
 * Models the fast path of a single-threaded program: repeatedly malloc a
 * batch of small blocks (random sizes in [16, 64] bytes), write a pattern
 * into each, then verify and free the whole batch (in allocation order on
 * even iterations, in reverse order on odd ones).
 *
 * Usage: glibc_simple [iterations=100000] [batch=1000]
 *   iterations   number of batches
 *   batch        blocks per batch
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator) and "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o glibc_simple glibc_simple.c
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

#define STRIDE 64
#define MIN_SIZE 16
#define MAX_SIZE 64

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: glibc_simple [iterations=100000] [batch=1000]");
        return 0;
    }
    uint64_t iters = arg_u64(argc, argv, 1, 100000, 0);
    uint64_t batch = arg_u64(argc, argv, 2, 1000, 1);

    void **ptr = xalloc(batch * sizeof *ptr);
    uint64_t *tag = xalloc(batch * sizeof *tag);
    unsigned char *size = xalloc(batch);
    rng_t r = { 0x676c696263000000ULL };
    uint64_t cs = 0;
    for (uint64_t it = 0; it < iters; it++) {
        for (uint64_t i = 0; i < batch; i++) {
            uint64_t x = rng_next(&r);
            size_t n = MIN_SIZE + (size_t)(x % (MAX_SIZE - MIN_SIZE + 1));
            void *p = xalloc(n);
            fill(p, n, x, STRIDE);
            ptr[i] = p;
            tag[i] = x;
            size[i] = (unsigned char)n;
        }
        for (uint64_t j = 0; j < batch; j++) {
            uint64_t i = (it & 1) ? batch - 1 - j : j;
            cs += check(ptr[i], size[i], tag[i], STRIDE);
            free(ptr[i]);
        }
    }
    free(size);
    free(tag);
    free(ptr);
    printf("ops: %" PRIu64 "\n", iters * batch);
    print_result(cs);
    return 0;
}
