/* The collector (MAGPIE_GC=collect) under LD_PRELOAD, from C: an object
 * allocated with plain malloc whose only reference sits in one kind of root
 * must survive 30 cycles while garbage (malloc without free, several MB per
 * round) is made and reclaimed around it; then its pattern is checked.
 *
 *   gc_roots <scenario>
 *
 * Root scenarios: static, tls, blocked_read, register, mmap, setspecific,
 * setspecific_2nd (a key past glibc's first-level array of 32, so the slot
 * lives in a calloc'ed second-level array), chain (the tail of a 1,000,000
 * node list from a static head), interior (a pointer to the middle of the
 * object), tree (a complete binary tree of 131,071 nodes from a static
 * root: wide, so parallel markers share it and a small mark stack
 * overflows). "control": 10,000 objects with no reference at all (only XOR-ed
 * copies) and no churn: after 3 cycles magpie must hold >= 90 % of them as
 * freed (magpie_is_allocated). And "leak": ~2 GiB of small nodes allocated and dropped with no
 * explicit collect; the pacer alone must keep VmHWM and VmRSS under 256 MiB.
 *
 * Each scenario prints "OK <scenario>" and exits 0; a lost object prints what
 * it found and exits 1. magpie_gc_collect is looked up with dlsym so the
 * program links without magpie; when it is missing the program aborts. */
#include "check.h"

#include <pthread.h>
#include <stddef.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define KEY 0x5A5A5A5A5A5A5A5AULL
#define ROUNDS 30

/* A 64-byte node with a checkable pattern. */
struct node {
    struct node *next;
    uint64_t tag;
    uint64_t payload[6];
};
_Static_assert(sizeof(struct node) == 64, "node must be 64 bytes");

static uint64_t word(uint64_t tag, int i) {
    return (tag * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)i * 0x0101010101010101ULL);
}

static int (*gc_collect)(void);
static const char *scenario;
static unsigned long churn_kib = 4096; /* garbage per round (GC_ROOTS_CHURN_KIB) */

/* Allocated in a function of its own so no copy stays in the caller's frame. */
__attribute__((noinline)) static struct node *new_node(uint64_t tag, struct node *next) {
    struct node *n = malloc(sizeof *n);
    if (n == NULL) {
        fprintf(stderr, "%s: malloc failed\n", scenario);
        exit(1);
    }
    n->next = next;
    n->tag = tag;
    for (int i = 0; i < 6; i++)
        n->payload[i] = word(tag, i);
    return n;
}

/* 1 when n still holds the pattern of tag; prints the difference otherwise. */
static int node_ok(const struct node *n, uint64_t tag, const char *what) {
    if (n->tag != tag) {
        fprintf(stderr, "%s: object %p (%s) lost: tag %#llx, expected %#llx\n", scenario, (void *)n,
                what, (unsigned long long)n->tag, (unsigned long long)tag);
        return 0;
    }
    for (int i = 0; i < 6; i++)
        if (n->payload[i] != word(tag, i)) {
            fprintf(stderr, "%s: object %p (%s) lost: payload[%d] = %#llx, expected %#llx\n",
                    scenario, (void *)n, what, i, (unsigned long long)n->payload[i],
                    (unsigned long long)word(tag, i));
            return 0;
        }
    return 1;
}

static void check_node(const struct node *n, uint64_t tag, const char *what) {
    if (!node_ok(n, tag, what)) {
        fflush(stderr);
        exit(1);
    }
}

/* Overwrites the dead stack below the caller (stale copies of pointers). */
__attribute__((noinline)) static void scrub_stack(void) {
    volatile uint64_t buf[4096];
    for (size_t i = 0; i < sizeof buf / sizeof buf[0]; i++)
        buf[i] = 0;
    __asm__ volatile("" ::"r"(buf) : "memory");
}

/* One round of garbage, dropped: 64-byte nodes linked together (with a
 * pattern that differs from any kept object's), blocks of mixed sizes, and a
 * few large ones. */
__attribute__((noinline)) static void make_garbage(uint64_t round) {
    size_t budget = churn_kib << 10, made = 0;
    struct node *g = NULL;
    uint64_t i = 0;
    while (made < budget) {
        for (int k = 0; k < 1000; k++, i++) {
            struct node *n = malloc(sizeof *n);
            n->next = g;
            n->tag = 0xDEAD000000000000ULL | (round << 32) | i;
            for (int w = 0; w < 6; w++)
                n->payload[w] = ~word(n->tag, w);
            g = n;
        }
        made += 1000 * 64;
        for (int k = 0; k < 20; k++) {
            size_t sz = 64 + (size_t)((i + k) * 97 % 4000);
            unsigned char *p = malloc(sz);
            memset(p, 0xA5, sz);
            made += sz;
        }
        if (i % 16000 == 0) {
            unsigned char *p = malloc(256 << 10);
            memset(p, 0x3C, 256 << 10);
            made += 256 << 10;
        }
    }
    __asm__ volatile("" ::"r"(g) : "memory");
}

/* ROUNDS rounds of garbage, each followed by an explicit cycle. */
static void churn(void) {
    for (uint64_t r = 0; r < ROUNDS; r++) {
        make_garbage(r);
        scrub_stack();
        if (gc_collect() != 1) {
            fprintf(stderr, "%s: magpie_gc_collect() did not run a cycle (round %llu)\n", scenario,
                    (unsigned long long)r);
            exit(1);
        }
    }
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void finish(void) {
    printf("OK %s\n", scenario);
    fflush(stdout);
    exit(0);
}

/* ---- static global ---- */

static struct node *volatile static_root;

__attribute__((noinline)) static void plant_static(void) { static_root = new_node(11, NULL); }

static void sc_static(void) {
    plant_static();
    scrub_stack();
    churn();
    check_node(static_root, 11, "static global");
}

/* ---- __thread variable of a sleeping thread ---- */

static __thread struct node *volatile tls_root;
static volatile int tls_ready, tls_done, tls_ok;

__attribute__((noinline)) static void plant_tls(void) { tls_root = new_node(22, NULL); }

static void *tls_thread(void *arg) {
    (void)arg;
    plant_tls();
    scrub_stack();
    __atomic_store_n(&tls_ready, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&tls_done, __ATOMIC_SEQ_CST))
        sleep_ms(5);
    tls_ok = node_ok(tls_root, 22, "__thread variable");
    return NULL;
}

static void sc_tls(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, tls_thread, NULL) == 0);
    while (!__atomic_load_n(&tls_ready, __ATOMIC_SEQ_CST))
        sched_yield();
    churn();
    __atomic_store_n(&tls_done, 1, __ATOMIC_SEQ_CST);
    pthread_join(t, NULL);
    if (!tls_ok)
        exit(1);
}

/* ---- stack of a thread blocked in read() ---- */

static int pipe_fds[2];
static volatile int reader_started, reader_ok;

static void *reader_thread(void *arg) {
    (void)arg;
    struct node *volatile on_stack = new_node(33, NULL);
    __atomic_store_n(&reader_started, 1, __ATOMIC_SEQ_CST);
    char b;
    ssize_t n = read(pipe_fds[0], &b, 1);
    reader_ok = n == 1 && node_ok(on_stack, 33, "stack of a thread blocked in read()");
    return NULL;
}

/* The thread's state letter from /proc/self/task/<tid>/stat, or 0. */
static char thread_state(pid_t tid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

static volatile pid_t reader_tid;

static void *reader_entry(void *arg) {
    reader_tid = gettid();
    return reader_thread(arg);
}

static void sc_blocked_read(void) {
    CHECK(pipe(pipe_fds) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, reader_entry, NULL) == 0);
    while (!__atomic_load_n(&reader_started, __ATOMIC_SEQ_CST))
        sched_yield();
    /* Wait until it sleeps in read(). */
    for (int i = 0; i < 1000 && thread_state(reader_tid) != 'S'; i++)
        sleep_ms(1);
    sleep_ms(10);
    CHECKF(thread_state(reader_tid) == 'S', "reader state %c", thread_state(reader_tid));
    churn();
    CHECK(write(pipe_fds[1], "x", 1) == 1);
    pthread_join(t, NULL);
    if (!reader_ok || check_failures)
        exit(1);
}

/* ---- register (r15) of a spinning thread ---- */

static volatile uintptr_t hidden; /* the pointer XOR KEY: not a reference */
static volatile unsigned char reg_ready, reg_stop;
static volatile int reg_ok;

__attribute__((noinline)) static void plant_hidden(void) {
    hidden = (uintptr_t)new_node(44, NULL) ^ KEY;
}

static void *register_thread(void *arg) {
    (void)arg;
    plant_hidden();
    scrub_stack();
    uintptr_t out;
    /* The real pointer exists only in r15 while the thread spins. */
    __asm__ volatile("mov (%[h]), %%r15\n\t"
                     "xor %[k], %%r15\n\t"
                     "movb $1, (%[r])\n\t"
                     "1:\n\t"
                     "pause\n\t"
                     "cmpb $0, (%[s])\n\t"
                     "je 1b\n\t"
                     "mov %%r15, %[o]\n\t"
                     : [o] "=r"(out)
                     : [h] "r"(&hidden), [k] "r"((uintptr_t)KEY), [r] "r"(&reg_ready),
                       [s] "r"(&reg_stop)
                     : "r15", "memory", "cc");
    reg_ok = node_ok((const struct node *)out, 44, "register r15 of a spinning thread");
    return NULL;
}

static void sc_register(void) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, register_thread, NULL) == 0);
    while (!reg_ready)
        sched_yield();
    churn();
    reg_stop = 1;
    pthread_join(t, NULL);
    if (!reg_ok)
        exit(1);
}

/* ---- anonymous mmap ---- */

static uintptr_t *volatile mapping;

__attribute__((noinline)) static void plant_mmap(void) {
    mapping[100] = (uintptr_t)new_node(55, NULL);
}

static void sc_mmap(void) {
    void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    mapping = m;
    plant_mmap();
    scrub_stack();
    churn();
    check_node((const struct node *)((volatile uintptr_t *)mapping)[100], 55, "anonymous mmap");
}

/* ---- pthread_setspecific slot ---- */

static pthread_key_t spec_key;

__attribute__((noinline)) static void plant_specific(void) {
    CHECK(pthread_setspecific(spec_key, new_node(66, NULL)) == 0);
}

static void specific_scenario(int skip_keys) {
    /* glibc keeps keys 0..31 in struct pthread itself and later ones in
     * second-level arrays it callocs on first use. */
    pthread_key_t k;
    for (int i = 0; i < skip_keys; i++)
        CHECK(pthread_key_create(&k, NULL) == 0);
    CHECK(pthread_key_create(&spec_key, NULL) == 0);
    if (skip_keys)
        CHECKF(spec_key >= 32, "key %u", spec_key);
    plant_specific();
    scrub_stack();
    churn();
    check_node(pthread_getspecific(spec_key), 66, "pthread_setspecific slot");
}

static void sc_setspecific(void) { specific_scenario(0); }
static void sc_setspecific_2nd(void) { specific_scenario(40); }

/* ---- tail of a 1,000,000-node list from a static head ---- */

#define CHAIN_LEN 1000000
static struct node *volatile chain_head;

__attribute__((noinline)) static void build_chain(void) {
    struct node *h = NULL;
    for (uint64_t i = 0; i < CHAIN_LEN; i++)
        h = new_node(i, h);
    chain_head = h;
}

static void sc_chain(void) {
    build_chain();
    scrub_stack();
    churn();
    uint64_t expect = CHAIN_LEN - 1, n = 0;
    const struct node *c = chain_head, *last = NULL;
    for (; c; c = c->next, n++, expect--) {
        if (!node_ok(c, expect, "list node"))
            exit(1);
        last = c;
    }
    CHECKF(n == CHAIN_LEN, "list has %llu nodes", (unsigned long long)n);
    CHECK(last != NULL && last->tag == 0);
    if (check_failures)
        exit(1);
}

/* ---- wide binary tree ---- */

#define TREE_DEPTH 17

struct tnode {
    struct tnode *left, *right;
    uint64_t tag;
    uint64_t payload[5];
};
_Static_assert(sizeof(struct tnode) == 64, "tree node must be 64 bytes");

static struct tnode *volatile tree_root;

/* Node `tag` (the root is 1, the children of k are 2k and 2k + 1). */
static struct tnode *build_tree(uint64_t tag, int depth) {
    struct tnode *t = malloc(sizeof *t);
    if (t == NULL) {
        fprintf(stderr, "%s: malloc failed\n", scenario);
        exit(1);
    }
    t->tag = tag;
    for (int i = 0; i < 5; i++)
        t->payload[i] = word(tag, i);
    t->left = depth > 1 ? build_tree(2 * tag, depth - 1) : NULL;
    t->right = depth > 1 ? build_tree(2 * tag + 1, depth - 1) : NULL;
    return t;
}

static uint64_t check_tree(const struct tnode *t, uint64_t tag, int depth) {
    if (t == NULL || t->tag != tag) {
        fprintf(stderr, "%s: tree node %llu lost (found %p, tag %#llx)\n", scenario,
                (unsigned long long)tag, (const void *)t, t ? (unsigned long long)t->tag : 0ULL);
        exit(1);
    }
    for (int i = 0; i < 5; i++)
        if (t->payload[i] != word(tag, i)) {
            fprintf(stderr, "%s: tree node %llu payload %d corrupted\n", scenario,
                    (unsigned long long)tag, i);
            exit(1);
        }
    if (depth == 1)
        return 1;
    return 1 + check_tree(t->left, 2 * tag, depth - 1) + check_tree(t->right, 2 * tag + 1, depth - 1);
}

__attribute__((noinline)) static void plant_tree(void) { tree_root = build_tree(1, TREE_DEPTH); }

static void sc_tree(void) {
    plant_tree();
    scrub_stack();
    churn();
    uint64_t n = check_tree(tree_root, 1, TREE_DEPTH);
    CHECKF(n == (1ULL << TREE_DEPTH) - 1, "tree has %llu nodes", (unsigned long long)n);
    if (check_failures)
        exit(1);
}

/* ---- interior pointer ---- */

static uint64_t *volatile interior; /* &node->payload[3]: byte 32 of 64 */

__attribute__((noinline)) static void plant_interior(void) {
    struct node *n = new_node(77, NULL);
    interior = &n->payload[3];
}

static void sc_interior(void) {
    plant_interior();
    scrub_stack();
    churn();
    const struct node *n = (const struct node *)((uintptr_t)interior - offsetof(struct node, payload) -
                                                 3 * sizeof(uint64_t));
    check_node(n, 77, "interior pointer");
}

/* ---- control: objects referenced by nothing are reclaimed ----
 * The same planting and scrubbing as the root scenarios, with only XOR-ed
 * pointers stored: the collector must free (nearly all of) them. This shows
 * the harness leaves no stray copy that would keep objects alive by accident,
 * and that the root scenarios' survivors survive because of their root.
 *
 * Whether an object was freed is asked of magpie (magpie_is_allocated), right
 * after the cycles and before anything else is allocated: a freed slot reads
 * as allocated again once a later malloc reuses it, so the check must not
 * come after the churn (nor look for the addresses among later mallocs,
 * which a stale copy of a garbage list's head can delay by a cycle). A
 * conservative collector may retain the odd object through a stale word (a
 * register or stack slot), so 90 % are required, not all. */

#define NCONTROL 10000
#define CONTROL_CYCLES 3
static volatile uintptr_t hidden_many[NCONTROL];

__attribute__((noinline)) static void plant_nothing(void) {
    for (int i = 0; i < NCONTROL; i++)
        hidden_many[i] = (uintptr_t)new_node(1000 + i, NULL) ^ KEY;
}

/* How many of the planted objects magpie still holds as allocated. */
__attribute__((noinline)) static int count_allocated(int (*is_allocated)(const void *)) {
    int n = 0;
    for (int i = 0; i < NCONTROL; i++)
        n += is_allocated((const void *)(hidden_many[i] ^ KEY)) == 1;
    return n;
}

static void sc_control(void) {
    int (*is_allocated)(const void *) =
        (int (*)(const void *))dlsym(RTLD_DEFAULT, "magpie_is_allocated");
    CHECKF(is_allocated != NULL, "magpie_is_allocated not found");
    if (check_failures)
        exit(1);
    plant_nothing();
    int before = count_allocated(is_allocated);
    scrub_stack();
    for (int c = 0; c < CONTROL_CYCLES; c++) {
        if (gc_collect() != 1) {
            fprintf(stderr, "%s: magpie_gc_collect() did not run a cycle\n", scenario);
            exit(1);
        }
        scrub_stack();
    }
    int after = count_allocated(is_allocated);
    int reclaimed = NCONTROL - after;
    printf("control: %d of %d unreferenced objects allocated before, %d reclaimed after %d "
           "cycles\n",
           before, NCONTROL, reclaimed, CONTROL_CYCLES);
    CHECKF(before == NCONTROL, "only %d of %d planted objects read as allocated", before,
           NCONTROL);
    CHECKF(reclaimed >= NCONTROL * 9 / 10, "only %d of %d unreferenced objects were reclaimed",
           reclaimed, NCONTROL);
    if (check_failures)
        exit(1);
}

/* ---- leak gigabytes: the pacer alone bounds RSS ---- */

static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t fl = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':')
            v = strtol(line + fl + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

static void sc_leak(void) {
    const size_t total = (size_t)2 << 30;
    size_t made = 0, objects = 0;
    uint64_t round = 0;
    while (made < total) {
        /* 10,000 linked 64-byte nodes plus 1,000 blocks of 16..256 bytes. */
        struct node *g = NULL;
        for (int i = 0; i < 10000; i++) {
            struct node *n = malloc(sizeof *n);
            n->next = g;
            n->tag = round;
            n->payload[0] = i;
            g = n;
        }
        __asm__ volatile("" ::"r"(g) : "memory");
        made += 10000 * 64;
        for (int i = 0; i < 1000; i++) {
            size_t sz = 16 + (size_t)(i * 16 % 256);
            unsigned char *p = malloc(sz);
            p[0] = (unsigned char)i;
            p[sz - 1] = (unsigned char)round;
            __asm__ volatile("" ::"r"(p) : "memory");
            made += sz;
        }
        objects += 11000;
        round++;
    }
    long hwm = status_kib("VmHWM"), rss = status_kib("VmRSS");
    printf("leak: allocated %zu MiB in %zu objects without free; VmHWM %ld MiB, VmRSS %ld MiB\n",
           made >> 20, objects, hwm >> 10, rss >> 10);
    fflush(stdout);
    CHECKF(hwm > 0 && rss > 0, "cannot read /proc/self/status");
    CHECKF(hwm < 256 * 1024, "VmHWM %ld KiB >= 256 MiB", hwm);
    CHECKF(rss < 256 * 1024, "VmRSS %ld KiB >= 256 MiB", rss);
    if (check_failures)
        exit(1);
}

static const struct {
    const char *name;
    void (*run)(void);
} scenarios[] = {
    {"static", sc_static},
    {"tls", sc_tls},
    {"blocked_read", sc_blocked_read},
    {"register", sc_register},
    {"mmap", sc_mmap},
    {"setspecific", sc_setspecific},
    {"setspecific_2nd", sc_setspecific_2nd},
    {"chain", sc_chain},
    {"interior", sc_interior},
    {"tree", sc_tree},
    {"leak", sc_leak},
    {"control", sc_control},
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <scenario>\n", argv[0]);
        return 2;
    }
    scenario = argv[1];
    gc_collect = (int (*)(void))dlsym(RTLD_DEFAULT, "magpie_gc_collect");
    if (gc_collect == NULL) {
        fprintf(stderr, "magpie_gc_collect not found: run under LD_PRELOAD=libmagpie.so\n");
        abort();
    }
    const char *ck = getenv("GC_ROOTS_CHURN_KIB");
    if (ck && *ck)
        churn_kib = strtoul(ck, NULL, 10);
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
        if (strcmp(scenarios[i].name, scenario) == 0) {
            scenarios[i].run();
            if (check_failures)
                return 1;
            finish();
        }
    fprintf(stderr, "unknown scenario %s\n", scenario);
    return 2;
}
