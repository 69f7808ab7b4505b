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
 * (common.h, with the helpers shared by all the benchmarks, must be next to it)
 */
#include "common.h"

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
