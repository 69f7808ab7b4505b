/*
 * larson.c - Larson/Krishnan style server simulation.
 *
 * Models a long-running server: each of T "chains" owns an array of `slots`
 * heap blocks with random sizes in [min_size, max_size].  A worker thread
 * repeatedly picks a random slot, verifies and frees the block there and
 * mallocs a replacement.  After `ops` operations the worker spawns a fresh
 * (detached) thread, hands it the array and exits, so blocks are freed by
 * threads other than the one that allocated them (the previous, now dead,
 * thread; the initial blocks come from the main thread) and threads are
 * created and destroyed continually.  Chains run independently; the work is
 * fixed (T * rounds * ops malloc/free pairs), so wall time is the metric.
 *
 * Usage: larson [threads=2] [rounds=100] [ops=200000] [slots=1000]
 *               [min_size=16] [max_size=512]
 *   threads   number of concurrent chains (= live worker threads)
 *   rounds    thread generations per chain
 *   ops       free+malloc operations per thread generation
 *   slots     blocks owned by each chain
 *   min_size, max_size   block size range in bytes (min_size >= 8)
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator and scheduling) and "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o larson larson.c
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

#define STRIDE 64

typedef struct {
    void *p;
    uint64_t tag;
    size_t size;
} slot_t;

typedef struct {
    slot_t *slots;
    uint64_t checksum;
    uint64_t id;
    uint64_t round;
} chain_t;

static uint64_t g_rounds, g_ops, g_slots, g_min, g_max;
static pthread_attr_t g_detached;
static pthread_mutex_t g_done_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_done_cv = PTHREAD_COND_INITIALIZER;
static uint64_t g_chains_done;

static void *worker(void *arg)
{
    chain_t *c = arg;
    rng_t r = { mix64((c->id << 32) ^ c->round ^ 0x6c6172736f6e0000ULL) };
    uint64_t cs = 0;
    for (uint64_t i = 0; i < g_ops; i++) {
        slot_t *s = &c->slots[rng_next(&r) % g_slots];
        cs += check(s->p, s->size, s->tag, STRIDE);
        free(s->p);
        size_t n = (size_t)rng_range(&r, g_min, g_max);
        uint64_t tag = rng_next(&r);
        void *p = xalloc(n);
        fill(p, n, tag, STRIDE);
        s->p = p;
        s->size = n;
        s->tag = tag;
    }
    c->checksum += cs;
    c->round++;
    if (c->round < g_rounds) {
        /* hand the array to a brand-new thread, then exit */
        pthread_t t;
        start_thread(&t, &g_detached, worker, c);
    } else {
        pthread_mutex_lock(&g_done_mu);
        g_chains_done++;
        pthread_cond_signal(&g_done_cv);
        pthread_mutex_unlock(&g_done_mu);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: larson [threads=2] [rounds=100] [ops=200000] [slots=1000] [min_size=16] [max_size=512]");
        return 0;
    }
    uint64_t threads = arg_u64(argc, argv, 1, 2, 1);
    g_rounds = arg_u64(argc, argv, 2, 100, 1);
    g_ops = arg_u64(argc, argv, 3, 200000, 0);
    g_slots = arg_u64(argc, argv, 4, 1000, 1);
    g_min = arg_u64(argc, argv, 5, 16, 8);
    g_max = arg_u64(argc, argv, 6, 512, g_min);

    pthread_attr_init(&g_detached);
    pthread_attr_setdetachstate(&g_detached, PTHREAD_CREATE_DETACHED);

    /* the main thread allocates the initial blocks of every chain */
    chain_t *chains = xalloc(threads * sizeof *chains);
    for (uint64_t t = 0; t < threads; t++) {
        chain_t *c = &chains[t];
        c->slots = xalloc(g_slots * sizeof *c->slots);
        c->checksum = 0;
        c->id = t;
        c->round = 0;
        rng_t r = { mix64(t ^ 0x696e697400000000ULL) };
        for (uint64_t i = 0; i < g_slots; i++) {
            size_t n = (size_t)rng_range(&r, g_min, g_max);
            uint64_t tag = rng_next(&r);
            c->slots[i].p = xalloc(n);
            c->slots[i].size = n;
            c->slots[i].tag = tag;
            fill(c->slots[i].p, n, tag, STRIDE);
        }
    }
    for (uint64_t t = 0; t < threads; t++) {
        pthread_t th;
        start_thread(&th, &g_detached, worker, &chains[t]);
    }
    pthread_mutex_lock(&g_done_mu);
    while (g_chains_done < threads)
        pthread_cond_wait(&g_done_cv, &g_done_mu);
    pthread_mutex_unlock(&g_done_mu);

    uint64_t cs = 0;
    for (uint64_t t = 0; t < threads; t++) {
        chain_t *c = &chains[t];
        for (uint64_t i = 0; i < g_slots; i++) {
            c->checksum += check(c->slots[i].p, c->slots[i].size, c->slots[i].tag, STRIDE);
            free(c->slots[i].p);
        }
        free(c->slots);
        cs += mix64(c->checksum + t);
    }
    free(chains);
    printf("ops: %" PRIu64 "\n", threads * g_rounds * g_ops);
    print_result(cs);
    return 0;
}
