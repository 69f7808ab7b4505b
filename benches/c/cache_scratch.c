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
