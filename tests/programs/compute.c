/* A C program that gcc compiles (with and without magpie preloaded into gcc,
 * cc1, as and ld) in tests/real_programs.rs: the objects must be identical
 * and the program's output too. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char key[24];
    uint64_t value;
    struct entry *next;
};

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return h;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    enum { BUCKETS = 4096, N = 200000 };
    struct entry **table = calloc(BUCKETS, sizeof *table);
    uint64_t *vals = malloc(N * sizeof *vals);
    for (int i = 0; i < N; i++) {
        struct entry *e = malloc(sizeof *e);
        snprintf(e->key, sizeof e->key, "k%d", (i * 7919) % 150000);
        e->value = hash(e->key) % 1000003;
        uint64_t b = hash(e->key) % BUCKETS;
        e->next = table[b];
        table[b] = e;
        vals[i] = e->value;
    }
    qsort(vals, N, sizeof *vals, cmp_u64);
    uint64_t longest = 0, sum = 0;
    for (int b = 0; b < BUCKETS; b++) {
        uint64_t len = 0;
        for (struct entry *e = table[b]; e;) {
            struct entry *n = e->next;
            sum += e->value;
            len++;
            free(e);
            e = n;
        }
        if (len > longest)
            longest = len;
    }
    printf("median %llu sum %llu longest chain %llu\n", (unsigned long long)vals[N / 2],
           (unsigned long long)sum, (unsigned long long)longest);
    free(vals);
    free(table);
    return 0;
}
