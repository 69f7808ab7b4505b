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
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

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
