/* Leak scenarios for MAGPIE_GC=leakcheck (tests/leakcheck.rs): each leaks
 * known sizes at known functions, besides memory that stays reachable or is
 * freed (which must not be reported). `leaks <scenario>` prints "done".
 *
 * Pointers are dropped through a volatile sink so the compiler cannot remove
 * the allocations, and `scrub` overwrites the stack below main so that no
 * stale copy of a leaked pointer survives there. */
#include <dlfcn.h>
#include <locale.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void *volatile sink;
void *reachable[8];
void *kept_small;
struct node { struct node *next; char pad[56]; };
struct node *reachable_list;

/* Under LD_PRELOAD these resolve to libmagpie.so. */
extern size_t magpie_leak_report(void) __attribute__((weak));

__attribute__((noinline)) static void scrub(void) {
    volatile char buf[16384];
    memset((char *)buf, 0, sizeof buf);
}

__attribute__((noinline)) void leak_small(int n) {
    for (int i = 0; i < n; i++) {
        char *p = malloc(100);
        memset(p, 1, 100);
        sink = p;
    }
    sink = 0;
    kept_small = malloc(8); /* see thread_leaker */
}

__attribute__((noinline)) void leak_large(void) {
    char *p = malloc(200000);
    memset(p, 2, 4096);
    sink = p;
    sink = 0;
}

__attribute__((noinline)) void leak_calloc(int n) {
    for (int i = 0; i < n; i++)
        sink = calloc(3, 40);
    sink = 0;
}

/* A lost list: the head is leaked at leak_list and each node at make_node. */
__attribute__((noinline)) struct node *make_node(struct node *next) {
    struct node *n = malloc(sizeof *n);
    n->next = next;
    return n;
}

__attribute__((noinline)) void leak_list(int n) {
    struct node *head = 0;
    for (int i = 0; i < n; i++)
        head = make_node(head);
    sink = head;
    sink = 0;
}

/* Memory that is not leaked: reachable from globals, or freed. */
__attribute__((noinline)) void keep_and_free(void) {
    for (int i = 0; i < 8; i++)
        reachable[i] = malloc(50 + i);
    for (int i = 0; i < 100; i++)
        reachable_list = make_node(reachable_list);
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(16 + i % 500);
        free(p);
    }
    char *r = malloc(10);
    r = realloc(r, 5000);
    free(r);
}

/* What libc and the loader allocate for a program: none of it is a leak. */
__attribute__((noinline)) void use_libc(void) {
    setlocale(LC_ALL, "C.UTF-8");
    char buf[64];
    time_t t = 0;
    strftime(buf, sizeof buf, "%c", localtime(&t));
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char *line = 0;
        size_t cap = 0;
        while (getline(&line, &cap, f) > 0) {
        }
        free(line);
        fclose(f);
    }
    void *h = dlopen("libm.so.6", RTLD_NOW);
    if (h) {
        double (*cosf_)(double) = (double (*)(double))dlsym(h, "cos");
        if (cosf_)
            sink = (void *)(long)cosf_(0.0);
        dlclose(h);
    }
    char *d = strdup("hello");
    free(d);
    printf("libc used\n");
}

void *thread_kept[8];
int thread_kept_n;

__attribute__((noinline)) void thread_leaker(void) {
    for (int i = 0; i < 10; i++) {
        char *p = malloc(64);
        p[0] = 1;
        sink = p;
    }
    sink = 0;
    /* The last allocation is kept: copies of its pointer left in registers
     * or scratch stack are then harmless. */
    thread_kept[__atomic_fetch_add(&thread_kept_n, 1, __ATOMIC_RELAXED) & 7] = malloc(8);
}

/* One allocation call, reached from two callers whose frames have the same
 * size: both calls of malloc have the same return address and stack pointer,
 * and only the return address into via_a or via_b (further up the stack)
 * tells them apart. leakcheck reuses a thread's last stack when nothing it
 * read changed; this checks that the reuse notices the caller change. */
__attribute__((noinline)) void leak_leaf(size_t n) {
    sink = malloc(n);
    sink = 0;
}

__attribute__((noinline)) void via_a(size_t n) {
    leak_leaf(n);
    __asm__ volatile("" ::: "memory"); /* not a tail call */
}

__attribute__((noinline)) void via_b(size_t n) {
    leak_leaf(n);
    __asm__ volatile("" ::: "memory");
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int leaked_threads;

/* Each thread leaks, then waits for ever: the process exits with the threads
 * alive, so the collector scans their stacks from their stack pointers (the
 * stale copies of leaked pointers below lie outside). A thread that exited
 * would leave its stack in glibc's cache, scanned whole as a mapping. */
static void *thread_main(void *arg) {
    (void)arg;
    thread_leaker();
    scrub(); /* and the registers that held them */
    pthread_mutex_lock(&mu);
    leaked_threads++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (;;)
        pause();
    return 0;
}

__attribute__((noinline)) void leak_in_threads(int n) {
    pthread_t t;
    for (int i = 0; i < n; i++)
        pthread_create(&t, 0, thread_main, 0);
    pthread_mutex_lock(&mu);
    while (leaked_threads < n)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv) {
    const char *s = argc > 1 ? argv[1] : "sites";
    if (!strcmp(s, "sites")) {
        leak_small(16);      /* 1600 B, 16 objects */
        leak_large();        /* 200000 B, 1 object */
        leak_calloc(5);      /* 600 B, 5 objects */
        leak_list(10);       /* 640 B, 10 objects at make_node */
        keep_and_free();
    } else if (!strcmp(s, "none")) {
        keep_and_free();
        use_libc();
    } else if (!strcmp(s, "threads")) {
        leak_in_threads(4);  /* 2560 B, 40 objects at thread_leaker */
        use_libc();
    } else if (!strcmp(s, "callers")) {
        for (int i = 0; i < 10; i++) {
            via_a(32);       /* 320 B, 10 objects at leak_leaf < via_a */
            via_b(48);       /* 480 B, 10 objects at leak_leaf < via_b */
        }
    } else if (!strcmp(s, "twice")) {
        leak_small(10);      /* 1000 B */
        scrub();
        if (magpie_leak_report)
            magpie_leak_report();
        scrub();
        if (magpie_leak_report)
            magpie_leak_report();
        leak_calloc(2);      /* 240 B */
    } else {
        fprintf(stderr, "unknown scenario %s\n", s);
        return 2;
    }
    scrub();
    printf("done\n");
    return 0;
}
