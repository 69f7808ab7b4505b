/* leak_list.c -- leak-everything linked-list benchmark for magpie's collector.
 *
 * Keeps a small live set of SLOTS lists; each round builds a new list of small
 * nodes (16..64 bytes) and replaces a pseudo-randomly chosen slot, dropping the
 * old list (freed in MODE_FREE, abandoned in the other modes). Every dropped
 * list is walked and verified before it is dropped, so a collector that frees
 * live memory shows up as a wrong checksum or an abort.
 *
 * Builds: -DMODE_MALLOC_NOFREE | -DMODE_BOEHM | -DMODE_FREE (see binary_trees.c)
 * Usage: leak_list [rounds] [list_len]   (defaults 20000, 1000)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#if defined(MODE_BOEHM)
#include <gc.h>
#define ALLOC(n) GC_MALLOC(n)
#elif defined(MODE_FREE) || defined(MODE_MALLOC_NOFREE)
#define ALLOC(n) malloc(n)
#else
#error "define one of MODE_MALLOC_NOFREE, MODE_BOEHM, MODE_FREE"
#endif

#define SLOTS 64

typedef struct lnode {
    struct lnode *next;
    uint32_t val;
    uint32_t nwords; /* number of payload words */
    uint64_t payload[];
} lnode;

static void die(const char *msg) {
    fprintf(stderr, "leak_list: %s\n", msg);
    exit(2);
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static lnode *build(long len, uint32_t seed) {
    lnode *head = NULL;
    for (long i = 0; i < len; i++) {
        uint32_t v = seed * 2654435761u + (uint32_t)i;
        uint32_t nw = v % 7; /* 16..64 bytes */
        lnode *n = ALLOC(sizeof(lnode) + nw * sizeof(uint64_t));
        if (!n) die("out of memory");
        n->next = head;
        n->val = v;
        n->nwords = nw;
        for (uint32_t w = 0; w < nw; w++) n->payload[w] = (uint64_t)v * (w + 1);
        head = n;
    }
    return head;
}

/* Walks and verifies a list; returns a hash of its contents. */
static uint64_t walk(const lnode *n, long len) {
    uint64_t h = 0;
    long k = 0;
    for (; n; n = n->next, k++) {
        if (n->nwords != n->val % 7) die("node header corrupted");
        for (uint32_t w = 0; w < n->nwords; w++)
            if (n->payload[w] != (uint64_t)n->val * (w + 1)) die("node payload corrupted");
        h = h * 31 + n->val;
    }
    if (k != len) die("list has wrong length");
    return h;
}

static void drop(lnode *n) {
#ifdef MODE_FREE
    while (n) {
        lnode *next = n->next;
        free(n);
        n = next;
    }
#else
    (void)n;
#endif
}

#ifdef MODE_BOEHM
static struct timespec gc_start;
static double gc_max_pause_us;
static void on_gc_event(GC_EventType ev) {
    struct timespec t;
    if (ev == GC_EVENT_START) {
        clock_gettime(CLOCK_MONOTONIC, &gc_start);
    } else if (ev == GC_EVENT_END) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        double us = (t.tv_sec - gc_start.tv_sec) * 1e6 + (t.tv_nsec - gc_start.tv_nsec) / 1e3;
        if (us > gc_max_pause_us) gc_max_pause_us = us;
    }
}
#endif

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 20000;
    long len = argc > 2 ? atol(argv[2]) : 1000;
    if (rounds < 1 || len < 1) die("usage: leak_list [rounds>0] [list_len>0]");
#ifdef MODE_BOEHM
    GC_INIT();
    GC_start_performance_measurement();
    GC_set_on_collection_event(on_gc_event);
#endif
    static lnode *live[SLOTS]; /* the live set: a root in .bss */
    for (int s = 0; s < SLOTS; s++) live[s] = build(len, (uint32_t)s);

    uint64_t checksum = 0;
    for (long r = 0; r < rounds; r++) {
        int s = (int)(next_rand() % SLOTS);
        checksum = checksum * 1000003 + walk(live[s], len);
        drop(live[s]);
        live[s] = build(len, (uint32_t)(SLOTS + r));
    }
    for (int s = 0; s < SLOTS; s++) {
        checksum = checksum * 1000003 + walk(live[s], len);
        drop(live[s]);
    }

    printf("checksum: %016llx\n", (unsigned long long)checksum);
#ifdef MODE_BOEHM
    printf("boehm: gc_no %lu total_ms %lu max_pause_us %.0f\n", (unsigned long)GC_get_gc_no(),
           GC_get_full_gc_total_time(), gc_max_pause_us);
#endif
    return 0;
}
