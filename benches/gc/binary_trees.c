/* binary_trees.c -- GCBench / binary-trees style benchmark for magpie's collector.
 *
 * One source, three builds:
 *   -DMODE_MALLOC_NOFREE  malloc, never free (run under LD_PRELOAD=libmagpie.so,
 *                         MAGPIE_GC=collect: the collector reclaims the dead trees)
 *   -DMODE_BOEHM          GC_MALLOC from Boehm GC (link -lgc)
 *   -DMODE_FREE           malloc + explicit free (glibc baseline)
 *
 * Usage: binary_trees [max_depth]   (default 16)
 * Output: "checksum: N" (identical for all modes) and, for Boehm,
 *         "boehm: gc_no N total_ms T max_pause_us P".
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#if defined(MODE_BOEHM)
#include <gc.h>
#define ALLOC(n) GC_MALLOC(n)
#define ALLOC_ATOMIC(n) GC_MALLOC_ATOMIC(n)
#define FREE(p) ((void)(p))
#elif defined(MODE_FREE)
#define ALLOC(n) malloc(n)
#define ALLOC_ATOMIC(n) malloc(n)
#define FREE(p) free(p)
#elif defined(MODE_MALLOC_NOFREE)
#define ALLOC(n) malloc(n)
#define ALLOC_ATOMIC(n) malloc(n)
#define FREE(p) ((void)(p))
#else
#error "define one of MODE_MALLOC_NOFREE, MODE_BOEHM, MODE_FREE"
#endif

#define ARRAY_SIZE 500000 /* GCBench's long-lived array of doubles */

typedef struct node {
    struct node *left, *right;
    int item;
} node;

static void die(const char *msg) {
    fprintf(stderr, "binary_trees: %s\n", msg);
    exit(2);
}

static node *new_node(node *l, node *r, int item) {
    node *n = ALLOC(sizeof(node));
    if (!n) die("out of memory");
    n->left = l;
    n->right = r;
    n->item = item;
    return n;
}

/* Bottom-up construction (binary-trees). */
static node *make_tree(int depth, int item) {
    if (depth <= 0) return new_node(NULL, NULL, item);
    node *l = make_tree(depth - 1, 2 * item - 1);
    node *r = make_tree(depth - 1, 2 * item);
    return new_node(l, r, item);
}

/* Top-down construction (GCBench's Populate). */
static void populate(int depth, node *n) {
    if (depth <= 0) return;
    n->left = new_node(NULL, NULL, 2 * n->item - 1);
    n->right = new_node(NULL, NULL, 2 * n->item);
    populate(depth - 1, n->left);
    populate(depth - 1, n->right);
}

/* Counts nodes and folds the items into *sum; verifies shape. */
static long count(const node *n, int depth, uint64_t *sum) {
    if (!n) die("null node");
    *sum = *sum * 31 + (uint64_t)(int64_t)n->item;
    if (depth <= 0) {
        if (n->left || n->right) die("leaf has children (corrupted tree)");
        return 1;
    }
    if (!n->left || !n->right) die("missing child (corrupted tree)");
    if (n->left->item != 2 * n->item - 1 || n->right->item != 2 * n->item)
        die("wrong item in child (corrupted tree)");
    return 1 + count(n->left, depth - 1, sum) + count(n->right, depth - 1, sum);
}

static void free_tree(node *n) {
#ifdef MODE_FREE
    if (!n) return;
    free_tree(n->left);
    free_tree(n->right);
    free(n);
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
    int max_depth = argc > 1 ? atoi(argv[1]) : 16;
    if (max_depth < 4 || max_depth > 26) die("max_depth must be in 4..26");
#ifdef MODE_BOEHM
    GC_INIT();
    GC_start_performance_measurement();
    GC_set_on_collection_event(on_gc_event);
#endif
    uint64_t checksum = 0;
    int long_depth = max_depth;

    /* Long-lived data: a tree of max depth and an array of doubles. */
    node *long_lived = new_node(NULL, NULL, 1);
    populate(long_depth, long_lived);
    double *array = ALLOC_ATOMIC(ARRAY_SIZE * sizeof(double));
    if (!array) die("out of memory");
    for (int i = 0; i < ARRAY_SIZE / 2; i++) array[i] = 1.0 / (i + 1);

    /* Short-lived trees. */
    for (int d = 4; d <= max_depth; d += 2) {
        long iters = 1L << (max_depth - d + 4);
        long expect = (1L << (d + 1)) - 1;
        for (long i = 0; i < iters; i++) {
            uint64_t s = 0;
            node *t = new_node(NULL, NULL, (int)(i & 0xffff));
            populate(d, t);
            if (count(t, d, &s) != expect) die("top-down tree has wrong node count");
            free_tree(t);
            checksum = checksum * 1000003 + s;

            s = 0;
            t = make_tree(d, (int)(i & 0xffff));
            if (count(t, d, &s) != expect) die("bottom-up tree has wrong node count");
            free_tree(t);
            checksum = checksum * 1000003 + s;
        }
        printf("depth %2d: %ld trees of %ld nodes ok\n", d, 2 * iters, expect);
    }

    uint64_t s = 0;
    if (count(long_lived, long_depth, &s) != (1L << (long_depth + 1)) - 1)
        die("long-lived tree has wrong node count");
    checksum = checksum * 1000003 + s;
    if (array[1000] != 1.0 / 1001) die("long-lived array corrupted");
    free_tree(long_lived);
    FREE(array);

    printf("checksum: %016llx\n", (unsigned long long)checksum);
#ifdef MODE_BOEHM
    printf("boehm: gc_no %lu total_ms %lu max_pause_us %.0f\n", (unsigned long)GC_get_gc_no(),
           GC_get_full_gc_total_time(), gc_max_pause_us);
#endif
    return 0;
}
