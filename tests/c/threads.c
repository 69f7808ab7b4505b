/* Threads under LD_PRELOAD with cross-thread frees:
 *  1. producer/consumer: 4 producers allocate and fill blocks, 4 consumers
 *     check and free them (every free is remote);
 *  2. all-to-all: 6 threads swap blocks through a shared array of atomic
 *     slots, each freeing what another thread allocated (and reallocating);
 *  3. thread churn: 64 short-lived threads allocate and exit, their blocks
 *     freed by main, and free blocks main allocated.
 * Every block carries its size and seed and is checked before it is freed. */
#include "check.h"

#include <malloc.h>
#include <pthread.h>
#include <unistd.h>

typedef struct {
    size_t size;
    uint64_t seed;
} hdr_t;

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static size_t pick_size(uint64_t *r) {
    uint64_t p = rng_next(r) % 1000;
    if (p < 700)
        return 16 + rng_next(r) % 240;
    if (p < 950)
        return 256 + rng_next(r) % 4000;
    if (p < 995)
        return 4096 + rng_next(r) % 60000;
    return 65536 + rng_next(r) % (1 << 20);
}

static void *make_block(uint64_t *r) {
    size_t n = pick_size(r);
    uint64_t seed = rng_next(r);
    hdr_t *h = malloc(n);
    if (!h) {
        fprintf(stderr, "malloc(%zu) failed\n", n);
        abort();
    }
    h->size = n;
    h->seed = seed;
    /* Pattern the first and last 64 bytes (and the whole block when small). */
    unsigned char *b = (unsigned char *)(h + 1);
    size_t body = n - sizeof *h;
    if (body <= 256) {
        fill_pat(b, body, seed);
    } else {
        fill_pat(b, 64, seed);
        fill_pat(b + body - 64, 64, seed + 1);
    }
    return h;
}

static int block_ok(void *p) {
    hdr_t *h = p;
    size_t n = h->size;
    if (n < sizeof *h || n > (2u << 20) || malloc_usable_size(p) < n)
        return 0;
    unsigned char *b = (unsigned char *)(h + 1);
    size_t body = n - sizeof *h;
    if (body <= 256)
        return check_pat(b, body, h->seed);
    return check_pat(b, 64, h->seed) && check_pat(b + body - 64, 64, h->seed + 1);
}

static volatile int failures;
static void fail(const char *what, void *p) {
    __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
    fprintf(stderr, "corrupted block %p in %s\n", p, what);
}

/* ---- 1. producer/consumer -------------------------------------------- */

enum { PRODUCERS = 4, CONSUMERS = 4, PER_PRODUCER = 150000, QCAP = 1024 };

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    void *items[QCAP];
    int head, count, producers_left;
} queue_t;

static queue_t queues[CONSUMERS];

static void q_push(queue_t *q, void *p) {
    pthread_mutex_lock(&q->mu);
    while (q->count == QCAP)
        pthread_cond_wait(&q->not_full, &q->mu);
    q->items[(q->head + q->count) % QCAP] = p;
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

/* NULL when every producer is done and the queue is empty. */
static void *q_pop(queue_t *q) {
    pthread_mutex_lock(&q->mu);
    while (q->count == 0 && q->producers_left > 0)
        pthread_cond_wait(&q->not_empty, &q->mu);
    void *p = NULL;
    if (q->count > 0) {
        p = q->items[q->head];
        q->head = (q->head + 1) % QCAP;
        q->count--;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->mu);
    return p;
}

static void *producer(void *arg) {
    uint64_t r = 0x9E3779B97F4A7C15ULL * ((uintptr_t)arg + 1);
    for (int i = 0; i < PER_PRODUCER; i++)
        q_push(&queues[rng_next(&r) % CONSUMERS], make_block(&r));
    for (int c = 0; c < CONSUMERS; c++) {
        pthread_mutex_lock(&queues[c].mu);
        queues[c].producers_left--;
        pthread_cond_broadcast(&queues[c].not_empty);
        pthread_mutex_unlock(&queues[c].mu);
    }
    return NULL;
}

static long consumed[CONSUMERS];

static void *consumer(void *arg) {
    int c = (int)(uintptr_t)arg;
    uint64_t r = 77 + (uint64_t)c;
    void *p;
    while ((p = q_pop(&queues[c])) != NULL) {
        if (!block_ok(p))
            fail("producer/consumer", p);
        if (rng_next(&r) % 8 == 0) {
            /* A remote realloc: grows the block another thread allocated. */
            hdr_t *h = p;
            size_t n = h->size;
            h = realloc(h, n + 100);
            if (!h || !block_ok(h))
                fail("remote realloc", h);
            p = h;
        }
        free(p);
        consumed[c]++;
    }
    return NULL;
}

static void producer_consumer(void) {
    pthread_t pt[PRODUCERS], ct[CONSUMERS];
    for (int c = 0; c < CONSUMERS; c++) {
        pthread_mutex_init(&queues[c].mu, NULL);
        pthread_cond_init(&queues[c].not_empty, NULL);
        pthread_cond_init(&queues[c].not_full, NULL);
        queues[c].producers_left = PRODUCERS;
    }
    for (int c = 0; c < CONSUMERS; c++)
        pthread_create(&ct[c], NULL, consumer, (void *)(uintptr_t)c);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&pt[i], NULL, producer, (void *)(uintptr_t)i);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(pt[i], NULL);
    long total = 0;
    for (int c = 0; c < CONSUMERS; c++) {
        pthread_join(ct[c], NULL);
        total += consumed[c];
    }
    CHECKF(total == (long)PRODUCERS * PER_PRODUCER, "consumed %ld blocks", total);
}

/* ---- 2. all-to-all through atomic slots ------------------------------- */

enum { SWAPPERS = 6, SLOTS = 4096, SWAPS = 200000 };
static void *slots[SLOTS];

static void *swapper(void *arg) {
    uint64_t r = 0xD1B54A32D192ED03ULL * ((uintptr_t)arg + 3);
    for (int i = 0; i < SWAPS; i++) {
        size_t k = rng_next(&r) % SLOTS;
        void *mine = rng_next(&r) % 4 ? make_block(&r) : NULL;
        void *old = __atomic_exchange_n(&slots[k], mine, __ATOMIC_ACQ_REL);
        if (old) {
            if (!block_ok(old))
                fail("all-to-all", old);
            free(old);
        }
    }
    return NULL;
}

static void all_to_all(void) {
    pthread_t t[SWAPPERS];
    for (int i = 0; i < SWAPPERS; i++)
        pthread_create(&t[i], NULL, swapper, (void *)(uintptr_t)i);
    for (int i = 0; i < SWAPPERS; i++)
        pthread_join(t[i], NULL);
    for (int k = 0; k < SLOTS; k++)
        if (slots[k]) {
            if (!block_ok(slots[k]))
                fail("all-to-all leftovers", slots[k]);
            free(slots[k]);
        }
}

/* ---- 3. thread churn ------------------------------------------------- */

enum { CHURN = 64, PER_CHURN = 500 };
static void *from_threads[CHURN][PER_CHURN];
static void *from_main[CHURN][PER_CHURN];

static void *churner(void *arg) {
    int t = (int)(uintptr_t)arg;
    uint64_t r = 1000 + (uint64_t)t;
    for (int i = 0; i < PER_CHURN; i++) {
        if (!block_ok(from_main[t][i]))
            fail("churn (main's block)", from_main[t][i]);
        free(from_main[t][i]);
        from_threads[t][i] = make_block(&r);
    }
    return NULL;
}

static void thread_churn(void) {
    uint64_t r = 5;
    for (int round = 0; round < 4; round++) {
        pthread_t t[CHURN / 4];
        for (int i = 0; i < CHURN / 4; i++) {
            int ti = round * (CHURN / 4) + i;
            for (int j = 0; j < PER_CHURN; j++)
                from_main[ti][j] = make_block(&r);
            pthread_create(&t[i], NULL, churner, (void *)(uintptr_t)ti);
        }
        for (int i = 0; i < CHURN / 4; i++)
            pthread_join(t[i], NULL);
    }
    for (int t = 0; t < CHURN; t++)
        for (int j = 0; j < PER_CHURN; j++) {
            if (!block_ok(from_threads[t][j]))
                fail("churn (thread's block)", from_threads[t][j]);
            free(from_threads[t][j]);
        }
}

int main(void) {
    require_magpie();
    alarm(120); /* a deadlock ends in SIGALRM, not a hung test */
    struct mallinfo2 m0 = mallinfo2();
    producer_consumer();
    all_to_all();
    thread_churn();
    CHECKF(failures == 0, "%d corrupted blocks", failures);
    struct mallinfo2 m1 = mallinfo2();
    /* Everything was freed: the bytes in use are back near where they were. */
    CHECKF(m1.uordblks < m0.uordblks + (16u << 20), "in use: %zu before, %zu after", m0.uordblks,
           m1.uordblks);
    DONE("threads");
    return 0;
}
