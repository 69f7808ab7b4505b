/*
 * scattered_free.c - RSS after scattered frees and malloc_trim.
 *
 * Allocates N blocks of SIZE bytes (each written), frees all but KEEP per
 * cent of them in a pseudo-random (xorshift) choice, calls malloc_trim(0),
 * sleeps past magpie's decay time (1.2 s), allocates once more (a page-heap
 * operation runs the decay rule) and trims again. Prints VmRSS when full,
 * right after the frees and after the trims.
 *
 * An allocator whose spans (pages, slabs) go back to the OS only when all
 * their objects are free keeps almost everything here; one that returns the
 * free pages inside partly used spans (glibc's and magpie's malloc_trim)
 * does not.
 *
 * Build: gcc -O2 -o scattered_free benches/rss/scattered_free.c
 * Run:   MAGPIE_GC=off LD_PRELOAD=target/release/libmagpie.so ./scattered_free 2000000 64 1
 *        (and LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2, or nothing)
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            v = atol(line + 6);
    if (f)
        fclose(f);
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: scattered_free N SIZE KEEP_PERCENT\n");
        return 2;
    }
    size_t n = strtoul(argv[1], NULL, 10), size = strtoul(argv[2], NULL, 10);
    unsigned keep = (unsigned)atoi(argv[3]);
    void **v = malloc(n * sizeof *v);
    if (!v)
        return 1;
    for (size_t i = 0; i < n; i++) {
        v[i] = malloc(size);
        if (!v[i])
            return 1;
        memset(v[i], 1, size);
    }
    long full = rss_kb();
    unsigned long x = 88172645463325252UL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x % 1000 >= keep * 10) {
            free(v[i]);
            v[i] = NULL;
        }
    }
    long freed = rss_kb();
    malloc_trim(0);
    usleep(1200000);
    free(malloc(1));
    malloc_trim(0);
    long trimmed = rss_kb();
    printf("full %ld KB, after the frees %ld KB, after malloc_trim %ld KB\n", full, freed, trimmed);
    return 0;
}
