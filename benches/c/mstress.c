/*
 * mstress.c - mimalloc "mstress" (test-stress) style workload.
 *
 * Models a general multi-threaded program with mixed object sizes and
 * lifetimes.  For `rounds` rounds the main thread starts T worker threads and
 * joins them (thread churn).  Each worker performs `ops` random operations on
 * a private array of `slots` block pointers:
 *    45%  allocate a block into a random slot (freeing what was there)
 *    25%  free the block in a random slot
 *    15%  realloc the block in a random slot (grow x1.5 or shrink /2)
 *    15%  swap the block in a random slot with one in a global transfer
 *         array (atomic exchange), so blocks move between live threads
 * Sizes: 90% 16..256 B, 9.5% 256 B..8 KiB, 0.5% 8 KiB..1 MiB.
 * At the end of a round a worker frees the blocks in its even slots and
 * leaves the odd ones to the worker of the same index in the next round
 * (frees of blocks owned by exited threads).  Remaining blocks are freed by
 * the main thread at the end.
 *
 * Every block carries its tag and size in its first 16 bytes and a pattern
 * derived from the tag; it is verified before every free/realloc (and the
 * copied prefix after a realloc).  The checksum is the sum over all blocks of
 * a hash of the tag read back when the block is finally freed, so it does not
 * depend on which thread ends up freeing a block.
 *
 * Usage: mstress [threads=2] [rounds=20] [ops=200000] [slots=4000]
 *   threads   worker threads per round
 *   rounds    number of rounds (each round creates and joins T threads)
 *   ops       operations per worker per round
 *   slots     size of each worker's block array
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator and scheduling) and "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o mstress mstress.c
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

#include <stdatomic.h>

#define STRIDE 64
#define TRANSFER 1000
#define MIN_SIZE 16
#define MAX_SIZE (1u << 20)

/*
 * Block layout: word 0 = tag, word 1 = size ^ mix64(tag), then pattern words
 * pat(tag, off) at every multiple of STRIDE >= STRIDE that lies before the
 * last word, and the last word (offset size-8) if size >= 24.
 */
static void blk_fill(unsigned char *b, size_t n, uint64_t tag)
{
    put64(b, tag);
    put64(b + 8, (uint64_t)n ^ mix64(tag));
    for (size_t off = STRIDE; off + 16 <= n; off += STRIDE)
        put64(b + off, pat(tag, off));
    if (n >= 24)
        put64(b + n - 8, pat(tag, n - 8));
}

static size_t blk_size(const unsigned char *b)
{
    uint64_t tag = get64(b);
    uint64_t n = get64(b + 8) ^ mix64(tag);
    if (n < MIN_SIZE || n > MAX_SIZE) {
        fprintf(stderr, "ERROR: memory corruption in block %p: bad header (tag %016" PRIx64
                ", size %" PRIu64 ")\n", (const void *)b, tag, n);
        exit(1);
    }
    return (size_t)n;
}

/* Verify block b whose header says n bytes; only bytes below `limit` are
 * still valid (limit < n right after a shrinking realloc).  Returns the tag. */
static uint64_t blk_check(const unsigned char *b, size_t n, size_t limit)
{
    uint64_t tag = get64(b);
    for (size_t off = STRIDE; off + 16 <= n && off + 8 <= limit; off += STRIDE) {
        uint64_t v = get64(b + off);
        if (v != pat(tag, off))
            corrupt(b, n, off, v, pat(tag, off));
    }
    if (n >= 24 && n <= limit) {
        uint64_t v = get64(b + n - 8);
        if (v != pat(tag, n - 8))
            corrupt(b, n, n - 8, v, pat(tag, n - 8));
    }
    return tag;
}

/* verify and free; returns the checksum contribution */
static uint64_t blk_free(void *p)
{
    unsigned char *b = p;
    uint64_t tag = blk_check(b, blk_size(b), SIZE_MAX);
    free(p);
    return mix64(tag);
}

static size_t rand_size(uint64_t r1, uint64_t r2)
{
    uint64_t c = r1 % 1000;
    if (c < 900)
        return MIN_SIZE + r2 % (256 - MIN_SIZE + 1);
    if (c < 995)
        return 256 + r2 % (8192 - 256 + 1);
    return 8192 + r2 % (MAX_SIZE - 8192 + 1);
}

typedef struct {
    uint64_t id;
    uint64_t round;
    void **carry;       /* odd slots handed from round to round */
    uint64_t checksum;  /* accumulated over rounds */
    char pad[64];
} worker_t;

static uint64_t g_ops, g_slots;
static _Atomic(void *) g_transfer[TRANSFER];

static void *worker(void *arg)
{
    worker_t *w = arg;
    rng_t r = { mix64((w->id << 32) ^ w->round ^ 0x6d73747265737300ULL) };
    void **live = xalloc(g_slots * sizeof *live);
    for (uint64_t i = 0; i < g_slots; i++)
        live[i] = (i & 1) ? w->carry[i / 2] : NULL;
    uint64_t cs = 0;

    /* Each operation always draws the same number of random values, whatever
     * the slot contains, so the set of allocations is deterministic. */
    for (uint64_t i = 0; i < g_ops; i++) {
        uint64_t op = rng_next(&r) % 100;
        uint64_t k = rng_next(&r) % g_slots;
        uint64_t r1 = rng_next(&r), r2 = rng_next(&r);
        void *p = live[k];
        if (op < 45) {                       /* allocate */
            if (p != NULL)
                cs += blk_free(p);
            size_t n = rand_size(r1, r2);
            p = xalloc(n);
            blk_fill(p, n, rng_next(&r));
            live[k] = p;
        } else if (op < 70) {                /* free */
            if (p != NULL)
                cs += blk_free(p);
            live[k] = NULL;
        } else if (op < 85) {                /* realloc grow / shrink */
            if (p == NULL)
                continue;
            size_t n = blk_size(p);
            uint64_t tag = blk_check(p, n, SIZE_MAX);
            size_t nn;
            if ((r1 & 1) && n + n / 2 + 16 <= MAX_SIZE)
                nn = n + n / 2 + (size_t)(r2 % 16);
            else
                nn = n / 2 > MIN_SIZE ? n / 2 : MIN_SIZE;
            void *q = realloc(p, nn);
            if (q == NULL) {
                fprintf(stderr, "ERROR: realloc(%zu) returned NULL\n", nn);
                exit(1);
            }
            if (get64(q) != tag || blk_size(q) != n) {
                fprintf(stderr, "ERROR: realloc did not preserve the block header\n");
                exit(1);
            }
            blk_check(q, n, nn);             /* copied prefix intact? */
            blk_fill(q, nn, tag);
            live[k] = q;
        } else {                              /* exchange with another thread */
            live[k] = atomic_exchange(&g_transfer[r1 % TRANSFER], p);
        }
    }
    /* free the even slots, hand the odd ones to the next round */
    for (uint64_t i = 0; i < g_slots; i++) {
        if (i & 1)
            w->carry[i / 2] = live[i];
        else if (live[i] != NULL)
            cs += blk_free(live[i]);
    }
    free(live);
    w->checksum += cs;
    return NULL;
}

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: mstress [threads=2] [rounds=20] [ops=200000] [slots=4000]");
        return 0;
    }
    uint64_t threads = arg_u64(argc, argv, 1, 2, 1);
    uint64_t rounds = arg_u64(argc, argv, 2, 20, 1);
    g_ops = arg_u64(argc, argv, 3, 200000, 0);
    g_slots = arg_u64(argc, argv, 4, 4000, 1);

    worker_t *w = xalloc(threads * sizeof *w);
    pthread_t *th = xalloc(threads * sizeof *th);
    for (uint64_t t = 0; t < threads; t++) {
        w[t].id = t;
        w[t].checksum = 0;
        w[t].carry = xalloc((g_slots / 2 + 1) * sizeof(void *));
        for (uint64_t i = 0; i < g_slots / 2 + 1; i++)
            w[t].carry[i] = NULL;
    }
    for (uint64_t i = 0; i < TRANSFER; i++)
        atomic_init(&g_transfer[i], NULL);
    for (uint64_t round = 0; round < rounds; round++) {
        for (uint64_t t = 0; t < threads; t++) {
            w[t].round = round;
            start_thread(&th[t], NULL, worker, &w[t]);
        }
        for (uint64_t t = 0; t < threads; t++)
            pthread_join(th[t], NULL);
    }
    uint64_t cs = 0;
    for (uint64_t t = 0; t < threads; t++) {
        for (uint64_t i = 0; i < g_slots / 2 + 1; i++)
            if (w[t].carry[i] != NULL)
                cs += blk_free(w[t].carry[i]);
        free(w[t].carry);
        cs += w[t].checksum;
    }
    for (uint64_t i = 0; i < TRANSFER; i++) {
        void *p = atomic_load(&g_transfer[i]);
        if (p != NULL)
            cs += blk_free(p);
    }
    free(th);
    free(w);
    printf("ops: %" PRIu64 "\n", threads * rounds * g_ops);
    print_result(cs);
    return 0;
}
