/*
 * fragmentation.c - heap fragmentation / memory reuse test.
 *
 * Models a program whose heap is left fragmented by a phase of small
 * allocations and then grows with medium-sized objects:
 *   1. allocate small objects (16..256 B, random) until ~1 GiB * scale/100
 *      has been requested;
 *   2. free ~90% of them, chosen at random and visited in a scattered
 *      (multiplicative-hash permutation) order, leaving 10% of the small
 *      objects alive all over the heap;
 *   3. allocate medium objects (1..64 KiB, random) until ~500 MiB * scale/100
 *      has been requested.
 * An allocator that can reuse the memory freed in phase 2 for the medium
 * objects (or return it to the OS) ends with a much lower RSS.  The program
 * prints the RSS at the end of phase 3 (rss_final_kb, VmRSS), after freeing
 * everything (rss_after_free_kb) and the peak (rss_peak_kb, VmHWM).
 * Single-threaded; the bookkeeping arrays (~10 bytes per small object) are
 * malloc'ed too and included in the RSS.
 *
 * Usage: fragmentation [scale=100]
 *   scale   size of the run in percent (100 = 1 GiB small + 500 MiB medium)
 *
 * Output: "checksum: <hex>" (deterministic for given arguments, independent
 * of allocator), "rss_final_kb: N", "rss_after_free_kb: N", "rss_peak_kb: N".
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o fragmentation fragmentation.c
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
#define SMALL_MIN 16
#define SMALL_MAX 256
#define MED_MIN (1u << 10)
#define MED_MAX (64u << 10)
#define PERM_MUL 2654435761ULL /* prime > any object count, so i*P mod n is a permutation */

int main(int argc, char **argv)
{
    if (want_help(argc, argv)) {
        puts("usage: fragmentation [scale=100]");
        return 0;
    }
    uint64_t scale = arg_u64(argc, argv, 1, 100, 1);
    uint64_t small_total = (1ULL << 30) * scale / 100;
    uint64_t med_total = (500ULL << 20) * scale / 100;
    uint64_t small_cap = small_total / SMALL_MIN + 1;
    uint64_t med_cap = med_total / MED_MIN + 1;
    if (small_cap >= PERM_MUL) {
        fprintf(stderr, "ERROR: scale too large\n");
        return 2;
    }
    rng_t r = { 0x6672616700000000ULL };
    uint64_t cs = 0;

    /* phase 1: small objects; tag of object i is mix64(i ^ salt) */
    const uint64_t salt = 0x736d616c6c000000ULL;
    void **sp = xalloc(small_cap * sizeof *sp);
    unsigned short *ssz = xalloc(small_cap * sizeof *ssz);
    uint64_t ns = 0;
    for (uint64_t bytes = 0; bytes < small_total; ns++) {
        size_t n = (size_t)rng_range(&r, SMALL_MIN, SMALL_MAX);
        sp[ns] = xalloc(n);
        ssz[ns] = (unsigned short)n;
        fill(sp[ns], n, mix64(ns ^ salt), STRIDE);
        bytes += n;
    }

    /* phase 2: free ~90% in a scattered order */
    uint64_t kept = 0;
    for (uint64_t j = 0; j < ns; j++) {
        uint64_t i = (j * PERM_MUL) % ns;
        if (rng_next(&r) % 10 != 0) {
            cs += check(sp[i], ssz[i], mix64(i ^ salt), STRIDE);
            free(sp[i]);
            sp[i] = NULL;
        } else {
            kept++;
        }
    }

    /* phase 3: medium objects */
    void **mp = xalloc(med_cap * sizeof *mp);
    size_t *msz = xalloc(med_cap * sizeof *msz);
    uint64_t *mtag = xalloc(med_cap * sizeof *mtag);
    uint64_t nm = 0;
    for (uint64_t bytes = 0; bytes < med_total; nm++) {
        size_t n = (size_t)rng_range(&r, MED_MIN, MED_MAX);
        uint64_t t = rng_next(&r);
        mp[nm] = xalloc(n);
        msz[nm] = n;
        mtag[nm] = t;
        fill(mp[nm], n, t, STRIDE);
        bytes += n;
    }
    long rss_final = status_kb("VmRSS:");

    /* verify and free everything */
    for (uint64_t i = 0; i < ns; i++) {
        if (sp[i] != NULL) {
            cs += check(sp[i], ssz[i], mix64(i ^ salt), STRIDE);
            free(sp[i]);
        }
    }
    for (uint64_t i = 0; i < nm; i++) {
        cs += check(mp[i], msz[i], mtag[i], STRIDE);
        free(mp[i]);
    }
    free(mtag);
    free(msz);
    free(mp);
    free(ssz);
    free(sp);
    long rss_after = status_kb("VmRSS:");

    printf("small_objects: %" PRIu64 " (kept %" PRIu64 "), medium_objects: %" PRIu64 "\n",
           ns, kept, nm);
    printf("rss_final_kb: %ld\n", rss_final);
    printf("rss_after_free_kb: %ld\n", rss_after);
    print_result(cs);
    return 0;
}
