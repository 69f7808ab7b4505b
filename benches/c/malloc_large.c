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
