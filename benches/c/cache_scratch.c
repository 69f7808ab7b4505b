/*
 * cache_scratch.c - Hoard "cache-scratch" passive false-sharing test.
 *
 * The main thread allocates one small object per worker thread (these are
 * typically adjacent, i.e. in the same cache line) and hands object i to
 * thread i.  Each thread verifies and frees the object it received, then
 * repeatedly mallocs a small object, read-modify-writes every byte of it
 * `repetitions / threads` times, verifies it and frees it.  An allocator that
 * hands the freed (shared-cache-line) memory back to the thread that freed it
 * makes the threads write to the same cache line ("passive false sharing"),
 * which shows up as poor scaling of the write loop.  The total amount of
 * write work is fixed (split over the threads), so with no false sharing the
 * wall time at T threads is ~1/T of the single-thread time (on T cores).
 *
 * Usage: cache_scratch [threads=2] [iterations=1000] [obj_size=8]
 *                      [repetitions=400000]
 *   threads       worker threads
 *   iterations    malloc/write/free cycles per thread
 *   obj_size      object size in bytes (>= 1)
 *   repetitions   total write passes per iteration, divided over the threads
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator and scheduling) and "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o cache_scratch cache_scratch.c
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

typedef struct {
    unsigned char *obj; /* allocated by the main thread */
    uint64_t id;
    uint64_t checksum;
    char pad[64];
} work_t;

static uint64_t g_iters, g_size, g_reps;

/* initial content of byte k of an object tagged `tag` */
static inline unsigned char init_byte(uint64_t tag, uint64_t k)
{
    return (unsigned char)(mix64(tag + k) & 0xff);
}

static void init_obj(unsigned char *p, uint64_t tag)
{
    for (uint64_t k = 0; k < g_size; k++)
        p[k] = init_byte(tag, k);
}

/* verify that every byte equals its initial value plus `adds`; return a hash */
static uint64_t check_obj(const unsigned char *p, uint64_t tag, uint64_t adds)
{
    uint64_t acc = tag;
    for (uint64_t k = 0; k < g_size; k++) {
        unsigned char want = (unsigned char)(init_byte(tag, k) + adds);
        if (p[k] != want) {
            fprintf(stderr, "ERROR: memory corruption in block %p (size %" PRIu64 ") at offset %"
                    PRIu64 ": got %02x, expected %02x\n", (const void *)p, g_size, k, p[k], want);
            exit(1);
        }
        acc = acc * 131 + p[k];
    }
    return mix64(acc);
}

static void *worker(void *arg)
{
    work_t *w = arg;
    rng_t r = { mix64(w->id ^ 0x7363726174636800ULL) };
    uint64_t cs = check_obj(w->obj, w->id, 0);
    free(w->obj);
    for (uint64_t i = 0; i < g_iters; i++) {
        uint64_t tag = rng_next(&r);
        unsigned char *p = xalloc(g_size);
        init_obj(p, tag);
        volatile unsigned char *v = p;
        for (uint64_t j = 0; j < g_reps; j++)
            for (uint64_t k = 0; k < g_size; k++)
                v[k] = (unsigned char)(v[k] + 1);
        cs += check_obj(p, tag, g_reps);
        free(p);
    }
    w->checksum = cs;
    return NULL;
}

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: cache_scratch [threads=2] [iterations=1000] [obj_size=8] [repetitions=400000]");
        return 0;
    }
    uint64_t threads = arg_u64(argc, argv, 1, 2, 1);
    g_iters = arg_u64(argc, argv, 2, 1000, 0);
    g_size = arg_u64(argc, argv, 3, 8, 1);
    uint64_t reps = arg_u64(argc, argv, 4, 400000, 0);
    g_reps = reps / threads; /* per-thread share of the write work */

    work_t *w = xalloc(threads * sizeof *w);
    pthread_t *th = xalloc(threads * sizeof *th);
    /* allocate all the objects first so that they are likely to be adjacent */
    for (uint64_t t = 0; t < threads; t++) {
        w[t].obj = xalloc(g_size);
        w[t].id = t;
        w[t].checksum = 0;
    }
    for (uint64_t t = 0; t < threads; t++)
        init_obj(w[t].obj, t);
    for (uint64_t t = 0; t < threads; t++)
        start_thread(&th[t], NULL, worker, &w[t]);
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
