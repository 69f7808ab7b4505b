/*
 * xmalloc.c - xmalloc-test style producer/consumer benchmark.
 *
 * Models a pipeline in which objects are allocated on one thread and freed on
 * another.  There are P producer/consumer pairs.  Producer i mallocs objects
 * of random size in [16, 256] bytes, writes a pattern into each, collects them
 * into batches (the batch descriptor is itself malloc'ed) and pushes the
 * batches through a bounded mutex/condvar queue to consumer i, which checks
 * every object and frees it together with the batch descriptor.  Batching
 * keeps queue overhead small, so the cost is dominated by malloc and by
 * freeing memory that was allocated by another, still running, thread.
 *
 * Usage: xmalloc [pairs=2] [objects=20000000] [batch=256]
 *   pairs     number of producer/consumer thread pairs (2*pairs threads)
 *   objects   total number of objects, split evenly over the producers
 *   batch     objects per batch
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator and scheduling) and "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o xmalloc xmalloc.c
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- common helpers (copied into every benchmark so each file stands alone) ---- */

/* splitmix64 finaliser */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* splitmix64 PRNG; one per thread / work unit, always seeded with fixed values */
typedef struct { uint64_t s; } rng_t;

static inline uint64_t rng_next(rng_t *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return mix64(r->s);
}

/* value in [lo, hi] (inclusive) */
static inline uint64_t rng_range(rng_t *r, uint64_t lo, uint64_t hi)
{
    return lo + rng_next(r) % (hi - lo + 1);
}

static inline void put64(void *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint64_t get64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* expected content of the 8-byte word at byte offset `off` of a block tagged `tag` */
static inline uint64_t pat(uint64_t tag, size_t off)
{
    return tag ^ ((uint64_t)off * 0xd6e8feb86659fd93ULL);
}

/* Write the pattern: one word every `stride` bytes (stopping before the last
 * word so that the two never overlap) plus the last word.  Needs n >= 8. */
static inline void fill(void *p, size_t n, uint64_t tag, size_t stride)
{
    unsigned char *b = p;
    for (size_t off = 0; off + 16 <= n; off += stride)
        put64(b + off, pat(tag, off));
    put64(b + n - 8, pat(tag, n - 8));
}

static inline void corrupt(const void *p, size_t n, size_t off, uint64_t got, uint64_t want)
{
    fprintf(stderr, "ERROR: memory corruption in block %p (size %zu) at offset %zu: "
            "got %016" PRIx64 ", expected %016" PRIx64 "\n", p, n, off, got, want);
    exit(1);
}

/* Verify the pattern written by fill(); returns a hash of the words read back. */
static inline uint64_t check(const void *p, size_t n, uint64_t tag, size_t stride)
{
    const unsigned char *b = p;
    uint64_t acc = n;
    for (size_t off = 0; off + 16 <= n; off += stride) {
        uint64_t v = get64(b + off);
        if (v != pat(tag, off))
            corrupt(p, n, off, v, pat(tag, off));
        acc = acc * 31 + v;
    }
    uint64_t v = get64(b + n - 8);
    if (v != pat(tag, n - 8))
        corrupt(p, n, n - 8, v, pat(tag, n - 8));
    return mix64(acc + v);
}

static inline void *xalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL) {
        fprintf(stderr, "ERROR: malloc(%zu) returned NULL\n", n);
        exit(1);
    }
    return p;
}

/* value of a "Key:   N kB" line of /proc/self/status, or -1 */
static inline long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    long val = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, kl) == 0) {
            val = strtol(line + kl, NULL, 10);
            break;
        }
    }
    fclose(f);
    return val;
}

/* positional argument i (1-based) as an unsigned integer, or `def` if absent */
static inline uint64_t arg_u64(int argc, char **argv, int i, uint64_t def, uint64_t min)
{
    if (i >= argc)
        return def;
    char *end;
    unsigned long long v = strtoull(argv[i], &end, 0);
    if (*argv[i] == '\0' || *end != '\0' || v < min) {
        fprintf(stderr, "ERROR: bad argument %d: '%s' (must be an integer >= %" PRIu64 ")\n",
                i, argv[i], min);
        exit(2);
    }
    return (uint64_t)v;
}

static inline int want_help(int argc, char **argv)
{
    return argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0);
}

static inline void print_result(uint64_t checksum)
{
    printf("checksum: %016" PRIx64 "\n", checksum);
    printf("rss_peak_kb: %ld\n", status_kb("VmHWM:"));
    fflush(stdout);
}

static inline void start_thread(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    int e = pthread_create(t, attr, fn, arg);
    if (e != 0) {
        fprintf(stderr, "ERROR: pthread_create failed: %s\n", strerror(e));
        exit(1);
    }
}
/* ---- end of common helpers ---- */

#define STRIDE 64
#define QCAP 16
#define MIN_SIZE 16
#define MAX_SIZE 256

typedef struct {
    void *p;
    uint64_t tag;
    size_t size;
} obj_t;

typedef struct {
    size_t n;
    obj_t obj[];
} batch_t;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    batch_t *buf[QCAP];
    unsigned head, count;
} queue_t;

typedef struct {
    queue_t q;
    uint64_t id;
    uint64_t nobjects;
    uint64_t checksum; /* written by the consumer */
    char pad[64];
} pair_t;

static uint64_t g_batch;

static void q_push(queue_t *q, batch_t *b)
{
    pthread_mutex_lock(&q->mu);
    while (q->count == QCAP)
        pthread_cond_wait(&q->not_full, &q->mu);
    q->buf[(q->head + q->count) % QCAP] = b;
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

static batch_t *q_pop(queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    while (q->count == 0)
        pthread_cond_wait(&q->not_empty, &q->mu);
    batch_t *b = q->buf[q->head];
    q->head = (q->head + 1) % QCAP;
    q->count--;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->mu);
    return b;
}

static void *producer(void *arg)
{
    pair_t *pr = arg;
    rng_t r = { mix64(pr->id ^ 0x70726f6400000000ULL) };
    uint64_t left = pr->nobjects;
    while (left > 0) {
        size_t n = left < g_batch ? (size_t)left : (size_t)g_batch;
        batch_t *b = xalloc(sizeof *b + n * sizeof(obj_t));
        b->n = n;
        for (size_t i = 0; i < n; i++) {
            size_t sz = (size_t)rng_range(&r, MIN_SIZE, MAX_SIZE);
            uint64_t tag = rng_next(&r);
            void *p = xalloc(sz);
            fill(p, sz, tag, STRIDE);
            b->obj[i].p = p;
            b->obj[i].tag = tag;
            b->obj[i].size = sz;
        }
        q_push(&pr->q, b);
        left -= n;
    }
    q_push(&pr->q, NULL); /* end of stream */
    return NULL;
}

static void *consumer(void *arg)
{
    pair_t *pr = arg;
    uint64_t cs = 0;
    for (;;) {
        batch_t *b = q_pop(&pr->q);
        if (b == NULL)
            break;
        for (size_t i = 0; i < b->n; i++) {
            cs += check(b->obj[i].p, b->obj[i].size, b->obj[i].tag, STRIDE);
            free(b->obj[i].p);
        }
        free(b);
    }
    pr->checksum = cs;
    return NULL;
}

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: xmalloc [pairs=2] [objects=20000000] [batch=256]");
        return 0;
    }
    uint64_t pairs = arg_u64(argc, argv, 1, 2, 1);
    uint64_t objects = arg_u64(argc, argv, 2, 20000000, 0);
    g_batch = arg_u64(argc, argv, 3, 256, 1);

    pair_t *pr = xalloc(pairs * sizeof *pr);
    pthread_t *th = xalloc(2 * pairs * sizeof *th);
    for (uint64_t i = 0; i < pairs; i++) {
        pthread_mutex_init(&pr[i].q.mu, NULL);
        pthread_cond_init(&pr[i].q.not_empty, NULL);
        pthread_cond_init(&pr[i].q.not_full, NULL);
        pr[i].q.head = pr[i].q.count = 0;
        pr[i].id = i;
        pr[i].nobjects = objects / pairs + (i < objects % pairs ? 1 : 0);
        pr[i].checksum = 0;
    }
    for (uint64_t i = 0; i < pairs; i++) {
        start_thread(&th[2 * i], NULL, consumer, &pr[i]);
        start_thread(&th[2 * i + 1], NULL, producer, &pr[i]);
    }
    uint64_t cs = 0;
    for (uint64_t i = 0; i < 2 * pairs; i++)
        pthread_join(th[i], NULL);
    for (uint64_t i = 0; i < pairs; i++) {
        cs += mix64(pr[i].checksum + i);
        pthread_mutex_destroy(&pr[i].q.mu);
        pthread_cond_destroy(&pr[i].q.not_empty);
        pthread_cond_destroy(&pr[i].q.not_full);
    }
    free(th);
    free(pr);
    printf("ops: %" PRIu64 "\n", objects);
    print_result(cs);
    return 0;
}
