/*
 * alloc_test.c - "alloc-test" style random-size, random-lifetime workload.
 *
 * Each thread keeps a live set of `live` blocks in a ring.  Sizes follow a
 * discrete Pareto-like (alpha ~ 1) distribution: a size class 8 << k is chosen
 * with probability 2^-(k+1) (k = 0..12) and the size is uniform within
 * [8 << k, 16 << k), capped at 64 KiB - so most blocks are tiny but there is a
 * heavy tail up to 64 KiB.  The ring is first filled; then every iteration
 * replaces one block: 3 times in 4 the oldest one (the ring head advances,
 * FIFO lifetimes), otherwise a randomly chosen one (random lifetimes).  The
 * replaced block is verified and freed and a new one is allocated and filled.
 * Threads are independent (no sharing); work is per thread.
 *
 * Usage: alloc_test [threads=2] [iterations=10000000] [live=65536]
 *   threads      worker threads
 *   iterations   replacements per thread
 *   live         live-set (ring) size per thread
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator and scheduling) and "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o alloc_test alloc_test.c
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

#define STRIDE 64
#define MAX_SIZE (64u << 10)

typedef struct {
    void *p;
    uint64_t tag;
    size_t size;
} slot_t;

typedef struct {
    uint64_t id;
    uint64_t checksum;
    char pad[64];
} work_t;

static uint64_t g_iters, g_live;

static size_t pareto_size(rng_t *r)
{
    uint64_t x = rng_next(r);
    unsigned k = (unsigned)__builtin_ctzll(x | (1ULL << 12)); /* P(k) = 2^-(k+1) */
    size_t base = (size_t)8 << k;
    size_t n = base + (size_t)((x >> 16) % base);
    return n < MAX_SIZE ? n : MAX_SIZE;
}

static void *worker(void *arg)
{
    work_t *w = arg;
    rng_t r = { mix64(w->id ^ 0x616c6c6f63000000ULL) };
    slot_t *ring = xalloc(g_live * sizeof *ring);
    uint64_t cs = 0;
    for (uint64_t i = 0; i < g_live; i++) {
        size_t n = pareto_size(&r);
        uint64_t tag = rng_next(&r);
        ring[i].p = xalloc(n);
        ring[i].size = n;
        ring[i].tag = tag;
        fill(ring[i].p, n, tag, STRIDE);
    }
    uint64_t head = 0;
    for (uint64_t it = 0; it < g_iters; it++) {
        uint64_t x = rng_next(&r);
        uint64_t k;
        if (x & 3) {
            k = head;
            head = head + 1 == g_live ? 0 : head + 1;
        } else {
            k = (x >> 8) % g_live;
        }
        slot_t *s = &ring[k];
        cs += check(s->p, s->size, s->tag, STRIDE);
        free(s->p);
        size_t n = pareto_size(&r);
        uint64_t tag = rng_next(&r);
        s->p = xalloc(n);
        s->size = n;
        s->tag = tag;
        fill(s->p, n, tag, STRIDE);
    }
    for (uint64_t i = 0; i < g_live; i++) {
        cs += check(ring[i].p, ring[i].size, ring[i].tag, STRIDE);
        free(ring[i].p);
    }
    free(ring);
    w->checksum = cs;
    return NULL;
}

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: alloc_test [threads=2] [iterations=10000000] [live=65536]");
        return 0;
    }
    uint64_t threads = arg_u64(argc, argv, 1, 2, 1);
    g_iters = arg_u64(argc, argv, 2, 10000000, 0);
    g_live = arg_u64(argc, argv, 3, 65536, 1);

    work_t *w = xalloc(threads * sizeof *w);
    pthread_t *th = xalloc(threads * sizeof *th);
    for (uint64_t t = 0; t < threads; t++) {
        w[t].id = t;
        w[t].checksum = 0;
        start_thread(&th[t], NULL, worker, &w[t]);
    }
    uint64_t cs = 0;
    for (uint64_t t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        cs += mix64(w[t].checksum + t);
    }
    free(th);
    free(w);
    printf("ops: %" PRIu64 "\n", threads * g_iters);
    print_result(cs);
    return 0;
}
