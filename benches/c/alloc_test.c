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
