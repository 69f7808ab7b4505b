/* pause.c -- GC pause benchmark: a large live heap of small linked nodes, a
 * mutator that keeps replacing nodes (the old ones become garbage), and a
 * probe thread that timestamps in a tight loop, so that stop-the-world pauses
 * show up as gaps in its timeline whatever the collector itself reports.
 *
 * One source, two builds:
 *   -DMODE_MAGPIE  plain malloc, never free: run under LD_PRELOAD=libmagpie.so
 *                  MAGPIE_GC=collect (the collector reclaims the old nodes);
 *                  under MAGPIE_GC=off it is the no-collector noise floor.
 *   -DMODE_BOEHM   GC_MALLOC from Boehm GC (link -lgc); threads registered
 *                  with GC_THREADS so that Boehm stops them too.
 *
 * Usage: pause [live_mib=1024] [ops=0] [node_bytes=64] [chain=4] [seed=1]
 *   live_mib    live heap of nodes, MiB (node_bytes * nodes)
 *   ops         node replacements the mutator makes (0: one per live node,
 *               at most 2^25: 16.8M at 1 GiB, i.e. 1 GiB of garbage, about
 *               20-45 s on a 2-core machine; 33.6M from 2 GiB up). Check
 *               cycles_mutate: with a slow concurrent cycle, no cycle of the
 *               full live heap may complete in that many ops (at 1 GiB,
 *               magpie's took ~3 per node on a busy 2-core machine)
 *   node_bytes  size of a node: a next pointer and (node_bytes-8)/8 payload
 *               words (multiple of 8, >= 16)
 *   chain       nodes per list: the live set is nodes/chain lists, their
 *               heads in one heap array that a global points to
 *
 * The mutator's choices depend only on the op index (and the seed), never on
 * timing, so the final checksum over the live lists is the same for every
 * build and collector for the same arguments.
 *
 * Threads: main builds the lists (timed: build_s) and later checksums them;
 * the mutator does `ops` replacements: pick list and position from
 * mix64(seed, op), walk to the node, allocate and fill a new node, splice it
 * in (old node leaked, its contents verified first); the probe runs from the
 * start of the build to the end of the checksum walk (so it covers the same
 * cycles as the collector's own figures): clock_gettime(MONOTONIC) in a
 * loop, a gap > 50 us between consecutive readings goes into a histogram
 * (heap-allocated, 1 us buckets up to 10 ms, 100 us up to 1 s, 10 ms up to
 * 100 s; percentiles are bucket lower bounds). Each gap is
 * classified with the probe thread's own context-switch counters
 * (getrusage(RUSAGE_THREAD)): a gap during which the thread switched out
 * voluntarily is a stop (the probe never blocks by itself: it was parked by a
 * stop-the-world signal handler, magpie's or Boehm's -- or, rarely, a page
 * fault of its own waited for a lock); a gap with only
 * involuntary switches is a preemption (another thread, e.g. the concurrent
 * marker, took its CPU); a gap with neither is "other" (interrupts, the
 * hypervisor). Every 1 ms the probe samples the mutator's op counter and, in
 * magpie, magpie_gc_phase(): a 1 ms interval whose two ends both see phase 0
 * and in which the probe was not stopped counts as "idle", one in which the
 * phase was non-zero at either end or the probe was stopped counts as
 * "marking" (collector active) -- throughput in each, and their ratio.
 * magpie_gc_phase and magpie_gc_cycles are looked up with dlsym rather than
 * declared weak: a weak undefined reference in an executable may be bound to
 * 0 at link time, and they exist only under LD_PRELOAD.
 *
 * Output: "key: value" lines on stdout (see main), ending with checksum: and
 * rss_peak_kb:.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#if defined(MODE_BOEHM)
#define GC_THREADS
#include <gc.h>
#define ALLOC(n) GC_MALLOC(n)
#define ALLOC_ATOMIC(n) GC_MALLOC_ATOMIC(n)
#define MODE_NAME "boehm"
#elif defined(MODE_MAGPIE)
#define ALLOC(n) malloc(n)
#define ALLOC_ATOMIC(n) malloc(n)
#define MODE_NAME "magpie"
#else
#error "define one of MODE_MAGPIE, MODE_BOEHM"
#endif

/* ---- small helpers ---- */

static void die(const char *msg)
{
    fprintf(stderr, "pause: %s\n", msg);
    exit(2);
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t arg_u64(int argc, char **argv, int i, uint64_t def, uint64_t min)
{
    if (i >= argc)
        return def;
    char *end;
    unsigned long long v = strtoull(argv[i], &end, 0);
    if (*argv[i] == '\0' || *end != '\0' || v < min) {
        fprintf(stderr, "pause: bad argument %d: '%s' (must be an integer >= %" PRIu64 ")\n", i,
                argv[i], min);
        exit(2);
    }
    return (uint64_t)v;
}

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long val = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0) {
            val = strtol(line + kl, NULL, 10);
            break;
        }
    }
    fclose(f);
    return val;
}

/* ---- the live set ---- */

typedef struct node {
    struct node *next;
    uint64_t payload[]; /* nwords words, all with the top bit set (never a pointer) */
} node;

static size_t node_bytes, nwords, chain;
static uint64_t nlists, seed;
/* The list heads: one heap array, kept alive (and found) through this global. */
static node **g_heads;

#define WORD_STEP 0x4f1bbcdcbfa53e0bULL /* top bit clear: payload words keep bit 63 */

static uint64_t build_tag(uint64_t i) { return mix64(seed ^ (i * 0x9e3779b97f4a7c15ULL)) | (1ull << 63); }
static uint64_t op_tag(uint64_t op) { return mix64(~seed ^ (op * 0xd1b54a32d192ed03ULL)) | (1ull << 63); }

static node *new_node(uint64_t tag, node *next)
{
    node *n = ALLOC(node_bytes);
    if (!n)
        die("out of memory");
    n->next = next;
    for (size_t w = 0; w < nwords; w++)
        n->payload[w] = tag ^ (w * WORD_STEP);
    return n;
}

static void check_node(const node *n, const char *where)
{
    uint64_t tag = n->payload[0];
    if (!(tag >> 63) || n->payload[nwords - 1] != (tag ^ ((nwords - 1) * WORD_STEP))) {
        fprintf(stderr, "pause: corrupted node %p (%s): words %016" PRIx64 " .. %016" PRIx64 "\n",
                (const void *)n, where, tag, n->payload[nwords - 1]);
        exit(1);
    }
}

/* ---- shared state between the threads (each hot word on its own line) ---- */

static _Alignas(64) _Atomic uint64_t g_ops;   /* mutator: ops done */
static _Alignas(64) _Atomic int g_stage;      /* 0 build, 1 mutate, 2 done */
static _Alignas(64) _Atomic int g_probe_stop; /* main: probe, finish */
static _Atomic int g_probe_ready;
static int (*gc_phase)(void);                 /* magpie_gc_phase, if preloaded */
#ifdef MODE_MAGPIE
static unsigned long (*gc_cycles)(void);      /* magpie_gc_cycles, if preloaded */
#endif

/* ---- the probe ---- */

#define HIST_FINE 10000                       /* 1 us buckets below 10 ms */
#define HIST_MID (HIST_FINE + 9900)           /* then 100 us buckets up to 1 s */
#define HIST_N (HIST_MID + 9900)              /* then 10 ms buckets up to 100 s */
#define GAP_NS 50000u                         /* a gap: > 50 us between readings */

enum { K_ALL, K_STOP, K_PREEMPT, K_OTHER, K_N };
static const char *const kind_name[K_N] = {"", "stop_", "preempt_", "other_"};

typedef struct probe_state {
    uint32_t hist[K_N][HIST_N];
    uint64_t max_ns[K_N];
    uint64_t count[K_N];
    uint64_t over_1ms[K_N];
    uint64_t loops;
    uint64_t probe_ns;
    /* mutator throughput by collector state, mutate stage only */
    uint64_t idle_ops, idle_ns, mark_ops, mark_ns;
    uint64_t mut_max_gap_ns;                  /* longest gap in the mutate stage */
} probe_state;
static probe_state *g_ps;                     /* heap-allocated: keeps the roots small */

static unsigned hist_index(uint64_t ns)
{
    uint64_t us = ns / 1000;
    if (us < HIST_FINE)
        return (unsigned)us;
    if (us < 1000000)
        return (unsigned)(HIST_FINE + (us - HIST_FINE) / 100);
    uint64_t i = HIST_MID + (us - 1000000) / 10000;
    return i < HIST_N ? (unsigned)i : HIST_N - 1;
}

static uint64_t hist_value_us(unsigned i)
{
    if (i < HIST_FINE)
        return i;
    if (i < HIST_MID)
        return HIST_FINE + (uint64_t)(i - HIST_FINE) * 100;
    return 1000000 + (uint64_t)(i - HIST_MID) * 10000;
}

/* the q-quantile (0..1) of the recorded gaps, in us (bucket lower bound) */
static uint64_t hist_quantile(const uint32_t *h, uint64_t n, double q)
{
    if (n == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)n + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < HIST_N; i++) {
        acc += h[i];
        if (acc >= want)
            return hist_value_us(i);
    }
    return hist_value_us(HIST_N - 1);
}

static void csw(long *vol, long *invol)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    *vol = ru.ru_nvcsw;
    *invol = ru.ru_nivcsw;
}

static void record_gap(probe_state *ps, int kind, uint64_t d)
{
    unsigned i = hist_index(d);
    int ks[2] = {K_ALL, kind};
    for (int j = 0; j < 2; j++) {
        int k = ks[j];
        ps->hist[k][i]++;
        ps->count[k]++;
        if (d > ps->max_ns[k])
            ps->max_ns[k] = d;
        if (d >= 1000000)
            ps->over_1ms[k]++;
    }
}

static void *probe_main(void *arg)
{
    (void)arg;
    probe_state *ps = g_ps;
    long vol0, inv0, vol, inv;
    csw(&vol0, &inv0);
    uint64_t t0 = now_ns(), prev = t0, next_tick = t0 + 1000000;
    /* the last tick: time, ops, phase, stage; stopped = a stop gap since then */
    uint64_t tick_t = t0, tick_ops = 0;
    int tick_phase = gc_phase ? gc_phase() : 0, tick_stage = atomic_load(&g_stage);
    int stopped = 0;
    uint64_t loops = 0;
    atomic_store(&g_probe_ready, 1);
    while (!atomic_load_explicit(&g_probe_stop, memory_order_relaxed)) {
        uint64_t t = now_ns();
        loops++;
        uint64_t d = t - prev;
        prev = t;
        if (d > GAP_NS) {
            csw(&vol, &inv);
            int kind = vol != vol0 ? K_STOP : inv != inv0 ? K_PREEMPT : K_OTHER;
            vol0 = vol;
            inv0 = inv;
            record_gap(ps, kind, d);
            if (kind == K_STOP)
                stopped = 1;
            if (tick_stage == 1 && d > ps->mut_max_gap_ns)
                ps->mut_max_gap_ns = d;
        }
        if (t >= next_tick) {
            uint64_t ops = atomic_load_explicit(&g_ops, memory_order_relaxed);
            int phase = gc_phase ? gc_phase() : 0;
            int stage = atomic_load_explicit(&g_stage, memory_order_relaxed);
            if (stage == 1 && tick_stage == 1) {
                uint64_t dn = t - tick_t, dops = ops - tick_ops;
                if (phase == 0 && tick_phase == 0 && !stopped) {
                    ps->idle_ops += dops;
                    ps->idle_ns += dn;
                } else {
                    ps->mark_ops += dops;
                    ps->mark_ns += dn;
                }
            }
            tick_t = t;
            tick_ops = ops;
            tick_phase = phase;
            tick_stage = stage;
            stopped = 0;
            next_tick = t + 1000000;
            /* refresh the switch counters: keeps a gap's classification to
             * what happened since the last tick */
            csw(&vol0, &inv0);
        }
    }
    ps->loops = loops;
    ps->probe_ns = now_ns() - t0;
    return NULL;
}

/* ---- the mutator ---- */

static uint64_t nops;

static void *mutator_main(void *arg)
{
    (void)arg;
    node **heads = g_heads;
    for (uint64_t op = 0; op < nops; op++) {
        uint64_t r = mix64(seed + op * 0x9e3779b97f4a7c15ULL);
        uint64_t list = (uint64_t)(((unsigned __int128)(r >> 16) * nlists) >> 48);
        size_t pos = (size_t)(r & 0xffff) % chain;
        node **link = &heads[list];
        for (size_t k = 0; k < pos; k++)
            link = &(*link)->next;
        node *old = *link;
        check_node(old, "mutator");
        *link = new_node(op_tag(op), old->next);
        /* old is garbage now (never freed: the collector's job) */
        atomic_store_explicit(&g_ops, op + 1, memory_order_relaxed);
    }
    return NULL;
}

/* ---- Boehm's own pause figures (world stopped -> world started) ---- */

#ifdef MODE_BOEHM
#define BPAUSES 4096
static uint64_t b_stop_t, b_max_ns, b_total_ns, b_n;
static uint32_t b_us[BPAUSES];
static void on_gc_event(GC_EventType ev)
{
    if (ev == GC_EVENT_PRE_STOP_WORLD) {
        b_stop_t = now_ns();
    } else if (ev == GC_EVENT_POST_START_WORLD && b_stop_t) {
        uint64_t d = now_ns() - b_stop_t;
        b_stop_t = 0;
        b_us[b_n++ % BPAUSES] = (uint32_t)(d / 1000);
        b_total_ns += d;
        if (d > b_max_ns)
            b_max_ns = d;
    }
}
static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}
#endif

/* collection cycles completed so far */
static unsigned long cycles_now(void)
{
#ifdef MODE_BOEHM
    return (unsigned long)GC_get_gc_no();
#else
    return gc_cycles ? gc_cycles() : 0;
#endif
}

static void start(pthread_t *t, void *(*fn)(void *))
{
    int e = pthread_create(t, NULL, fn, NULL);
    if (e) {
        fprintf(stderr, "pause: pthread_create: %s\n", strerror(e));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        printf("usage: pause [live_mib=1024] [ops=0 (min(nodes, 2^25))] [node_bytes=64] [chain=4] [seed=1]\n");
        return 0;
    }
    uint64_t live_mib = arg_u64(argc, argv, 1, 1024, 1);
    uint64_t ops_arg = arg_u64(argc, argv, 2, 0, 0);
    node_bytes = (size_t)arg_u64(argc, argv, 3, 64, 16);
    chain = (size_t)arg_u64(argc, argv, 4, 4, 1);
    seed = arg_u64(argc, argv, 5, 1, 0);
    if (node_bytes % 8 || node_bytes > 4096)
        die("node_bytes must be a multiple of 8, 16..4096");
    if (chain > 65536)
        die("chain must be 1..65536");
    nwords = node_bytes / 8 - 1;
    uint64_t nodes = (live_mib << 20) / node_bytes;
    nlists = nodes / chain;
    if (nlists == 0)
        die("live heap smaller than one chain");
    nodes = nlists * chain;
    nops = ops_arg ? ops_arg : nodes < (1ull << 25) ? nodes : (1ull << 25);

#ifdef MODE_BOEHM
    GC_INIT();
    GC_start_performance_measurement();
    GC_set_on_collection_event(on_gc_event);
#else
    gc_phase = (int (*)(void))dlsym(RTLD_DEFAULT, "magpie_gc_phase");
    gc_cycles = (unsigned long (*)(void))dlsym(RTLD_DEFAULT, "magpie_gc_cycles");
#endif

    g_ps = ALLOC_ATOMIC(sizeof(probe_state));
    if (!g_ps)
        die("out of memory");
    memset(g_ps, 0, sizeof *g_ps);

    pthread_t probe, mutator;
    start(&probe, probe_main);
    while (!atomic_load(&g_probe_ready))
        ;

    /* build: nlists chains of `chain` nodes */
    uint64_t t_build = now_ns();
    g_heads = ALLOC(nlists * sizeof(node *));
    if (!g_heads)
        die("out of memory");
    for (uint64_t l = 0; l < nlists; l++) {
        node *h = NULL;
        for (size_t k = chain; k-- > 0;)
            h = new_node(build_tag(l * chain + k), h);
        g_heads[l] = h;
    }
    double build_s = (double)(now_ns() - t_build) / 1e9;

    /* mutate */
    unsigned long cycles_build = cycles_now();
    atomic_store(&g_stage, 1);
    uint64_t t_mut = now_ns();
    start(&mutator, mutator_main);
    pthread_join(mutator, NULL);
    uint64_t mut_ns = now_ns() - t_mut;
    atomic_store(&g_stage, 2);
    unsigned long cycles_mutate = cycles_now() - cycles_build;

    /* checksum: walk and verify every list */
    uint64_t t_sum = now_ns(), sum = nlists;
    for (uint64_t l = 0; l < nlists; l++) {
        size_t len = 0;
        for (node *n = g_heads[l]; n; n = n->next) {
            check_node(n, "checksum");
            sum = mix64(sum ^ n->payload[0]) + len;
            len++;
        }
        if (len != chain) {
            fprintf(stderr, "pause: list %" PRIu64 " has %zu nodes, expected %zu\n", l, len, chain);
            exit(1);
        }
    }
    double sum_s = (double)(now_ns() - t_sum) / 1e9;
    /* the probe covers the checksum walk too: a cycle still marking when the
     * mutator stops terminates during it */
    atomic_store(&g_probe_stop, 1);
    pthread_join(probe, NULL);

    unsigned long cycles = cycles_now();

    probe_state *ps = g_ps;
    double mut_ms = (double)mut_ns / 1e6;
    printf("mode: %s\n", MODE_NAME);
    printf("live_mib: %" PRIu64 "\n", live_mib);
    printf("node_bytes: %zu\n", node_bytes);
    printf("chain: %zu\n", chain);
    printf("lists: %" PRIu64 "\n", nlists);
    printf("nodes: %" PRIu64 "\n", nodes);
    printf("ops: %" PRIu64 "\n", nops);
    printf("seed: %" PRIu64 "\n", seed);
    printf("build_s: %.3f\n", build_s);
    printf("mutate_s: %.3f\n", mut_ms / 1e3);
    printf("checksum_s: %.3f\n", sum_s);
    printf("ops_per_ms: %.1f\n", (double)nops / mut_ms);
    double idle = ps->idle_ns ? (double)ps->idle_ops / ((double)ps->idle_ns / 1e6) : 0;
    double mark = ps->mark_ns ? (double)ps->mark_ops / ((double)ps->mark_ns / 1e6) : 0;
    printf("idle_ms: %.1f\n", (double)ps->idle_ns / 1e6);
    printf("marking_ms: %.1f\n", (double)ps->mark_ns / 1e6);
    if (ps->idle_ns)
        printf("ops_per_ms_idle: %.1f\n", idle);
    else
        printf("ops_per_ms_idle: -\n");
    if (ps->mark_ns)
        printf("ops_per_ms_marking: %.1f\n", mark);
    else
        printf("ops_per_ms_marking: -\n");
    if (idle > 0 && ps->mark_ns > 0)
        printf("marking_ratio: %.3f\n", mark / idle);
    else
        printf("marking_ratio: -\n");
    printf("probe_s: %.3f\n", (double)ps->probe_ns / 1e9);
    printf("probe_loops_per_ms: %.0f\n", (double)ps->loops / ((double)ps->probe_ns / 1e6));
    for (int k = 0; k < K_N; k++) {
        const char *kn = kind_name[k];
        printf("probe_%sgaps: %" PRIu64 "\n", kn, ps->count[k]);
        printf("probe_%smax_gap_us: %.0f\n", kn, (double)ps->max_ns[k] / 1e3);
        printf("probe_%sp50_gap_us: %" PRIu64 "\n", kn, hist_quantile(ps->hist[k], ps->count[k], 0.50));
        printf("probe_%sp99_gap_us: %" PRIu64 "\n", kn, hist_quantile(ps->hist[k], ps->count[k], 0.99));
        printf("probe_%sgaps_over_1ms: %" PRIu64 "\n", kn, ps->over_1ms[k]);
    }
    printf("probe_mutate_max_gap_us: %.0f\n", (double)ps->mut_max_gap_ns / 1e3);
    printf("cycles: %lu\n", cycles);
    printf("cycles_build: %lu\n", cycles_build);
    printf("cycles_mutate: %lu\n", cycles_mutate);
#ifdef MODE_BOEHM
    {
        uint64_t n = b_n < BPAUSES ? b_n : BPAUSES;
        qsort(b_us, (size_t)n, sizeof b_us[0], cmp_u32);
        printf("boehm_pauses: %" PRIu64 "\n", b_n);
        printf("boehm_max_pause_us: %.0f\n", (double)b_max_ns / 1e3);
        printf("boehm_p50_pause_us: %u\n", n ? b_us[(n - 1) / 2] : 0);
        printf("boehm_p99_pause_us: %u\n", n ? b_us[(size_t)((double)(n - 1) * 0.99)] : 0);
        printf("boehm_total_pause_ms: %.1f\n", (double)b_total_ns / 1e6);
        printf("boehm_gc_total_ms: %lu\n", (unsigned long)GC_get_full_gc_total_time());
    }
#endif
    printf("checksum: %016" PRIx64 "\n", sum);
    printf("rss_peak_kb: %ld\n", status_kb("VmHWM:"));
    fflush(stdout);
    return 0;
}
